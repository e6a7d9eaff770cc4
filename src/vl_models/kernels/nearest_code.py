"""Nearest-code lookup for vector quantizers without materialising the N x K distance matrix.

For each row of ``x`` [N, D] find the closest row of ``codebook`` [K, D]. Every code gets a score

    score[n, k] = bias[k] - scale[k] * <x[n], codebook[k]>

whose argmin is the answer: Euclidean uses ``bias = ||c||^2, scale = 2`` (``||x||^2`` is the same for
every code of a row, so it is dropped); cosine uses ``bias = 0, scale = 1 / ||c||`` (``||x||`` only
scales a row, so ``x`` needs no normalising). On CUDA a fused Triton kernel keeps a running argmin in
registers; elsewhere rows are processed in chunks so at most ``chunk * K`` scores exist at once.
Scores are always computed in float32, whatever the input dtype.
"""

from __future__ import annotations

import importlib
import warnings
from functools import cache

import torch
import torch.nn.functional as F

from vl_models.utils import check_tensor, describe

# Largest number of float32 scores one chunk may hold (1 Mi = 4 MiB, rows = budget / K: 128 at K = 8192).
# A chunk's scores are written by the GEMM and read back by the min, so it should stay in cache; measured
# on a 2-core EPYC (1 MiB L2 per core, 8 MiB L3), N=1e4, K=8192, D=32: 64-128 rows were fastest with 1 and
# 2 threads, 16 rows paid per-chunk overhead, 512 rows spilled to memory (docs/kernels.md).
SCORE_BUDGET = 1 << 20
# The argmin is taken in two steps: the minimum of each group of GROUP consecutive codes, then the
# argmin inside the winning group. `argmin` is several times slower than `amin` on CPU, and this keeps
# "first index wins" on exact ties.
GROUP = 128

_triton_failed = False


@cache
def _triton():
    # imported on first CUDA use only: CPU users never pay for importing triton
    return importlib.import_module("vl_models.kernels.triton_nearest_code")


def _check_inputs(x, codebook) -> None:
    check_tensor("x", x, ndim=2, dtype="float")
    check_tensor("codebook", codebook, ndim=2, dtype="float")
    if codebook.shape[0] == 0:
        raise ValueError(f"`codebook` must hold at least one code, got {describe(codebook)}")
    if codebook.shape[1] != x.shape[1]:
        raise ValueError(
            f"`codebook` must have the same last dimension as `x` ({x.shape[1]}), got {describe(codebook)}"
        )
    if codebook.device != x.device:
        raise ValueError(f"`codebook` must be on the device of `x` ({x.device}), got {codebook.device}")


