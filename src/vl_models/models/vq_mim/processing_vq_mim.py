"""VQ-MIM processor: the shared image processor + a BERT-style tokenizer."""

from __future__ import annotations

from ...processing import VlProcessor


class VqMimProcessor(VlProcessor):
    """Images -> `pixel_values`, captions -> `input_ids` / `attention_mask`."""


__all__ = ["VqMimProcessor"]
