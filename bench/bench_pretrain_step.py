"""Pre-training step time (forward + backward + AdamW) per method and variant, measured side by side in one run.

Variants: `plain` (sdpa attention), `checkpointing` (activation checkpointing), `compile` (torch.compile; slow
to warm up on a CPU), `eager-attn` (the reference attention). Every (method, variant) takes its turn step by
step, so a noisy shared machine slows all of them alike and the ratios stay meaningful. Each method's model
FLOPs per step are counted on its plain step (torch's FlopCounterMode: matmuls and attention as they run, so
VLMAE's 25% visible patches and the momentum teachers' forward passes count as they are, and checkpointing's
recomputation does not); the table gives the achieved GFLOP/s and, on CUDA, model FLOPs utilisation (MFU) against
the GPU's dense bf16 peak. Prints a table and writes bench/results/pretrain_step.json.

    python bench/bench_pretrain_step.py --sizes small --steps 10
    python bench/bench_pretrain_step.py --sizes base --batch-size 8 --steps 5 --methods albef vlmae
    python bench/bench_pretrain_step.py --sizes base --batch-size 64 --bf16 --variants plain compile   # GPU
"""

from __future__ import annotations

import argparse

import torch

import vl_models
from common import counted_flops, interleaved_median_s, machine, pretraining_batch, print_table, write_json

VARIANTS = ("plain", "checkpointing", "compile", "eager-attn")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per GPU


def build(method: str, size: str, variant: str, args, device):
    torch.manual_seed(0)
    config = vl_models.get_config(method, size)
    model = vl_models.get_method(method).pretraining_class(config)
    model.set_attn_implementation("eager" if variant == "eager-attn" else "sdpa")
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    batch = pretraining_batch(config, args.batch_size, args.seq_len, device)

    def make_step(forward):
        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = forward(**batch, generator=torch.Generator(device=device).manual_seed(0)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    flops = counted_flops(make_step(model))  # the plain step's model FLOPs; doubles as a warm-up step
    if variant == "checkpointing":
        model.activation_checkpointing_enable()
    forward = torch.compile(model) if variant == "compile" else model
    return make_step(forward), sum(p.numel() for p in trainable), flops


def peak_flops(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=vl_models.list_methods(), help="methods to compare")
    parser.add_argument("--sizes", nargs="+", default=["small"], help="preset sizes")
    parser.add_argument("--variants", nargs="+", default=["plain", "checkpointing"], choices=VARIANTS)
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    parser.add_argument("--seq-len", type=int, default=30, help="caption tokens")
    parser.add_argument("--steps", type=int, default=10, help="timed steps each (after warm-up; median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps each")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--out", default="bench/results/pretrain_step.json", help="JSON output")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = peak_flops(device)

    rows = []
    for size in args.sizes:
        runs, info = {}, {}
        for method in args.methods:
            for variant in args.variants:
                step, params, flops = build(method, size, variant, args, device)
                runs[(method, variant)], info[(method, variant)] = step, (params, flops)
        median = interleaved_median_s(runs, device, warmup=args.warmup, repeats=args.steps)
        baseline = {v: median[(args.methods[0], v)] for v in args.variants}
        for (method, variant), seconds in median.items():
            params, flops = info[(method, variant)]
            row = {"method": method, "size": size, "variant": variant, "batch_size": args.batch_size,
                   "params_m": params / 1e6, "ms_per_step": seconds * 1e3, "samples_per_s": args.batch_size / seconds,
                   f"speedup_vs_{args.methods[0]}": baseline[variant] / seconds,
                   "vs_plain": median[(method, "plain")] / seconds if "plain" in args.variants else None,
                   "gflop_per_step": flops / 1e9, "achieved_gflops": flops / seconds / 1e9}
            if peak:
                row["mfu"] = flops / seconds / peak
            rows.append(row)
        del runs

    print(f"\nbf16 {args.bf16}, {args.seq_len} caption tokens")
    columns = ["method", "size", "variant", "batch_size", "params_m", "ms_per_step", "samples_per_s",
               f"speedup_vs_{args.methods[0]}", "vs_plain", "gflop_per_step", "achieved_gflops"]
    columns += ["mfu"] if peak else []
    print_table(rows, columns)
    write_json(args.out, {**machine(device), "args": vars(args)}, rows)


if __name__ == "__main__":
    main()
