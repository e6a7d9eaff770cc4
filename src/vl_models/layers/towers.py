"""The unimodal towers and the fusion stack: a ViT, a BERT-style text encoder, cross-attention fusion layers."""

from __future__ import annotations

import torch
from torch import nn

from ..configuration_utils import TextTowerConfig, VisionTowerConfig
from .attention import key_padding_mask
from .embeddings import PatchEmbeddings, TextEmbeddings
from .transformer import EncoderLayer


class VisionTransformer(nn.Module):
    """ViT: patch embeddings, pre-LN encoder layers, final LayerNorm. Returns [B, 1 + n, D] (CLS first)."""

    def __init__(self, config: VisionTowerConfig):
        super().__init__()
        self.config = config
        self.embeddings = PatchEmbeddings(config.image_size, config.patch_size, config.num_channels,
                                          config.hidden_size, config.hidden_dropout_prob, config.use_mask_token)
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()
        self.layers = nn.ModuleList(
            EncoderLayer(config, config.hidden_size, config.num_attention_heads, config.intermediate_size,
                         norm_first=True, eps=config.layer_norm_eps, act=config.hidden_act,
                         dropout=config.hidden_dropout_prob, attention_dropout=config.attention_probs_dropout_prob,
                         drop_path=rate, qkv_bias=config.qkv_bias)
            for rate in rates
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, *, ids_keep: torch.Tensor | None = None,
                bool_masked_pos: torch.Tensor | None = None, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        x = self.embeddings(pixel_values, ids_keep=ids_keep, bool_masked_pos=bool_masked_pos,
                            interpolate_pos_encoding=interpolate_pos_encoding)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)  # [B, 1 + n, D]


class TextTransformer(nn.Module):
    """BERT embeddings and the text-only (post-LN) layers. Returns [B, T, D]."""

    def __init__(self, config: TextTowerConfig):
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config.vocab_size, config.hidden_size, config.max_position_embeddings,
                                         config.type_vocab_size, config.layer_norm_eps, config.hidden_dropout_prob,
                                         config.pad_token_id)
        self.layers = nn.ModuleList(_bert_layer(config) for _ in range(config.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embeddings(input_ids)
        mask = key_padding_mask(self.config, x, attention_mask)
        for layer in self.layers:
            x = layer(x, mask)
        return x  # [B, T, D]


class FusionTransformer(nn.Module):
    """The upper BERT layers with cross-attention from text to image tokens (ALBEF's multimodal encoder)."""

    def __init__(self, config: TextTowerConfig, image_dim: int):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            _bert_layer(config, cross_attention_dim=image_dim) for _ in range(config.num_fusion_layers)
        )

    def forward(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                image_embeds: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = key_padding_mask(self.config, text_embeds, attention_mask)
        cross_mask = key_padding_mask(self.config, text_embeds, image_mask, keys=image_embeds)
        x = text_embeds
        for layer in self.layers:
            x = layer(x, mask, image_embeds, cross_mask)
        return x  # [B, T, D]


def _bert_layer(config: TextTowerConfig, cross_attention_dim: int | None = None) -> EncoderLayer:
    return EncoderLayer(config, config.hidden_size, config.num_attention_heads, config.intermediate_size,
                        norm_first=False, eps=config.layer_norm_eps, act=config.hidden_act,
                        dropout=config.hidden_dropout_prob, attention_dropout=config.attention_probs_dropout_prob,
                        cross_attention_dim=cross_attention_dim)