def rows_per_chunk(num_codes: int, chunk_size: int | None = None) -> int:
    """Rows of ``x`` scored at once: ``chunk_size`` if given, else as many as fit ``SCORE_BUDGET``."""
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive int or None, got {describe(chunk_size)}")
        return chunk_size
    padded = -(-num_codes // GROUP) * GROUP if num_codes > GROUP else num_codes
    return max(1, SCORE_BUDGET // padded)


def code_terms(codebook: torch.Tensor, cosine: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code ``(scale, bias)`` in float32, each [K]."""
    c = codebook.float()
    if cosine:
        scale = 1.0 / c.norm(dim=-1).clamp_min(1e-12)
        return scale, torch.zeros_like(scale)
    return torch.full_like(c[:, 0], 2.0), (c * c).sum(-1)


def _grouped_argmin(scores: torch.Tensor, group: int) -> torch.Tensor:
    """argmin over dim 0 of codes-major [Kp, n] scores (Kp a multiple of ``group``); first index on ties."""
    k, n = scores.shape
    grouped = scores.view(k // group, group, n)  # [Kp/G, G, n]
    best_group = grouped.amin(1).argmin(0)  # [n]
    inside = grouped[best_group, :, torch.arange(n, device=scores.device)].argmin(-1)  # [n, G] -> [n]
    return best_group * group + inside


@torch.no_grad()
def _nearest_code_torch(x: torch.Tensor, codebook: torch.Tensor, cosine: bool, chunk_size: int | None):
    num_codes = codebook.shape[0]
    scale, bias = code_terms(codebook, cosine)
    weight = codebook.float() * scale[:, None]  # [K, D], the 2x of Euclidean is exact in float
    group = GROUP if num_codes > GROUP else num_codes
    pad = -num_codes % group
    if pad:
        # padded codes score +inf (bias inf, weight 0) so they never win
        weight = F.pad(weight, (0, 0, 0, pad))
        bias = F.pad(bias, (0, pad), value=float("inf"))
    bias = bias[:, None]  # [Kp, 1]
    # Scores are codes-major, [Kp, n] = weight [Kp, D] @ x_chunk^T [D, n]: with the long codebook as the
    # GEMM's M dimension BLAS runs several times faster than [n, D] @ [D, Kp] on skinny D (measured 3-6x at
    # D = 32), and the min over codes becomes a contiguous, vectorised reduction across rows.
    x_t = x.float().t()  # [D, N], a view: each chunk is copied contiguous below
    rows = rows_per_chunk(num_codes, chunk_size)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    scores = torch.empty(weight.shape[0] * min(rows, x.shape[0]), device=x.device)  # reused buffer
    for start in range(0, x.shape[0], rows):
        xs = x_t[:, start : start + rows].contiguous()  # [D, n]
        block = scores[: weight.shape[0] * xs.shape[1]].view(weight.shape[0], xs.shape[1])  # [Kp, n]
        torch.addmm(bias, weight, xs, alpha=-1.0, out=block)
        out[start : start + xs.shape[1]] = _grouped_argmin(block, group)
    return out


@torch.no_grad()
def _nearest_code_triton(x: torch.Tensor, codebook: torch.Tensor, cosine: bool = False) -> torch.Tensor:
    """Always the Triton kernel (tests run it on CPU tensors under ``TRITON_INTERPRET=1``)."""
    _check_inputs(x, codebook)
    kernel = _triton()
    if not kernel.AVAILABLE:
        raise RuntimeError(f"the Triton kernel is unavailable: {kernel.UNAVAILABLE_REASON}")
    scale, bias = code_terms(codebook, cosine)
    return kernel.nearest_code_triton(x, codebook, scale, bias)


def nearest_code(
    x: torch.Tensor, codebook: torch.Tensor, *, cosine: bool = False, chunk_size: int | None = None
) -> torch.Tensor:
    """Index of the nearest code for every row: LongTensor [N].

    Args:
        x: [N, D] float vectors (any float dtype; scores are computed in float32).
        codebook: [K, D] float codes on the same device.
        cosine: pick the largest cosine similarity instead of the smallest Euclidean distance.
        chunk_size: rows scored at once on the PyTorch path (default: ``SCORE_BUDGET // K``). The
            Triton path on CUDA never holds more than one [BLOCK_N, BLOCK_K] tile and ignores it.

    Equals ``torch.cdist(x, codebook).argmin(-1)`` (on L2-normalised inputs when ``cosine``) except
    where two codes are (nearly) equally close; exact ties go to the lowest index. No autograd graph.
    """
    global _triton_failed
    _check_inputs(x, codebook)
    rows_per_chunk(codebook.shape[0], chunk_size)  # validate even where Triton ignores it
    if x.is_cuda and not _triton_failed and _triton().AVAILABLE:
        try:
            return _nearest_code_triton(x, codebook, cosine)
        except Exception as err:  # an untested triton/GPU combination must not stop training
            _triton_failed = True
            warnings.warn(
                f"Triton nearest_code failed ({type(err).__name__}: {err}); using chunked PyTorch from now on",
                RuntimeWarning,
                stacklevel=2,
            )
    return _nearest_code_torch(x, codebook, cosine, chunk_size)


@torch.no_grad()
def nearest_code_reference(x: torch.Tensor, codebook: torch.Tensor, *, cosine: bool = False) -> torch.Tensor:
    """The plain version: full ``cdist`` then ``argmin`` (holds all N x K distances)."""
    _check_inputs(x, codebook)
    x, codebook = x.float(), codebook.float()
    if cosine:
        x, codebook = F.normalize(x, dim=-1), F.normalize(codebook, dim=-1)
    return torch.cdist(x, codebook).argmin(-1)
