"""Start from unimodal checkpoints: a BERT-style text model and a transformers ViT fill our towers.

The mapping works on the in-memory state dict of the loaded transformers model (so any checkpoint transformers
can read, in any of its historical key layouts, works). ALBEF's recipe: the lower BERT layers become the text
encoder, the upper ones the fusion encoder (their cross-attention starts from scratch).
"""

from __future__ import annotations

import logging
import re

import torch
from transformers import AutoModel

logger = logging.getLogger(__name__)

_BERT_LAYER = {
    "attention.self.query": "self_attn.fn.q_proj",
    "attention.self.key": "self_attn.fn.k_proj",
    "attention.self.value": "self_attn.fn.v_proj",
    "attention.output.dense": "self_attn.fn.out_proj",
    "attention.output.LayerNorm": "self_attn.norm",
    "intermediate.dense": "mlp.fn.fc1",
    "output.dense": "mlp.fn.fc2",
    "output.LayerNorm": "mlp.norm",
}
_BERT_EMBEDDINGS = {"LayerNorm": "norm"}
_VIT_LAYER = {
    "attention.q_proj": "self_attn.fn.q_proj",
    "attention.k_proj": "self_attn.fn.k_proj",
    "attention.v_proj": "self_attn.fn.v_proj",
    "attention.o_proj": "self_attn.fn.out_proj",
    "layernorm_before": "self_attn.norm",
    "layernorm_after": "mlp.norm",
    "mlp.fc1": "mlp.fn.fc1",
    "mlp.fc2": "mlp.fn.fc2",
}
_VIT_TOP = {
    "embeddings.cls_token": "embeddings.cls_token",
    "embeddings.position_embeddings": "embeddings.pos_embed",
    "embeddings.patch_embeddings.projection.weight": "embeddings.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "embeddings.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def load_pretrained(name_or_path: str, **kwargs):
    """The transformers model behind a path or Hub id (its base model, without task heads)."""
    model = AutoModel.from_pretrained(name_or_path, **kwargs)
    return getattr(model, "base_model", model)


def text_tower_config(bert_config, num_fusion_layers: int | None = None) -> dict:
    """TextTowerConfig kwargs from a BERT-style config; by default half the layers become fusion layers."""
    total = bert_config.num_hidden_layers
    fusion = total // 2 if num_fusion_layers is None else num_fusion_layers
    if not 0 <= fusion <= total:
        raise ValueError(f"`num_fusion_layers` must be in [0, {total}] for this checkpoint, got {fusion}")
    return {
        "vocab_size": bert_config.vocab_size, "hidden_size": bert_config.hidden_size,
        "num_hidden_layers": total - fusion, "num_fusion_layers": fusion,
        "num_attention_heads": bert_config.num_attention_heads, "intermediate_size": bert_config.intermediate_size,
        "hidden_act": bert_config.hidden_act, "max_position_embeddings": bert_config.max_position_embeddings,
        "type_vocab_size": bert_config.type_vocab_size, "layer_norm_eps": bert_config.layer_norm_eps,
        "pad_token_id": bert_config.pad_token_id if bert_config.pad_token_id is not None else 0,
    }


def vision_tower_config(vit_config) -> dict:
    """VisionTowerConfig kwargs from a transformers ViT config."""
    return {
        "image_size": vit_config.image_size, "patch_size": vit_config.patch_size,
        "num_channels": vit_config.num_channels, "hidden_size": vit_config.hidden_size,
        "num_hidden_layers": vit_config.num_hidden_layers, "num_attention_heads": vit_config.num_attention_heads,
        "intermediate_size": vit_config.intermediate_size, "hidden_act": vit_config.hidden_act,
        "layer_norm_eps": vit_config.layer_norm_eps, "qkv_bias": vit_config.qkv_bias,
    }


def bert_to_towers(state: dict, num_text_layers: int) -> dict:
    """BERT keys -> `text.*` (embeddings + lower layers) and `fusion.*` (upper layers) keys."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        if key.startswith("embeddings."):
            name = key.removeprefix("embeddings.")
            if name == "position_ids":
                continue
            for old, new in _BERT_EMBEDDINGS.items():
                name = name.replace(old, new)
            out[f"text.embeddings.{name}"] = value
            continue
        match = re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", key)
        if not match or match.group(2) not in _BERT_LAYER:
            continue  # pooler and heads are not part of the towers
        index, part, kind = int(match.group(1)), match.group(2), match.group(3)
        tower, local = ("text", index) if index < num_text_layers else ("fusion", index - num_text_layers)
        out[f"{tower}.layers.{local}.{_BERT_LAYER[part]}.{kind}"] = value
    return out


def vit_to_tower(state: dict) -> dict:
    """transformers ViT keys -> `vision.*` keys."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("vit.")
        if key in _VIT_TOP:
            out[f"vision.{_VIT_TOP[key]}"] = value
            continue
        match = re.match(r"(?:encoder\.)?layers?\.(\d+)\.(.+)\.(weight|bias)$", key)
        if match and match.group(2) in _VIT_LAYER:
            out[f"vision.layers.{match.group(1)}.{_VIT_LAYER[match.group(2)]}.{match.group(3)}"] = value
    return out


@torch.no_grad()
def load_tower_weights(model: torch.nn.Module, weights: dict, source: str) -> list[str]:
    """Copy mapped weights into `model` (an align-fuse XModel); returns the model keys left untouched."""
    own = model.state_dict()
    for key, value in weights.items():
        if key not in own:
            raise ValueError(f"`{source}`: mapped key {key} has no place in {type(model).__name__}")
        if own[key].shape != value.shape:
            raise ValueError(f"`{source}`: {key} has shape {tuple(value.shape)}, the model expects "
                             f"{tuple(own[key].shape)}")
        own[key].copy_(value)
    prefixes = {k.split(".")[0] for k in weights}
    untouched = [k for k in own if k.split(".")[0] in prefixes and k not in weights]
    logger.info("loaded %d tensors from %s; %d tower tensors start from scratch (e.g. %s)",
                len(weights), source, len(untouched), untouched[:3])
    return untouched
