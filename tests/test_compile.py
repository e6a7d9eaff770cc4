"""The per-step hot path reads nothing back to the host: input checks that would stall a GPU (and split a
torch.compile graph) are device-side assertions there, and the code traces into one graph (`fullgraph=True`)."""

from __future__ import annotations

import copy

import pytest
import torch

import vl_models
from conftest import make_batch
from vl_models.layers.embeddings import TextEmbeddings
from vl_models.layers.masking import mask_text
from vl_models.utils import check_index_range


def compiled(fn):
    # dynamo only (no inductor code generation): a graph break or a host read-back fails `fullgraph`
    torch._dynamo.reset()
    return torch.compile(fn, backend="eager", fullgraph=True)


def test_index_check_names_the_values_on_cpu():
    check_index_range("ids", torch.tensor([0, 3]), 4)
    check_index_range("ids", torch.empty(0, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=r"`ids` must be in \[0, 4\), got values in \[-1, 2\]"):
        check_index_range("ids", torch.tensor([2, -1]), 4)
    with pytest.raises(ValueError, match=r"`words` must be in \[-1, 9\), got values in \[-1, 9\]"):
        check_index_range("words", torch.tensor([-1, 9]), 9, low=-1)


def test_index_check_is_a_device_assertion_when_compiled():
    check = compiled(lambda ids: (check_index_range("ids", ids, 4), ids * 2)[1])
    assert torch.equal(check(torch.tensor([0, 3])), torch.tensor([0, 6]))
    with pytest.raises(RuntimeError, match=r"`ids` must be in \[0, 4\)"):
        check(torch.tensor([1, 4]))


def test_bert_masking_traces_into_one_graph_and_matches_eager():
    ids = torch.randint(5, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0

    def masking(input_ids, attention_mask):
        return mask_text(input_ids, mask_token_id=4, vocab_size=50, special_token_ids=[0, 1, 2, 3],
                         attention_mask=attention_mask, probability=0.3)

    torch.manual_seed(7)
    expected = masking(ids, mask)
    torch.manual_seed(7)
    got = compiled(masking)(ids, mask)
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    masked, labels = got
    assert ((labels == -100) | (labels == ids)).all() and (labels != -100).any()
    assert not ((masked >= 0) & (masked < 4)).any()  # random replacements never draw a special token


def test_text_embeddings_trace_into_one_graph():
    embeddings = TextEmbeddings(vocab_size=50, hidden_size=8, max_positions=16, type_vocab_size=2, eps=1e-12)
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(compiled(embeddings)(ids), embeddings(ids))
    with pytest.raises(RuntimeError, match=r"`input_ids` must be in \[0, 50\)"):
        compiled(embeddings)(ids + 50)


# one method per forward family (VLMAE and VQ-MIM run ALBEF's align-fuse losses): dynamo takes 20-40 s a method
# on this CPU, and `python bench/bench_graph_breaks.py` traces all of them
@pytest.mark.slow
@pytest.mark.parametrize("method", ["albef", "vilta", "vl_beit"])
# VL-BEiT's relative position index is an lru_cache of the grid alone, so tracing through the cache is safe
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_pretraining_compiled_matches_eager(method):
    """What `--torch_compile` traces (dynamo, the per-step generator, graph breaks where shapes depend on data)
    gives the eager losses and gradients."""
    torch.manual_seed(0)
    eager = vl_models.get_method(method).pretraining_class(vl_models.get_config(method, "tiny")).train()
    compiled_model = copy.deepcopy(eager)
    batch = make_batch(eager.config)
    torch._dynamo.reset()
    step = torch.compile(compiled_model, backend="eager")
    torch.manual_seed(0)  # dropout draws from the global generator
    expected = eager(**batch, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    got = step(**batch, generator=torch.Generator().manual_seed(0))
    for name in [k for k in expected if k.startswith("loss")]:
        torch.testing.assert_close(got[name], expected[name], msg=name)
    expected.loss.backward()
    got.loss.backward()
    for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, msg=name)


@pytest.mark.slow
def test_global_rng_removes_the_generator_graph_breaks_and_stays_reproducible():
    """What `--torch_compile` runs (`step_generator(..., global_rng=True)`): no explicit generator, so none of the
    breaks dynamo makes at each draw from one, and the step is still a function of the seed."""
    from vl_models.training import step_generator

    torch.manual_seed(0)
    model = vl_models.AlbefForPreTraining(vl_models.get_config("albef", "tiny")).train()
    batch = make_batch(model.config)
    torch._dynamo.reset()
    with_generator = torch._dynamo.explain(model)(**batch, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    without = torch._dynamo.explain(model)(**batch)
    assert without.graph_break_count < with_generator.graph_break_count
    assert not any("Generator" in str(b.reason) for b in without.break_reasons)
    torch._dynamo.reset()
    losses = []
    for run in (copy.deepcopy(model), torch.compile(copy.deepcopy(model), backend="eager")):  # the step moves queues
        step_generator(0, 3, 0, "cpu", global_rng=True)
        losses.append({k: v for k, v in run(**batch).items() if k.startswith("loss")})
    for name in losses[0]:
        torch.testing.assert_close(losses[1][name], losses[0][name], msg=name)
