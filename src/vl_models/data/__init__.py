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
from .readers_segmentation import SEGMENTATION_FEATURES, read_segmentation_folder, segmentation_labels
from .shapes import (
    SEGMENTATION_CLASSES,
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
    "SEGMENTATION_CLASSES",
    "SEGMENTATION_FEATURES",
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
    "read_segmentation_folder",
    "read_vqav2",
    "render_scene",
    "segmentation_labels",
    "select_task",
    "vqa_features",
]
