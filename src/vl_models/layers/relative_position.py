"""BEiT / VLMo relative position bias for image tokens: one learned scalar per (relative offset, head, layer).

The bias is additive on the attention scores and goes through the attention interface as `position_bias`, so
eager and sdpa agree (flash attention takes no bias: models using it set `_supports_flash_attn = False`).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn


@lru_cache(maxsize=8)
def relative_position_index(grid: tuple[int, int]) -> torch.Tensor:
    """[1 + N, 1 + N] long index into the bias table for a CLS token followed by an h x w patch grid.

    Patch pairs use (dy + h - 1) * (2w - 1) + (dx + w - 1); the last three entries are CLS->patch, patch->CLS and
    CLS->CLS (BEiT's layout), so the table has (2h - 1) * (2w - 1) + 3 rows.
    """
    height, width = grid
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :]  # [2, N, N]
    patch_index = (rel[0] + height - 1) * (2 * width - 1) + (rel[1] + width - 1)
    num_patch_offsets = (2 * height - 1) * (2 * width - 1)
    n = height * width
    index = torch.empty(1 + n, 1 + n, dtype=torch.long)
    index[1:, 1:] = patch_index
    index[0, 1:] = num_patch_offsets
    index[1:, 0] = num_patch_offsets + 1
    index[0, 0] = num_patch_offsets + 2
    return index


class RelativePositionBias(nn.Module):
    """Bias tables of `num_layers` layers with `num_heads` heads each, learned over a patch `grid` (h, w).

    `forward(text_length, grid)` -> [num_layers, H, T + 1 + N, T + 1 + N]: the image block (CLS + patches, after
    `text_length` text tokens) gets the learned bias, text rows and columns get zero. Another `grid` (fine-tuning
    at a higher resolution) resamples the table of patch offsets bicubically, offsets scaled with the grid so that
    the same fraction of the image gets the same bias (BEiT's recipe); the three CLS entries are kept.
    """

    def __init__(self, grid: tuple[int, int], num_heads: int, num_layers: int):
        super().__init__()
        self.grid, self.num_heads, self.num_layers = tuple(grid), num_heads, num_layers
        rows = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
        self.table = nn.Parameter(torch.zeros(rows, num_layers * num_heads))

    @torch.no_grad()
    def locality_table(self, top_slope: float = 2.0) -> torch.Tensor:
        """A distance prior for the table (a model's `_init_weights` copies it in; loaded weights win): every patch
        offset gets -slope * |offset| (Euclidean, in patches), head h of each layer the slope top_slope * 2^-h
        (ALiBi's geometric slopes, in 2-D, like ConViT's locality-initialised attention), so each layer starts
        with heads that look at a patch's neighbours and heads that look wide; the three CLS entries keep the
        table's values. Why: a masked patch is predicted from its neighbours, and a table that starts near 0 moves
        by ~lr per AdamW update, so attention to the neighbours takes hundreds of updates to form
        (docs/methods/vl_beit.md, "Does it learn?")."""
        height, width = self.grid
        dy = torch.arange(1 - height, height, dtype=torch.float32)[:, None]
        dx = torch.arange(1 - width, width, dtype=torch.float32)[None, :]
        distance = (dy.square() + dx.square()).sqrt().flatten()  # row (dy + h - 1) * (2w - 1) + (dx + w - 1)
        slopes = (top_slope * 2.0 ** -torch.arange(self.num_heads, dtype=torch.float32)).repeat(self.num_layers)
        prior = (-distance[:, None] * slopes[None, :]).to(self.table)
        return torch.cat([prior, self.table[-3:]])

    def table_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The bias table over another patch grid: [(2h' - 1)(2w' - 1) + 3, layers * heads]."""
        grid = tuple(grid)
        if grid == self.grid:
            return self.table
        if min(grid) < 1:
            raise ValueError(f"`grid` must be at least 1 x 1 patches, got {grid}")
        (height, width), channels = self.grid, self.table.shape[1]
        offsets = self.table[:-3].t().reshape(1, channels, 2 * height - 1, 2 * width - 1)
        resized = nn.functional.interpolate(offsets.float(), size=(2 * grid[0] - 1, 2 * grid[1] - 1),
                                            mode="bicubic", align_corners=True).to(self.table.dtype)
        return torch.cat([resized.reshape(channels, -1).t(), self.table[-3:]])

    def forward(self, text_length: int = 0, grid: tuple[int, int] | None = None) -> torch.Tensor:
        grid = self.grid if grid is None else tuple(grid)
        index = relative_position_index(grid).to(self.table.device)
        size = index.shape[0]
        bias = self.table_for(grid)[index.view(-1)].view(size, size, self.num_layers, self.num_heads)
        bias = bias.permute(2, 3, 0, 1)  # [layers, H, 1 + N, 1 + N]
        if text_length:
            bias = nn.functional.pad(bias, (text_length, 0, text_length, 0))  # text tokens: no bias
        return bias


__all__ = ["RelativePositionBias", "relative_position_index"]
