"""One attention module for self- and cross-attention, dispatching through transformers' attention interface.

`config._attn_implementation` picks the kernel ("eager", "sdpa", "flash_attention_2", "flex_attention", ...),
so users switch with `from_pretrained(..., attn_implementation="sdpa")` as for any transformers model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..utils import check_tensor


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,  # [B, H, Lq, d]
    key: torch.Tensor,  # [B, H, Lk, d]
    value: torch.Tensor,  # [B, H, Lk, d]
    attention_mask: torch.Tensor | None,  # additive [B, 1, Lq|1, Lk] or boolean (True = attend)
    scaling: float,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,  # additive [B|1, H, Lq, Lk]
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain reference: softmax(q k^T * scale + bias + mask) v."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # [B, Lq, H, d]
    return out, weights


def key_padding_mask(
    config: PreTrainedConfig,
    queries: torch.Tensor,  # [B, Lq, D]
    padding_mask: torch.Tensor | None,  # [B, Lk], 1 = token, 0 = padding
    keys: torch.Tensor | None = None,  # [B, Lk, Dk] for cross-attention
):
    """The mask in the format the configured attention kernel wants (None when nothing is padded)."""
    if padding_mask is None:
        return None
    check_tensor("attention_mask", padding_mask, ndim=2, dtype="int_or_bool")
    kv_len = (keys if keys is not None else queries).shape[1]
    if padding_mask.shape != (queries.shape[0], kv_len):
        raise ValueError(
            f"`attention_mask` must have shape {(queries.shape[0], kv_len)} (batch, keys), "
            f"got {tuple(padding_mask.shape)}"
        )
    return create_bidirectional_mask(
        config=config, inputs_embeds=queries, attention_mask=padding_mask, encoder_hidden_states=keys
    )


class Attention(nn.Module):
    """Multi-head attention; `kv_dim` set means cross-attention to a sequence of another width."""

    is_causal = False
    # Grad-CAM (layers/gradcam.py) sets `keep_attention` to keep the probabilities of the next forward passes in
    # `kept_attention` [B, H, Lq, Lk], still in the autograd graph; only the eager kernel returns them
    keep_attention = False

    def __init__(
        self,
        config: PreTrainedConfig,
        hidden_size: int,
        num_heads: int,
        *,
        kv_dim: int | None = None,
        qkv_bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"`hidden_size` ({hidden_size}) must be divisible by `num_heads` ({num_heads})")
        self.config = config  # the interface reads config._attn_implementation
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.hidden_size = hidden_size
        kv_dim = kv_dim or hidden_size
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.k_proj = nn.Linear(kv_dim, hidden_size, bias=qkv_bias)
        self.v_proj = nn.Linear(kv_dim, hidden_size, bias=qkv_bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,  # [B, Lq, D]
        attention_mask: torch.Tensor | None = None,  # prepared by `key_padding_mask`
        key_value_states: torch.Tensor | None = None,  # [B, Lk, Dk] for cross-attention
        position_bias: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_tensor("hidden_states", hidden_states, ndim=3, dtype="float", last_dim=self.hidden_size)
        kv = hidden_states if key_value_states is None else key_value_states
        if key_value_states is not None:
            check_tensor("key_value_states", kv, ndim=3, dtype="float", last_dim=self.k_proj.in_features)
            if kv.shape[0] != hidden_states.shape[0]:
                raise ValueError(
                    f"`key_value_states` batch ({kv.shape[0]}) must match `hidden_states` ({hidden_states.shape[0]})"
                )
        bsz, q_len, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(kv).view(bsz, kv.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(kv).view(bsz, kv.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        extra = {} if position_bias is None else {"position_bias": position_bias}
        out, weights = attention(
            self,
            q,
            k,
            v,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            **extra,
            **kwargs,
        )
        if self.keep_attention:
            if weights is None:
                raise RuntimeError(f"keeping attention maps needs attn_implementation='eager', the attention "
                                   f"runs {self.config._attn_implementation!r}")
            self.kept_attention = weights
        out = out.reshape(bsz, q_len, self.hidden_size)  # [B, Lq, D]
        return self.out_proj(out), weights
