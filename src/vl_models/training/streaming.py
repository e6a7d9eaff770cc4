"""Pre-training on image-caption shards streamed through `datasets`, without materialising the corpus.

`--data` names WebDataset tar shards (a brace pattern `shards/{00000..00999}.tar`, a glob, a `.tar` file or a
folder of them) or parquet shards (a folder of `.parquet` files without `metadata.jsonl`, or a pattern). They are
read with `datasets.load_dataset("webdataset" | "parquet", streaming=True)`, split between processes with
`datasets.distributed.split_dataset_by_node` and between data-loader workers by `datasets` itself (shards per
worker), shuffled with a buffer (`--shuffle_buffer`; the shard order is shuffled too, per pass), and decoded in the
workers. Memory holds the shuffle buffer and a few batches per worker, whatever the number of shards.

Each worker reads its shards pass after pass (the stream has no end; `--max_train_steps` says when to stop) and
yields whole batches: a sample whose image does not decode or that has no caption is skipped and counted, so every
process's batch keeps its size (the ITC gather across processes needs it). Within a pass, the processes and
workers read disjoint shards, so no sample is seen twice per pass.

Exact resume: every batch carries its worker's position (pass, samples read in the pass, skips so far); the loader
keeps the position of the last batch it handed out per worker and the worker whose turn is next. A checkpoint
saves them (`trainer_state.json`, key "stream"); on resume each worker replays its pass up to its position
without decoding (the shard bytes are read again, the shuffle buffer refilled exactly) and the loader starts at
the saved worker: the resumed run sees the batches the uninterrupted one saw. `IterableDataset.state_dict()` of
`datasets` is not used, because it does not restore the shuffle buffer's content (its docs: the buffer is
refilled from later samples), and torchdata's `StatefulDataLoader` is not installed here.
"""

from __future__ import annotations

import glob
import itertools
import logging
import re
from collections import deque
from pathlib import Path

import datasets
import torch
from accelerate.utils import gather_object, send_to_device
from datasets.distributed import split_dataset_by_node

from ..data.collators import INDEX_KEY, load_image, sample_seed
from .data import UserError

logger = logging.getLogger(__name__)

