"""Start from unimodal checkpoints: a BERT-style text model and a transformers ViT fill our towers.

The mapping works on the in-memory state dict of the loaded transformers model (so any checkpoint transformers
can read, in any of its historical key layouts, works). ALBEF's recipe: the lower BERT layers become the text
encoder, the upper ones the fusion encoder (their cross-attention starts from scratch). A text checkpoint with a
masked-LM head (`BertForMaskedLM`, BERT's own release) also gives the model's MLM head (ALBEF starts from it).
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager

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


# BERT's `cls.predictions` and RoBERTa's `lm_head` -> our `MlmHead`
_MLM_HEAD = {
    "cls.predictions.transform.dense": "dense", "cls.predictions.transform.LayerNorm": "norm",
    "cls.predictions.decoder": "decoder", "cls.predictions": "decoder",  # BERT keeps the decoder bias apart
    "lm_head.dense": "dense", "lm_head.layer_norm": "norm", "lm_head.decoder": "decoder", "lm_head": "decoder",
}


def load_pretrained(name_or_path: str, **kwargs):
    """The transformers model behind a path or Hub id (its base model, without task heads)."""
    model = AutoModel.from_pretrained(name_or_path, **kwargs)
    return getattr(model, "base_model", model)


def load_text_checkpoint(name_or_path: str, **kwargs):
    """(base model, MLM head weights in `MlmHead` keys) of a BERT-style checkpoint; the weights are {} when the
    checkpoint has no masked-LM head (a plain `BertModel`, e.g. a sentence encoder) or its architecture none."""
    from transformers import AutoModelForMaskedLM

    try:
        # quiet: for a checkpoint without a head transformers reports the head it initialised as missing (and
        # "corrupted"); `load_mlm_head` says what that means for our model instead
        with _transformers_log_level(logging.ERROR):
            lm, info = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except ValueError:  # no masked-LM class for this architecture
        return load_pretrained(name_or_path, **kwargs), {}
    head_missing = {k for k in info["missing_keys"] if k.rpartition(".")[0] in _MLM_HEAD}
    tower_missing = sorted(set(info["missing_keys"]) - head_missing)
    if tower_missing:
        logger.warning("`%s` lacks %d text tensors, initialised instead: %s", name_or_path, len(tower_missing),
                       tower_missing[:5])
    return lm.base_model, ({} if head_missing else mlm_head_weights(lm.state_dict()))


@contextmanager
def _transformers_log_level(level: int):
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity(level)
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def mlm_head_weights(state: dict) -> dict:
    """A masked-LM checkpoint's head keys -> `MlmHead` keys (dense, norm, decoder); the decoder weight falls back to
    the word embeddings it is tied to."""
    out = {}
    for key, value in state.items():
        module, _, kind = key.rpartition(".")
        if module in _MLM_HEAD and kind in ("weight", "bias"):
            out[f"{_MLM_HEAD[module]}.{kind}"] = value
    if out and "decoder.weight" not in out:
        tied = [v for k, v in state.items() if k.endswith("embeddings.word_embeddings.weight")]
        if tied:
            out["decoder.weight"] = tied[0]
    return out


@torch.no_grad()
def load_mlm_head(head: torch.nn.Module, weights: dict, source: str, *, tied: bool) -> bool:
    """Copy a checkpoint's MLM head (`mlm_head_weights`) into our `MlmHead`. A `tied` decoder's weight is the word
    embeddings, loaded with the text tower already: only the transform and the decoder bias are copied then.
    Returns False (and says so) when the checkpoint has no complete head: ours keeps its initialisation."""
    own = head.state_dict()
    wanted = [k for k in own if not (tied and k == "decoder.weight")]
    if not weights or any(k not in weights for k in wanted):
        logger.warning("`%s` has no masked-LM head (cls.predictions), e.g. a plain BertModel: the MLM head's "
                       "transform and decoder bias start from their initialisation%s", source,
                       "; its decoder weight is the loaded word embeddings" if tied else "")
        return False
    for key in wanted:
        if own[key].shape != weights[key].shape:
            raise ValueError(f"`{source}`: MLM head {key} has shape {tuple(weights[key].shape)}, the model expects "
                             f"{tuple(own[key].shape)}")
        own[key].copy_(weights[key])
    if tied and "decoder.weight" in weights and not torch.equal(weights["decoder.weight"], own["decoder.weight"]):
        logger.warning("`%s` has an MLM decoder untied from its word embeddings; ours is tied to the embeddings "
                       "(build with tie_word_embeddings=False to load that decoder too)", source)
    logger.info("loaded the MLM head of %s (%s)", source, ", ".join(wanted))
    return True


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
