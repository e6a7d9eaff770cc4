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


class BoxHead(nn.Module):
    """MLP from a pooled multimodal feature to one normalised (cx, cy, w, h) box."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, 4))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled).sigmoid()  # [B, 4]
