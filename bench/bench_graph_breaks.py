"""Where torch.compile has to split each method's pre-training forward: graph breaks counted by
`torch._dynamo.explain` (tracing only, nothing is compiled or timed, so the counts do not depend on the machine).

Every break is a place where compiled code hands back to Python; a break from reading a tensor back to the host
(`int(t.max())`, `.item()`) is also a GPU synchronisation in eager mode. Two settings per method: `generator`
(the per-step `torch.Generator` the training scripts pass in eager mode: dynamo cannot trace one, so every
random draw given it breaks) and `global RNG` (what `--torch_compile` runs: the global RNG seeded per step).

    python bench/bench_graph_breaks.py
    python bench/bench_graph_breaks.py --methods albef --reasons
"""

from __future__ import annotations

import argparse
import collections

import torch

import vl_models
from common import machine, pretraining_batch, print_table, write_json

SETTINGS = {"generator": True, "global RNG": False}  # name -> pass the per-step generator


def explain(model, batch, *, generator: bool):
    torch._dynamo.reset()
    kwargs = {"generator": torch.Generator().manual_seed(0)} if generator else {}
    return torch._dynamo.explain(model)(**batch, **kwargs)


def where(reason) -> str:
    """file:line of the innermost vl_models frame of a break."""
    frames = [f for f in (reason.user_stack or []) if "vl_models" in f.filename]
    return f"{frames[-1].filename.split('vl_models/')[-1]}:{frames[-1].lineno}" if frames else "(outside vl_models)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=vl_models.list_methods(), help="methods to trace")
    parser.add_argument("--size", default="small", help="preset size (the counts do not depend on it)")
    parser.add_argument("--reasons", action="store_true", help="list each break's place and reason")
    parser.add_argument("--out", default="bench/results/graph_breaks.json", help="JSON output")
    args = parser.parse_args()
    rows = []
    for method in args.methods:
        torch.manual_seed(0)
        config = vl_models.get_config(method, args.size)
        model = vl_models.get_method(method).pretraining_class(config).train()
        batch = pretraining_batch(config, 4, 16, "cpu")
        row = {"method": method}
        for name, generator in SETTINGS.items():
            try:
                result = explain(model, batch, generator=generator)
            except Exception as err:  # a forward dynamo cannot trace at all: the table says so
                row[name] = f"fails: {type(err).__name__}"
                continue
            row[name] = result.graph_break_count
            if args.reasons:
                places = collections.Counter((where(r), r.reason.splitlines()[0][:80]) for r in result.break_reasons)
                print(f"{method}, {name}:")
                for (place, reason), count in places.most_common():
                    print(f"  {count}x {place}  {reason}")
        rows.append(row)
    print("graph breaks in one pre-training forward")
    print_table(rows, ["method", *SETTINGS])
    write_json(args.out, {**machine("cpu"), "torch": torch.__version__, "args": vars(args)}, rows)


if __name__ == "__main__":
    main()
