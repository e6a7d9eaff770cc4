"""Shared processing: images + text -> model inputs.

`VlImageProcessor` (PIL + numpy, no torchvision), BERT-style WordPiece tokenizers trained locally
(`train_tokenizer`, `default_tokenizer`) or loaded (`load_tokenizer`), and `VlProcessor`, the
`ProcessorMixin` every method's processor subclasses. See docs/processing.md.
"""

from __future__ import annotations

import functools
import logging
import os
import string
from collections.abc import Iterable
from importlib import resources

import numpy as np
import PIL.Image
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    BatchFeature,
    BertTokenizer,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
)

from vl_models.utils import describe

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in trained tokenizers
DEFAULT_VOCAB_SIZE = 1000
_IMAGES_EXPECTED = "a PIL image, a numpy HWC/CHW array, a torch CHW/HWC tensor, or a list of those"
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {describe(value)}")
    return value


def _max_length(value) -> int:
    # below 2 the tokenizer cannot fit [CLS] and [SEP] and silently ignores the limit
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"`max_length` must be an int >= 2 (it counts [CLS] and [SEP]), got {describe(value)}")
    return value


def _describe_image(image) -> str:
    if isinstance(image, np.ndarray):
        return f"a {image.dtype} array of shape {image.shape}"
    if isinstance(image, PIL.Image.Image):
        return f"a PIL image of mode {image.mode!r} and size {image.size}"
    return describe(image)


def _image_list(images) -> list:
    """Flatten `images` into a list of single images (a 4-D array/tensor is a batch)."""
    if isinstance(images, np.ndarray | torch.Tensor) and images.ndim == 4:
        images = list(images)
    elif not isinstance(images, list | tuple):
        images = [images]
    if not images:
        raise ValueError(f"`images` must be {_IMAGES_EXPECTED}, got an empty list")
    for image in images:
        if not isinstance(image, PIL.Image.Image | np.ndarray | torch.Tensor):
            raise ValueError(f"`images` must be {_IMAGES_EXPECTED}, got {_describe_image(image)}")
    return images


