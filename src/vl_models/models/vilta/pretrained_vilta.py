"""Start ViLTA from unimodal checkpoints: the whole text checkpoint becomes the language encoder (unlike ALBEF, no
layers go to the fusion encoder), and its MLM head, when it has one, the student's and the teacher's MLM head."""

from __future__ import annotations

import logging

import torch

from ...layers.align_fuse import FromTowersMixin

logger = logging.getLogger(__name__)

# BERT's `cls.predictions` and RoBERTa's `lm_head` -> our `MlmHead`
_MLM_HEAD = {
    "cls.predictions.transform.dense": "dense", "cls.predictions.transform.LayerNorm": "norm",
    "cls.predictions.decoder": "decoder", "cls.predictions": "decoder",  # BERT keeps the decoder bias apart
    "lm_head.dense": "dense", "lm_head.layer_norm": "norm", "lm_head.decoder": "decoder", "lm_head": "decoder",
}


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
def load_mlm_head(head: torch.nn.Module, source: str) -> bool:
    """Copy the MLM head of the masked-LM checkpoint `source` into `head`; False (and a warning) when the
    checkpoint has none, e.g. a sentence encoder."""
    from transformers import AutoModelForMaskedLM

    try:
        lm, info = AutoModelForMaskedLM.from_pretrained(source, output_loading_info=True)
    except (OSError, ValueError) as err:
        logger.warning("`%s` has no masked-LM head that transformers can load (%s); the MLM head starts from "
                       "scratch", source, err)
        return False
    absent = [k for k in info["missing_keys"] if k.rpartition(".")[0] in _MLM_HEAD]
    weights = mlm_head_weights(lm.state_dict())
    if absent or set(weights) != set(head.state_dict()):
        logger.warning("`%s` has no complete MLM head (missing e.g. %s); the MLM head starts from scratch, and so "
                       "does the frozen teacher's", source, absent[:2] or sorted(set(head.state_dict()) - set(weights)))
        return False
    head.load_state_dict(weights)
    return True


class ViltaTowersMixin(FromTowersMixin):
    """`from_pretrained_towers` for ViLTA's three-encoder layout."""

    @classmethod
    def from_pretrained_towers(cls, text: str | None = None, vision: str | None = None, *,
                               num_coattention_layers: int | None = None, **config_kwargs):
        """Build the model with its language encoder (all layers, and the MLM head when the checkpoint has one)
        from the BERT-style checkpoint `text` and its image encoder from the transformers ViT `vision`. The
        `num_coattention_layers` co-attention layers (default: `text_config["num_fusion_layers"]` if given, else 6
        as in METER) start from scratch. The frozen teacher becomes a copy of the loaded language encoder."""
        kwargs = dict(config_kwargs)
        if text is not None:
            text_kwargs = dict(kwargs.get("text_config") or {})
            layers = num_coattention_layers or text_kwargs.get("num_fusion_layers", 6)
            kwargs["text_config"] = {**text_kwargs, "num_fusion_layers": layers}
        model = super().from_pretrained_towers(text, vision, num_fusion_layers=0, **kwargs)
        if text is not None and hasattr(model, "reset_teacher"):
            load_mlm_head(model.mlm_head, text)
            model.reset_teacher()
        return model


__all__ = ["ViltaTowersMixin", "load_mlm_head", "mlm_head_weights"]
