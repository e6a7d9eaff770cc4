"""FLOPs of one pre-training step (forward + backward) per method, counted by torch's FlopCounterMode: the
machine-independent side of the step-time tables (matmuls and attention only; elementwise ops are not counted).

    python bench/bench_flops.py --sizes small base --batch-size 8
"""

from __future__ import annotations

import argparse

import torch

import vl_models
from common import counted_flops, machine, pretraining_batch, print_table, write_json


def step_flops(method: str, size: str, args) -> float:
    torch.manual_seed(0)
    config = vl_models.get_config(method, size)
    model = vl_models.get_method(method).pretraining_class(config).train()
    batch = pretraining_batch(config, args.batch_size, args.seq_len, "cpu")
    return counted_flops(lambda: model(**batch, generator=torch.Generator().manual_seed(0)).loss.backward())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=vl_models.list_methods(), help="methods to count")
    parser.add_argument("--sizes", nargs="+", default=["small", "base"], help="preset sizes")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--seq-len", type=int, default=30, help="caption tokens")
    parser.add_argument("--out", default="bench/results/flops.json", help="JSON output")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        for method in args.methods:
            rows.append({"method": method, "size": size, "gflop_per_step": step_flops(method, size, args) / 1e9})
        first = rows[-len(args.methods)]["gflop_per_step"]
        for row in rows[-len(args.methods):]:
            row[f"vs_{args.methods[0]}"] = first / row["gflop_per_step"]
    print_table(rows, ["method", "size", "gflop_per_step", f"vs_{args.methods[0]}"])
    write_json(args.out, {**machine("cpu"), "args": vars(args)}, rows)


if __name__ == "__main__":
    main()
