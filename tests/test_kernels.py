"""nearest_code against a float64 brute-force reference: dtypes, cosine, chunking, ties, memory, Triton."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vl_models.kernels import nearest_code, nearest_code_reference
from vl_models.kernels.memory import peak_extra_bytes
from vl_models.kernels.nearest_code import GROUP, SCORE_BUDGET, rows_per_chunk

SRC = Path(__file__).parents[1] / "src"


def sq_dists64(x: torch.Tensor, codebook: torch.Tensor, cosine: bool) -> torch.Tensor:
    """Squared distances in float64 from the exact values the kernel sees, [N, K]."""
    x, c = x.double(), codebook.double()
    if cosine:
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        c = c / c.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)


def assert_nearest(x, codebook, idx, cosine=False, rtol=1e-5):
    """idx is optimal up to float32 rounding, and equals the argmin wherever the winner is clear."""
    assert idx.dtype == torch.long and idx.shape == (x.shape[0],)
    d = sq_dists64(x, codebook, cosine)
    tol = rtol * (1 + d.max())
    best = d.min(-1).values
    chosen = d.gather(1, idx[:, None]).squeeze(1)
    assert (chosen <= best + tol).all(), (chosen - best).max()
    if codebook.shape[0] > 1:
        two = d.topk(2, dim=-1, largest=False).values
        clear = two[:, 1] - two[:, 0] > 2 * tol
        assert torch.equal(idx[clear], d.argmin(-1)[clear])


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cosine", [False, True])
def test_matches_reference(dtype, cosine):
    x, c = rand(517, 24, seed=1, dtype=dtype), rand(300, 24, seed=2, dtype=dtype)
    idx = nearest_code(x, c, cosine=cosine)
    assert_nearest(x, c, idx, cosine)
    ref = nearest_code_reference(x, c, cosine=cosine)
    assert (idx == ref).float().mean() > 0.99  # near ties are rare in random data


def test_mixed_dtypes_and_noncontiguous():
    x = rand(64, 40, seed=3).t().contiguous().t()  # column-major [64, 40]
    c = rand(90, 40, seed=4, dtype=torch.bfloat16)
    assert_nearest(x, c, nearest_code(x, c))


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_chunking(chunk_size):
    x, c = rand(203, 16, seed=5), rand(130, 16, seed=6)  # N not a multiple of any chunk, K of GROUP
    idx = nearest_code(x, c, chunk_size=chunk_size)
    assert_nearest(x, c, idx)


@pytest.mark.parametrize(("n", "k", "d"), [(50, 2, 1), (1, 2, 8), (33, 1, 3), (40, 65, 1), (9, GROUP, 2)])
def test_small_shapes(n, k, d):
    x, c = rand(n, d, seed=7), rand(k, d, seed=8) * 3
    idx = nearest_code(x, c)
    if k == 1:
        assert torch.equal(idx, torch.zeros(n, dtype=torch.long))
    else:
        assert_nearest(x, c, idx)


def test_empty_x():
    assert nearest_code(torch.empty(0, 4), rand(3, 4)).shape == (0,)


def test_exact_ties_go_to_lowest_index():
    # small integers: every score is exact in float32, so ties are real ties
    g = torch.Generator().manual_seed(9)
    base = torch.randint(-3, 4, (20, 5), generator=g).float()
    c = torch.cat([base, base[:7], base])  # codes 20..26 and 27..46 duplicate 0..19
    x = torch.randint(-3, 4, (300, 5), generator=g).float()
    exact = ((x[:, None].long() - c[None].long()) ** 2).sum(-1)  # [N, K] integers
    expected = exact.argmin(-1)  # torch.argmin returns the first minimum
    assert (exact == exact.min(-1, keepdim=True).values).sum(-1).gt(1).all()  # every row is a tie
    assert torch.equal(nearest_code(x, c), expected)
    assert torch.equal(nearest_code(x, c, chunk_size=3), expected)
    # x exactly halfway between two codes
    two = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    assert nearest_code(torch.tensor([[1.0, 0.0], [1.0, 5.0]]), two).tolist() == [0, 0]


def test_cosine_is_scale_invariant_and_handles_zero():
    x, c = rand(100, 8, seed=10), rand(50, 8, seed=11)
    idx = nearest_code(x, c, cosine=True)
    scales = torch.rand(100, 1, generator=torch.Generator().manual_seed(12)) * 10 + 0.1
    assert torch.equal(nearest_code(x * scales, c * 4.0, cosine=True), idx)
    # a zero vector scores exactly 0 against every code: an exact tie, so the lowest index
    x[0] = 0
    assert nearest_code(x, c, cosine=True)[0] == 0


def test_no_autograd_graph():
    x = rand(10, 4, seed=13).requires_grad_(True)
    c = rand(6, 4, seed=14).requires_grad_(True)
    idx = nearest_code(x, c)
    assert idx.grad_fn is None and not idx.requires_grad


def test_chunk_size_math():
    assert rows_per_chunk(8192) * 8192 <= SCORE_BUDGET
    assert rows_per_chunk(8192) == SCORE_BUDGET // 8192
    assert rows_per_chunk(1000) * 1024 <= SCORE_BUDGET  # K is padded to a multiple of GROUP
    assert rows_per_chunk(10 * SCORE_BUDGET) == 1
    assert rows_per_chunk(8192, 5) == 5


def test_peak_memory_is_one_chunk():
    n, k, d, chunk = 4096, 1024, 16, 64
    x, c = rand(n, d, seed=15), rand(k, d, seed=16)
    full = n * k * 4
    reference_peak = peak_extra_bytes(lambda: nearest_code_reference(x, c))
    assert reference_peak >= full  # the measurement sees the N x K matrix when there is one
    peak = peak_extra_bytes(lambda: nearest_code(x, c, chunk_size=chunk))
    # one [chunk, K] score block plus O(N + K*D) bookkeeping; far below N x K
    assert chunk * k * 4 <= peak < chunk * k * 4 + 8 * n + 3 * k * d * 4 + 64 * 1024
    assert peak < full / 16


@pytest.mark.parametrize(
    ("x", "c", "kwargs", "match"),
    [
        (torch.zeros(4), torch.zeros(3, 4), {}, "`x`"),
        (torch.zeros(2, 4, dtype=torch.long), torch.zeros(3, 4), {}, "`x`"),
        (torch.zeros(2, 4), torch.zeros(3, 5), {}, "`codebook`"),
        (torch.zeros(2, 4), torch.zeros(0, 4), {}, "`codebook`"),
        (torch.zeros(2, 4), torch.zeros(3, 4, dtype=torch.int32), {}, "`codebook`"),
        (torch.zeros(2, 4), torch.zeros(3, 4), {"chunk_size": 0}, "`chunk_size`"),
        (torch.zeros(2, 4), "codes", {}, "`codebook`"),
    ],
)
def test_bad_inputs(x, c, kwargs, match):
    with pytest.raises(ValueError, match=match):
        nearest_code(x, c, **kwargs)
    if not kwargs:
        with pytest.raises(ValueError, match=match):
            nearest_code_reference(x, c)


TRITON_SCRIPT = textwrap.dedent(
    """
    import torch
    from vl_models.kernels import triton_nearest_code as tk
    if not tk.AVAILABLE:
        print("SKIP", tk.UNAVAILABLE_REASON)
        raise SystemExit(0)
    from vl_models.kernels.nearest_code import _nearest_code_triton
    from test_kernels import assert_nearest, rand

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for cosine in (False, True):
            x, c = rand(150, 24, seed=1, dtype=dtype), rand(140, 24, seed=2, dtype=dtype)
            assert_nearest(x, c, _nearest_code_triton(x, c, cosine), cosine)
    # D spanning several BLOCK_D slices, D=1, K=2, strided x
    x, c = rand(70, 150, seed=3), rand(65, 150, seed=4)
    assert_nearest(x, c, _nearest_code_triton(x, c))
    x, c = rand(65, 1, seed=5), rand(2, 1, seed=6)
    assert_nearest(x, c, _nearest_code_triton(x, c))
    x = rand(40, 64, seed=7)[:, ::2]
    assert_nearest(x, rand(30, 32, seed=8), _nearest_code_triton(x, rand(30, 32, seed=8)))
    # exact ties across and inside BLOCK_K tiles go to the lowest index
    g = torch.Generator().manual_seed(9)
    base = torch.randint(-3, 4, (70, 5), generator=g).float()
    c = torch.cat([base, base])
    x = torch.randint(-3, 4, (90, 5), generator=g).float()
    exact = ((x[:, None] - c[None]) ** 2).sum(-1)
    assert torch.equal(_nearest_code_triton(x, c), exact.argmin(-1))
    print("OK")
    """
)


@pytest.mark.slow  # a fresh interpreter importing torch and triton: several seconds
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernel_under_interpreter():
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",  # must be set before triton is imported, hence a subprocess
        "PYTHONPATH": os.pathsep.join(
            [str(SRC), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if proc.stdout.strip().startswith("SKIP"):
        pytest.skip(f"triton present but unusable: {proc.stdout.strip()}")
    assert proc.stdout.strip().endswith("OK")
