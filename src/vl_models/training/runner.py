"""Running the example scripts in one process: what examples/demo.py and examples/study.py share.

`load_script` imports examples/pretrain.py, finetune.py and evaluate.py as modules so their `main(argv)` runs
in the calling process (the same code `accelerate launch` runs); `Timer` keeps the wall and CPU time of each
stage. (A run of minutes needs no config overrides: the tiny and small presets are made for it.)
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np


def load_script(path: str | Path):
    """Load a script (e.g. examples/evaluate.py) as a module named `vl_examples_<stem>`: a distinct name, since
    `evaluate` would shadow the Hugging Face package."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"`path` must be a script file, got {path}")
    spec = importlib.util.spec_from_file_location(f"vl_examples_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Timer:
    """Wall and CPU time of each stage: `rows` holds (name, wall seconds, CPU seconds)."""

    def __init__(self, prefix: str = "run", verbose: bool = True):
        self.prefix, self.verbose = prefix, verbose
        self.rows: list[tuple[str, float, float]] = []

    def run(self, name: str, fn, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        self.rows.append((name, time.perf_counter() - wall, time.process_time() - cpu))
        if self.verbose:
            print(f"[{self.prefix}] {name}: {self.rows[-1][1]:.0f} s wall, {self.rows[-1][2]:.0f} s CPU", flush=True)
        return result

    def total(self, name: str | None = None) -> tuple[float, float]:
        """(wall, CPU) seconds of every stage, or of the stages called `name`."""
        rows = [r for r in self.rows if name is None or r[0] == name]
        return sum(r[1] for r in rows), sum(r[2] for r in rows)


def mean_box_baseline(num_train: int, num_test: int, *, seed: int = 0, image_size: int = 64) -> dict:
    """Grounding chance level on Shapes: always predict the mean training box -> {"accuracy", "mean_iou"}."""
    from ..data import build_shapes
    from ..metrics.functional import grounding_accuracy

    train = build_shapes(num_train, 0, 0, image_size=image_size, seed=seed, tasks=("grounding",))
    test = build_shapes(0, 0, num_test, image_size=image_size, seed=seed, tasks=("grounding",))
    mean = np.asarray(train["grounding_train"]["box"]).mean(0)
    boxes = np.asarray(test["grounding_test"]["box"])
    return grounding_accuracy(np.repeat(mean[None], len(boxes), 0), boxes)


__all__ = ["Timer", "load_script", "mean_box_baseline"]
