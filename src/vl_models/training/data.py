"""Data for the example scripts: what `--data` names, turned into `datasets` splits, and the data loaders.

`--data shapes` is the built-in benchmark; otherwise the readers of `vl_models.data` read files on disk.
Every failure to read them (a missing path, malformed JSON, a record without a field) surfaces as a
`UserError`, which the scripts print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from PIL import Image

from ..data import (
    SEGMENTATION_CLASSES,
    build_shapes,
    filter_readable_images,
    read_image_folder,
    read_karpathy_captions,
    read_nlvr2,
    read_parquet,
    read_refcoco,
    read_segmentation_folder,
    read_vqav2,
    select_task,
)
from ..data.collators import WithIndex
from ..data.readers_segmentation import IGNORE_INDEX
from .guard import NonFiniteLossError

logger = logging.getLogger(__name__)

SHAPES_TASK = {"captions": "captions", "retrieval": "captions", "vqa": "vqa", "grounding": "grounding",
               "nlvr2": "nlvr2", "segmentation": "segmentation"}
KARPATHY_SPLITS = {"train": ("train", "restval"), "validation": ("val",), "test": ("test",)}
# RefCOCO / RefCOCO+ (UNC) split their test set by kind, testA (people) and testB (other objects); RefCOCOg has "test"
REFCOCO_SPLITS = {"train": "train", "validation": "val", "test": ("test", "testA", "testB")}
ADE20K_SPLITS = {"train": "training", "validation": "validation", "test": "testing"}
ADE20K_CLASS_FILE = "objectInfo150.txt"  # ADEChallengeData2016's class list: Idx Ratio Train Val Name


class UserError(Exception):
    """Bad input from the command line or the data: printed without a traceback, exit status 2."""


# StrictDataclassError: a config value of the wrong type (`--config_overrides alpha=abc`), which is no ValueError
_INPUT_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, json.JSONDecodeError,
                 StrictDataclassError)


@contextmanager
def user_errors(what: str, *extra: type[Exception]):
    """Turn the readers' errors (which name the file, the record and the field) into a `UserError`; `extra`
    adds exception types (OSError for `from_pretrained` of a path or Hub id that is not there)."""
    try:
        yield
    except (*_INPUT_ERRORS, *extra) as error:
        # the config validator's message spans lines ("Validation error for field ...:\n    TypeError: ..."): one
        message = " ".join(str(error).split()) if isinstance(error, StrictDataclassError) else str(error)
        raise UserError(f"{what}: {message}") from error


def run_cli(main, argv=None):
    """Run `main(argv)`; a `UserError` prints `error: <message>` on stderr and exits with status 2, a run stopped
    by non-finite losses (`NonFiniteLossError`) prints its message and exits with status 1."""
    try:
        return main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except NonFiniteLossError as error:  # the run itself failed: one clear line, exit status 1
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _drop_unreadable(ds: datasets.Dataset, name: str) -> tuple[datasets.Dataset, int]:
    before = len(ds)
    ds = filter_readable_images(ds)  # logs a warning naming the first files
    if len(ds) < before:
        logger.warning("%s: skipped %d of %d rows with unreadable images", name, before - len(ds), before)
    return ds, before - len(ds)


def _check_path(data: str) -> Path:
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"path does not exist: {path}")
    return path


def _hold_out(ds: datasets.Dataset, fraction: float, seed: int) -> dict[str, datasets.Dataset]:
    count = max(1, round(len(ds) * fraction)) if len(ds) > 1 else 0
    parts = ds.train_test_split(test_size=count, seed=seed, shuffle=True) if count else {"train": ds, "test": ds}
    return {"train": parts["train"], "validation": parts["test"]}


def _caption_files(data: str, image_dir: str | None, splits, fraction: float, seed: int, cache_dir) -> dict:
    path = _check_path(data)
    if path.is_dir():
        return _hold_out(read_image_folder(path, check_images=False, cache_dir=cache_dir), fraction, seed)
    if path.suffix == ".parquet":
        return _hold_out(read_parquet(path, check_images=False, cache_dir=cache_dir), fraction, seed)
    if path.suffix == ".json":
        full = read_karpathy_captions(path, image_dir or path.parent, check_images=False)
        out = {s: full.filter(lambda r, k=KARPATHY_SPLITS[s]: r in k, input_columns="split") for s in splits}
        if "validation" in out and len(out["validation"]) == 0:  # no "val" records: hold some out
            out.update(_hold_out(out.get("train", full), fraction, seed))
        return out
    raise ValueError(f"expected 'shapes', a Karpathy-style .json file, a folder with metadata.jsonl or a "
                     f".parquet file, got {path}")


def load_captions(data: str, *, image_dir: str | None = None, splits=("train", "validation"),
                  num_train: int = 1000, num_val: int = 200, num_test: int = 200, image_size: int = 64,
                  seed: int = 0, validation_fraction: float = 0.05, cache_dir: str | None = None
                  ) -> tuple[datasets.DatasetDict, dict]:
    """Image-caption data (`image`, `captions`) for pre-training and retrieval -> (splits, info).

    data: "shapes" (the built-in benchmark), a Karpathy-split JSON (splits from its records; images under
    `image_dir`, default the JSON's folder), a folder with images + metadata.jsonl, or a parquet file (the last
    two hold out `validation_fraction` as the validation split). Rows with unreadable images are dropped and
    counted: `info["skipped_images"]`. `cache_dir`: where `datasets` keeps the arrow copies of a folder or
    parquet files (default: its own cache, `HF_DATASETS_CACHE`).
    """
    return load_task_data("captions", data, image_dir=image_dir, splits=splits, num_train=num_train,
                          num_val=num_val, num_test=num_test, image_size=image_size, seed=seed,
                          validation_fraction=validation_fraction, cache_dir=cache_dir)


def read_text_lines(path: str) -> datasets.Dataset:
    """A text corpus, one text per non-empty line of a UTF-8 file -> rows `captions` = [line]."""
    lines = [line.strip() for line in _check_path(path).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{path} holds no text (one text per line)")
    return datasets.Dataset.from_dict({"captions": [[line] for line in lines]})


_MIXED = datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))})


def mix_sources(pairs: datasets.Dataset, texts: datasets.Dataset | None = None,
                images: datasets.Dataset | None = None) -> datasets.Dataset:
    """One data set of image-caption pairs, text-only rows (`image` None: the `captions` of `texts`) and image-only
    rows (`captions` empty: the `image` of `images`), shuffled together by the sampler. For models that train on
    all three kinds (VL-BEiT); `PreTrainingCollator` sorts each batch's rows by kind."""
    parts = [pairs.select_columns(["image", "captions"]).cast(_MIXED)]
    if texts is not None:
        texts = texts.select_columns(["captions"])
        parts.append(texts.add_column("image", [None] * len(texts)).cast(_MIXED))
    if images is not None:
        images = images.select_columns(["image"])
        parts.append(images.add_column("captions", [[]] * len(images)).cast(_MIXED))
    return datasets.concatenate_datasets(parts)


