"""VectorQuantizer: EMA and gradient updates against hand-written references, init, restarts, I/O."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vl_models.layers.codebook import QuantizerOutput, VectorQuantizer


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def reference_ema_step(codebook, cluster_size, embed_sum, z, decay, eps, cosine):
    """One VQ-VAE EMA step written out with a one-hot matrix (fine at test sizes)."""
    if cosine:
        z = F.normalize(z, dim=-1)
    # exact float64 distances, not cdist's float32 matmul path (its rounding depends on the CPU's kernels); the
    # winner must be clear, so the quantizer's float32 choice has to agree with it on any CPU
    d = (z.double()[:, None] - codebook.double()[None]).pow(2).sum(-1)  # [N, K]
    two = d.topk(2, dim=-1, largest=False).values
    assert (two[:, 1] - two[:, 0] > 1e-4 * (1 + two[:, 1])).all(), "test data with a near tie"
    idx = d.argmin(-1)
    onehot = F.one_hot(idx, codebook.shape[0]).float()  # [N, K]
    size = decay * cluster_size + (1 - decay) * onehot.sum(0)
    embed_sum = decay * embed_sum + (1 - decay) * onehot.T @ z
    n = size.sum()
    smoothed = (size + eps) / (n + codebook.shape[0] * eps) * n
    new = embed_sum / smoothed[:, None]
    if cosine:
        new = F.normalize(new, dim=-1)
    return idx, size, embed_sum, new


@pytest.mark.parametrize("cosine", [False, True])
def test_ema_step_matches_reference(cosine):
    torch.manual_seed(0)
    vq = VectorQuantizer(6, 3, decay=0.9, cosine=cosine, commitment_weight=0.5)
    z = rand(2, 20, 3, seed=1)
    before = state(vq)
    out = vq(z)
    idx, size, embed_sum, new = reference_ema_step(
        before["codebook"], before["cluster_size"], before["embed_sum"], z.reshape(-1, 3), 0.9, 1e-5, cosine
    )
    assert isinstance(out, QuantizerOutput)
    assert torch.equal(out.indices, idx.view(2, 20))
    torch.testing.assert_close(vq.cluster_size, size)
    torch.testing.assert_close(vq.embed_sum, embed_sum)
    torch.testing.assert_close(vq.codebook, new)
    zn = F.normalize(z, dim=-1) if cosine else z
    q = before["codebook"][idx].view(2, 20, 3)  # this step's output uses the codes before the update
    torch.testing.assert_close(out.quantized, q)
    torch.testing.assert_close(out.loss, 0.5 * F.mse_loss(zn, q))  # EMA mode: commitment only
    assert list(vq.parameters()) == []


def test_gradient_mode_codebook_and_straight_through():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, decay=None, commitment_weight=0.25)
    assert isinstance(vq.codebook, torch.nn.Parameter)
    z = rand(30, 4, seed=2).requires_grad_(True)
    out = vq(z)
    # straight-through: d quantized / d z is the identity
    upstream = rand(30, 4, seed=3)
    (gz,) = torch.autograd.grad(out.quantized, z, upstream, retain_graph=True)
    assert torch.equal(gz, upstream)
    out.loss.backward()
    c = vq.codebook.detach().clone().requires_grad_(True)
    q = c[out.indices]
    F.mse_loss(q, z.detach()).backward()  # the commitment term has no codebook gradient
    torch.testing.assert_close(vq.codebook.grad, c.grad)
    unused = torch.bincount(out.indices, minlength=8) == 0
    assert vq.codebook.grad[~unused].abs().sum(-1).gt(0).all()
    assert vq.codebook.grad[unused].eq(0).all()
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z - q).detach() / z.numel())


@pytest.mark.parametrize("decay", [0.8, None])
def test_cosine_outputs_unit_norm(decay):
    torch.manual_seed(0)
    vq = VectorQuantizer(10, 5, decay=decay, cosine=True)
    for step in range(3):
        out = vq(rand(4, 7, 5, seed=step) * 3)
    torch.testing.assert_close(out.quantized.norm(dim=-1), torch.ones(4, 7))
    torch.testing.assert_close(vq.codes().norm(dim=-1), torch.ones(10))
    if decay is not None:  # the EMA renormalises the stored codes
        torch.testing.assert_close(vq.codebook.norm(dim=-1), torch.ones(10))


def clustered(n_per=40, k=8, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 5 + 3
    return (centres.repeat_interleave(n_per, 0) + 0.1 * torch.randn(k * n_per, d, generator=g))[
        torch.randperm(k * n_per, generator=g)
    ]


def quantization_error(vq, z):
    vq.eval()
    return F.mse_loss(vq(z).quantized, z).item()


def test_kmeans_init_lowers_error():
    z = clustered()  # 8 tight clusters; 32 codes so k-means from random data points covers them all
    torch.manual_seed(0)
    random_init = VectorQuantizer(32, 4, decay=0.99)
    torch.manual_seed(0)
    km = VectorQuantizer(32, 4, decay=0.99, kmeans_init=True, kmeans_iters=10)
    assert not km.initted
    km(z, generator=torch.Generator().manual_seed(1))
    random_init(z)
    assert km.initted
    err_km, err_rand = quantization_error(km, z), quantization_error(random_init, z)
    assert err_km < 0.05 * err_rand
    assert err_km < 0.05  # at the noise floor (0.01 per coordinate), no merged clusters
    # the EMA weight starts at the k-means cluster sizes
    assert km.cluster_size.sum() >= len(z)
    # no second initialisation: the next step is exactly one EMA step
    km.train()
    before, z2 = state(km), clustered(seed=5)
    _, size, embed_sum, new = reference_ema_step(
        before["codebook"], before["cluster_size"], before["embed_sum"], z2, 0.99, 1e-5, False
    )
    km(z2, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(km.codebook, new)
    torch.testing.assert_close(km.cluster_size, size)


def test_dead_code_restart():
    vq = VectorQuantizer(4, 2, decay=0.99, dead_code_after=2)
    twin = VectorQuantizer(4, 2, decay=0.99)  # the same without restarts
    codes = torch.tensor([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0], [-50.0, 60.0]])
    for module in (vq, twin):
        module.codebook.copy_(codes)
        module.embed_sum.copy_(codes)
    z = rand(16, 2, seed=3) * 0.3 + torch.tensor([0.5, 0.5])  # only codes 0 and 1 are ever chosen
    twin(z)
    twin(z)
    out = vq(z, generator=torch.Generator().manual_seed(0))
    assert out.num_restarted.item() == 0
    assert vq.steps_since_used.tolist() == [0, 0, 1, 1]
    out = vq(z, generator=torch.Generator().manual_seed(0))
    assert out.num_restarted.item() == 2
    assert vq.steps_since_used.tolist() == [0, 0, 0, 0]
    assert torch.equal(vq.codebook[:2], twin.codebook[:2])  # live codes only moved by the EMA
    for row in vq.codebook[2:]:  # each revived code is a vector of the batch
        assert (z == row).all(-1).any()
    assert torch.equal(vq.embed_sum[2:], vq.codebook[2:])
    assert vq.cluster_size[2:].tolist() == [1.0, 1.0]
    assert vq(z).usage.item() > 0.5  # the revived codes are used again


def test_restart_in_gradient_mode_keeps_backward_valid():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3, decay=None, cosine=True, dead_code_after=1)
    z = rand(5, 3, seed=4).requires_grad_(True)  # 5 vectors: at least 11 codes die every step
    out = vq(z, generator=torch.Generator().manual_seed(0))
    assert out.num_restarted.item() >= 11
    (out.loss + out.quantized.sum()).backward()  # the restart did not invalidate the graph
    assert vq.codebook.grad is not None and torch.isfinite(vq.codebook.grad).all()
    torch.testing.assert_close(vq.codes().norm(dim=-1), torch.ones(16))


def test_eval_leaves_every_buffer_untouched():
    vq = VectorQuantizer(8, 4, kmeans_init=True, dead_code_after=1).eval()
    before = state(vq)
    for seed in range(3):
        vq(rand(10, 4, seed=seed))
    after = state(vq)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert not vq.initted


def test_perplexity_and_usage_by_hand():
    vq = VectorQuantizer(4, 1, decay=None).eval()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0], [1.0], [2.0], [3.0]]))
    out = vq(torch.tensor([[0.1], [-0.2], [0.9], [1.2]]))  # codes 0, 0, 1, 1
    assert out.indices.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(out.perplexity, torch.tensor(2.0))
    torch.testing.assert_close(out.usage, torch.tensor(0.5))
    out = vq(torch.tensor([[0.0], [0.0], [0.0], [1.0], [2.0], [3.0]]))  # p = 1/2, 1/6, 1/6, 1/6
    p = torch.tensor([0.5, 1 / 6, 1 / 6, 1 / 6])
    torch.testing.assert_close(out.perplexity, torch.exp(-(p * p.log()).sum()))
    assert out.usage.item() == 1.0
    torch.testing.assert_close(out.loss, F.mse_loss(out.quantized, out.quantized))  # exact codes: 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_codes": 1}, "`num_codes`"),
        ({"dim": 0}, "`dim`"),
        ({"decay": 1.0}, "`decay`"),
        ({"decay": 0.0}, "`decay`"),
        ({"commitment_weight": -1.0}, "`commitment_weight`"),
        ({"kmeans_iters": 0}, "`kmeans_iters`"),
        ({"dead_code_after": 0}, "`dead_code_after`"),
        ({"eps": 0.0}, "`eps`"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"num_codes": 4, "dim": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(args.pop("num_codes"), args.pop("dim"), **args)


@pytest.mark.parametrize(
    "z", [torch.zeros(3, 5), torch.zeros(3, 4, dtype=torch.long), torch.zeros(0, 4), 1.0]
)
def test_bad_input(z):
    with pytest.raises(ValueError, match="`z`"):
        VectorQuantizer(4, 4)(z)


@pytest.mark.parametrize("decay", [0.9, None])
def test_state_dict_round_trip_safetensors(tmp_path, decay):
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3, decay=decay, kmeans_init=True, dead_code_after=1)
    for seed in range(3):
        vq(rand(12, 3, seed=seed), generator=torch.Generator().manual_seed(seed))
    save_file(vq.state_dict(), tmp_path / "vq.safetensors")
    torch.manual_seed(1)
    fresh = VectorQuantizer(8, 3, decay=decay, kmeans_init=True, dead_code_after=1)
    fresh.load_state_dict(load_file(tmp_path / "vq.safetensors"))
    saved = state(vq)
    assert set(saved) >= {"codebook", "steps_since_used", "initted"}
    for key, value in state(fresh).items():
        assert value.dtype == saved[key].dtype and torch.equal(value, saved[key]), key


def test_reset_parameters_skips_loaded_tensors():
    vq = VectorQuantizer(5, 3, kmeans_init=True)
    loaded = torch.arange(15.0).view(5, 3)
    with torch.no_grad():
        vq.codebook.copy_(loaded)
        vq.cluster_size.fill_(7.0)
        vq.initted.fill_(True)
    vq.codebook._is_hf_initialized = True  # what from_pretrained sets on tensors it loaded
    vq.reset_parameters()
    assert torch.equal(vq.codebook, loaded)
    assert torch.equal(vq.embed_sum, loaded)  # missing EMA state restarts from the loaded codes
    assert torch.equal(vq.cluster_size, torch.ones(5))
    assert not vq.initted


DIST_WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    import torch.distributed as dist
    from vl_models.layers.codebook import VectorQuantizer

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    z = torch.randn(2, 3, 24, 4, generator=torch.Generator().manual_seed(0))  # [step, rank-major, ..]
    saved = {}
    for name, kwargs in {"ema": {}, "restart": {"kmeans_init": True, "dead_code_after": 1}}.items():
        torch.manual_seed(0)  # same initial codes on both ranks
        vq = VectorQuantizer(16, 4, decay=0.9, **kwargs)
        g = torch.Generator().manual_seed(100 + rank)  # different on purpose: rank 0 must win
        for step in range(2):
            rows = z[step].view(2, 36, 4)[rank]
            out = vq(rows, generator=g)
        saved[name] = {k: v.clone() for k, v in vq.state_dict().items()}
        saved[name + "_restarted"] = out.num_restarted
    torch.save(saved, os.path.join(sys.argv[1], f"rank{rank}.pt"))
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)
    """
)


@pytest.mark.slow
def test_distributed_statistics_and_restarts(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(DIST_WORKER)
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(worker), str(tmp_path)], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["restart_restarted"] > 0  # the restart path really ran
    for name in ("ema", "restart"):  # replicas stay identical
        for key, value in ranks[0][name].items():
            assert torch.equal(value, ranks[1][name][key]), (name, key)
    # the all-reduced EMA equals one process seeing the whole global batch
    torch.manual_seed(0)
    single = VectorQuantizer(16, 4, decay=0.9)
    z = torch.randn(2, 3, 24, 4, generator=torch.Generator().manual_seed(0))
    for step in range(2):
        single(z[step].reshape(-1, 4))
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ranks[0]["ema"][key], value)
