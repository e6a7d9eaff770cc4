"""Start ViLTA from unimodal checkpoints: the whole text checkpoint becomes the language encoder (unlike ALBEF, no
layers go to the fusion encoder), and its MLM head, when it has one, the student's and the teacher's MLM head."""

from __future__ import annotations

from ...layers.align_fuse import FromTowersMixin


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
            model.reset_teacher()
        return model


__all__ = ["ViltaTowersMixin"]
