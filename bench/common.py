"""What every benchmark here shares: interleaved timing, the machine description, JSON and PNG output.

Candidates take turns repeat by repeat (interleaved), so a noisy shared machine slows all of them alike and
the ratios stay meaningful; absolute times are only worth quoting from a quiet machine or a GPU.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved_median_s(
    candidates: dict[str, Callable[[], object]], device, *, warmup: int = 2, repeats: int = 10
) -> dict[str, float]:
    """Median seconds per call of each candidate, the candidates called in turn within every repeat."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for repeat in range(warmup + repeats):
        for name, fn in candidates.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if repeat >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def counted_flops(fn: Callable[[], object]) -> float:
    """Matmul and attention FLOPs of one call of `fn` (torch's FlopCounterMode; elementwise ops are not counted).
    For a training step this is the model FLOPs that MFU and achieved-FLOP/s figures divide by."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def pretraining_batch(config, batch_size: int, seq_len: int, device) -> dict:
    """Random pixels and a full-length caption of random ordinary tokens, the same for every method."""
    g = torch.Generator().manual_seed(0)
    v, t = config.vision_config, config.text_config
    pixels = torch.randn(batch_size, 3, v.image_size, v.image_size, generator=g)
    ids = torch.randint(max(t.special_token_ids) + 1, t.vocab_size, (batch_size, seq_len), generator=g)
    ids[:, 0], ids[:, -1] = t.cls_token_id, t.sep_token_id
    return {"pixel_values": pixels.to(device), "input_ids": ids.to(device),
            "attention_mask": torch.ones_like(ids).to(device)}


def cpu_name() -> str:
    """The CPU model ("AMD EPYC 7B13"), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str) -> dict:
    """Where a figure came from: device name, CPU threads, load average, library versions."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"device": str(device), "device_name": name, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "load_average_1m": load, "torch": torch.__version__,
            "python": platform.python_version()}


def write_json(path: str | Path, meta: dict, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    print(f"wrote {path}")
    return path


def print_table(rows: list[dict], columns: list[str], floats: str = "{:.2f}") -> None:
    """A plain aligned table of the given columns (missing values print as '-')."""
    cells = [[floats.format(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in columns]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def plot_lines(path: str | Path, series: dict[str, tuple[list, list]], *, xlabel: str, ylabel: str, title: str,
               logx: bool = False, logy: bool = False, styles: dict[str, dict] | None = None) -> Path | None:
    """One PNG line plot of {label: (xs, ys)}, `styles` giving matplotlib keywords per label (e.g. a dashed
    estimate); skipped with a note when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipped {path}")
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, **{"marker": "o", **(styles or {}).get(label, {})}, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")
    return path
