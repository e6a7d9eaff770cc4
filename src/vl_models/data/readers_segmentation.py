"""Semantic segmentation reader: ADE20K's folder layout (``images/*.jpg`` beside ``annotations/*.png`` of class
indices, as in ADEChallengeData2016 and HF's ``scene_parse_150``) -> a Dataset with ``image`` and
``annotation`` columns; ``segmentation_labels`` turns annotations into the [B, H, W] labels the segmentation
head takes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from .files import existing_path

SEGMENTATION_FEATURES = datasets.Features(
    {"image": datasets.Image(), "annotation": datasets.Image(), "image_id": datasets.Value("string")}
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IGNORE_INDEX = 255  # BEiT's and SegFormer's `semantic_loss_ignore_index`


def _listed(names: Sequence[str], max_listed: int = 5) -> str:
    return ", ".join(sorted(names)[:max_listed]) + (", ..." if len(names) > max_listed else "")


def _by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    files, twice = {}, []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in files:
                twice.append(path.stem)
            files[path.stem] = path
    if twice:
        raise ValueError(f"{folder} holds several files per name for {_listed(twice)}: one file per image")
    return files


def read_segmentation_folder(root, split: str | None = None, *, images_dir: str = "images",
                             annotations_dir: str = "annotations", check_files: bool = True) -> datasets.Dataset:
    """Pairs ``root/images[/split]/<name>.jpg`` (or .jpeg / .png) with ``root/annotations[/split]/<name>.png``.
    ADE20K: ``read_segmentation_folder("ADEChallengeData2016", "training")``. Annotation pixels are class
    indices as stored (ADE20K: 0 = "other", 1..150 the classes; ``segmentation_labels(reduce_labels=True)``
    maps them to the 255-ignored, 0-based labels BEiT trains on).

    Raises FileNotFoundError for a missing folder, ValueError for an image without an annotation (or the
    reverse), an empty folder, and, with ``check_files`` (file headers only), an annotation whose size differs
    from its image's or that is not single-channel (class indices, not a colour-coded mask)."""
    root = existing_path(root, "segmentation folder")
    parts = (split,) if split else ()
    images = _by_stem(existing_path(root.joinpath(images_dir, *parts), "image folder"), IMAGE_SUFFIXES)
    annotations = _by_stem(existing_path(root.joinpath(annotations_dir, *parts), "annotation folder"), (".png",))
    lonely = sorted(set(images) - set(annotations))
    if lonely:
        raise ValueError(f"{len(lonely)} images in {root.joinpath(images_dir, *parts)} have no annotation "
                         f"<name>.png: {_listed(lonely)}")
    lonely = sorted(set(annotations) - set(images))
    if lonely:
        raise ValueError(f"{len(lonely)} annotations in {root.joinpath(annotations_dir, *parts)} have no image: "
                         f"{_listed(lonely)}")
    if not images:
        raise ValueError(f"no images ({'/'.join(IMAGE_SUFFIXES)}) in {root.joinpath(images_dir, *parts)}")
    names = sorted(images)
    if check_files:
        wrong = []
        for name in names:
            with Image.open(images[name]) as image, Image.open(annotations[name]) as annotation:
                if annotation.size != image.size:
                    wrong.append(f"{name} (image {image.size}, annotation {annotation.size})")
                elif annotation.mode not in ("L", "P", "I", "I;16"):
                    wrong.append(f"{name} (annotation mode {annotation.mode}, not single-channel class indices)")
        if wrong:
            raise ValueError(f"{len(wrong)} annotations do not fit their images: {_listed(wrong)}")
    return datasets.Dataset.from_dict(
        {"image": [str(images[n]) for n in names], "annotation": [str(annotations[n]) for n in names],
         "image_id": names},
        features=SEGMENTATION_FEATURES,
    )


def segmentation_labels(annotations, size: int | tuple[int, int] | None = None,
                        reduce_labels: bool = False) -> torch.LongTensor:
    """Annotations (PIL images or [H, W] arrays of class indices) -> labels [B, H, W] for
    `VlBeitForSemanticSegmentation`. ``size``: resample to it (nearest: classes must not blend), as the image
    processor resizes the images; None keeps each annotation's size (then they must agree).
    ``reduce_labels`` (ADE20K): 0 ("other") becomes 255, the ignored index, and class k becomes k - 1, as
    transformers' BEiT / SegFormer processors do."""
    if isinstance(size, int):
        size = (size, size)
    out = []
    for i, annotation in enumerate(annotations):
        if size is not None:
            if not isinstance(annotation, Image.Image):
                annotation = Image.fromarray(np.asarray(annotation).astype(np.int32))
            annotation = annotation.resize((size[1], size[0]), Image.NEAREST)
        label = np.asarray(annotation).astype(np.int64)
        if label.ndim != 2:
            raise ValueError(f"annotation {i} must be [H, W] class indices, got shape {label.shape}")
        if reduce_labels:
            label = np.where(label == 0, IGNORE_INDEX, label - 1)
            label[label == IGNORE_INDEX - 1] = IGNORE_INDEX  # 255 ("other" already) stays ignored
        out.append(label)
    shapes = {label.shape for label in out}
    if len(shapes) > 1:
        raise ValueError(f"annotations have different sizes {sorted(shapes)}: pass `size`")
    return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, *(size or (0, 0)), dtype=torch.long)


__all__ = ["IGNORE_INDEX", "SEGMENTATION_FEATURES", "read_segmentation_folder", "segmentation_labels"]
