"""Data: the built-in Shapes benchmark and readers for on-disk formats (docs/data.md)."""

from __future__ import annotations

from .readers import (
    CAPTION_FEATURES,
    NLVR2_FEATURES,
    REFCOCO_FEATURES,
    build_vqa_answer_vocab,
    filter_readable_images,
    flatten_captions,
    from_hf_dataset,
    read_image_folder,
    read_karpathy_captions,
    read_nlvr2,
    read_parquet,
    read_refcoco,
    read_vqav2,
    vqa_features,
)
from .shapes import (
    SHAPES_ANSWERS,
    TASKS,
    build_shapes,
    generate_records,
    generate_scene,
    render_scene,
    select_task,
)

__all__ = [
    "CAPTION_FEATURES",
    "NLVR2_FEATURES",
    "REFCOCO_FEATURES",
    "SHAPES_ANSWERS",
    "TASKS",
    "build_shapes",
    "build_vqa_answer_vocab",
    "filter_readable_images",
    "flatten_captions",
    "from_hf_dataset",
    "generate_records",
    "generate_scene",
    "read_image_folder",
    "read_karpathy_captions",
    "read_nlvr2",
    "read_parquet",
    "read_refcoco",
    "read_vqav2",
    "render_scene",
    "select_task",
    "vqa_features",
]
