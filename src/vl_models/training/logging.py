"""Run logs: a JSON-lines tracker for accelerate (no extra dependency), samples/s, console set-up."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process

LOG_FILE = "log.jsonl"


def _plain(value):
    """JSON-safe scalars: tensors and numpy numbers to float/int; non-finite floats as strings."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonlTracker(GeneralTracker):
    """Appends one JSON object per `accelerator.log` call to `<logging_dir>/log.jsonl` (main process only):
    `{"step": n, "time": unix seconds, **values}`; the run's configuration goes to `config.json`. The file is
    flushed after every line, so it can be followed (`tail -f`) and survives a crash."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, logging_dir: str | os.PathLike):
        super().__init__()
        self.logging_dir = Path(logging_dir)
        self.path = self.logging_dir / LOG_FILE
        self._file = None

    @on_main_process
    def start(self):
        self.logging_dir.mkdir(parents=True, exist_ok=True)
        drop_partial_line(self.path)  # a process killed mid-write leaves half a record: a resume appends after it
        self._file = open(self.path, "a")  # noqa: SIM115  (kept open for the run; append: a resume continues it)

    @property
    def tracker(self):
        return self._file

    @on_main_process
    def store_init_configuration(self, values: dict):
        with open(self.logging_dir / "config.json", "w") as handle:
            json.dump(_plain(values), handle, indent=2)

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        if self._file is None:
            self.start()
        record = {"step": step, "time": round(time.time(), 3), **_plain(values)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    @on_main_process
    def finish(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def drop_partial_line(path: str | os.PathLike) -> bool:
    """Cut a last line that has no newline (a write interrupted by a crash) off `path`; returns whether it did."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    size = path.stat().st_size
    with open(path, "rb+") as handle:
        handle.seek(max(0, size - (1 << 20)))  # a record is far shorter than 1 MiB
        tail = handle.read()
        if tail.endswith(b"\n"):
            return False
        keep = size - len(tail) + tail.rfind(b"\n") + 1
        handle.truncate(keep)
    logging.getLogger(__name__).warning("%s: dropped an incomplete last record (%d bytes)", path, size - keep)
    return True


def build_trackers(logging_dir: str | os.PathLike, report_to: str = "jsonl") -> list:
    """`--report_to`: "jsonl" (always available), "all" (jsonl + every tracker accelerate finds installed, e.g.
    tensorboard), or a comma-separated list such as "jsonl,tensorboard"."""
    from accelerate.utils import is_tensorboard_available

    names = [n.strip() for n in report_to.split(",") if n.strip()]
    trackers: list = []
    if "jsonl" in names or "all" in names:
        trackers.append(JsonlTracker(logging_dir))
    if "all" in names:
        trackers += ["tensorboard"] if is_tensorboard_available() else []
    trackers += [n for n in names if n not in ("jsonl", "all")]
    return trackers


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a `log.jsonl` file."""
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


class Throughput:
    """Samples (or anything) per second between two `rate()` calls; `reset()` after an evaluation or a
    checkpoint keeps their time out of the next rate."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.start = time.perf_counter()

    def update(self, n: int) -> None:
        self.count += n

    def rate(self) -> float:
        now = time.perf_counter()
        value = self.count / max(now - self.start, 1e-9)
        self.count, self.start = 0, now
        return value


def setup_logging(accelerator, level: int = logging.INFO) -> None:
    """Console logging: INFO on the main process, warnings only on the others."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, level=level if accelerator.is_main_process else logging.WARNING)
    import datasets
    import transformers

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per file of every checkpoint
    datasets.utils.logging.set_verbosity_warning()
    datasets.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if not accelerator.is_main_process:
        transformers.utils.logging.set_verbosity_error()


__all__ = ["LOG_FILE", "JsonlTracker", "Throughput", "build_trackers", "drop_partial_line", "read_log",
           "setup_logging"]
