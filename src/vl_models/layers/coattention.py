"""Two-stream co-attention fusion (METER, ViLBERT): a text stream and an image stream, each layer letting every
stream self-attend, cross-attend to the other stream, then run its feed-forward network.

Both streams update simultaneously: in a layer, each cross-attends to the other stream as it entered the layer
(METER's `BertCrossLayer` pair), so the order in which the two are computed does not matter.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig

from ..utils import check_same_batch, check_tensor
from .attention import key_padding_mask
from .transformer import EncoderLayer


class CoAttentionLayer(nn.Module):
    """One co-attention layer: an `EncoderLayer` with cross-attention per stream (text, image)."""

    def __init__(self, config: PreTrainedConfig, hidden_size: int, num_heads: int, intermediate_size: int, *,
                 norm_first: bool = False, eps: float = 1e-12, act: str = "gelu", dropout: float = 0.0,
                 attention_dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        common = {"norm_first": norm_first, "eps": eps, "act": act, "dropout": dropout,
                  "attention_dropout": attention_dropout, "drop_path": drop_path, "cross_attention_dim": hidden_size}
        self.text_layer = EncoderLayer(config, hidden_size, num_heads, intermediate_size, **common)
        self.image_layer = EncoderLayer(config, hidden_size, num_heads, intermediate_size, **common)

    def forward(
        self,
        text: torch.Tensor,  # [B, T, D]
        image: torch.Tensor,  # [B, N, D]
        text_mask: torch.Tensor | None = None,  # text self-attention mask (from `key_padding_mask`)
        image_mask: torch.Tensor | None = None,  # image self-attention mask
        text_to_image_mask: torch.Tensor | None = None,  # text queries, image keys
        image_to_text_mask: torch.Tensor | None = None,  # image queries, text keys
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new_text = self.text_layer(text, text_mask, image, text_to_image_mask)
        new_image = self.image_layer(image, image_mask, text, image_to_text_mask)
        return new_text, new_image


class CoAttentionTransformer(nn.Module):
    """Linear maps of both streams to the fusion width, a learned modality embedding per stream (METER's token
    types), then `num_layers` co-attention layers. Returns (text [B, T, D], image [B, N, D])."""

    def __init__(self, config: PreTrainedConfig, num_layers: int, hidden_size: int, num_heads: int,
                 intermediate_size: int, *, text_dim: int, image_dim: int, norm_first: bool = False,
                 eps: float = 1e-12, act: str = "gelu", dropout: float = 0.0, attention_dropout: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"`num_layers` must be >= 1, got {num_layers}")
        self.config = config  # the attention masks follow config._attn_implementation
        self.text_in = nn.Linear(text_dim, hidden_size)
        self.image_in = nn.Linear(image_dim, hidden_size)
        self.modality_embeddings = nn.Embedding(2, hidden_size)  # 0 = text, 1 = image
        self.layers = nn.ModuleList(
            CoAttentionLayer(config, hidden_size, num_heads, intermediate_size, norm_first=norm_first, eps=eps,
                             act=act, dropout=dropout, attention_dropout=attention_dropout)
            for _ in range(num_layers)
        )

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                image_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """text_embeds [B, T, Dt] with `attention_mask` [B, T] (1 = token), image_embeds [B, N, Di] with an optional
        `image_mask` [B, N]."""
        check_tensor("text_embeds", text_embeds, ndim=3, dtype="float", last_dim=self.text_in.in_features)
        check_tensor("image_embeds", image_embeds, ndim=3, dtype="float", last_dim=self.image_in.in_features)
        check_same_batch(text_embeds=text_embeds, image_embeds=image_embeds, attention_mask=attention_mask,
                         image_mask=image_mask)
        text = self.text_in(text_embeds) + self.modality_embeddings.weight[0]  # [B, T, D]
        image = self.image_in(image_embeds) + self.modality_embeddings.weight[1]  # [B, N, D]
        cfg = self.config
        masks = (key_padding_mask(cfg, text, attention_mask), key_padding_mask(cfg, image, image_mask),
                 key_padding_mask(cfg, text, image_mask, keys=image),
                 key_padding_mask(cfg, image, attention_mask, keys=text))
        for layer in self.layers:
            text, image = layer(text, image, *masks)
        return text, image


__all__ = ["CoAttentionLayer", "CoAttentionTransformer"]
