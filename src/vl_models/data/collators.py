"""Collators: rows of a data set -> model inputs, with the masks and labels each method or task needs.

Randomness (which caption of an image, which tokens and patches are masked) comes from one
`torch.Generator` per sample, seeded by `(seed, epoch, sample index)`. A sample therefore gets the same
masks whatever batch, process or data-loader worker it lands in, and a run resumed mid-epoch draws exactly
what the uninterrupted run drew. `WithIndex` adds the index to each row (and hands images over undecoded, so
the collator can skip an unreadable one and count it instead of crashing the loader).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging

import datasets
import torch
from PIL import Image

from ..layers.masking import block_masking, mask_text, num_kept, random_masking
from .readers_segmentation import IGNORE_INDEX, segmentation_labels

logger = logging.getLogger(__name__)

INDEX_KEY = "__index__"


def sample_seed(*keys) -> int:
    """A 63-bit seed from any keys (ints, strings): stable across processes and Python runs."""
    digest = hashlib.blake2b("/".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed("sample", seed, epoch, index))


class WithIndex(torch.utils.data.Dataset):
    """A `datasets.Dataset` as a torch data set whose rows carry their index (`INDEX_KEY`).

    With `decode_images=False` the image columns come as `{"bytes", "path"}` dicts that the collators decode,
    so one corrupt file is skipped (and counted) rather than failing the whole data loader.
    """

    def __init__(self, ds: datasets.Dataset, decode_images: bool = False):
        if not decode_images:
            for name, feature in ds.features.items():
                if isinstance(feature, datasets.Image):
                    ds = ds.cast_column(name, datasets.Image(decode=False))
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        return {**self.ds[int(index)], INDEX_KEY: int(index)}


def load_image(value) -> Image.Image | None:
    """A PIL image from a decoded image, an `{"bytes", "path"}` dict or a path; None when it does not decode."""
    if isinstance(value, Image.Image):
        return value
    try:
        if isinstance(value, dict):
            source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        else:
            source = value
        if source is None:
            return None
        with Image.open(source) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _describe(value, index) -> str:
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    return f"{path} (row {index})" if path else f"row {index}"


def accepts(model_class, name: str) -> bool:
    """Whether `model_class.forward` takes the keyword `name`."""
    return model_class is not None and name in inspect.signature(model_class.forward).parameters


class _Collator:
    """Shared parts: per-sample generators, image decoding with skip-and-count, text/image processing."""

    image_keys: tuple[str, ...] = ("image",)

    def __init__(self, processor, *, seed: int = 0, max_length: int | None = None):
        self.processor = processor
        self.seed = int(seed)
        self.max_length = max_length
        self.epoch = 0
        self.num_skipped = 0  # rows dropped because an image did not decode (in this process)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self, row: dict, position: int) -> torch.Generator:
        # without WithIndex the position in the batch stands in: reproducible, but not across resumes
        return sample_generator(self.seed, self.epoch, row.get(INDEX_KEY, position))

    def _readable(self, rows: list[dict]) -> tuple[list[dict], list[list[Image.Image]]]:
        kept, images = [], []
        for position, row in enumerate(rows):
            decoded = [load_image(row[key]) for key in self.image_keys]
            if any(image is None for image in decoded):
                self.num_skipped += 1
                bad = next(row[k] for k, im in zip(self.image_keys, decoded) if im is None)
                logger.warning("skipped an unreadable image: %s (%d skipped so far)",
                               _describe(bad, row.get(INDEX_KEY, position)), self.num_skipped)
                continue
            kept.append(row)
            images.append(decoded)
        if not kept:
            raise ValueError(f"every image of this batch of {len(rows)} rows failed to decode")
        return kept, images

    def _encode(self, images: list, texts: list[str]) -> dict:
        return dict(self.processor(images=images, text=texts, max_length=self.max_length, return_tensors="pt"))


def whole_word_ids(tokenizer, texts: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Word index of each token [B, T] from the fast `tokenizer`'s `word_ids()`, -1 at [CLS], [SEP] and padding:
    the `whole_word_ids` of `mask_text`. `input_ids` / `attention_mask` are the processor's encoding of `texts`.

    The processor's output keeps no `word_ids()`, so the texts are tokenized again (fast, next to image decoding),
    truncated at the batch's padded length: a row the processor truncated is exactly that long, so the ids match,
    which is checked (a processor that tokenizes otherwise would get the wrong words)."""
    encoding = tokenizer(list(texts), truncation=True, max_length=input_ids.shape[1], return_token_type_ids=False)
    words = torch.full_like(input_ids, -1)
    for i in range(len(texts)):
        ids = encoding["input_ids"][i]
        if int(attention_mask[i].sum()) != len(ids) or input_ids[i, : len(ids)].tolist() != ids:
            raise ValueError(f"whole-word masking: the tokenizer encodes text {i} ({texts[i]!r}) as {ids}, not as "
                             f"the processor's {input_ids[i][attention_mask[i].bool()].tolist()}")
        words[i, : len(ids)] = torch.tensor([-1 if w is None else w for w in encoding.word_ids(i)])
    return words


