"""`make demo`: pre-train a small VLMAE on Shapes, fine-tune and evaluate retrieval, VQA and grounding.

Runs examples/pretrain.py, finetune.py and evaluate.py in this one process (the same code `accelerate launch`
runs), on a GPU when there is one and on the CPU otherwise, prints a table of test-split results beside
chance level, and leaves every model folder under --output_dir (the pre-trained one is ready to push:
`model.push_to_hub` / `vl_models.hub`). About 11 CPU-minutes: 8 minutes on a 2-core machine that is not busy
with other work (docs/training.md has measured times and results).
"""

from __future__ import annotations

import os

# OpenMP threads spin while they wait for work; on a busy 2-core machine that spinning steals the core the
# other thread needs and a step gets several times slower. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from vl_models.training.runner import Timer, load_script, mean_box_baseline  # noqa: E402

HERE = Path(__file__).resolve().parent
GPU = torch.cuda.is_available()
# (pre-training updates, fine-tuning updates of retrieval / VQA / grounding, batch size, Shapes images); the CPU
# row is sized for under 10 minutes on 2 cores; pre-training gets most of it: learning from scratch needs a few
# hundred updates before zero-shot retrieval and ITM leave chance (docs/methods.md, "Learning from scratch")
STEPS = {"cpu": (700, (300, 300, 300), 32, 3000), "gpu": (3000, (1500, 1000, 1000), 64, 20000)}
TASKS = ("retrieval", "vqa", "grounding")


