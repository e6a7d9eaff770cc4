"""Fine-tune a pre-trained model on a downstream task: retrieval, VQA, visual grounding, NLVR2 or (VL-BEiT)
semantic segmentation.

    accelerate launch examples/finetune.py --task vqa --model_name_or_path outputs/pretrain-vlmae-small
    accelerate launch examples/finetune.py --task retrieval --model_name_or_path org/vlmae-base \\
        --data /data/coco/dataset_coco.json --image_dir /data/coco
    accelerate launch examples/finetune.py --task segmentation --model_name_or_path outputs/pretrain-vl_beit-small \\
        --data /data/ADEChallengeData2016
    python examples/finetune.py --task grounding --grounding_protocol weak --model_name_or_path outputs/pretrain-vlmae-small

Grounding has two protocols: `supervised` (default) trains a box head on the boxes; `weak` (ALBEF's weakly supervised
RefCOCO+ protocol) fine-tunes ITC + ITM on the referring expressions alone, with the retrieval model's loss, and is
evaluated by ranking proposals with Grad-CAM (examples/evaluate.py --grounding_protocol weak).

The task head starts from scratch; the backbone comes from the pre-training folder or Hub id. Shapes is the
default data; other data goes through the readers of `vl_models.data` (docs/training.md lists the flags).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import AutoConfig, AutoProcessor

from vl_models.data.collators import accepts
from vl_models.training import (
    FINETUNE_DEFAULTS,
    PRIMARY_METRIC,
    TASKS,
    add_data_args,
    add_training_args,
    apply_presets,
    build_optimizer,
    build_scheduler,
    check_model_folder,
    data_kwargs,
    default_output_dir,
    eval_dataloader,
    evaluate_classification,
    evaluate_retrieval,
    finished_run,
    load_quietly,
    load_task_data,
    make_accelerator,
    make_dataloader,
    mark_finished,
    push_to_hub,
    resume_run,
    run_cli,
    run_config,
    save_final,
    schedule,
    setup_logging,
    step_generator,
    task_class,
    task_collator,
    train_updates,
    user_errors,
    write_results,
)
from vl_models.training.data import expressions_as_captions
from vl_models.training.evaluation import (
    add_grounding_args,
    evaluate_weak_grounding,
    grounding_model_task,
    row_proposals,
)

logger = logging.getLogger("finetune")
# the head starts from scratch on top of pre-trained weights: at one learning rate for both, either the head crawls
# or the backbone forgets (Shapes, VLMAE small, 300 updates: VQA 0.39 at 1e-4, 0.43 at 1e-3, 0.50 at 3e-4 with the
# head at 3e-3; grounding 0.55 at 1e-3, 0.71 at 3e-4 / 3e-3)
HEAD_LEARNING_RATE_MULTIPLIER = 10.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=TASKS, help="the downstream task")
    parser.add_argument("--model_name_or_path", required=True, help="pre-trained model folder or Hub id")
    add_data_args(parser)
    add_training_args(parser)
    add_grounding_args(parser)
    parser.add_argument("--head_learning_rate", type=float, default=None,
                        help=f"peak learning rate of the task head, which starts from scratch (default: "
                             f"{HEAD_LEARNING_RATE_MULTIPLIER:g} x --learning_rate, as ViLT; docs/training.md)")
    args = parser.parse_args(argv)
    apply_presets(args, FINETUNE_DEFAULTS)
    if args.head_learning_rate is None:
        args.head_learning_rate = HEAD_LEARNING_RATE_MULTIPLIER * args.learning_rate
    args.weak_grounding = args.task == "grounding" and args.grounding_protocol == "weak"
    # the task whose model, collator and loss train: weak grounding trains the retrieval model on the expressions
    args.model_task = grounding_model_task(args.task, args.grounding_protocol)
    name = ("finetune", args.task, "weak") if args.weak_grounding else ("finetune", args.task)
    args.output_dir = Path(args.output_dir or default_output_dir(*name))
    return args


def checkpoint_class(args) -> type:
    """The task class of the checkpoint's method, from its config alone: a method without a head for the task is
    refused before any data is read."""
    with user_errors(f"--model_name_or_path {args.model_name_or_path}", OSError):
        check_model_folder(args.model_name_or_path)
        config = AutoConfig.from_pretrained(args.model_name_or_path)
        return task_class(config.model_type, args.model_task, args.model_name_or_path)


def load_model(args, model_class, labels):
    """`model_class` from the checkpoint; `labels` (VQA: the answer vocabulary of the data, segmentation: its
    classes) become the head's labels."""
    kwargs = {"attn_implementation": args.attn_implementation}
    if labels is not None:
        kwargs["id2label"] = dict(enumerate(labels))
        kwargs["label2id"] = {a: i for i, a in enumerate(labels)}
    model, info = load_quietly(model_class.from_pretrained, args.model_name_or_path, **kwargs)
    logger.info("loaded %s from %s: %d new task-head tensors, %d pre-training-only tensors left out",
                model_class.__name__, args.model_name_or_path, len(info["missing_keys"]), len(info["unexpected_keys"]))
    return model, AutoProcessor.from_pretrained(args.model_name_or_path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    accelerator = make_accelerator(args, args.output_dir / "logs")
    setup_logging(accelerator)
    set_seed(args.seed)
    model_class = checkpoint_class(args)
    data, info = load_task_data(args.task, args.data, splits=("train", "validation"), seed=args.seed,
                                **data_kwargs(args))
    if args.weak_grounding and len(data["validation"]):
        row_proposals(data["validation"][0])  # RefCOCO without --proposals: refused now, not after training
    train_data = expressions_as_captions(data["train"]) if args.weak_grounding else data["train"]
    with user_errors(f"--model_name_or_path {args.model_name_or_path}", OSError):
        model, processor = load_model(args, model_class, info.get("answers", info.get("labels")))
    num_labels = model.config.num_labels if args.task in ("vqa", "segmentation") else None
    reduce_labels = info.get("reduce_labels", False)  # ADE20K's "other" (0) ignored
    collator = task_collator(args.model_task, processor, num_labels=num_labels, train=True, seed=args.seed,
                             reduce_labels=reduce_labels)
    train_dl = make_dataloader(train_data, collator, args.per_device_train_batch_size, seed=args.seed,
                               drop_last=True, num_workers=args.num_workers)
    eval_dl = eval_dataloader(args.task, data["validation"], processor, args.per_device_eval_batch_size,
                              num_labels=num_labels, reduce_labels=reduce_labels) if args.model_task != "retrieval" else None
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    optimizer = build_optimizer(model, args.learning_rate, args.weight_decay,
                                head_learning_rate=args.head_learning_rate)
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    eval_dl = accelerator.prepare(eval_dl) if eval_dl is not None else None
    per_epoch, total = schedule(args, len(train_dl))
    warmup = args.num_warmup_steps if args.num_warmup_steps is not None else total // 10
    scheduler = build_scheduler(optimizer.optimizer, warmup, total, name=args.lr_scheduler_type)
    accelerator.register_for_checkpointing(scheduler)
    checkpoint_dir = args.output_dir / "checkpoints"
    finished = finished_run(args, total)
    if finished is not None:
        return finished
    step, resumed = resume_run(accelerator, args, checkpoint_dir)

    def evaluate(step: int) -> dict:
        if args.model_task == "retrieval":
            metrics = {}
            if accelerator.is_main_process:
                with accelerator.autocast():
                    if args.weak_grounding:
                        metrics = evaluate_weak_grounding(accelerator.unwrap_model(model), processor,
                                                          data["validation"], accelerator.device,
                                                          batch_size=args.per_device_eval_batch_size,
                                                          layer=args.gradcam_layer,
                                                          max_examples=args.eval_max_images)
                    else:
                        metrics = evaluate_retrieval(accelerator.unwrap_model(model), processor, data["validation"],
                                                     accelerator.device, k=args.itm_k,
                                                     max_images=args.eval_max_images)
                model.train()
            accelerator.wait_for_everyone()
        else:
            with accelerator.autocast():
                metrics = evaluate_classification(args.task, model, eval_dl, accelerator)
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        if metrics:
            logger.info("update %d: validation %s %.4f", step, PRIMARY_METRIC[args.task],
                        metrics[PRIMARY_METRIC[args.task]])
        return metrics

    accelerator.init_trackers(f"finetune-{args.task}", config=run_config(args))
    accelerator.log({"data/train_examples": len(train_data), "data/skipped_images": info["skipped_images"]},
                    step=step)
    takes_generator = accepts(model_class, "generator")

    def forward(batch, step, micro_step):
        if takes_generator:
            batch["generator"] = step_generator(args.seed, micro_step, accelerator.process_index, accelerator.device,
                                                 global_rng=args.torch_compile)
        return model(**batch), {}

    step, metrics = train_updates(accelerator, args, model=model, train_dl=train_dl, collator=collator,
                                  optimizer=optimizer, scheduler=scheduler, step=step, total=total,
                                  per_epoch=per_epoch, checkpoint_dir=checkpoint_dir, evaluate=evaluate,
                                  forward=forward, rows=lambda batch: batch["pixel_values"].shape[0], desc=args.task,
                                  resumed=resumed)
    save_final(accelerator, model, processor, args.output_dir)
    if accelerator.is_main_process:
        record = {"task": args.task, "dataset": args.data, "split": "validation", "metrics": metrics}
        if args.task == "grounding":
            record["protocol"] = args.grounding_protocol
        write_results(args.output_dir / "eval_results.json", [record])
        logger.info("saved the fine-tuned model and processor to %s", args.output_dir)
        if args.push_to_hub:
            logger.info("pushed to %s", push_to_hub(accelerator.unwrap_model(model), processor, args.hub_model_id,
                                                     args.hub_private_repo, args.output_dir / "eval_results.json"))
        mark_finished(args.output_dir, step)
    accelerator.end_training()
    return {"step": step, "metrics": metrics, "output_dir": str(args.output_dir)}


if __name__ == "__main__":
    run_cli(main)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # see examples/pretrain.py
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
