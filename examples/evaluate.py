"""Evaluate a model on retrieval, VQA, visual grounding, NLVR2 or semantic segmentation and write a results JSON.

    python examples/evaluate.py --model_name_or_path outputs/finetune-vqa            # task from the checkpoint
    python examples/evaluate.py --model_name_or_path outputs/pretrain-vlmae-small --task retrieval  # zero-shot
    accelerate launch examples/evaluate.py --model_name_or_path org/vlmae-base-vqa --data ... --split test
    python examples/evaluate.py --model_name_or_path outputs/finetune-segmentation --data /data/ADEChallengeData2016
    python examples/evaluate.py --model_name_or_path outputs/finetune-grounding-weak --task grounding \\
        --grounding_protocol weak --data refs(unc).p --instances_file instances.json --proposals dets.json --split test

Grounding is evaluated under one of two protocols, written into the record (`"protocol"`): `supervised` (default; a
box head's box, fine-tuned with boxes) or `weak` (ALBEF's weakly supervised protocol: Grad-CAM of the ITM score ranks
the given proposals, RefCOCO's detections from --proposals or a Shapes scene's objects).

The results (`[{"task", "dataset", "split", "metrics": {...}}]`, the list the Hub model-card code reads) are
merged into `--output_file` (default: eval_results.json in the model folder, when it is a local folder).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoConfig, AutoProcessor

from vl_models.training import (
    PRIMARY_METRIC,
    TASKS,
    UserError,
    add_data_args,
    check_model_folder,
    data_kwargs,
    eval_dataloader,
    evaluate_classification,
    evaluate_retrieval,
    load_quietly,
    load_task_data,
    majority_baseline,
    run_cli,
    setup_logging,
    task_class,
    task_classes,
    user_errors,
    write_results,
)
from vl_models.training.evaluation import add_grounding_args, evaluate_weak_grounding, grounding_model_task

logger = logging.getLogger("evaluate")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="model folder or Hub id")
    parser.add_argument("--task", default=None, choices=TASKS,
                        help="default: the checkpoint's task; a pre-training checkpoint gives zero-shot retrieval")
    parser.add_argument("--split", default="validation", choices=["validation", "test"], help="split to evaluate")
    parser.add_argument("--per_device_eval_batch_size", type=int, default=64, help="batch size per process")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="autocast precision")
    parser.add_argument("--output_file", default=None,
                        help="results JSON to merge into (default: <model folder>/eval_results.json, or "
                             "outputs/eval_results.json for a Hub id)")
    parser.add_argument("--seed", type=int, default=42, help="seed of Shapes' generation and of any sampling")
    add_data_args(parser)
    add_grounding_args(parser)
    args = parser.parse_args(argv)
    if args.output_file is None:
        folder = Path(args.model_name_or_path)
        args.output_file = folder / "eval_results.json" if folder.is_dir() else Path("outputs/eval_results.json")
    return args


def checkpoint_task(config) -> tuple[str, bool]:
    """(task, zero_shot) from the checkpoint's architecture: a task class gives its task, a pre-training or
    base model gives zero-shot retrieval."""
    names = set(config.architectures or [])
    for task, cls in task_classes(config.model_type).items():
        if cls.__name__ in names:
            return task, False
    return "retrieval", True


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    accelerator = Accelerator(cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
                              mixed_precision=args.mixed_precision)
    setup_logging(accelerator)
    with user_errors(f"--model_name_or_path {args.model_name_or_path}", OSError):
        check_model_folder(args.model_name_or_path)
        config = AutoConfig.from_pretrained(args.model_name_or_path)
        found_task, zero_shot = checkpoint_task(config)
        task = args.task or found_task
        # weak grounding ranks with the retrieval model (ITM head): fine-tuned on expressions, or zero-shot from
        # a pre-training checkpoint
        model_task = grounding_model_task(task, args.grounding_protocol)
        if model_task == "retrieval" and task == "grounding" and found_task != "retrieval":
            raise UserError(f"--grounding_protocol weak ranks proposals with an ITM head: {args.model_name_or_path} "
                            f"is a {found_task} checkpoint; give a pre-training checkpoint or one fine-tuned with "
                            f"examples/finetune.py --task grounding --grounding_protocol weak")
        zero_shot = zero_shot or model_task != found_task
        model_class = task_class(config.model_type, model_task, args.model_name_or_path)
        if zero_shot and model_task != "retrieval":
            hint = (" (a model fine-tuned with --grounding_protocol weak is evaluated with --grounding_protocol weak)"
                    if task == "grounding" else "")
            raise UserError(f"{args.model_name_or_path} has no {task} head (it is a {config.architectures} "
                            f"checkpoint): fine-tune it first with examples/finetune.py --task {task}{hint}")
        model, _ = load_quietly(model_class.from_pretrained, args.model_name_or_path)
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    answers = [config.id2label[i] for i in range(config.num_labels)] if task == "vqa" else None
    data, info = load_task_data(task, args.data, splits=(args.split,), answer_vocab=answers, seed=args.seed,
                                **data_kwargs(args))
    ds = data[args.split]
    if len(ds) == 0:
        raise UserError(f"--data {args.data}: the {args.split} split is empty")
    model = accelerator.prepare(model)
    weak = task == "grounding" and args.grounding_protocol == "weak"
    with accelerator.autocast():
        if weak:
            metrics = evaluate_weak_grounding(accelerator.unwrap_model(model), processor, ds, accelerator.device,
                                              batch_size=args.per_device_eval_batch_size, layer=args.gradcam_layer,
                                              max_examples=args.eval_max_images)
        elif task == "retrieval":
            metrics = evaluate_retrieval(accelerator.unwrap_model(model), processor, ds, accelerator.device,
                                         k=args.itm_k, max_images=args.eval_max_images)
        else:
            loader = accelerator.prepare(eval_dataloader(task, ds, processor, args.per_device_eval_batch_size,
                                                         num_labels=config.num_labels,
                                                         reduce_labels=info.get("reduce_labels", False)))
            metrics = evaluate_classification(task, model, loader, accelerator)
    baseline = majority_baseline(task, ds)
    if baseline is not None:
        metrics["majority_baseline"] = baseline
    record = {"task": task, "dataset": args.data, "split": args.split, "metrics": metrics,
              "model": str(args.model_name_or_path), "num_examples": len(ds),
              "skipped_images": info["skipped_images"]}
    if task == "grounding":
        record["protocol"] = args.grounding_protocol
    if zero_shot:
        record["zero_shot"] = True
    if accelerator.is_main_process:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        write_results(Path(args.output_file), [record])
        protocol = {"supervised": " (supervised)", "weak": " (weakly supervised)"}[args.grounding_protocol]
        protocol = protocol if task == "grounding" else ""
        print(f"{task}{protocol}{' (zero-shot)' if zero_shot else ''} on {args.data} [{args.split}], {len(ds)} examples:")
        for key, value in metrics.items():
            print(f"  {key:28s} {value:.4f}")
        print(f"{PRIMARY_METRIC[task]} = {metrics[PRIMARY_METRIC[task]]:.4f}; results in {args.output_file}")
    return [record]


if __name__ == "__main__":
    run_cli(main)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # see examples/pretrain.py
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