def _caption(row: dict, generator: torch.Generator | None) -> str:
    """The row's caption: `caption` (str) or one of `captions`, drawn from `generator` (None: the first)."""
    if "caption" in row:
        return row["caption"]
    captions = row["captions"]
    if generator is None or len(captions) == 1:
        return captions[0]
    return captions[int(torch.randint(len(captions), (1,), generator=generator))]


class PreTrainingCollator(_Collator):
    """Image-caption rows (`image` + `captions` or `caption`) -> `pixel_values`, `input_ids`, `attention_mask`,
    and for the method's objectives `mlm_input_ids` / `mlm_labels` (BERT masking at `config.mlm_probability`)
    and an image mask: `image_mask` (MAE random masking at `config.mask_ratio`) or `bool_masked_pos` (BEiT
    block masking), whichever keyword `model_class.forward` takes.

    text_masking / image_masking: None = decide from `config` and `model_class`; False = never. image_masking
    may also be "random" or "block".

    Mixed batches (VL-BEiT: a `model_class` whose forward takes `text_input_ids` and `image_pixel_values`): a row
    with no image (`image` None) is text-only, a row with no caption (`captions` empty) image-only. Pairs keep the
    keys above; text-only rows come as `text_input_ids` / `text_attention_mask` (+ `text_mlm_input_ids` /
    `text_mlm_labels`), image-only rows as `image_pixel_values` (+ `image_bool_masked_pos` or `image_image_mask`).
    Captions of pairs are masked at `config.mvlm_probability` where the config has one, others at
    `mlm_probability`.

    whole_word_masking: choose words, not tokens, for MLM (VLMo, METER; BERT's later checkpoints): all sub-tokens of
    a chosen word are masked together (each then BERT's 80/10/10 on its own, as BERT's own code does). Words are the
    fast tokenizer's `word_ids()` (its pre-tokenizer's words: BERT's splits punctuation off). The option lives here,
    not in the config, because the collator is the one place that sees the caption's text and tokenizer (as in
    transformers' `DataCollatorForLanguageModeling(whole_word_mask=True)`); a model masking a batch itself has only
    token ids, so its fallback masking stays per token.
    """

    def __init__(self, processor, config, model_class=None, *, text_masking: bool | None = None,
                 image_masking: str | bool | None = None, whole_word_masking: bool = False, seed: int = 0,
                 max_length: int | None = None):
        super().__init__(processor, seed=seed, max_length=max_length)
        self.config = config
        if text_masking is None:
            text_masking = hasattr(config, "mlm_probability") and (
                model_class is None or accepts(model_class, "mlm_input_ids"))
        self.text_masking = bool(text_masking)
        self.whole_word_masking = bool(whole_word_masking)
        if self.whole_word_masking:
            # refused rather than ignored: a run asking for it should not silently train without it
            if not self.text_masking:
                raise ValueError(f"`whole_word_masking` needs text masking, which this collator does not do "
                                 f"({type(config).__name__}, {getattr(model_class, '__name__', None)})")
            tokenizer = getattr(processor, "tokenizer", None)
            if not getattr(tokenizer, "is_fast", False):
                raise ValueError(f"`whole_word_masking` needs a fast (tokenizers-backed) tokenizer for its "
                                 f"`word_ids()`, got {type(tokenizer).__name__}")
        self.image_mask_key, self.image_masking = self._image_masking(config, model_class, image_masking)
        self.mixed = accepts(model_class, "text_input_ids") and accepts(model_class, "image_pixel_values")

    @staticmethod
    def _image_masking(config, model_class, image_masking):
        if image_masking is False:
            return None, None
        key = next((k for k in ("image_mask", "bool_masked_pos") if accepts(model_class, k)), None)
        has_count = hasattr(config, "mask_ratio") or hasattr(config, "num_masking_patches")
        if image_masking is None:
            if key is None or not has_count:
                return None, None
            image_masking = "random" if key == "image_mask" else "block"
        if image_masking not in ("random", "block"):
            raise ValueError(f"`image_masking` must be None, False, 'random' or 'block', got {image_masking!r}")
        if not has_count:
            raise ValueError(f"`image_masking`={image_masking!r} needs `config.mask_ratio` (or "
                             f"`num_masking_patches`), which {type(config).__name__} does not have")
        return key or "image_mask", image_masking

    def __call__(self, rows: list[dict]) -> dict:
        if not self.mixed:
            return self._pairs(rows)
        kinds = {"pair": [], "text": [], "image": []}
        for position, row in enumerate(rows):
            has_image = row.get(self.image_keys[0]) is not None
            has_text = bool(row.get("caption") or row.get("captions"))
            kinds["pair" if has_image and has_text else "image" if has_image else "text"].append(position)
        batch = self._pairs([rows[i] for i in kinds["pair"]], kinds["pair"]) if kinds["pair"] else {}
        if kinds["text"]:
            batch.update(self._texts([rows[i] for i in kinds["text"]], kinds["text"]))
        if kinds["image"]:
            batch.update(self._images([rows[i] for i in kinds["image"]], kinds["image"]))
        return batch

    def _pairs(self, rows: list[dict], positions: list[int] | None = None) -> dict:
        # positions: where the rows sit in a mixed batch (they stand in for indices when rows carry none)
        by_row = {} if positions is None else {id(row): i for row, i in zip(rows, positions)}
        rows, images = self._readable(rows)
        generators = [self._generator(row, by_row.get(id(row), i)) for i, row in enumerate(rows)]
        texts = [_caption(row, g) for row, g in zip(rows, generators)]
        batch = self._encode([im[0] for im in images], texts)
        if self.text_masking:
            probability = getattr(self.config, "mvlm_probability", self.config.mlm_probability)
            batch["mlm_input_ids"], batch["mlm_labels"] = self._mask_text(batch, generators, probability, texts)
        if self.image_masking is not None:
            batch[self.image_mask_key] = torch.cat([self._mask_image(g) for g in generators])  # [B, N]
        return batch

    def _texts(self, rows: list[dict], positions: list[int]) -> dict:
        generators = [self._generator(row, i) for row, i in zip(rows, positions)]
        texts = [_caption(row, g) for row, g in zip(rows, generators)]
        batch = dict(self.processor(text=texts, max_length=self.max_length, return_tensors="pt"))
        if self.text_masking:
            batch["mlm_input_ids"], batch["mlm_labels"] = self._mask_text(batch, generators,
                                                                          self.config.mlm_probability, texts)
        return {f"text_{key}": value for key, value in batch.items()}

    def _images(self, rows: list[dict], positions: list[int]) -> dict:
        generators = {id(row): self._generator(row, i) for row, i in zip(rows, positions)}
        rows, images = self._readable(rows)
        batch = {"image_pixel_values": self.processor(images=[im[0] for im in images],
                                                      return_tensors="pt")["pixel_values"]}
        if self.image_masking is not None:
            masks = [self._mask_image(generators[id(row)]) for row in rows]
            batch[f"image_{self.image_mask_key}"] = torch.cat(masks)  # [B, N]
        return batch

    def _mask_text(self, batch, generators, probability: float, texts: list[str]):
        text = self.config.text_config
        ids, attention = batch["input_ids"], batch["attention_mask"]
        words = whole_word_ids(self.processor.tokenizer, texts, ids, attention) if self.whole_word_masking else None
        masked, labels = ids.clone(), torch.full_like(ids, -100)
        for i, generator in enumerate(generators):
            # mask the unpadded row, so the draws do not depend on the batch's padded length
            length = int(attention[i].sum())
            row_ids, row_labels = mask_text(
                ids[i : i + 1, :length], mask_token_id=text.mask_token_id, vocab_size=text.vocab_size,
                special_token_ids=text.special_token_ids, probability=probability, generator=generator,
                whole_word_ids=None if words is None else words[i : i + 1, :length],
            )
            masked[i, :length], labels[i, :length] = row_ids[0], row_labels[0]
        return masked, labels

    def _mask_image(self, generator) -> torch.Tensor:
        vision, config = self.config.vision_config, self.config
        num_patches = vision.num_patches
        # BEiT-style configs give a patch count, MAE-style ones a ratio (ceil((1 - ratio) * N) patches stay visible)
        num_masked = getattr(config, "num_masking_patches", None)
        if num_masked is None:
            num_masked = num_patches - num_kept(num_patches, config.mask_ratio)
        if self.image_masking == "random":
            return random_masking(1, num_patches, num_masked / num_patches, generator=generator).mask  # [1, N]
        side = vision.image_size // vision.patch_size
        return block_masking(1, (side, side), num_masked, generator=generator)


