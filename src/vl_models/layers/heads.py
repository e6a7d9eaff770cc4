"""Prediction heads. Token heads are applied to selected (masked) positions only, never to the full sequence."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class MlmHead(nn.Module):
    """BERT's LM head: dense, activation, LayerNorm, decoder to the vocabulary."""

    def __init__(self, hidden_size: int, vocab_size: int, act: str = "gelu", eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = ACT2FN[act]
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [M, D] -> [M, V]
        return self.decoder(self.norm(self.act(self.dense(hidden))))


class TokenClassifierHead(nn.Module):
    """LayerNorm + linear over a discrete vocabulary (visual codes for MIM)."""

    def __init__(self, hidden_size: int, num_classes: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.proj = nn.Linear(hidden_size, num_classes)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(hidden))


class ClassifierHead(nn.Module):
    """Two-layer MLP classifier on pooled features (ViLT/METER VQA and NLVR2 heads)."""

    def __init__(self, in_dim: int, num_labels: int, hidden_dim: int | None = None, eps: float = 1e-12):
        super().__init__()
        hidden_dim = hidden_dim or 2 * in_dim
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim, eps=eps)
        self.fc2 = nn.Linear(hidden_dim, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(nn.functional.gelu(self.fc1(pooled))))


class PatchBoxHead(nn.Module):
    """Grounding as "which patch, then which box": the pair's pooled feature scores every image patch for holding
    the referred object's centre, and every patch regresses a box around itself.

    A box regressed from one pooled vector has to encode position in a feature trained for matching (it stays at
    the mean box on Shapes, docs/methods.md); a patch already knows where it is, so the head only has to point at it
    and refine: the centre within one patch of the patch's own, width and height as fractions of the image."""

    def __init__(self, query_dim: int, patch_dim: int, hidden_dim: int | None = None, eps: float = 1e-6):
        super().__init__()
        hidden_dim = hidden_dim or query_dim
        self.query = nn.Linear(query_dim, hidden_dim)
        self.key = nn.Sequential(nn.LayerNorm(patch_dim, eps=eps), nn.Linear(patch_dim, hidden_dim))
        self.box = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 4))

    def forward(self, query: torch.Tensor, patches: torch.Tensor, grid: tuple[int, int]):
        """query [B, Dq], patches [B, N, Dp] in row-major order over `grid` (rows, columns) ->
        (logits [B, N] over the patches, boxes [B, N, 4] normalised cx, cy, w, h, one per patch)."""
        rows, cols = grid
        if patches.shape[1] != rows * cols:
            raise ValueError(f"`patches` must hold {rows} x {cols} = {rows * cols} patches, got {patches.shape[1]}")
        q, k = self.query(query), self.key(patches)  # [B, H], [B, N, H]
        logits = (k @ q[:, :, None]).squeeze(-1) / q.shape[-1] ** 0.5
        raw = self.box(k * q[:, None])  # the patch read in the light of the expression
        index = torch.arange(rows * cols, device=patches.device)
        col, row = (index % cols).to(raw.dtype), (index // cols).to(raw.dtype)
        cx = ((col + 0.5 + raw[..., 0].tanh()) / cols).clamp(0, 1)
        cy = ((row + 0.5 + raw[..., 1].tanh()) / rows).clamp(0, 1)
        return logits, torch.stack([cx, cy, raw[..., 2].sigmoid(), raw[..., 3].sigmoid()], dim=-1)


def patch_of(boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The row-major index of the patch holding each box's centre: boxes [B, 4] normalised cx, cy, w, h -> [B]."""
    rows, cols = grid
    col = (boxes[:, 0] * cols).floor().long().clamp(0, cols - 1)
    row = (boxes[:, 1] * rows).floor().long().clamp(0, rows - 1)
    return row * cols + col
