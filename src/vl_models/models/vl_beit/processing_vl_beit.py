"""VL-BEiT processor: the shared image processor + a BERT-style tokenizer."""

from __future__ import annotations

from ...processing import VlProcessor


class VlBeitProcessor(VlProcessor):
    """Images -> `pixel_values`, texts -> `input_ids` / `attention_mask`; either alone for image-only or text-only
    rows (`processor(text=[...])`, `processor(images=[...])`)."""


__all__ = ["VlBeitProcessor"]
