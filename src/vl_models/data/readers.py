"""Readers for the formats users have on disk; each returns a ``datasets.Dataset`` whose ``image``
column(s) are ``Image`` features decoded lazily from their paths. Formats and schemas: docs/data.md.

Bad input fails early: a missing path raises ``FileNotFoundError`` naming it; a malformed file or a
record without a needed field raises ``ValueError`` naming the file, the record and the field.
Images that do not decode are dropped by ``filter_readable_images`` with a logged count and names
(the readers do it unless ``check_images=False``).
"""

from __future__ import annotations

from .files import filter_readable_images
from .readers_captions import (
    CAPTION_FEATURES,
    flatten_captions,
    from_hf_dataset,
    read_image_folder,
    read_karpathy_captions,
    read_parquet,
)
from .readers_grounding import NLVR2_FEATURES, REFCOCO_FEATURES, read_nlvr2, read_refcoco
from .readers_vqa import build_vqa_answer_vocab, read_vqav2, vqa_features

__all__ = [
    "CAPTION_FEATURES",
    "NLVR2_FEATURES",
    "REFCOCO_FEATURES",
    "build_vqa_answer_vocab",
    "filter_readable_images",
    "flatten_captions",
    "from_hf_dataset",
    "read_image_folder",
    "read_karpathy_captions",
    "read_nlvr2",
    "read_parquet",
    "read_refcoco",
    "read_vqav2",
    "vqa_features",
]