META_KEY = "__stream__"  # a batch's stream position, removed before the batch reaches the model
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img")
TEXT_COLUMNS = ("txt", "text", "caption", "captions")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """`a/{000..002}.tar` -> [a/000.tar, a/001.tar, a/002.tar] (zero padding kept), `{x,y}` -> both; nested and
    repeated groups expand left to right."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end():]
    numeric = _RANGE.fullmatch(match.group(0))
    if numeric:
        lo, hi = numeric.group(1), numeric.group(2)
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        step = 1 if int(hi) >= int(lo) else -1
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        options = ["{" + body + "}"]  # a literal brace pair
        return [head + options[0] + rest for rest in expand_braces(tail)]
    return [out for option in options for out in expand_braces(head + option + tail)]


def stream_files(data: str) -> tuple[str, list[str]] | None:
    """(builder, files) when `--data` names shards to stream ("webdataset" for .tar, "parquet"), else None (the
    in-memory readers of `training.data` take it). A single `.parquet` file and a folder with `metadata.jsonl`
    stay in memory, as before."""
    if re.search(r"\{[^{}]*(\.\.|,)[^{}]*\}", data):
        files = expand_braces(data)
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise UserError(f"--data {data}: {len(missing)} of {len(files)} shards do not exist, e.g. {missing[0]}")
    elif any(c in data for c in "*?["):
        files = sorted(glob.glob(data))
        if not files:
            raise UserError(f"--data {data}: no file matches")
    else:
        path = Path(data)
        if path.is_file() and path.suffix == ".tar":
            files = [data]
        elif path.is_dir() and not (path / "metadata.jsonl").exists():
            files = sorted(str(p) for p in path.glob("*.tar")) or sorted(str(p) for p in path.glob("*.parquet"))
            if not files:
                return None
        else:
            return None
    suffixes = {Path(f).suffix for f in files}
    if suffixes == {".tar"}:
        return "webdataset", files
    if suffixes == {".parquet"}:
        return "parquet", files
    raise UserError(f"--data {data}: streamed shards must all be .tar (WebDataset) or all .parquet, got "
                    f"{sorted(suffixes)}")


def open_stream(data: str, *, cache_dir: str | None = None) -> tuple[datasets.IterableDataset, str, str]:
    """(streaming data set with undecoded images, image column, text column) of the shards `--data` names."""
    builder, files = stream_files(data)
    with_errors = f"--data {data}"
    try:
        ds = datasets.load_dataset(builder, data_files={"train": files}, split="train", streaming=True,
                                   cache_dir=cache_dir)
    except Exception as error:  # the builders raise many types for unreadable shards
        raise UserError(f"{with_errors}: cannot stream {files[0]}... ({type(error).__name__}: {error})") from None
    features = ds.features or {}
    image = next((c for c in IMAGE_COLUMNS if c in features), None)
    text = next((c for c in TEXT_COLUMNS if c in features), None)
    if image is None or text is None:
        raise UserError(f"{with_errors}: expected an image column ({'/'.join(IMAGE_COLUMNS)}) and a caption column "
                        f"({'/'.join(TEXT_COLUMNS)}), found {sorted(features)}")
    if isinstance(features[image], datasets.Image):
        ds = ds.cast_column(image, datasets.Image(decode=False))  # decoded by us: a broken file is skipped, counted
    return ds, image, text


def _caption(value) -> list[str]:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        value = [value]
    return [c.strip() for c in (value or []) if isinstance(c, str) and c.strip()]


def _image_value(value):
    return {"bytes": value, "path": None} if isinstance(value, bytes) else value


def fresh_position() -> dict:
    return {"pass": 0, "position": 0, "skipped_images": 0, "skipped_captions": 0}


class ShardBatches(torch.utils.data.IterableDataset):
    """Whole batches of decoded rows from one process's part of a stream; run in each data-loader worker (or in the
    process with no workers). `collator(rows)` turns `batch_size` rows (`image` a PIL image, `captions`, INDEX_KEY
    a per-sample seed key, `__key__`, `__pass__`) into a batch; the batch also carries META_KEY, the worker's
    position after it. `resume`: {worker id (str): position} to continue from."""

    def __init__(self, ds: datasets.IterableDataset, image_column: str, text_column: str, collator, batch_size: int,
                 *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle_buffer: int = 0):
        ds = split_dataset_by_node(ds, rank=rank, world_size=world_size) if world_size > 1 else ds
        self.ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer > 0 else ds
        self.image_column, self.text_column = image_column, text_column
        self.collator, self.batch_size, self.rank = collator, batch_size, rank
        self.resume: dict[str, dict] = {}

    @property
    def num_shards(self) -> int:
        return self.ds.num_shards

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        state = dict(self.resume.get(str(worker)) or fresh_position())
        rows = []
        while True:
            self.ds.set_epoch(state["pass"])
            from_start, kept = state["position"] == 0, 0
            # the pass's first `position` samples went into batches before the checkpoint: replay them undecoded
            for raw in itertools.islice(self.ds, state["position"], None):
                state["position"] += 1
                row = self._row(raw, state, worker)
                if row is None:
                    continue
                kept += 1
                rows.append(row)
                if len(rows) == self.batch_size:
                    batch = self.collator(rows)
                    batch[META_KEY] = {"worker": worker, **state}
                    rows = []
                    yield batch
            if from_start and kept == 0:  # else the worker would read its shards forever
                raise ValueError(f"process {self.rank}, data-loader worker {worker}: its shards hold no usable sample")
            state = {**state, "pass": state["pass"] + 1, "position": 0}

    def _row(self, raw: dict, state: dict, worker: int) -> dict | None:
        where = f"{raw.get('__url__', '')}:{raw.get('__key__', state['position'] - 1)}"
        captions = _caption(raw.get(self.text_column))
        if not captions:
            state["skipped_captions"] += 1
            logger.warning("skipped a sample without caption: %s (%d so far in this worker)", where,
                           state["skipped_captions"])
            return None
        image = load_image(_image_value(raw.get(self.image_column)))
        if image is None:
            state["skipped_images"] += 1
            logger.warning("skipped an unreadable image: %s (%d so far in this worker)", where,
                           state["skipped_images"])
            return None
        key = raw.get("__key__")
        identity = (raw.get("__url__"), key) if key is not None else (self.rank, worker, state["position"])
        # masks are drawn per sample from this key: the same on resume, other in every pass
        return {"image": image.convert("RGB"), "captions": captions, "__key__": key, "__pass__": state["pass"],
                INDEX_KEY: sample_seed("stream", state["pass"], *identity)}


class StreamLoader:
    """The training loop's data loader over `ShardBatches`: `num_workers` worker processes, batches handed out
    worker after worker (in the uninterrupted order after a resume too), moved to `device`. `state_dict` /
    `load_state_dict` save and restore the position (see the module's docstring)."""

    def __init__(self, batches: ShardBatches, *, num_workers: int = 0, device=None, seed: int = 0):
        self.batches, self.num_workers, self.device, self.seed = batches, num_workers, device, seed
        self.positions: dict[str, dict] = {}  # worker -> position after its last batch handed out
        self.cursor = 0  # the worker whose batch comes next

    def set_epoch(self, epoch: int) -> None:  # the stream counts its own passes
        pass

    def __iter__(self):
        self.batches.resume = dict(self.positions)
        workers = max(self.num_workers, 1)
        loader = torch.utils.data.DataLoader(
            self.batches, batch_size=None, num_workers=self.num_workers, persistent_workers=False,
            generator=torch.Generator().manual_seed(self.seed))  # not the global RNG: dropout draws from it
        pending = {w: deque() for w in range(workers)}
        iterator = iter(loader)
        while True:
            while not pending[self.cursor]:  # the loader starts at worker 0; hold others' batches until their turn
                batch = next(iterator)
                pending[batch[META_KEY]["worker"]].append(batch)
            batch = pending[self.cursor].popleft()
            meta = batch.pop(META_KEY)
            self.positions[str(self.cursor)] = {k: v for k, v in meta.items() if k != "worker"}
            self.cursor = (self.cursor + 1) % workers
            yield send_to_device(batch, self.device) if self.device is not None else batch

    def skipped(self) -> dict[str, int]:
        """Samples skipped so far by this process's workers (restored on resume)."""
        return {k: sum(p[k] for p in self.positions.values()) for k in ("skipped_images", "skipped_captions")}

    def state_dict(self, accelerator) -> dict:
        """Every process's position (call on every process: it gathers), JSON-serialisable."""
        local = {"cursor": self.cursor, "workers": self.positions}
        return {"num_processes": accelerator.num_processes, "num_workers": self.num_workers,
                "batch_size": self.batches.batch_size, "processes": gather_object([local])}

    def load_state_dict(self, state: dict | None, accelerator) -> None:
        if not state:
            return
        saved = (state["num_processes"], state["num_workers"], state["batch_size"])
        here = (accelerator.num_processes, self.num_workers, self.batches.batch_size)
        if saved != here:
            raise UserError(f"--resume_from_checkpoint: the stream was read by {saved[0]} processes x {saved[1]} "
                            f"workers in batches of {saved[2]}; resume it with the same (this run: {here[0]} x "
                            f"{here[1]}, batches of {here[2]})")
        mine = state["processes"][accelerator.process_index]
        self.cursor, self.positions = int(mine["cursor"]), {str(k): dict(v) for k, v in mine["workers"].items()}


def skipped_totals(loader: StreamLoader, accelerator) -> dict[str, int]:
    """Samples skipped by every process (call on every process)."""
    every = gather_object([loader.skipped()])
    return {k: sum(s[k] for s in every) for k in ("skipped_images", "skipped_captions")}


def build_stream(args, collator, accelerator) -> StreamLoader:
    """The loader of `--data` shards for examples/pretrain.py, checked against the run's processes and workers."""
    if args.max_train_steps is None:
        raise UserError(f"--data {args.data}: a stream has no length; give --max_train_steps")
    ds, image, text = open_stream(args.data, cache_dir=args.cache_dir)
    batches = ShardBatches(ds, image, text, collator, args.per_device_train_batch_size,
                           rank=accelerator.process_index, world_size=accelerator.num_processes, seed=args.seed,
                           shuffle_buffer=args.shuffle_buffer)
    if batches.num_shards < max(args.num_workers, 1):
        raise UserError(f"--data {args.data}: {batches.num_shards} shards per process cannot feed "
                        f"--num_workers {args.num_workers} (each worker reads whole shards); write more shards or "
                        f"use fewer workers")
    return StreamLoader(batches, num_workers=args.num_workers, device=accelerator.device, seed=args.seed)


__all__ = ["META_KEY", "ShardBatches", "StreamLoader", "build_stream", "expand_braces", "open_stream",
           "skipped_totals", "stream_files"]
