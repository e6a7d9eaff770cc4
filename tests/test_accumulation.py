"""Gradient accumulation: momentum teachers and codebooks change once per optimizer update, so k micro-batches of
B/k rows give the teacher and codebook of one batch of B rows (`vl_models.accumulating`, `train_updates`)."""

from __future__ import annotations

import copy
from argparse import Namespace
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from conftest import make_batch
from vl_models import accumulating, get_config
from vl_models.layers.codebook import VectorQuantizer
from vl_models.models.vq_mim import VqMimForPreTraining
from vl_models.training import train_updates

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def codebook_state(vq: VectorQuantizer) -> dict:
    return {k: v.clone() for k, v in vq.state_dict().items()}


def assert_codebooks_match(a: dict, b: dict) -> None:
    assert torch.equal(a["steps_since_used"], b["steps_since_used"])  # counts per update, exact
    for key in ("cluster_size", "embed_sum", "codebook"):  # sums of the halves: float32 rounding apart
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("cosine", [False, True])
def test_micro_batches_update_the_codebook_once_as_their_whole_batch(cosine):
    torch.manual_seed(0)
    whole = VectorQuantizer(8, 4, decay=0.8, cosine=cosine, dead_code_after=10).train()
    halves, per_forward = copy.deepcopy(whole), copy.deepcopy(whole)
    for update in range(3):
        z = torch.randn(2, 12, 4, generator=gen(update))  # [B, N, D]
        whole(z)
        before = codebook_state(halves)
        with accumulating(halves, sync=False):
            halves(z[:1])
        assert all(torch.equal(v, before[k]) for k, v in halves.state_dict().items())  # held until the update ends
        with accumulating(halves, sync=True):
            halves(z[1:])
        per_forward(z[:1])  # outside `accumulating`: every forward is an update
        per_forward(z[1:])
    assert_codebooks_match(codebook_state(halves), codebook_state(whole))
    assert not torch.allclose(per_forward.cluster_size, whole.cluster_size, rtol=1e-3)  # decay 0.8**2 per update


def test_dead_codes_count_updates_and_restart_from_the_last_micro_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(6, 3, decay=0.9, dead_code_after=2).train()
    with torch.no_grad():  # two codes far from every input: never chosen
        vq.codebook[:2] = 1e3
        vq.embed_sum[:2] = 1e3 * vq.cluster_size[:2, None]
    for update in range(2):
        parts = [torch.randn(10, 3, generator=gen(10 * update + i)) for i in range(2)]
        for i, z in enumerate(parts):
            with accumulating(vq, sync=i == 1):
                out = vq(z, generator=gen(update))
        if update == 0:  # one update, not two micro-batches
            assert vq.steps_since_used[:2].eq(1).all() and vq.codebook[:2].min() > 100
    assert out.num_restarted == 0  # restarts happen when the update ends, not in a forward
    assert vq.steps_since_used[:2].eq(0).all()
    assert (vq.codebook[:2, None] == parts[1][None]).all(-1).any(-1).all()  # copies of the last micro-batch's


def tiny_vq_mim(**overrides) -> VqMimForPreTraining:
    """VQ-MIM tiny without dropout, k-means or restarts (each would depend on how the batch is split); a small
    momentum so that every EMA step shows; the teacher moved away from the student."""
    torch.manual_seed(0)
    config = get_config("vq_mim", "tiny", momentum=0.5, kmeans_init=False, dead_code_after=None,
                        text_config=NO_DROPOUT, vision_config=NO_DROPOUT, **overrides)
    model = VqMimForPreTraining(config)
    with torch.no_grad():
        for p in model.momentum_model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen(1)))
    return model


def teacher(model) -> dict:
    return {k: v.detach().clone() for k, v in model.momentum_model.state_dict().items()}


def test_teacher_steps_on_the_first_micro_batch_after_the_optimizer_step():
    """The student changes between updates (a stand-in optimizer step): every micro-batch of an update sees the
    teacher one EMA step from the student of that update, bit for bit as one forward of the whole batch does."""
    whole = tiny_vq_mim()
    halves, per_forward = copy.deepcopy(whole), copy.deepcopy(whole)
    batch = make_batch(whole.config, batch_size=4)
    parts = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    for model in (whole, halves, per_forward):
        model.train()
    for update in range(2):
        whole(**batch, generator=gen(update))
        seen = []
        for i, part in enumerate(parts):
            with accumulating(halves, sync=i == 1):
                halves(**part, generator=gen(10 * update + i))
            seen.append(teacher(halves))
            per_forward(**part, generator=gen(10 * update + i))
        assert all(torch.equal(v, seen[0][k]) for k, v in seen[1].items())  # one teacher for the whole update
        for model in (whole, halves, per_forward):
            with torch.no_grad():
                for p in model.vq_mim.parameters():
                    p.add_(0.01 * (update + 1))
    expected = teacher(whole)
    assert all(torch.equal(v, expected[k]) for k, v in teacher(halves).items())
    assert not all(torch.equal(v, expected[k]) for k, v in teacher(per_forward).items())  # momentum 0.5**2


@pytest.fixture
def fresh_accelerate_state():
    """Each run below builds an Accelerator with its own gradient_accumulation_steps."""
    AcceleratorState._reset_state()
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state()
    GradientState._reset_state()


def train(model, rows: list[dict], batch_size: int, accumulation: int) -> VqMimForPreTraining:
    """Two updates of `train_updates` (examples/pretrain.py's loop) with the student held still (lr 0): ITC and
    ITM over half batches have other gradients than over the whole batch, the teacher's EMA must not."""
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, lambda step: 1.0)
    args = Namespace(gradient_accumulation_steps=accumulation, max_consecutive_skips=10, num_train_epochs=1,
                     logging_steps=100, checkpointing_steps=0, eval_steps=0, max_grad_norm=1.0,
                     checkpoints_total_limit=1)

    def forward(batch, step, micro_step):
        return model(**batch, generator=gen(micro_step)), {}

    step, _ = train_updates(accelerator, args, model=model, train_dl=loader,
                            collator=SimpleNamespace(set_epoch=lambda epoch: None), optimizer=optimizer,
                            scheduler=scheduler, step=0, total=2, per_epoch=2, checkpoint_dir=None,
                            evaluate=lambda step: {}, forward=forward, rows=lambda batch: len(batch["input_ids"]),
                            desc="test")
    assert step == 2
    return accelerator.unwrap_model(model)


def test_accumulation_2_with_half_batches_gives_the_teacher_and_codebook_of_accumulation_1(fresh_accelerate_state):
    start = tiny_vq_mim()
    batch = make_batch(start.config, batch_size=16)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(16)]
    whole = train(copy.deepcopy(start), rows, batch_size=8, accumulation=1)
    halves = train(copy.deepcopy(start), rows, batch_size=4, accumulation=2)
    expected, got = teacher(whole), teacher(halves)
    assert not all(torch.equal(v, teacher(start)[k]) for k, v in expected.items())  # two EMA steps happened
    assert all(torch.equal(v, expected[k]) for k, v in got.items())  # same steps from the same student: exact
    codebooks = [m.mim_head.target.quantizer for m in (start, whole, halves)]
    assert not torch.equal(codebooks[1].cluster_size, codebooks[0].cluster_size)
    assert_codebooks_match(codebook_state(codebooks[2]), codebook_state(codebooks[1]))