def _scale_to_255(array: np.ndarray) -> np.ndarray:
    """uint8 stays uint8; every other dtype becomes float32 on the 0..255 scale."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"`images` must hold finite values, got NaN or inf in {_describe_image(array)}")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"`images` with a float dtype must hold values in [0, 1] (pass uint8 for 0..255 data), "
                f"got values in [{low:.4g}, {high:.4g}] in {_describe_image(array)}"
            )
        return (array.astype(np.float64) * 255.0).astype(np.float32)
    if array.dtype == np.uint16:  # 16-bit data: 65535 -> 255
        return (array.astype(np.float64) / 257.0).astype(np.float32)
    if array.dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"`images` with dtype {array.dtype} must hold values in 0..255 (use uint16 for 16-bit data), "
                f"got values in [{low}, {high}]"
            )
        return array.astype(np.uint8)
    raise ValueError(f"`images` must have a bool, integer or float dtype, got {_describe_image(array)}")


def _pil_to_hwc(image: PIL.Image.Image) -> np.ndarray:
    """[H, W, C] with C in 1..4, uint8 or float32 on the 0..255 scale."""
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):
        # 16-bit PNG/TIFF open as I;16 or I: map 0..65535 onto 0..255 (PIL's own convert clips at 255)
        array = np.clip(np.asarray(image).astype(np.float64), 0, 65535)
        return (array / 257.0).astype(np.float32)[..., None]
    if mode == "F":
        return _scale_to_255(np.asarray(image, dtype=np.float32))[..., None]
    if mode == "1":
        image = image.convert("L")
    elif mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in _ALPHA_MODES:
        image = image.convert("LA").convert("RGBA") if mode == "La" else image.convert("RGBA")
    elif mode != "L":
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def _array_to_hwc(array: np.ndarray, channels_first: bool | None) -> np.ndarray:
    """numpy or torch data -> [H, W, C]; channels_first=None guesses from the shape."""
    if array.ndim not in (2, 3):
        raise ValueError(
            f"`images` arrays must be [H, W], [H, W, C] or [C, H, W], got {_describe_image(array)}"
        )
    if array.size == 0:
        raise ValueError(f"`images` must not be empty, got {_describe_image(array)}")
    _check_pixels(array, *sorted(array.shape)[-2:])  # height and width: the two largest axes
    array = _scale_to_255(array)
    if array.ndim == 2:
        return array[..., None]
    if channels_first is None:
        if array.shape[0] > 4 and array.shape[-1] > 4:
            raise ValueError(
                f"`images` must have 1 to 4 channels first or last, got {_describe_image(array)}"
            )
        channels_first = array.shape[-1] > 4
    if channels_first:
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] > 4:
        raise ValueError(f"`images` must have 1 to 4 channels, got {_describe_image(array)}")
    return array


def _check_pixels(image, height: int, width: int) -> None:
    """Refuse what PIL.Image.open refuses as a decompression bomb, more than twice `PIL.Image.MAX_IMAGE_PIXELS`
    (None lifts it), for arrays and lazily opened images too, before decoding or converting them."""
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit is not None and height * width > 2 * limit:
        raise ValueError(
            f"`images` must have at most 2 x PIL.Image.MAX_IMAGE_PIXELS = {2 * limit} pixels (a decompression "
            f"bomb guard; raise the limit, or set it to None, for trusted data), got {height} x {width} = "
            f"{height * width} pixels in {_describe_image(image)}"
        )


def _to_hwc(image, input_data_format) -> np.ndarray:
    if isinstance(image, PIL.Image.Image):
        if 0 in image.size:
            raise ValueError(f"`images` must not be empty, got {_describe_image(image)}")
        _check_pixels(image, image.height, image.width)  # before decoding a lazily opened file
        try:
            return _pil_to_hwc(image)
        except (OSError, SyntaxError) as error:  # PIL decodes lazily: truncated or corrupt data fails here
            raise ValueError(
                f"`images` must be decodable, got {_describe_image(image)} whose data does not decode: {error}"
            ) from None
    channels_first = None
    if input_data_format is not None:
        channels_first = ChannelDimension(input_data_format) == ChannelDimension.FIRST
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = image.float() if image.is_floating_point() and image.dtype != torch.float64 else image
        if image.ndim == 3 and channels_first is None and image.shape[0] <= 4:
            channels_first = True  # torch convention: CHW unless the first axis cannot be channels
        image = image.numpy()
    return _array_to_hwc(image, channels_first)


def _hwc_to_rgb(array: np.ndarray) -> np.ndarray:
    """[H, W, 1..4] -> [H, W, 3]: alpha composited on white, grey repeated."""
    if array.shape[-1] in (2, 4):
        # composite on white so transparent regions don't become black
        color, alpha = array[..., :-1].astype(np.float64), array[..., -1:].astype(np.float64) / 255.0
        mixed = color * alpha + 255.0 * (1.0 - alpha)
        array = np.round(mixed).astype(np.uint8) if array.dtype == np.uint8 else mixed.astype(np.float32)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def _square_side(size) -> int:
    side = size
    if hasattr(size, "get"):  # dict or SizeDict
        side = size.get("height") if size.get("height") == size.get("width") else None
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise ValueError(f"`size` must be a positive int (the side of the square output), got {size!r}")
    return side


class VlImageProcessor(PilBackend):
    """Images -> `pixel_values` float32 [B, 3, size, size] on PIL + numpy (no torchvision).

    Every input becomes RGB (alpha composited on white, grey repeated, 16-bit scaled by 1/257, floats
    taken as [0, 1]), is resized straight to size x size (no crop, aspect ratio not kept), scaled by
    `rescale_factor` and normalised with `image_mean`/`image_std` (ImageNet defaults).
    """

    size = {"height": 224, "width": 224}
    resample = PILImageResampling.BICUBIC
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    do_convert_rgb = True
    return_tensors = "pt"

    def __init__(
        self,
        size: int | dict[str, int] | None = None,
        resample: PILImageResampling | int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | list[float] | tuple[float, ...] | None = None,
        image_std: float | list[float] | tuple[float, ...] | None = None,
        do_convert_rgb: bool | None = None,
        **kwargs,
    ):
        given = dict(
            size=size,
            resample=resample,
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
            do_convert_rgb=do_convert_rgb,
        )
        kwargs.update({k: v for k, v in given.items() if v is not None})  # None -> class default
        super().__init__(**kwargs)

    @property
    def image_size(self) -> int:
        return self.size.height

    def _standardize_kwargs(self, size=None, **kwargs) -> dict:
        if size is not None:
            side = _square_side(size)
            size = {"height": side, "width": side}
        return super()._standardize_kwargs(size=size, **kwargs)

    def _prepare_images_structure(self, images, expected_ndims: int = 3) -> list:
        return _image_list(images)  # no URL fetching: strings are rejected, not downloaded

    def process_image(
        self, image, do_convert_rgb: bool | None = None, input_data_format=None, **kwargs
    ) -> np.ndarray:
        array = _to_hwc(image, input_data_format)  # [H, W, C] uint8, or float32 on 0..255
        if do_convert_rgb:
            array = _hwc_to_rgb(array)
        elif array.shape[-1] != 3:
            raise ValueError(
                f"`images` must have 3 channels when do_convert_rgb=False, got {_describe_image(image)}"
            )
        return np.ascontiguousarray(np.moveaxis(array, -1, 0))  # [3, H, W]

    def resize(self, image: np.ndarray, size, resample=None, **kwargs) -> np.ndarray:
        """[3, H, W] -> [3, size, size]; uint8 is resized as one RGB image, like transformers' PIL path."""
        resample = PILImageResampling(self.resample if resample is None else resample)
        target = (size.width, size.height)
        if image.dtype == np.uint8:
            resized = PIL.Image.fromarray(np.moveaxis(image, 0, -1)).resize(target, resample=resample)
            return np.moveaxis(np.asarray(resized), -1, 0)
        # float data (16-bit, float inputs) is resized per channel in PIL's 32-bit float mode
        channels = [
            PIL.Image.fromarray(c).resize(target, resample=resample) for c in image.astype(np.float32)
        ]
        return np.clip(np.stack([np.asarray(c) for c in channels]), 0.0, 255.0)

    def _preprocess(
        self,
        images,
        do_resize,
        size,
        resample,
        do_rescale,
        rescale_factor,
        do_normalize,
        image_mean,
        image_std,
        return_tensors,
        **kwargs,
    ) -> BatchFeature:
        if kwargs.get("do_center_crop") or kwargs.get("do_pad"):
            raise ValueError(
                "`do_center_crop`/`do_pad` are not supported: VlImageProcessor resizes to a square"
            )
        pixel_values = []
        for image in images:  # [3, H, W]
            image = self.resize(image, size, resample) if do_resize else image
            image = image.astype(np.float64)
            if do_rescale:
                image = image * rescale_factor
            if do_normalize:
                mean = np.broadcast_to(np.asarray(image_mean, dtype=np.float64), (3,))[:, None, None]
                std = np.broadcast_to(np.asarray(image_std, dtype=np.float64), (3,))[:, None, None]
                image = (image - mean) / std
            pixel_values.append(image.astype(np.float32))
        if len({p.shape for p in pixel_values}) > 1:
            raise ValueError(
                f"`images` differ in size and do_resize=False: {[p.shape for p in pixel_values]}"
            )
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def post_process_object_detection(self, outputs, threshold: float = 0.1, target_sizes=None) -> list[dict]:
        """A grounding head's output as transformers' (zero-shot-)object-detection pipelines read detections: per
        (image, text) item `{"scores" [K], "labels" [K] (zeros: the item's text), "boxes" [K, 4] (x0, y0, x1, y1)}`,
        K = 1 if the head's score (`outputs.scores`, the chosen patch's probability) is above `threshold`, else 0.
        `target_sizes` [B, 2] (height, width): boxes in those pixels, clipped to the image; None: normalised."""
        boxes, scores = outputs["pred_boxes"], outputs["scores"]  # [B, 4] normalised (cx, cy, w, h), [B]
        if target_sizes is not None and len(target_sizes) != len(boxes):
            raise ValueError(f"`target_sizes` must have one (height, width) per item, got {len(target_sizes)} "
                             f"for {len(boxes)} boxes")
        results = []
        for i, (box, score) in enumerate(zip(boxes, scores)):
            height, width = (1, 1) if target_sizes is None else (int(v) for v in target_sizes[i])
            keep = bool(score > threshold)
            xyxy = torch.tensor([cxcywh_to_xyxy(box, width, height)] if keep else [], dtype=torch.float32)
            results.append({"scores": score.reshape(1)[:int(keep)].float(), "labels": torch.zeros(int(keep),
                            dtype=torch.long), "boxes": xyxy.reshape(-1, 4)})
        return results