def _image_id(row: dict) -> int | None:
    if row.get("image_id") is not None:
        return int(row["image_id"])
    return row.get(INDEX_KEY) if "captions" in row else None  # a row per caption has no image index of its own


class RetrievalCollator(_Collator):
    """Image-caption rows -> one (image, caption) pair each, and `image_ids` [B]: the row's `image_id` (captions of
    one image share it: positives of each other, also across batches through ALBEF's queue), else the index of a
    row that holds all of an image's `captions`; left out when neither is known. `random_caption`: draw one of the
    image's captions per sample and epoch (training); otherwise the first one."""

    def __init__(self, processor, *, random_caption: bool = True, seed: int = 0, max_length: int | None = None):
        super().__init__(processor, seed=seed, max_length=max_length)
        self.random_caption = random_caption

    def __call__(self, rows: list[dict]) -> dict:
        rows, images = self._readable(rows)
        texts = [_caption(row, self._generator(row, i) if self.random_caption else None)
                 for i, row in enumerate(rows)]
        batch = self._encode([im[0] for im in images], texts)
        ids = [_image_id(row) for row in rows]
        if None not in ids:
            batch["image_ids"] = torch.tensor(ids, dtype=torch.long)
        return batch


class VqaCollator(_Collator):
    """VQA rows (`image`, `question`, `labels` answer ids, `scores`) -> inputs + `labels` soft scores [B, A]."""

    def __init__(self, processor, num_labels: int, *, max_length: int | None = None):
        super().__init__(processor, max_length=max_length)
        if num_labels < 1:
            raise ValueError(f"`num_labels` must be >= 1, got {num_labels}")
        self.num_labels = num_labels

    def __call__(self, rows: list[dict]) -> dict:
        rows, images = self._readable(rows)
        batch = self._encode([im[0] for im in images], [row["question"] for row in rows])
        targets = torch.zeros(len(rows), self.num_labels)  # [B, A]
        for i, row in enumerate(rows):
            for label, score in zip(row["labels"], row["scores"]):
                if not 0 <= label < self.num_labels:
                    raise ValueError(f"row {row.get(INDEX_KEY, i)}: answer id {label} is outside the "
                                     f"vocabulary of {self.num_labels} answers")
                targets[i, label] = max(float(targets[i, label]), float(score))
        batch["labels"] = targets
        return batch


