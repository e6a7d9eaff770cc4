"""Fused Triton nearest-code kernel: tiled scores plus a running argmin, never writing N x K.

Each program owns BLOCK_N rows of ``x``; it walks the codebook in BLOCK_K tiles, accumulates the
[BLOCK_N, BLOCK_K] dot products over D in BLOCK_D slices (float32 accumulator), turns them into
scores ``bias - scale * dot`` and keeps the best score and index per row in registers. Only the N
indices are written. ``AVAILABLE`` is False (with ``UNAVAILABLE_REASON``) when triton is missing or
older than 3.0; callers then use the PyTorch path. Set ``TRITON_INTERPRET=1`` before importing triton
to run the kernel on CPU tensors.
"""

from __future__ import annotations

import torch

MIN_VERSION = (3, 0)

try:
    import triton
    import triton.language as tl

    _version = tuple(int(p) for p in triton.__version__.split(".")[:2] if p.isdigit())
    if _version < MIN_VERSION:
        AVAILABLE, UNAVAILABLE_REASON = False, f"triton {triton.__version__} is older than 3.0"
    else:
        AVAILABLE, UNAVAILABLE_REASON = True, ""
except Exception as err:  # ImportError, or a broken install raising something else
    triton = tl = None
    AVAILABLE, UNAVAILABLE_REASON = False, f"triton cannot be imported ({type(err).__name__}: {err})"


if AVAILABLE:

    @triton.jit
    def _nearest_code_kernel(
        x_ptr,
        c_ptr,
        scale_ptr,
        bias_ptr,
        out_ptr,
        n_rows,
        n_codes,
        dim,
        stride_xn,
        stride_xd,
        stride_ck,
        stride_cd,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        EXACT_TF32: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < n_rows
        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        for k0 in range(0, n_codes, BLOCK_K):
            codes = k0 + tl.arange(0, BLOCK_K)
            code_ok = codes < n_codes
            acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
            for d0 in range(0, dim, BLOCK_D):
                dims = d0 + tl.arange(0, BLOCK_D)
                dim_ok = dims < dim
                xt = tl.load(
                    x_ptr + rows[:, None] * stride_xn + dims[None, :] * stride_xd,
                    mask=row_ok[:, None] & dim_ok[None, :],
                    other=0.0,
                ).to(tl.float32)  # [BLOCK_N, BLOCK_D]
                ct = tl.load(
                    c_ptr + codes[None, :] * stride_ck + dims[:, None] * stride_cd,
                    mask=code_ok[None, :] & dim_ok[:, None],
                    other=0.0,
                ).to(tl.float32)  # [BLOCK_D, BLOCK_K]
                if EXACT_TF32:  # half inputs fit TF32 exactly: tensor cores lose nothing
                    acc = tl.dot(xt, ct, acc, input_precision="tf32")
                else:  # float32 inputs: no TF32 rounding, near ties must match the reference
                    acc = tl.dot(xt, ct, acc, input_precision="ieee")
            scale = tl.load(scale_ptr + codes, mask=code_ok, other=0.0)
            bias = tl.load(bias_ptr + codes, mask=code_ok, other=float("inf"))
            scores = bias[None, :] - scale[None, :] * acc  # [BLOCK_N, BLOCK_K]
            tile_best, tile_idx = tl.min(
                scores, axis=1, return_indices=True, return_indices_tie_break_left=True
            )
            # strict '<': on exact ties the earlier tile (lower index) keeps the row
            better = tile_best < best
            best = tl.where(better, tile_best, best)
            best_idx = tl.where(better, tile_idx + k0, best_idx)
        tl.store(out_ptr + rows, best_idx.to(tl.int64), mask=row_ok)


def _block_d(dim: int) -> int:
    # tl.dot needs every block dim >= 16; 64 bounds the register tile for large D
    return min(64, max(16, triton.next_power_of_2(dim)))


def nearest_code_triton(
    x: torch.Tensor, codebook: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Launch the kernel. x [N, D], codebook [K, D], scale and bias float32 [K]; returns LongTensor [N]."""
    if not AVAILABLE:
        raise RuntimeError(f"the Triton kernel is unavailable: {UNAVAILABLE_REASON}")
    # fp16 and bf16 values are exact in TF32 (10 mantissa bits) and their products exact in the
    # float32 accumulator, so half inputs may use TF32 tensor cores; float32 inputs may not.
    halves = (torch.float16, torch.bfloat16)
    exact_tf32 = x.dtype in halves and codebook.dtype in halves
    scale, bias = scale.float().contiguous(), bias.float().contiguous()
    n_rows, dim = x.shape
    out = torch.empty(n_rows, dtype=torch.long, device=x.device)
    if n_rows == 0:
        return out
    block_n, block_k = 64, 64
    grid = (triton.cdiv(n_rows, block_n),)
    _nearest_code_kernel[grid](
        x,
        codebook,
        scale,
        bias,
        out,
        n_rows,
        codebook.shape[0],
        dim,
        x.stride(0),
        x.stride(1),
        codebook.stride(0),
        codebook.stride(1),
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_D=_block_d(dim),
        EXACT_TF32=exact_tf32,
    )
    return out