def load_task_data(task: str, data: str, *, splits=("train", "validation"), image_dir: str | None = None,
                   annotations_file: str | None = None, instances_file: str | None = None,
                   validation_data: str | None = None, validation_annotations_file: str | None = None,
                   answer_vocab: list[str] | None = None, proposals: str | None = None, num_train: int = 1000, num_val: int = 200,
                   num_test: int = 200, image_size: int = 64, seed: int = 0,
                   validation_fraction: float = 0.05, cache_dir: str | None = None
                   ) -> tuple[datasets.DatasetDict, dict]:
    """The splits of one task -> (DatasetDict, info). Formats per task (docs/training.md):

    - captions / retrieval: see `load_captions`.
    - vqa: `data` = VQAv2 questions JSON with `annotations_file` (train); `validation_data` +
      `validation_annotations_file` for evaluation. The answer vocabulary comes from the train annotations
      unless `answer_vocab` (e.g. a fine-tuned model's labels) is given.
    - grounding: `data` = RefCOCO refs (JSON or pickle) with `instances_file`; splits train / val / test (testA +
      testB for RefCOCO and RefCOCO+, the `split` column tells them apart). `proposals`: the detections file of the
      weakly supervised protocol (ALBEF's dets.json, `read_detections`), a `proposals` column per row. Shapes rows
      carry their scene's `objects`, whose boxes are the proposals there.
    - nlvr2: `data` = the train JSON lines, `validation_data` = dev (or test) JSON lines.
    - segmentation: `data` = a folder in ADE20K's layout (`read_segmentation_folder`; splits training /
      validation / testing), read as ADE20K (`info["reduce_labels"]`: 0 is ignored, class k is label k - 1);
      with a train split, `info["labels"]` names the classes (Shapes: `SEGMENTATION_CLASSES`).
    """
    if task not in SHAPES_TASK:
        raise UserError(f"--task must be one of {sorted(SHAPES_TASK)}, got {task!r}")
    with user_errors(f"--data {data}"):
        if data == "shapes":
            sizes = {"train": num_train, "validation": num_val, "test": num_test}
            need = {s: (sizes[s] if s in splits else 0) for s in sizes}
            built = build_shapes(need["train"], need["validation"], need["test"], image_size=image_size,
                                 seed=seed, tasks=(SHAPES_TASK[task],))
            out = dict(select_task(built, SHAPES_TASK[task]))
        elif task in ("captions", "retrieval"):
            out = _caption_files(data, image_dir, splits, validation_fraction, seed, cache_dir)
        elif task == "vqa":
            out = _vqa_files(data, splits, image_dir, annotations_file, validation_data,
                             validation_annotations_file, answer_vocab)
        elif task == "grounding":
            if instances_file is None:
                raise ValueError("grounding data needs --instances_file (COCO instances.json) beside the refs")
            out = {s: read_refcoco(data, instances_file, image_dir or Path(data).parent, split=REFCOCO_SPLITS[s],
                                   detections_file=proposals, check_images=False) for s in splits}
        elif task == "segmentation":
            out = {s: read_segmentation_folder(data, ADE20K_SPLITS[s]) for s in splits}
        else:
            if validation_data is None and set(splits) - {"train"}:
                raise ValueError("the validation/test split of NLVR2 needs --validation_data (dev or test JSON lines)")
            out = {s: read_nlvr2(data if s == "train" else validation_data, image_dir or Path(data).parent,
                                 check_images=False) for s in splits}
        out = {s: ds for s, ds in out.items() if s in splits}
        skipped = 0
        for name in list(out):
            out[name], count = _drop_unreadable(out[name], f"{data} [{name}]")
            skipped += count
    info = {"source": data, "task": task, "skipped_images": skipped, "sizes": {s: len(d) for s, d in out.items()}}
    if task == "vqa":
        info["answers"] = next(iter(out.values())).features["labels"].feature.names
    if task == "segmentation":
        info["reduce_labels"] = data != "shapes"
        if "train" in out:  # the classes a new head is sized from (evaluation takes the model's)
            info["labels"] = list(SEGMENTATION_CLASSES) if data == "shapes" else _segmentation_classes(Path(data), out)
    return datasets.DatasetDict(out), info


