"""What every vl_models pipeline shares: loading a checkpoint by its own architecture, the processor, the
capability check, and image / text input checks."""

from __future__ import annotations

import os
import types

import numpy as np
import PIL.Image
import torch
from transformers import Pipeline
from transformers.image_utils import load_image

from ..processing import VlProcessor
from ..registry import method_of
from ..utils import describe
from .capabilities import check_supports

_HUB_KEYS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "subfolder")
_IMAGE_EXPECTED = "a PIL image, a numpy array, a torch tensor, a local path, a URL or a base64 string"


def load_checkpoint(name_or_path, **kwargs):
    """A vl_models checkpoint with the class its `config.architectures` names (any of the method's classes), so a
    pipeline gets the head that was trained; kwargs go to `from_pretrained`."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, **{k: kwargs[k] for k in _HUB_KEYS if k in kwargs})
    spec = method_of(config)  # ValueError for a config that is not a vl_models method's
    classes = [spec.pretraining_class, spec.model_class, *spec.task_classes.values()]
    by_name = {cls.__name__: cls for cls in classes}
    names = [n for n in (config.architectures or []) if n in by_name]
    model_class = by_name[names[0]] if names else spec.pretraining_class
    kwargs.pop("trust_remote_code", None)  # our own classes: nothing from the repo runs
    return model_class.from_pretrained(name_or_path, config=config, **kwargs)


class VlCheckpoint:
    """The `pt_model` every vl_models pipeline registers: `pipeline(task, model=path_or_repo)` calls its
    `from_pretrained`, which loads the checkpoint's own head (`load_checkpoint`)."""

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs):
        return load_checkpoint(name_or_path, **kwargs)


def check_image(image):
    """A PIL image, array or tensor as it is (the processor checks its contents); a path, URL or base64 string
    loaded as an RGB PIL image."""
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        try:
            return load_image(image)
        except (ValueError, OSError) as err:
            raise ValueError(f"`image` must be {_IMAGE_EXPECTED}; could not load {image[:100]!r}: {err}") from err
    if not isinstance(image, PIL.Image.Image | np.ndarray | torch.Tensor):
        raise ValueError(f"`image` must be {_IMAGE_EXPECTED}, got {describe(image)}")
    return image


def image_size(image) -> tuple[int, int]:
    """(width, height) of a checked image: arrays are [H, W], [H, W, C] or [C, H, W] (C <= 4), tensors CHW
    first, as the image processor reads them."""
    if isinstance(image, PIL.Image.Image):
        return image.size
    shape = tuple(image.shape)
    if len(shape) == 2:
        return shape[1], shape[0]
    if len(shape) != 3:
        raise ValueError(f"`image` arrays must be [H, W], [H, W, C] or [C, H, W], got shape {shape}")
    channels_first = shape[0] <= 4 if isinstance(image, torch.Tensor) else shape[-1] > 4
    return (shape[2], shape[1]) if channels_first else (shape[1], shape[0])


def check_text(name: str, text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"`{name}` must be a non-empty str, got {describe(text)}")
    return text


