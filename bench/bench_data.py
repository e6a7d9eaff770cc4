"""How fast the input pipeline feeds a model: samples/s of JPEG decoding + processing + collation, per data-loader
worker, streamed from local WebDataset tar shards through `datasets`' streaming `webdataset` builder.

    python bench/bench_data.py --num-images 2048 --image-size 224 --workers 0 1 2

The shards are made here from Shapes images rendered at `--image-size` and saved as JPEG (quality 90), with their
first caption as `.txt`, as img2dataset writes them. The pipeline is what a streaming pre-training run would use:
`load_dataset("webdataset", streaming=True)`, the caption schema (`image`, `captions`), a `DataLoader` with
`--workers` worker processes (the shards are split between them) and the method's `PreTrainingCollator` at the
base preset (224 px). Each setting reads the whole set once after a warm-up batch. The model's own consumption
(`bench_pretrain_step.py`, samples/s per device) divided by the per-worker rate is the number of workers a
device needs. Writes bench/results/data.json.
"""

from __future__ import annotations

import argparse
import io
import tarfile
import time
from pathlib import Path

import datasets
import torch

import vl_models
from common import machine, print_table, write_json
from vl_models.data import build_shapes
from vl_models.data.collators import PreTrainingCollator
from vl_models.processing import build_processor

RESULTS = Path(__file__).resolve().parent / "results"


def write_shards(folder: Path, num_images: int, image_size: int, per_shard: int) -> list[Path]:
    """Shapes images as JPEG + caption pairs in tar shards of `per_shard` samples ("000000.jpg", "000000.txt")."""
    rows = build_shapes(num_images, 0, 0, image_size=image_size, seed=0, tasks=("captions",))["captions_train"]
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, num_images, per_shard):
        path = folder / f"shard-{start // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(start, min(start + per_shard, num_images)):
                row = rows[i]
                jpeg = io.BytesIO()
                row["image"].convert("RGB").save(jpeg, format="JPEG", quality=90)
                for suffix, payload in (("jpg", jpeg.getvalue()), ("txt", row["captions"][0].encode("utf-8"))):
                    info = tarfile.TarInfo(f"{i:06d}.{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        shards.append(path)
    return shards


def stream(shards: list[Path]) -> datasets.IterableDataset:
    """The shards as a streaming data set in the caption schema."""
    ds = datasets.load_dataset("webdataset", data_files={"train": [str(s) for s in shards]}, split="train",
                               streaming=True)
    return ds.map(lambda row: {"image": row["jpg"], "captions": [row["txt"]]}, remove_columns=["jpg", "txt"])


def samples_per_s(ds, collator, batch_size: int, workers: int) -> tuple[float, int]:
    """(samples/s over one pass after the first batch, samples counted)."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collator, num_workers=workers)
    count, start = 0, None
    for batch in loader:
        if start is None:  # the first batch pays for worker start-up and the builder's setup
            start = time.perf_counter()
            continue
        count += batch["pixel_values"].shape[0]
    return count / (time.perf_counter() - start), count


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=224, help="rendered (and model) image side")
    parser.add_argument("--per-shard", type=int, default=256, help="samples per tar shard")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--method", default="vlmae")
    parser.add_argument("--shards-dir", default=str(RESULTS / "webdataset-shapes"))
    parser.add_argument("--out", default=str(RESULTS / "data.json"))
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # one core per worker, as on a GPU node's data-loading cores
    shards = write_shards(Path(args.shards_dir), args.num_images, args.image_size, args.per_shard)
    spec = vl_models.get_method(args.method)
    config = vl_models.get_config(args.method, "base", vision_config={"image_size": args.image_size})
    processor = build_processor(spec.processor_class, image_size=args.image_size)
    collator = PreTrainingCollator(processor, config, spec.pretraining_class, seed=0)
    rows = []
    for workers in args.workers:
        rate, count = samples_per_s(stream(shards), collator, args.batch_size, workers)
        rows.append({"workers": workers, "samples": count, "samples_per_s": rate,
                     "per_worker": rate / max(workers, 1)})
    print_table(rows, ["workers", "samples", "samples_per_s", "per_worker"], floats="{:.1f}")
    meta = {"machine": machine("cpu"), "method": args.method, "image_size": args.image_size,
            "num_images": args.num_images, "shards": len(shards), "batch_size": args.batch_size}
    write_json(args.out, meta, rows)
    return rows


if __name__ == "__main__":
    main()