def script(name: str):
    return load_script(HERE / f"{name}.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kind = "gpu" if GPU else "cpu"
    pre, fine, batch, images = STEPS[kind]
    parser.add_argument("--output_dir", default="outputs/demo", help="where the model folders and results go")
    parser.add_argument("--pretrain_steps", type=int, default=pre, help="pre-training updates")
    parser.add_argument("--finetune_steps", type=int, nargs=3, default=fine, metavar=("RETRIEVAL", "VQA", "GROUNDING"),
                        help="fine-tuning updates of each task")
    parser.add_argument("--finetune_learning_rate", type=float, default=3e-4,
                        help="fine-tuning learning rate (the task head's is 10x: finetune.py --head_learning_rate)")
    parser.add_argument("--batch_size", type=int, default=batch, help="batch size of every stage")
    parser.add_argument("--num_train_images", type=int, default=images, help="Shapes training images per task")
    parser.add_argument("--num_test_images", type=int, default=300, help="Shapes validation and test images")
    parser.add_argument("--size", default="small", help="VLMAE size preset")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything")
    args = parser.parse_args()

    out = Path(args.output_dir)
    timer = Timer("demo")
    wall, cpu = time.perf_counter(), time.process_time()
    pretrain, finetune, evaluate = (timer.run(f"import {n}", script, n) for n in ("pretrain", "finetune", "evaluate"))
    print(f"[demo] device: {'cuda' if GPU else 'cpu'} ({torch.get_num_threads()} threads); output: {out}", flush=True)
    common = ["--seed", str(args.seed), "--per_device_train_batch_size", str(args.batch_size),
              "--num_train_images", str(args.num_train_images), "--num_val_images", str(args.num_test_images),
              "--checkpointing_steps", "0", "--logging_steps", "20"]
    shapes = ["--num_test_images", str(args.num_test_images)]
    pretrained = out / "pretrained"
    timer.run("pre-train", pretrain.main, [
        "--method", "vlmae", "--size", args.size, "--output_dir", str(pretrained), "--max_train_steps",
        str(args.pretrain_steps), "--eval_steps", str(max(1, args.pretrain_steps // 2)), *common])
    def rank_both_ways(folder: Path, name: str) -> None:
        """Retrieval on the test split ranked by ITC alone, and with ITM re-ranking each query's top 16: ALBEF's
        inference, its k = 256 of 5000 COCO images scaled to the 300 here."""
        for suffix, k in (("", 0), ("-itm", 16)):
            results[name + suffix] = timer.run(f"evaluate {name + suffix}", evaluate.main, [
                "--model_name_or_path", str(folder), "--task", "retrieval", "--split", "test", "--itm_k", str(k),
                "--output_file", str(folder / f"eval_results_{name + suffix}.json"), *shapes])[0]

    results = {}
    rank_both_ways(pretrained, "zero-shot")
    for task, steps in zip(TASKS, args.finetune_steps):
        folder = out / task
        timer.run(f"fine-tune {task}", finetune.main, [
            "--task", task, "--model_name_or_path", str(pretrained), "--output_dir", str(folder),
            "--max_train_steps", str(steps), "--eval_steps", "0", "--eval_max_images", "100", "--learning_rate",
            str(args.finetune_learning_rate), *common, *shapes])
        if task == "retrieval":
            rank_both_ways(folder, "retrieval")
        else:
            results[task] = timer.run(f"evaluate {task}", evaluate.main, [
                "--model_name_or_path", str(folder), "--split", "test", *shapes])[0]
    results["grounding"]["metrics"]["mean_box_baseline"] = mean_box_baseline(
        args.num_train_images, args.num_test_images)["accuracy"]
    total_wall, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
    print_table(results, args.num_test_images)
    (out / "demo_results.json").write_text(json.dumps(
        {"results": results, "stages": timer.rows, "wall_s": total_wall, "cpu_s": total_cpu}, indent=2))
    print(f"\ntotal {total_wall / 60:.1f} min wall, {total_cpu / 60:.1f} min CPU ({torch.get_num_threads()} threads)")
    print(f"pre-trained VLMAE ({args.size}), ready to push: {pretrained}")
    for task in TASKS:
        print(f"fine-tuned {task}: {out / task}")
    print(f"logs: <folder>/logs/log.jsonl; results: <folder>/eval_results.json and {out / 'demo_results.json'}")


def print_table(results: dict, num_test: int) -> None:
    zs, zi, rt, ri = (results[k]["metrics"] for k in ("zero-shot", "zero-shot-itm", "retrieval", "retrieval-itm"))
    vqa, gr = results["vqa"]["metrics"], results["grounding"]["metrics"]
    chance = zs["chance_text_to_image_r1"]
    rows = [
        ("retrieval text->image R@1", zs["text_to_image_r1"], rt["text_to_image_r1"], chance),
        ("retrieval image->text R@1", zs["image_to_text_r1"], rt["image_to_text_r1"], chance),
        ("retrieval text->image R@5", zs["text_to_image_r5"], rt["text_to_image_r5"], 5 / num_test),
        ("  with ITM re-ranking, R@1", zi["text_to_image_r1"], ri["text_to_image_r1"], chance),
        ("  with ITM re-ranking, R@5", zi["text_to_image_r5"], ri["text_to_image_r5"], 5 / num_test),
        ("VQA accuracy", None, vqa["accuracy"], vqa.get("majority_baseline")),
        ("grounding accuracy (IoU>=0.5)", None, gr["accuracy"], gr.get("mean_box_baseline")),
        ("grounding mean IoU", None, gr["mean_iou"], None),
    ]
    print(f"\nShapes test split ({num_test} images)")
    print(f"| {'metric':30s} | zero-shot | fine-tuned | chance |")
    print(f"|{'-' * 32}|-----------|------------|--------|")
    for name, zero, tuned, chance in rows:
        cells = [f"{zero:9.3f}" if zero is not None else " " * 9, f"{tuned:10.3f}" if tuned is not None else " " * 10]
        cells.append(f"{chance:6.3f}" if chance is not None else " " * 6)
        print(f"| {name:30s} | " + " | ".join(cells) + " |")
    print("chance: retrieval 1/N images (k/N for R@k); VQA the most common answer; grounding the mean box")


if __name__ == "__main__":
    main()