def check_texts(name: str, texts) -> list[str]:
    """A str or a non-empty list of non-empty str -> list."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list | tuple) or not texts:
        raise ValueError(f"`{name}` must be a str or a non-empty list of str, got {describe(texts)}")
    for i, text in enumerate(texts):
        check_text(f"{name}[{i}]", text)
    return list(texts)


def check_no_kwargs(pipeline_name: str, kwargs: dict, known: str) -> None:
    """A misspelt parameter (`topk=3`) must not be ignored silently."""
    if kwargs:
        raise ValueError(f"{pipeline_name} got unexpected keyword arguments {sorted(kwargs)}; it takes {known}")


def check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int, got {describe(top_k)}")
    return top_k


class _WithText(torch.utils.data.Dataset):
    """Each image of a dataset with the same text, read when the pipeline asks for it."""

    def __init__(self, images, key: str, text):
        self.images, self.key, self.text = images, key, text

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], self.key: self.text}


def with_text(image, key: str, text):
    """Each image of a list, a torch dataset (`KeyDataset(dataset, "image")`) or a generator -> `{"image", key}`
    with the same `text`; one image -> one dict. A dataset or generator stays lazy, so `Pipeline.__call__`
    streams it as it would the images themselves."""
    if isinstance(image, list):
        return [{"image": item, key: text} for item in image]
    if isinstance(image, torch.utils.data.Dataset):
        return _WithText(image, key, text)
    if isinstance(image, types.GeneratorType):
        return ({"image": item, key: text} for item in image)
    return {"image": image, key: text}


def pair_inputs(image, text, key: str):
    """`pipe(image, text)`, `pipe([images], text)` (one text for each image), `pipe([images], [texts])` (pairs),
    `pipe(dataset_or_generator_of_images, text)`, or `pipe({"image": ..., key: ...})` / a list, dataset or
    generator of such dicts -> what `Pipeline.__call__` iterates over. Dicts are checked one by one in
    `preprocess` (`check_pair`), so a dataset is never read up front."""
    if text is None:
        return image
    if isinstance(image, list) and isinstance(text, list):
        if len(text) != len(image):
            raise ValueError(f"`image` and `{key}` lists must have the same length, got {len(image)} images "
                             f"and {len(text)} texts")
        return [{"image": i, key: t} for i, t in zip(image, text)]
    return with_text(image, key, text)


def check_pair(inputs, key: str) -> None:
    """One input of a pair pipeline: a dict with the image and its text."""
    if not isinstance(inputs, dict) or "image" not in inputs or key not in inputs:
        raise ValueError(f"pass `{key}`, or dicts with 'image' and {key!r} keys; got {describe(inputs)}")


class VlPipeline(Pipeline):
    """Base of the vl_models pipelines: `model` must support `task_name` (see `capabilities`), `processor` is the
    checkpoint's vl_models processor (tokenizer and image processor in one).

    Batching (`batch_size=n`): transformers collates n `preprocess` outputs (texts padded on the right, pixels
    concatenated, other values into lists), calls `_forward` once, splits every value of its output along the
    first dimension and `postprocess`es each item as a batch of one. Hence: `preprocess` returns one item with a
    batch dimension of 1; `_forward` returns per-item values only, batch dimension first, the first value a
    tensor or list (it gives the batch size); `postprocess` reads item 0. With `batch_size=1` the same code runs
    without collating or splitting, so the results are the same."""

    task_name: str
    _load_processor = None  # loaded when the checkpoint has one; __init__ says what to do when it has none
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, model, processor=None, **kwargs):
        check_supports(model, self.task_name)
        if not isinstance(processor, VlProcessor):
            where = getattr(model, "name_or_path", "") or type(model).__name__
            raise ValueError(
                f"`processor` must be a vl_models processor (save one next to the model with "
                f"`processor.save_pretrained`, or pass `processor=`), got {describe(processor)} for {where}"
            )
        super().__init__(model=model, processor=processor, **kwargs)

    @property
    def backbone(self):
        return self.model.base_model

    def encode_image(self, image) -> dict:
        return dict(self.processor(images=check_image(image), return_tensors="pt"))  # pixel_values [1, 3, S, S]

    def encode_text(self, texts: list[str]) -> dict:
        return dict(self.processor(text=texts, return_tensors="pt"))  # input_ids, attention_mask [T, L]

    def encode_pair(self, image, text: str) -> dict:
        return {**self.encode_image(image), **self.encode_text([text])}

    def model_inputs(self, inputs: dict) -> dict:
        """The model's arguments from a (collated) batch of `encode_pair` outputs, pixels in the model's dtype."""
        return {"pixel_values": inputs["pixel_values"].to(self.model.dtype), "input_ids": inputs["input_ids"],
                "attention_mask": inputs["attention_mask"]}
