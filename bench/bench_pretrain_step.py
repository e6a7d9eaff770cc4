"""Pre-training step time (forward + backward + AdamW) per method, measured side by side in one run.

Methods take turns step by step (interleaved), so a noisy shared machine slows all of them alike and the
ratios stay meaningful. Prints a table and writes bench/results/pretrain_step.json.

    python bench/bench_pretrain_step.py --sizes small --steps 20
    python bench/bench_pretrain_step.py --sizes base --batch-size 8 --steps 5      # the papers' size
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import vl_models


def make_batch(config, batch_size: int, seq_len: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    v, t = config.vision_config, config.text_config
    pixels = torch.randn(batch_size, 3, v.image_size, v.image_size, generator=g)
    ids = torch.randint(max(t.special_token_ids) + 1, t.vocab_size, (batch_size, seq_len), generator=g)
    ids[:, 0], ids[:, -1] = t.cls_token_id, t.sep_token_id
    return {"pixel_values": pixels.to(device), "input_ids": ids.to(device),
            "attention_mask": torch.ones_like(ids).to(device)}


def build(method: str, size: str, args, device):
    torch.manual_seed(0)
    config = vl_models.get_config(method, size)
    model = vl_models.get_method(method).pretraining_class(config)
    model.set_attn_implementation(args.attn)
    if args.checkpointing:
        model.activation_checkpointing_enable()
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    step_fn = torch.compile(model) if args.compile else model
    return model, step_fn, optimizer, make_batch(config, args.batch_size, args.seq_len, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=vl_models.list_methods(), help="methods to compare")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], help="preset sizes")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    parser.add_argument("--seq-len", type=int, default=30, help="caption tokens")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per method (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method")
    parser.add_argument("--attn", default="sdpa", help="attention kernel: eager | sdpa | flash_attention_2 ...")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--out", default="bench/results/pretrain_step.json", help="JSON output")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    rows = []
    for size in args.sizes:
        runs = {m: build(m, size, args, device) for m in args.methods}
        times = {m: [] for m in args.methods}
        for step in range(args.warmup + args.steps):
            for method, (_, step_fn, optimizer, batch) in runs.items():  # interleaved: fair under noise
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                    loss = step_fn(**batch, generator=torch.Generator(device=device).manual_seed(step)).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if step >= args.warmup:
                    times[method].append(time.perf_counter() - start)
        baseline = statistics.median(times[args.methods[0]])
        for method in args.methods:
            median = statistics.median(times[method])
            model = runs[method][0]
            rows.append({
                "method": method, "size": size, "batch_size": args.batch_size, "median_ms": median * 1000,
                "samples_per_s": args.batch_size / median,
                f"speedup_vs_{args.methods[0]}": baseline / median,
                "params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
            })
        del runs

    key = f"speedup_vs_{args.methods[0]}"
    print(f"\ndevice: {device} ({platform.processor() or platform.machine()}), threads {torch.get_num_threads()}, "
          f"attn {args.attn}, checkpointing {args.checkpointing}, compile {args.compile}, bf16 {args.bf16}")
    print(f"{'method':<8} {'size':<6} {'batch':>5} {'ms/step':>9} {'samples/s':>10} {key:>18} {'params(M)':>10}")
    for r in rows:
        print(f"{r['method']:<8} {r['size']:<6} {r['batch_size']:>5} {r['median_ms']:>9.1f} "
              f"{r['samples_per_s']:>10.1f} {r[key]:>18.2f} {r['params_m']:>10.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