def cxcywh_to_xyxy(box, width: int, height: int) -> list[float]:
    """Normalised (cx, cy, w, h) -> [x0, y0, x1, y1] in pixels, clipped to the image. The processor resizes the
    whole image to a square (no crop, no padding), so normalised coordinates map straight back."""
    cx, cy, w, h = (float(v) for v in box)
    x0, x1 = (cx - w / 2) * width, (cx + w / 2) * width
    y0, y1 = (cy - h / 2) * height, (cy + h / 2) * height
    return [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]


def _check_texts(name: str, texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    expected = f"`{name}` must be a str or a non-empty list of non-empty str"
    if not isinstance(texts, list | tuple) or not texts:
        raise ValueError(f"{expected}, got {describe(texts)}")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{expected}, item {i} is {describe(text)}")
    return list(texts)


def _train_vocab(texts: list[str], vocab_size: int, lowercase: bool) -> dict[str, int]:
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # every printable ASCII character (plus the corpus's own), alone and as a continuation, so unseen
    # words split into pieces instead of [UNK]
    chars = set(string.ascii_lowercase + string.digits + string.punctuation)
    chars |= set() if lowercase else set(string.ascii_uppercase)
    for text in texts:
        chars.update(backend.normalizer.normalize_str(text))
    chars = sorted(chars - set(string.whitespace))
    # The trainer numbers "##x" pieces in hash-map order and breaks count ties by id, so its vocabulary
    # changes from run to run (huggingface/tokenizers#1794). Declaring them up front fixes their ids.
    special = [*SPECIAL_TOKENS, *("##" + c for c in chars)]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=chars, show_progress=False
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return backend.get_vocab()


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    *,
    lowercase: bool = True,
    model_max_length: int = 512,
) -> BertTokenizer:
    """Train a BERT-style WordPiece tokenizer on `texts` ([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4).

    Deterministic. Returns a transformers `BertTokenizer` (tokenizers-backed; `BertTokenizerFast` is the
    same class in v5) encoding `[CLS] text [SEP]`. Its size is at most `vocab_size` unless the
    character alphabet alone (printable ASCII + the corpus's characters, each also as "##x") is larger.
    """
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise ValueError(f"`texts` must be an iterable of str (not a single str), got {describe(texts)}")
    texts = _check_texts("texts", list(texts))
    _positive_int("vocab_size", vocab_size)
    _positive_int("model_max_length", model_max_length)
    vocab = _train_vocab(texts, vocab_size, lowercase)
    return BertTokenizer(vocab=vocab, do_lower_case=lowercase, model_max_length=model_max_length)