class GroundingCollator(_Collator):
    """Grounding rows (`image`, `expression`, `box` normalised cxcywh) -> inputs + `labels` boxes [B, 4]."""

    def __call__(self, rows: list[dict]) -> dict:
        rows, images = self._readable(rows)
        batch = self._encode([im[0] for im in images], [row["expression"] for row in rows])
        batch["labels"] = torch.tensor([row["box"] for row in rows], dtype=torch.float32)  # [B, 4]
        return batch


class Nlvr2Collator(_Collator):
    """NLVR2 rows (`image_left`, `image_right`, `sentence`, `label`) -> `pixel_values` [B, 2, C, H, W],
    the sentence's `input_ids` / `attention_mask`, `labels` [B] (1 = true)."""

    image_keys = ("image_left", "image_right")

    def __call__(self, rows: list[dict]) -> dict:
        rows, images = self._readable(rows)
        batch = self._encode([pair[0] for pair in images], [row["sentence"] for row in rows])
        right = self.processor(images=[pair[1] for pair in images], return_tensors="pt")["pixel_values"]
        batch["pixel_values"] = torch.stack([batch["pixel_values"], right], dim=1)  # [B, 2, C, H, W]
        batch["labels"] = torch.tensor([int(row["label"]) for row in rows], dtype=torch.long)
        return batch