def expressions_as_captions(ds: datasets.Dataset) -> datasets.Dataset:
    """Grounding rows as image-caption pairs (`caption` = the expression) for the weakly supervised protocol's
    ITC + ITM fine-tuning: the retrieval collator and loss take them, and the expressions of one image share its
    `image_id`, so they are positives of each other (as in ALBEF's Grounding.py). No box is read."""
    return ds.rename_column("expression", "caption")


def _segmentation_classes(root: Path, splits: dict[str, datasets.Dataset]) -> list[str]:
    """ADE20K-layout class names: `objectInfo150.txt`'s first name per class when the folder has it, else
    "class_<k>" up to the largest annotation value of the splits read (after reduce_labels: k - 1)."""
    listed = root / ADE20K_CLASS_FILE
    if listed.is_file():
        rows = [line.split(None, 4) for line in listed.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
        return [row[-1].split(";")[0].split(",")[0].strip() for row in rows]  # "building;edifice" -> "building"
    found = 0
    for ds in splits.values():
        for annotation in ds.cast_column("annotation", datasets.Image(decode=False))["annotation"]:
            with Image.open(annotation["path"]) as mask:
                values = np.asarray(mask)
                found = max(found, int(values[values != IGNORE_INDEX].max(initial=0)))
    logger.info("%s has no %s: %d classes from the largest annotation value", root, ADE20K_CLASS_FILE, found)
    return [f"class_{k}" for k in range(1, found + 1)]


def _vqa_files(data, splits, image_dir, annotations_file, validation_data, validation_annotations_file,
               answer_vocab):
    if image_dir is None:
        raise ValueError("VQAv2 data needs --image_dir (the COCO images folder)")
    out = {}
    if "train" in splits:
        out["train"] = read_vqav2(data, annotations_file, image_dir, answer_vocab=answer_vocab, check_images=False)
        answer_vocab = answer_vocab or out["train"].features["labels"].feature.names
    for split in ("validation", "test"):
        if split in splits:
            if validation_data is None:
                raise ValueError(f"the {split} split of VQAv2 needs --validation_data (a questions JSON)")
            out[split] = read_vqav2(validation_data, validation_annotations_file, image_dir,
                                    answer_vocab=answer_vocab, check_images=False)
    return out


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The data flags of examples/finetune.py and examples/evaluate.py."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", default="shapes",
                   help="'shapes', or the task's train file: captions .json/folder/.parquet (retrieval), VQAv2 "
                        "questions .json (vqa), RefCOCO refs (grounding), NLVR2 .json lines (nlvr2), a folder in "
                        "ADE20K's layout, e.g. ADEChallengeData2016 (segmentation)")
    g.add_argument("--image_dir", default=None, help="image root of the data files (default: the file's folder)")
    g.add_argument("--annotations_file", default=None, help="vqa: the VQAv2 annotations .json of --data")
    g.add_argument("--instances_file", default=None, help="grounding: COCO instances.json for the RefCOCO refs")
    g.add_argument("--proposals", default=None,
                   help="grounding, weak protocol: the detections .json ranked by Grad-CAM (ALBEF's dets.json: "
                        "{image id: [[x, y, w, h], ...]} in pixels); Shapes uses its scenes' objects")
    g.add_argument("--validation_data", default=None,
                   help="vqa: validation questions .json; nlvr2: dev .json lines (others take splits from --data)")
    g.add_argument("--validation_annotations_file", default=None, help="vqa: annotations of --validation_data")
    g.add_argument("--num_train_images", type=int, default=2000, help="Shapes: training examples")
    g.add_argument("--num_val_images", type=int, default=200, help="Shapes: validation examples")
    g.add_argument("--num_test_images", type=int, default=200, help="Shapes: test examples")
    g.add_argument("--shapes_image_size", type=int, default=64, help="Shapes: rendered image side in pixels")
    g.add_argument("--itm_k", type=int, default=256,
                   help="retrieval: each query's top k by ITC are re-scored by ITM + ITC (ALBEF: 256, capped at the "
                        "gallery size; 0: rank by ITC alone)")
    g.add_argument("--eval_max_images", type=int, default=None, help="retrieval: evaluate on the first N images")
    add_cache_dir_arg(g)