def caption_corpus() -> list[str]:
    """The built-in caption corpus (vl_models/data/vocab.txt, one caption a line, '#' comments)."""
    text = resources.files("vl_models").joinpath("data", "vocab.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@functools.cache
def _default_vocab() -> tuple[tuple[str, int], ...]:
    return tuple(train_tokenizer(caption_corpus(), DEFAULT_VOCAB_SIZE).get_vocab().items())


def default_tokenizer(model_max_length: int = 512) -> BertTokenizer:
    """Tokenizer used when none is given: trained on the built-in caption corpus (cached, deterministic).

    Each call returns a fresh tokenizer object, so changing one does not affect the others.
    """
    return BertTokenizer(vocab=dict(_default_vocab()), do_lower_case=True, model_max_length=model_max_length)


def check_tokenizer(tokenizer) -> PreTrainedTokenizerBase:
    """`tokenizer` must be BERT-style: pad/cls/sep/mask tokens and encodings framed as [CLS] ... [SEP]."""
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise ValueError(f"`tokenizer` must be a transformers tokenizer, got {describe(tokenizer)}")
    names = ("pad_token", "cls_token", "sep_token", "mask_token")
    missing = [n for n in names if getattr(tokenizer, n) is None or getattr(tokenizer, n + "_id") is None]
    if missing:
        raise ValueError(
            f"`tokenizer` must be BERT-style with {', '.join(names)}; "
            f"{tokenizer.name_or_path or type(tokenizer).__name__} has no {', '.join(missing)}"
        )
    ids = tokenizer("a")["input_ids"]
    if ids[0] != tokenizer.cls_token_id or ids[-1] != tokenizer.sep_token_id:
        raise ValueError(f"`tokenizer` must encode text as [CLS] ... [SEP], got ids {ids} for 'a'")
    return tokenizer


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(name_or_path, **kwargs)`, checked to be BERT-style."""
    if not isinstance(name_or_path, str | os.PathLike):
        raise ValueError(f"`tokenizer` must be a path or Hub id, got {describe(name_or_path)}")
    return check_tokenizer(AutoTokenizer.from_pretrained(name_or_path, **kwargs))


class VlProcessor(ProcessorMixin):
    """`VlImageProcessor` + BERT-style tokenizer -> pixel_values, input_ids, attention_mask.

    Method processors subclass it without overriding `__init__` (transformers 5 finds the
    sub-processors from its parameter names). `max_length` counts [CLS] and [SEP].
    """

    def __init__(self, image_processor=None, tokenizer=None, max_length: int = 40, **kwargs):
        image_processor = VlImageProcessor() if image_processor is None else image_processor
        if not isinstance(image_processor, BaseImageProcessor):
            raise ValueError(
                f"`image_processor` must be a transformers image processor, got {describe(image_processor)}"
            )
        tokenizer = default_tokenizer() if tokenizer is None else check_tokenizer(tokenizer)
        super().__init__(image_processor, tokenizer, **kwargs)
        self.max_length = _max_length(max_length)
        self._warned_truncation = False

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoProcessor"):
        """No-op: transformers' copy of a class's source file cannot follow our package imports; checkpoints get
        the package's modules, flattened into the repo folder, from `vl_models.hub.remote_code` instead."""

    @property
    def model_input_names(self) -> list[str]:
        text_names = [n for n in self.tokenizer.model_input_names if n != "token_type_ids"]
        return list(self.image_processor.model_input_names) + text_names

    def __call__(
        self,
        images=None,
        text=None,
        *,
        padding="longest",
        truncation=True,
        max_length=None,
        return_tensors="pt",
        **kwargs,
    ) -> BatchFeature:
        """Image kwargs (size, do_normalize, ...) go to the image processor, the rest to the tokenizer."""
        if images is None and text is None:
            raise ValueError("`images` and `text` are both None: give images, text or both")
        image_names = self.image_processor.valid_kwargs.__annotations__
        image_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in image_names}
        if text is None and kwargs:
            raise ValueError(f"unexpected keyword arguments without `text`: {sorted(kwargs)}")
        texts = None if text is None else _check_texts("text", text)
        data = {}
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **image_kwargs))
            if texts is not None and len(texts) != len(data["pixel_values"]):
                raise ValueError(
                    f"`images` and `text` must have the same batch size, got {len(data['pixel_values'])} "
                    f"images and {len(texts)} texts"
                )
        if texts is not None:
            max_length = self.max_length if max_length is None else _max_length(max_length)
            data.update(self._tokenize(texts, padding, truncation, max_length, return_tensors, **kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _tokenize(self, texts, padding, truncation, max_length, return_tensors, **kwargs) -> dict:
        kwargs.setdefault("return_token_type_ids", False)
        encoding = self.tokenizer(
            texts,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
            **kwargs,
        )
        if truncation and not self._warned_truncation:
            if encoding.encodings is not None:
                n_long = sum(bool(e.overflowing) for e in encoding.encodings)
            else:  # python tokenizers keep no overflow record
                n_long = sum(len(ids) > max_length for ids in self.tokenizer(texts)["input_ids"])
            if n_long:
                self._warned_truncation = True
                logger.warning(
                    "%d of %d texts are longer than max_length=%d tokens and were truncated "
                    "(shown once per processor)",
                    n_long,
                    len(texts),
                    max_length,
                )
        return dict(encoding)


def build_processor(
    processor_class: type[VlProcessor], *, image_size: int, tokenizer=None, max_length: int = 40
) -> VlProcessor:
    """tokenizer: None -> default_tokenizer(); str/path -> load_tokenizer(); a tokenizer -> used as is."""
    if not (isinstance(processor_class, type) and issubclass(processor_class, VlProcessor)):
        raise ValueError(
            f"`processor_class` must be VlProcessor or a subclass, got {describe(processor_class)}"
        )
    image_processor = VlImageProcessor(size=_positive_int("image_size", image_size))
    if isinstance(tokenizer, str | os.PathLike):
        tokenizer = load_tokenizer(tokenizer)
    return processor_class(image_processor, tokenizer, max_length=max_length)


def register_processing_classes(
    config_class: type[PreTrainedConfig], processor_class: type[VlProcessor]
) -> None:
    """Let AutoProcessor / AutoImageProcessor find `processor_class` and `VlImageProcessor` by name.

    Needed for any `from_pretrained` of a saved processor (the image processor is always reloaded
    through AutoImageProcessor). AutoConfig registration of `config_class` is separate.
    """
    if not (isinstance(config_class, type) and issubclass(config_class, PreTrainedConfig)):
        raise ValueError(f"`config_class` must be a PreTrainedConfig subclass, got {describe(config_class)}")
    if config_class.__module__.startswith("transformers."):
        raise ValueError(
            f"`config_class` must be our own config class, got transformers' {config_class.__name__}"
        )
    if not (isinstance(processor_class, type) and issubclass(processor_class, VlProcessor)):
        raise ValueError(
            f"`processor_class` must be VlProcessor or a subclass, got {describe(processor_class)}"
        )
    # both backend keys, so a machine with torchvision does not warn about a fallback
    image_classes = {"pil": VlImageProcessor, "torchvision": VlImageProcessor}
    AutoImageProcessor.register(config_class, image_processor_classes=image_classes, exist_ok=True)
    AutoProcessor.register(config_class, processor_class, exist_ok=True)