class SegmentationCollator(_Collator):
    """Segmentation rows (`image`, `annotation` of class indices) -> `pixel_values` + `labels` [B, H, W] at the
    processor's image size (resized nearest: classes must not blend; 255 is ignored by the loss and the metric).
    `reduce_labels` (ADE20K): 0 ("other") becomes 255 and class k becomes k - 1, as BEiT's processor does.
    `num_labels`: a label outside [0, num_labels) that is not ignored raises ValueError naming the row."""

    image_keys = ("image", "annotation")

    def __init__(self, processor, *, reduce_labels: bool = False, num_labels: int | None = None):
        super().__init__(processor)
        self.reduce_labels, self.num_labels = reduce_labels, num_labels

    def __call__(self, rows: list[dict]) -> dict:
        rows, images = self._readable(rows)
        pixels = self.processor(images=[pair[0] for pair in images], return_tensors="pt")["pixel_values"]
        labels = segmentation_labels([pair[1] for pair in images], size=tuple(pixels.shape[-2:]),
                                     reduce_labels=self.reduce_labels)  # [B, H, W]
        if self.num_labels is not None:
            wrong = ((labels >= self.num_labels) & (labels != IGNORE_INDEX)).flatten(1).any(1)
            if wrong.any():
                i = int(wrong.nonzero()[0])
                found = sorted(set(labels[i][labels[i] >= self.num_labels].tolist()) - {IGNORE_INDEX})
                raise ValueError(f"row {rows[i].get(INDEX_KEY, i)}: annotation classes {found[:10]} are outside the "
                                 f"model's {self.num_labels} labels (reduce_labels={self.reduce_labels})")
        return {"pixel_values": pixels, "labels": labels}


TASK_COLLATORS = {"retrieval": RetrievalCollator, "vqa": VqaCollator, "grounding": GroundingCollator,
                  "nlvr2": Nlvr2Collator, "segmentation": SegmentationCollator}

__all__ = [
    "INDEX_KEY",
    "TASK_COLLATORS",
    "GroundingCollator",
    "Nlvr2Collator",
    "PreTrainingCollator",
    "RetrievalCollator",
    "SegmentationCollator",
    "VqaCollator",
    "WithIndex",
    "accepts",
    "load_image",
    "sample_generator",
    "sample_seed",
    "whole_word_ids",
]