def add_cache_dir_arg(group) -> None:
    group.add_argument("--cache_dir", default=None,
                       help="where `datasets` writes its arrow copies and locks of an image folder or parquet data "
                            "(default: its cache, $HF_DATASETS_CACHE or ~/.cache/huggingface/datasets)")


def data_kwargs(args) -> dict:
    """`load_task_data` keyword arguments from the flags of `add_data_args`."""
    return {"image_dir": args.image_dir, "annotations_file": args.annotations_file,
            "instances_file": args.instances_file, "proposals": getattr(args, "proposals", None),
            "validation_data": args.validation_data,
            "validation_annotations_file": args.validation_annotations_file, "num_train": args.num_train_images,
            "num_val": args.num_val_images, "num_test": args.num_test_images, "image_size": args.shapes_image_size,
            "cache_dir": args.cache_dir}


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of range(n) drawn from `(seed, epoch)`: every process draws the same one (accelerate then
    gives each its share), and a resumed run sees the same order. `shuffle=False`: range(n)."""

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples, self.seed, self.shuffle, self.epoch = num_samples, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


def make_dataloader(ds: datasets.Dataset, collator, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                    drop_last: bool = False, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over `WithIndex(ds)` with an `EpochSampler` (call `loader.sampler.set_epoch(e)` and
    `collator.set_epoch(e)` at each epoch). Its own generator seeds worker processes, so creating an iterator
    does not consume the global RNG (which dropout uses)."""
    return torch.utils.data.DataLoader(
        WithIndex(ds), batch_size=batch_size, sampler=EpochSampler(len(ds), seed, shuffle), collate_fn=collator,
        drop_last=drop_last, num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


__all__ = ["EpochSampler", "UserError", "add_cache_dir_arg", "add_data_args", "data_kwargs", "expressions_as_captions",
           "load_captions", "load_task_data",
           "make_dataloader", "mix_sources", "read_text_lines", "run_cli", "user_errors"]
