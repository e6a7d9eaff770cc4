"""Memory of the streamed pre-training input (`vl_models.training.streaming`) against the number of shards: peak
RSS and samples/s of reading the same number of batches from corpora of 16 to 256 WebDataset shards.

    python bench/bench_streaming.py --shards 16 256 --batches 100

Each setting runs in a fresh process (peak RSS is per process): `ShardBatches` over `--shards` tar shards of
`--per-shard` Shapes JPEGs (`--image-size` px), a `--shuffle-buffer`, no data-loader worker, and the vlmae
`PreTrainingCollator` at the tiny preset; `--batches` batches of `--batch-size` are read (decoded, processed,
collated). A corpus materialised in memory would grow with the shards; the stream holds the shuffle buffer.
Writes bench/results/streaming.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def one(args) -> dict:
    import torch

    import vl_models
    from bench_data import write_shards
    from vl_models.data.collators import PreTrainingCollator
    from vl_models.processing import build_processor
    from vl_models.training.streaming import ShardBatches, StreamLoader, open_stream

    torch.set_num_threads(1)
    folder = Path(args.shards_dir) / f"{args.one}x{args.per_shard}"
    if not folder.is_dir():
        write_shards(folder, args.one * args.per_shard, args.image_size, args.per_shard)
    spec = vl_models.get_method("vlmae")
    config = vl_models.get_config("vlmae", "tiny", vision_config={"image_size": args.image_size})
    processor = build_processor(spec.processor_class, image_size=args.image_size)
    collator = PreTrainingCollator(processor, config, spec.pretraining_class, seed=0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ds, image, text = open_stream(str(folder))
    loader = iter(StreamLoader(ShardBatches(ds, image, text, collator, args.batch_size,
                                            shuffle_buffer=args.shuffle_buffer)))
    next(loader)
    start = time.perf_counter()
    for _ in range(args.batches - 1):
        next(loader)
    rate = (args.batches - 1) * args.batch_size / (time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"shards": args.one, "samples_in_corpus": args.one * args.per_shard, "samples_per_s": rate,
            "peak_rss_mb": peak / 1024, "rss_growth_mb": (peak - base) / 1024}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--shards-dir", default=str(RESULTS / "streaming-shards"))
    parser.add_argument("--out", default=str(RESULTS / "streaming.json"))
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args)))
        return []
    rows = []
    for shards in args.shards:
        child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--one", str(shards)]
        out = subprocess.run(child, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    from common import machine, print_table, write_json

    print_table(rows, ["shards", "samples_in_corpus", "samples_per_s", "peak_rss_mb", "rss_growth_mb"],
                floats="{:.1f}")
    write_json(args.out, {"machine": machine("cpu"), **{k: v for k, v in vars(args).items() if k != "one"}}, rows)
    return rows


if __name__ == "__main__":
    main()
