"""Transformer blocks: encoder / fusion layer (pre- or post-LN, optional cross-attention) and the multiway layer.

ViT checkpoints are pre-LN and BERT checkpoints post-LN; one `EncoderLayer` serves both with `norm_first`, so
unimodal checkpoints load into our towers without changing what they compute.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import Attention


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class LayerScale(nn.Module):
    """Per-channel learnable residual scale (CaiT / BEiT); identity when `init_value` is None."""

    def __init__(self, dim: int, init_value: float | None):
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), init_value)) if init_value is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.gamma is None else x * self.gamma


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(x))))


class Residual(nn.Module):
    """x + scale(drop(f(norm(x)))) (pre-LN) or norm(x + drop(f(x))) (post-LN): one sub-block of a layer."""

    def __init__(self, dim: int, fn: nn.Module, *, norm_first: bool, eps: float, dropout: float = 0.0,
                 drop_path: float = 0.0, layer_scale: float | None = None):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.norm_first = norm_first
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)
        self.scale = LayerScale(dim, layer_scale)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.norm_first:
            out = self.fn(self.norm(x), *args, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            return x + self.drop_path(self.scale(self.dropout(out)))
        out = self.fn(x, *args, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return self.norm(x + self.drop_path(self.scale(self.dropout(out))))


class EncoderLayer(GradientCheckpointingLayer):
    """Self-attention, optional cross-attention to another sequence (a fusion layer), feed-forward."""

    def __init__(
        self,
        config: PreTrainedConfig,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        *,
        norm_first: bool,
        eps: float,
        act: str = "gelu",
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        cross_attention_dim: int | None = None,
        qkv_bias: bool = True,
    ):
        super().__init__()
        common = {"norm_first": norm_first, "eps": eps, "dropout": dropout, "drop_path": drop_path,
                  "layer_scale": layer_scale}
        attn = Attention(config, hidden_size, num_heads, qkv_bias=qkv_bias, dropout=attention_dropout)
        self.self_attn = Residual(hidden_size, attn, **common)
        self.cross_attn = None
        if cross_attention_dim is not None:
            cross = Attention(config, hidden_size, num_heads, kv_dim=cross_attention_dim, qkv_bias=qkv_bias,
                              dropout=attention_dropout)
            self.cross_attn = Residual(hidden_size, cross, **common)
        self.mlp = Residual(hidden_size, MLP(hidden_size, intermediate_size, act), **common)

    def forward(
        self,
        hidden_states: torch.Tensor,  # [B, L, D]
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,  # [B, S, Dk]
        encoder_attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.self_attn(hidden_states, attention_mask, position_bias=position_bias)
        if self.cross_attn is not None:
            if encoder_hidden_states is None:
                raise ValueError("`encoder_hidden_states` is required by a fusion layer (it has cross-attention)")
            x = self.cross_attn(x, encoder_attention_mask, key_value_states=encoder_hidden_states)
        return self.mlp(x)


class MultiwayLayer(GradientCheckpointingLayer):
    """VLMo/VL-BEiT block: self-attention shared by all tokens, one feed-forward expert (with its own norm) per
    modality. Tokens are routed by position: `[text tokens | image tokens]` with `text_length` text tokens; in the
    top layers (`use_vl_expert`) a vision-language expert takes the whole sequence."""

    def __init__(self, config: PreTrainedConfig, hidden_size: int, num_heads: int, intermediate_size: int, *,
                 eps: float, act: str = "gelu", dropout: float = 0.0, attention_dropout: float = 0.0,
                 drop_path: float = 0.0, layer_scale: float | None = None, use_vl_expert: bool = False,
                 qkv_bias: bool = True):
        super().__init__()
        common = {"norm_first": True, "eps": eps, "dropout": dropout, "drop_path": drop_path,
                  "layer_scale": layer_scale}
        attn = Attention(config, hidden_size, num_heads, qkv_bias=qkv_bias, dropout=attention_dropout)
        self.self_attn = Residual(hidden_size, attn, **common)
        experts = ["text", "image"] + (["vl"] if use_vl_expert else [])
        self.experts = nn.ModuleDict(
            {name: Residual(hidden_size, MLP(hidden_size, intermediate_size, act), **common) for name in experts}
        )

    def forward(
        self,
        hidden_states: torch.Tensor,  # [B, T + I, D]
        attention_mask: torch.Tensor | None = None,
        text_length: int = 0,
        position_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.self_attn(hidden_states, attention_mask, position_bias=position_bias)
        if "vl" in self.experts and 0 < text_length < x.shape[1]:
            return self.experts["vl"](x)
        text, image = x[:, :text_length], x[:, text_length:]  # [B, T, D], [B, I, D]
        parts = []
        if text.shape[1]:
            parts.append(self.experts["text"](text))
        if image.shape[1]:
            parts.append(self.experts["image"](image))
        return torch.cat(parts, dim=1)
