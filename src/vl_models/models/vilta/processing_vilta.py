"""ViLTA processor: the shared image processor + a BERT-style tokenizer."""

from __future__ import annotations

from ...processing import VlProcessor


class ViltaProcessor(VlProcessor):
    """Images -> `pixel_values`, captions -> `input_ids` / `attention_mask`. `batch_decode` reads back the
    synthetic captions of a pre-training output (`out.synthetic_input_ids`)."""


__all__ = ["ViltaProcessor"]
