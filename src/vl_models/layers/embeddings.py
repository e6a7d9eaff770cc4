"""Patch and text embeddings. Position embeddings of the image interpolate to other image sizes."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..utils import check_index_range, check_tensor


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of [1, 1 + N, D] (CLS first) patch position embeddings to a new `grid` (h, w)."""
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    side = math.isqrt(patch_pos.shape[1])
    if (side, side) == tuple(grid):
        return pos_embed
    dim = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # [1, D, s, s]
    patch_pos = nn.functional.interpolate(patch_pos.float(), size=grid, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
    return torch.cat([cls_pos, patch_pos], dim=1)


class PatchEmbeddings(nn.Module):
    """Image -> [CLS] + patch tokens with learned absolute position embeddings (ViT)."""

    def __init__(self, image_size: int, patch_size: int, num_channels: int, hidden_size: int, dropout: float = 0.0,
                 use_mask_token: bool = False):
        super().__init__()
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, hidden_size))
        # BEiT-style masked-patch input; only built when used, so every parameter gets a gradient (DDP)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if use_mask_token else None
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        pixel_values: torch.Tensor,  # [B, C, H, W]
        *,
        ids_keep: torch.Tensor | None = None,  # [B, n] patches to keep (MAE: the encoder sees only these)
        bool_masked_pos: torch.Tensor | None = None,  # [B, N] patches replaced by the mask token (BEiT)
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
        _, channels, height, width = pixel_values.shape
        if channels != self.num_channels:
            raise ValueError(f"`pixel_values` must have {self.num_channels} channels, got {tuple(pixel_values.shape)}")
        if not interpolate_pos_encoding and (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"`pixel_values` must be {self.image_size}x{self.image_size} (or pass interpolate_pos_encoding=True), "
                f"got {height}x{width}"
            )
        x = self.proj(pixel_values.to(self.proj.weight.dtype))  # [B, D, h, w]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        pos = interpolate_pos_embed(self.pos_embed, grid) if interpolate_pos_encoding else self.pos_embed
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("`bool_masked_pos` needs a mask token: build the vision tower with use_mask_token=True")
            check_tensor("bool_masked_pos", bool_masked_pos, ndim=2, dtype="int_or_bool")
            w = bool_masked_pos.unsqueeze(-1).to(x.dtype)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = x + pos[:, 1:]
        if ids_keep is not None:
            check_tensor("ids_keep", ids_keep, ndim=2, dtype="int")
            x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, n, D]
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return self.dropout(torch.cat([cls, x], dim=1))  # [B, 1 + n, D]


class TextEmbeddings(nn.Module):
    """BERT embeddings: word + position + token type, LayerNorm, dropout."""

    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int, type_vocab_size: int,
                 eps: float, dropout: float = 0.0, pad_token_id: int | None = 0):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_positions, hidden_size)
        self.token_type_embeddings = nn.Embedding(max(type_vocab_size, 1), hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("input_ids", input_ids, ndim=2, dtype="int")
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"`input_ids` has {length} tokens, more than the {self.position_embeddings.num_embeddings} positions "
                "of the model; truncate in the processor (max_length)"
            )
        check_index_range("input_ids", input_ids, self.word_embeddings.num_embeddings)
        positions = torch.arange(length, device=input_ids.device)
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(types)
        return self.dropout(self.norm(x))  # [B, T, D]


class DecoderEmbeddings(nn.Module):
    """MAE decoder input: visible tokens put back in place, mask tokens elsewhere, plus position embeddings."""

    def __init__(self, num_patches: int, hidden_size: int):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, hidden_size))

    def forward(self, visible: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        # visible [B, 1 + n, D] (CLS first), ids_restore [B, N] -> [B, 1 + N, D]
        bsz, n_vis, dim = visible.shape
        num_masked = ids_restore.shape[1] - (n_vis - 1)
        patches = torch.cat([visible[:, 1:], self.mask_token.expand(bsz, num_masked, dim)], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # unshuffle
        return torch.cat([visible[:, :1], patches], dim=1) + self.pos_embed
