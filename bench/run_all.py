"""`make bench`: the CPU set of benchmarks, each in its own process, with sizes a 2-core machine finishes in
about 25 minutes. Results land in bench/results/ (JSON, PNG); docs/benchmarks.md explains them.
Pass `--gpu` on a CUDA machine for the larger settings the docs quote from a GPU."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
CPU = [
    ["bench_attention.py", "--batch-size", "4"],
    ["bench_codebook.py", "--quick", "--threads", "1"],
    ["bench_codebook.py", "--n", "10000", "100000", "1000000", "--k", "8192", "--d", "32", "--repeats", "2",
     "--threads", "1", "--out", "bench/results/codebook_sweep.json"],  # time and memory against N, plotted
    ["bench_pretrain_step.py", "--sizes", "small", "--steps", "10"],
    ["bench_vs_transformers.py", "--size", "small", "--repeats", "6"],
    ["bench_flops.py", "--sizes", "small", "base"],
]
GPU = [
    ["bench_attention.py", "--batch-size", "32"],
    ["bench_codebook.py"],
    ["bench_pretrain_step.py", "--sizes", "base", "--batch-size", "64", "--bf16", "--steps", "20",
     "--variants", "plain", "checkpointing", "compile"],
    ["bench_vs_transformers.py", "--size", "base", "--batch-size", "32", "--bf16"],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpu", action="store_true", help="the GPU settings")
    args = parser.parse_args()
    failed = []
    for cmd in GPU if args.gpu else CPU:
        print(f"\n=== {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        if subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]]) != 0:
            failed.append(cmd[0])
        print(f"=== {cmd[0]}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
