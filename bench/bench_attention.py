"""Attention kernels side by side: eager vs sdpa (and, on CUDA, sdpa's flash / memory-efficient / cuDNN
backends), forward + backward of one `vl_models.layers.attention.Attention` block, with and without a key
padding mask, at the sequence lengths the methods use (base width: 12 heads of 64).

    python bench/bench_attention.py                      # CPU: a minute or two
    python bench/bench_attention.py --batch-size 32      # GPU

Sequence lengths: 40 caption tokens, 50 = VLMAE's visible patches + CLS (25% of 196), 197 = a ViT-B/16 image
at 224, 237 = an image-text pair in one multiway sequence, 577 = a 384-pixel image. Prints a table, writes
bench/results/attention.json, attention.png (time) and attention_memory.png (peak memory).
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from transformers import PreTrainedConfig

from common import interleaved_median_s, machine, plot_lines, print_table, write_json
from vl_models.kernels.memory import peak_extra_bytes
from vl_models.layers.attention import Attention, key_padding_mask

SEQ_LENS = (40, 50, 197, 237, 577)


def kernels(device: torch.device) -> dict[str, tuple[str, contextlib.AbstractContextManager | None]]:
    """name -> (attn_implementation, the sdpa backend to force, if any)."""
    out = {"eager": ("eager", None), "sdpa": ("sdpa", None)}
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend

        out["sdpa/flash"] = ("sdpa", SDPBackend.FLASH_ATTENTION)
        out["sdpa/mem_efficient"] = ("sdpa", SDPBackend.EFFICIENT_ATTENTION)
        out["sdpa/cudnn"] = ("sdpa", SDPBackend.CUDNN_ATTENTION)
    return out


def step_fn(impl: str, backend, seq_len: int, padded: bool, args, device):
    config = PreTrainedConfig()
    config._attn_implementation = impl
    torch.manual_seed(0)
    block = Attention(config, args.hidden_size, args.num_heads).to(device=device, dtype=args.dtype)
    x = torch.randn(args.batch_size, seq_len, args.hidden_size, device=device, dtype=args.dtype, requires_grad=True)
    mask = None
    if padded:  # every row keeps between half and all of its keys
        lengths = torch.randint(seq_len // 2, seq_len + 1, (args.batch_size,), generator=torch.Generator().manual_seed(0))
        mask = (torch.arange(seq_len)[None] < lengths[:, None]).long().to(device)
    attn_mask = key_padding_mask(config, x, mask)

    def run():
        ctx = contextlib.nullcontext() if backend is None else torch.nn.attention.sdpa_kernel(backend)
        with ctx:
            out, _ = block(x, attn_mask)
            out.float().sum().backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=list(SEQ_LENS), help="sequence lengths")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per call")
    parser.add_argument("--hidden-size", type=int, default=768, help="model width")
    parser.add_argument("--num-heads", type=int, default=12, help="attention heads")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per kernel (median reported)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench/results/attention.json", help="JSON output (PNG beside it)")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))

    rows = []
    for padded in (False, True):
        for seq_len in args.seq_lens:
            candidates = {}
            for name, (impl, backend) in kernels(device).items():
                try:
                    run = step_fn(impl, backend, seq_len, padded, args, device)
                    run()  # a backend that cannot take this input (e.g. flash with a mask) says so here
                    candidates[name] = run
                except RuntimeError as err:
                    rows.append({"seq_len": seq_len, "padded": padded, "kernel": name,
                                 "skipped": str(err).splitlines()[0][:80]})
            median = interleaved_median_s(candidates, device, repeats=args.repeats)
            for name, seconds in median.items():
                peak = peak_extra_bytes(candidates[name], device)  # untimed: the profiler slows the call
                rows.append({"seq_len": seq_len, "padded": padded, "kernel": name, "ms": seconds * 1e3,
                             "speedup_vs_eager": median["eager"] / seconds, "peak_mib": peak / 2**20})
    print_table(rows, ["seq_len", "padded", "kernel", "ms", "speedup_vs_eager", "peak_mib", "skipped"])
    meta = {**machine(device), "dtype": str(args.dtype), "batch_size": args.batch_size,
            "hidden_size": args.hidden_size, "num_heads": args.num_heads, "measure": "forward+backward"}
    out = write_json(args.out, meta, rows)
    title = f"attention, batch {args.batch_size}, {args.num_heads}x{args.hidden_size // args.num_heads}, " \
            f"{meta['device_name']}"
    for field, suffix, ylabel in (("ms", "", "ms (forward + backward)"),
                                  ("peak_mib", "_memory", "peak extra memory, forward + backward (MiB)")):
        series = {}
        for r in rows:
            if field in r:
                xs, ys = series.setdefault(f"{r['kernel']}{' (padded)' if r['padded'] else ''}", ([], []))
                xs.append(r["seq_len"])
                ys.append(r[field])
        plot_lines(out.with_name(out.stem + suffix + ".png"), series, xlabel="sequence length", ylabel=ylabel,
                   title=title, logy=True)


if __name__ == "__main__":
    main()
