"""Nearest-code lookup: `nearest_code` vs `cdist(...).argmin(-1)` vs a naive Python loop of chunked cdist.

The three methods take turns repeat by repeat (interleaved), so a noisy shared machine slows them alike
and the speedup ratios stay meaningful. Peak extra memory: on CUDA `torch.cuda.max_memory_allocated`
above the inputs; on CPU the peak of live tensor bytes from the profiler's allocator events
(`profile_memory=True`), a real measurement of torch allocations in a separate, untimed call
(`vl_models.kernels.memory.peak_extra_bytes`).
Combinations whose full N x K float32 matrix exceeds `--mem-cap-gb` skip the cdist method.
Prints a table and writes bench/results/codebook.json. On a shared CPU, `--threads 1` gives steadier
ratios: with 2 OpenMP threads every chunk's ops wait at a barrier for a descheduled thread.

    python bench/bench_codebook.py --quick                      # < 1 minute on a 2-core CPU
    python bench/bench_codebook.py --n 100000 --k 8192 --d 32   # one combination
    python bench/bench_codebook.py                              # the full grid (GPU; hours on CPU)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from common import machine, plot_lines, sync
from vl_models.kernels import nearest_code
from vl_models.kernels import triton_nearest_code as triton_kernel
from vl_models.kernels.memory import peak_extra_bytes
from vl_models.kernels.nearest_code import rows_per_chunk


def cdist_argmin(x, c, chunk_size):
    return torch.cdist(x, c).argmin(-1)


def naive_chunks(x, c, chunk_size):
    rows = rows_per_chunk(c.shape[0], chunk_size)
    return torch.cat([torch.cdist(x[s : s + rows], c).argmin(-1) for s in range(0, x.shape[0], rows)])


def fused(x, c, chunk_size):
    return nearest_code(x, c, chunk_size=chunk_size)


METHODS = {"nearest_code": fused, "cdist+argmin": cdist_argmin, "naive_chunks": naive_chunks}


def run_case(n, k, d, args, device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).to(device=device, dtype=args.dtype)
    c = torch.randn(k, d, generator=g).to(device=device, dtype=args.dtype)
    full_bytes = n * k * 4
    active = dict(METHODS)
    skipped = {}
    if full_bytes > args.mem_cap_gb * 2**30:
        skipped["cdist+argmin"] = f"N x K matrix {full_bytes / 2**30:.1f} GiB > cap {args.mem_cap_gb} GiB"
        active.pop("cdist+argmin")
    times = {name: [] for name in active}
    results = {}
    for name, fn in active.items():  # warm-up, and the answers to compare
        results[name] = fn(x, c, args.chunk_size)
        sync(device)
    for _ in range(args.repeats):
        for name, fn in active.items():
            sync(device)
            start = time.perf_counter()
            fn(x, c, args.chunk_size)
            sync(device)
            times[name].append(time.perf_counter() - start)
    base = results.get("cdist+argmin", results["naive_chunks"])
    agree = {name: (r == base).float().mean().item() for name, r in results.items()}
    rows = []
    ref_ms = statistics.median(times["cdist+argmin"]) * 1e3 if "cdist+argmin" in times else None
    for name in METHODS:
        row = {"n": n, "k": k, "d": d, "method": name}
        if name in skipped:
            row.update(skipped=skipped[name], est_peak_mib=full_bytes / 2**20)
        else:
            ms = statistics.median(times[name]) * 1e3
            peak = peak_extra_bytes(lambda fn=active[name]: fn(x, c, args.chunk_size), device)
            row.update(
                median_ms=ms,
                speedup_vs_cdist=ref_ms / ms if ref_ms else None,
                peak_extra_mib=peak / 2**20,
                agreement=agree[name],
            )
        rows.append(row)
    return rows


def fmt(row) -> str:
    head = f"{row['n']:>8} {row['k']:>5} {row['d']:>4} {row['method']:<13}"
    if "skipped" in row:
        return f"{head} {'skipped: ' + row['skipped']} (would need ~{row['est_peak_mib']:.0f} MiB)"
    speed = f"{row['speedup_vs_cdist']:.2f}x" if row["speedup_vs_cdist"] else "-"
    return (
        f"{head} {row['median_ms']:>10.1f} {speed:>8} {row['peak_extra_mib']:>10.1f} {row['agreement']:>7.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="rows N")
    parser.add_argument("--k", type=int, nargs="+", default=[1024, 8192], help="codebook sizes K")
    parser.add_argument("--d", type=int, nargs="+", default=[32, 256, 768], help="code dimensions D")
    parser.add_argument("--quick", action="store_true", help="N=1e4, K in {1024, 8192}, D in {32, 256}")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per method (median reported)")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: budget / K)")
    parser.add_argument("--mem-cap-gb", type=float, default=4.0, help="skip cdist when N x K exceeds this")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="bench/results/codebook.json", help="JSON output")
    parser.add_argument("--replot", type=Path, default=None, help="only redraw the plots of this JSON")
    args = parser.parse_args()
    if args.replot:
        return replot(args.replot)
    if args.quick:
        args.n, args.k, args.d = [10_000], [1024, 8192], [32, 256]
    args.dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    path = "triton" if device.type == "cuda" and triton_kernel.AVAILABLE else "chunked torch"
    print(f"device={device} threads={torch.get_num_threads()} dtype={args.dtype} nearest_code path={path}")
    memory = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "profiler allocator events"
    print(f"peak extra memory measured with {memory}; agreement = fraction equal to cdist+argmin")
    print(
        f"{'N':>8} {'K':>5} {'D':>4} {'method':<13} {'median ms':>10} {'speedup':>8} {'peak MiB':>10} {'agree':>7}"
    )
    rows = []
    for n in args.n:
        for k in args.k:
            for d in args.d:
                for row in run_case(n, k, d, args, device):
                    print(fmt(row), flush=True)
                    rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": str(device),
        "device_name": machine(device)["device_name"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_kernel.triton.__version__ if triton_kernel.AVAILABLE else None,
        "nearest_code_path": path,
        "dtype": str(args.dtype),
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "memory_measure": memory,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")
    plot_against_n(rows, out, f"{meta['device_name']}, {meta['threads']} thread(s)")


def replot(path: Path) -> None:
    """Redraw the plots from a JSON this script wrote (`--replot bench/results/codebook.json`)."""
    data = json.loads(path.read_text())
    meta = data["meta"]
    plot_against_n(data["rows"], path, f"{meta['device_name']}, {meta['threads']} thread(s)")


def plot_against_n(rows: list[dict], out: Path, machine_label: str) -> None:
    """Time and peak extra memory against N, one PNG pair per (K, D) measured at more than one N."""
    for k, d in sorted({(r["k"], r["d"]) for r in rows}):
        case = [r for r in rows if (r["k"], r["d"]) == (k, d)]
        if len({r["n"] for r in case}) < 2:
            continue
        time_series, memory_series = {}, {}
        for name in METHODS:
            ran = [r for r in case if r["method"] == name and "median_ms" in r]
            if ran:
                time_series[name] = ([r["n"] for r in ran], [r["median_ms"] / 1e3 for r in ran])
                memory_series[name] = ([r["n"] for r in ran], [r["peak_extra_mib"] for r in ran])
        # the N x K float32 matrix cdist holds, also where it was too large to run
        full = [r for r in case if r["method"] == "cdist+argmin"]
        estimate = "N x K float32 matrix (computed)"
        memory_series[estimate] = ([r["n"] for r in full], [r["n"] * k * 4 / 2**20 for r in full])
        title = f"K = {k}, D = {d} ({machine_label})"
        stem = out.with_name(f"{out.stem}_k{k}_d{d}")
        plot_lines(stem.with_name(stem.name + "_time.png"), time_series, xlabel="rows N", ylabel="seconds per call",
                   title=title, logx=True, logy=True)
        plot_lines(stem.with_name(stem.name + "_memory.png"), memory_series, xlabel="rows N",
                   ylabel="peak extra memory (MiB)", title=title, logx=True, logy=True,
                   styles={estimate: {"linestyle": "--", "marker": "x", "color": "grey"}})


if __name__ == "__main__":
    main()
