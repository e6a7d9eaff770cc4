"""Pieces of the training loop shared by examples/pretrain.py and examples/finetune.py.

The loops themselves stay in the scripts (transformers' no_trainer style); this module holds what both need:
the shared command-line flags, the accelerator, per-step generators, the optimizer step with clipping and a
non-finite guard, loss averaging across processes, the final save and the push to the Hub.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from tqdm.auto import tqdm

from ..configuration_utils import check_field_names
from ..data.collators import sample_seed
from ..layers.accumulation import accumulating
from ..layers.codebook import VectorQuantizer
from .checkpoint import STATE_FILE, load_checkpoint, resolve_checkpoint, save_checkpoint, write_atomic
from .data import UserError, user_errors
from .guard import NonFiniteGuard, describe_event
from .logging import Throughput, build_trackers

logger = logging.getLogger(__name__)

# per-size defaults of the scripts (a flag given on the command line wins)
TRAINING_PRESETS = {
    "tiny": {"per_device_train_batch_size": 8, "learning_rate": 3e-4, "num_warmup_steps": 2},
    "small": {"per_device_train_batch_size": 32, "learning_rate": 3e-4, "num_warmup_steps": 50},
    "base": {"per_device_train_batch_size": 64, "learning_rate": 1e-4, "num_warmup_steps": 1000},
    "large": {"per_device_train_batch_size": 32, "learning_rate": 1e-4, "num_warmup_steps": 1000},
}


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """The flags both scripts share; names follow transformers' no_trainer examples."""
    g = parser.add_argument_group("optimisation")
    g.add_argument("--per_device_train_batch_size", type=int, default=None,
                   help="batch size per process (default: the size preset's; pre-training needs >= 2)")
    g.add_argument("--per_device_eval_batch_size", type=int, default=64, help="batch size per process for evaluation")
    g.add_argument("--learning_rate", type=float, default=None, help="peak learning rate (default: the preset's)")
    g.add_argument("--weight_decay", type=float, default=0.02,
                   help="AdamW weight decay (not applied to biases, norms, embeddings, tokens, temperature)")
    g.add_argument("--num_train_epochs", type=int, default=1, help="epochs, unless --max_train_steps is given")
    g.add_argument("--max_train_steps", type=int, default=None, help="optimizer updates in total (overrides epochs)")
    g.add_argument("--num_warmup_steps", type=int, default=None, help="linear warmup updates (default: the preset's)")
    g.add_argument("--lr_scheduler_type", default="cosine",
                   help="'cosine' (warmup then cosine to 0) or any transformers scheduler name, e.g. 'linear'")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer update")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="clip the gradient norm to this (0: no clipping)")
    g.add_argument("--max_consecutive_skips", type=int, default=10,
                   help="stop after N updates in a row skipped for a non-finite loss or gradient norm")
    g = parser.add_argument_group("speed")
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                   help="autocast precision (default: accelerate's config / launch flag; bf16 also works on CPU)")
    g.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute activations in the backward pass (model.activation_checkpointing_enable())")
    g.add_argument("--torch_compile", action="store_true", help="compile the model with torch.compile (inductor)")
    g.add_argument("--attn_implementation", default="sdpa",
                   help="attention kernel: eager, sdpa, flash_attention_2 or flex_attention")
    g.add_argument("--num_workers", type=int, default=0, help="data-loader worker processes")
    g = parser.add_argument_group("run")
    g.add_argument("--output_dir", default=None, help="where checkpoints, logs and the final model go")
    g.add_argument("--seed", type=int, default=42, help="seed of weights, data order, masks and negatives")
    g.add_argument("--checkpointing_steps", type=int, default=500, help="save a checkpoint every N updates (0: never)")
    g.add_argument("--checkpoints_total_limit", type=int, default=3, help="keep only the newest N checkpoints")
    g.add_argument("--resume_from_checkpoint", default=None,
                   help="'latest' (the newest complete checkpoint in output_dir, if any) or a checkpoint folder")
    g.add_argument("--eval_steps", type=int, default=500, help="evaluate every N updates (0: only at the end)")
    g.add_argument("--logging_steps", type=int, default=10, help="log losses and samples/s every N updates")
    g.add_argument("--report_to", default="jsonl",
                   help="trackers: 'jsonl' (our log.jsonl), 'all' (jsonl + tensorboard etc. if installed), or a list")
    g.add_argument("--push_to_hub", action="store_true", help="push the final model and processor to the Hub")
    g.add_argument("--hub_model_id", default=None, help="repository for --push_to_hub, e.g. 'org/vlmae-small'")
    g.add_argument("--hub_private_repo", action="store_true", help="create the Hub repository as private")


# fine-tuning defaults (the warmup, when not given, is a tenth of the updates)
FINETUNE_DEFAULTS = {"per_device_train_batch_size": 32, "learning_rate": 1e-4}


def apply_presets(args: argparse.Namespace, defaults: dict) -> argparse.Namespace:
    """Fill the flags left unset (None) from `defaults`, e.g. `TRAINING_PRESETS[size]`, then check them."""
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.push_to_hub and not args.hub_model_id:
        raise SystemExit("error: --push_to_hub needs --hub_model_id")
    check_training_args(args)
    return args


# flag -> (smallest value, whether None is allowed); floats must also be finite
_FLAG_MINIMUMS = {
    "per_device_train_batch_size": (1, False), "per_device_eval_batch_size": (1, False),
    "gradient_accumulation_steps": (1, False), "logging_steps": (1, False), "num_train_epochs": (1, False),
    "max_train_steps": (1, True), "num_warmup_steps": (0, True), "checkpointing_steps": (0, False),
    "checkpoints_total_limit": (0, False), "eval_steps": (0, False), "max_consecutive_skips": (1, False),
    "num_workers": (0, False), "weight_decay": (0, False), "max_grad_norm": (0, False),
    "shuffle_buffer": (0, False),
}


def check_training_args(args: argparse.Namespace) -> None:
    """Refuse flag values that would crash later (`--logging_steps 0`: a ZeroDivisionError after training
    started) or do something else than asked (`--checkpointing_steps -1`: a checkpoint every update) with a
    `UserError` naming the flag."""
    for name, (least, optional) in _FLAG_MINIMUMS.items():
        if not hasattr(args, name) or (getattr(args, name) is None and optional):
            continue
        value = getattr(args, name)
        if value is None or not math.isfinite(value) or value < least:
            raise UserError(f"--{name} must be >= {least}, got {value}")
    lr = getattr(args, "learning_rate", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--learning_rate must be finite and > 0, got {lr}")


def run_config(args: argparse.Namespace, **extra) -> dict:
    """The run's flags as plain scalars (what every tracker accepts as hyper-parameters: no None, no paths)."""
    values = {**vars(args), **extra}
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in values.items()}


_PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def parse_overrides(text: str | None, config_class: type | None = None) -> dict:
    """`--config_overrides "queue_size=0,text_config.hidden_dropout_prob=0"` -> nested kwargs (values as JSON
    when they parse, Python's True / False / None as themselves, else strings). With `config_class`, a key that is
    no field of it raises ValueError naming the closest (`configuration_utils.check_field_names`)."""
    out: dict = {}
    for item in filter(None, (text or "").split(",")):
        if "=" not in item:
            raise SystemExit(f"error: --config_overrides items must be key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:  # `flag=False` must not become the (truthy) string "False"
            value = _PYTHON_LITERALS[raw.strip()] if raw.strip() in _PYTHON_LITERALS else json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.strip().split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    if config_class is not None:
        check_field_names(config_class, out)
    return out


def make_accelerator(args, logging_dir: Path) -> Accelerator:
    """CPU-only machines get `cpu=True`, which is what makes `accelerate launch --multi_gpu --num_processes 2`
    run two gloo processes on a CPU (plain Accelerator() would start two independent runs)."""
    return Accelerator(
        cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=build_trackers(logging_dir, args.report_to), project_dir=str(args.output_dir),
        dynamo_backend="inductor" if args.torch_compile else None,
        dataloader_config=DataLoaderConfiguration(even_batches=True),
    )


def schedule(args, batches_per_epoch: int) -> tuple[int, int]:
    """(updates per epoch, total updates); sets args.max_train_steps / num_train_epochs consistently."""
    per_epoch = max(1, math.ceil(batches_per_epoch / args.gradient_accumulation_steps))
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / per_epoch)
    return per_epoch, args.max_train_steps


RESUME_MUST_MATCH = ("method", "size", "task")  # flags a checkpoint's state only fits with their own values


def resume_run(accelerator, args, checkpoint_dir: Path) -> tuple[int, dict | None]:
    """`--resume_from_checkpoint` -> (the update to continue from, the checkpoint's trainer state), or (0, None)
    for a fresh start. A checkpoint saved with another `--method`, `--size` or `--task` is refused before its state
    is loaded into a model it does not fit."""
    with user_errors("--resume_from_checkpoint"):
        folder = resolve_checkpoint(args.resume_from_checkpoint, checkpoint_dir)
        if folder is None:
            return 0, None
        saved = json.loads((folder / STATE_FILE).read_text()).get("args") or {}
        for key in RESUME_MUST_MATCH:
            if key in saved and hasattr(args, key) and str(saved[key]) != str(getattr(args, key)):
                raise UserError(f"--resume_from_checkpoint: {folder} was saved by a run with --{key} {saved[key]}, "
                                f"this one has --{key} {getattr(args, key)}")
    state = load_checkpoint(accelerator, folder)
    logger.info("resumed from %s at update %d", folder, state["step"])
    return state["step"], state


def finished_run(args, total: int) -> dict | None:
    """The scripts' result for a run that already ended in `--output_dir` (its final model saved, its results
    written) when this one would only restart it: `--resume_from_checkpoint latest` and no more updates asked
    for. The same command that restarts a preempted job is then a no-op on a finished one. None otherwise."""
    marker = Path(args.output_dir) / STATE_FILE
    if args.resume_from_checkpoint != "latest" or not marker.is_file():
        return None
    try:
        done = json.loads(marker.read_text())["step"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(done, int) and done >= total):
        return None
    logger.info("%s already finished at update %d: nothing to do (a larger --max_train_steps trains on)",
                args.output_dir, done)
    return {"step": done, "metrics": {}, "output_dir": str(args.output_dir)}


def mark_finished(output_dir: Path, step: int) -> None:
    """Written last by the main process, once everything the run was asked to do is done (`finished_run`)."""
    write_atomic(Path(output_dir) / STATE_FILE, json.dumps({"step": step, "finished": True}))


def step_generator(seed: int, micro_step: int, rank: int, device, *, global_rng: bool = False
                   ) -> torch.Generator | None:
    """The generator a model draws its negatives (and masks a collator did not make) from: one per micro-batch
    and process, so a resumed run draws what the uninterrupted one did. With `global_rng` (torch.compile:
    dynamo cannot trace an explicit generator and splits the graph at each draw, 11-16 times per pre-training
    step) the global RNGs are seeded with the same seed instead and None is returned: the step's draws, dropout's
    included, are then as much a function of (seed, micro-step, rank)."""
    step_seed = sample_seed("step", seed, micro_step, rank)
    if global_rng:
        torch.manual_seed(step_seed)  # every device's default generator
        return None
    device = torch.device(device)
    generator = torch.Generator(device=device) if device.type != "mps" else torch.Generator()
    return generator.manual_seed(step_seed)


def _codebooks(model) -> list[VectorQuantizer]:
    return [m for m in model.modules() if isinstance(m, VectorQuantizer)]


def loss_scale(accelerator) -> float | None:
    """The fp16 gradient scaler's current scale (None without one)."""
    scaler = getattr(accelerator, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None else None


def optimizer_step(accelerator, model, optimizer, scheduler, max_grad_norm: float,
                   guard: NonFiniteGuard | None = None) -> tuple[float, bool]:
    """Clip, step and zero the gradients once they are synchronised. A non-finite gradient norm (the same on
    every process after all-reduce) or, with a `guard` that observed the micro-batches, a non-finite loss term
    on any process skips the update on every process: no optimizer or schedule step, and the codebook
    statistics the update's forwards changed (EMA, restarts) are reverted. With fp16 the gradient scaler
    decides about non-finite gradients itself, and its skips are handled the same way (they do not count towards
    stopping). Returns (gradient norm, whether the update was skipped); with a guard, raises `NonFiniteLossError`
    after `guard.max_consecutive` skips in a row."""
    norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else float("inf"))
    norm = float(norm) if norm is not None else float("nan")
    norm_counts = accelerator.mixed_precision != "fp16"  # fp16: the scaler skips inf/NaN gradients itself
    if guard is not None:
        skipped = guard.decide(accelerator, norm, norm_counts)
    else:
        skipped = norm_counts and not math.isfinite(norm)
    if skipped:
        if getattr(accelerator, "scaler", None) is not None:
            # fp16: clipping unscaled the gradients; close the scaler's step as optimizer.step() would have
            accelerator.scaler.update()
        logger.warning("update skipped on every process: %s",
                       describe_event(guard.event) if guard is not None else f"grad_norm={norm:.4g}")
    else:
        optimizer.step()
        # fp16: the gradient scaler found inf/NaN gradients and lowered its scale (routine while the scale
        # settles); as for any skipped update, the schedule waits and the codebook statistics are reverted
        skipped = accelerator.optimizer_step_was_skipped
        if skipped:
            logger.info("fp16: the gradient scaler skipped the update, loss scale now %g", loss_scale(accelerator))
    if skipped:
        for codebook in _codebooks(model):
            codebook.revert_updates()
    else:
        scheduler.step()
        for codebook in _codebooks(model):
            codebook.commit_updates()
    optimizer.zero_grad(set_to_none=True)
    if guard is not None:
        guard.check()
    return norm, skipped


def train_updates(accelerator, args, *, model, train_dl, collator, optimizer, scheduler, step: int, total: int,
                  per_epoch: int, checkpoint_dir, evaluate, forward, rows, desc: str,
                  resumed: dict | None = None, stream=None) -> tuple[int, dict]:
    """The update loop examples/pretrain.py and finetune.py share, from update `step` (0, or where the checkpoint
    `resumed` (its trainer state) left off: the epoch's first batches are skipped and the logging window's sums
    restored, so a resumed run sees the data and logs the values the uninterrupted one did) to `total`.
    `forward(batch, step, micro_step)` returns (model output, extra values to log); `rows(batch)` counts the
    batch's examples for samples/s. Per update: the non-finite guard, the window's means every `--logging_steps`, a
    checkpoint every `--checkpointing_steps`, `evaluate(step)` every `--eval_steps`, and once at the end unless the
    last update just did. `stream`: `train_dl` is a `streaming.StreamLoader`, which restores its own position (no
    batch is skipped here, there are no epochs) and whose state each checkpoint saves. Returns (the last update, the
    last metrics)."""
    meter, speed, metrics = LossMeter(), Throughput(), {}
    meter.load_state_dict((resumed or {}).get("log_window"), accelerator)
    guard = NonFiniteGuard(args.max_consecutive_skips)  # a non-finite loss skips the update on every process
    bar = tqdm(total=total, initial=step, disable=not accelerator.is_local_main_process, desc=desc)
    start_epoch = step // per_epoch
    skip = (step - start_epoch * per_epoch) * args.gradient_accumulation_steps
    # an epoch's last update may take fewer micro-batches (accelerate syncs at the end of the data loader): count
    # the micro-batches of whole epochs, not step x accumulation, or a resumed run draws other negatives
    if stream is not None:  # one endless pass; the loader resumed at its saved position
        start_epoch, skip, micro_step = 0, 0, step * args.gradient_accumulation_steps
    else:
        micro_step = start_epoch * len(train_dl) + skip
    model.train()
    epochs = range(start_epoch, args.num_train_epochs) if step < total else ()  # a finished run trains no more
    for epoch in epochs:
        train_dl.set_epoch(epoch)
        collator.set_epoch(epoch)
        skip = skip if epoch == start_epoch else 0
        for batch in accelerator.skip_first_batches(train_dl, skip) if skip else train_dl:
            with accelerator.accumulate(model):
                # teachers and codebooks change once per update (not per micro-batch); the codebook statistics of
                # the update's micro-batches are applied when the last one's block ends, before optimizer_step
                with accumulating(model, sync=accelerator.sync_gradients):
                    out, extra = forward(batch, step, micro_step)
                    guard.observe(out)
                    accelerator.backward(out.loss)
                micro_step += 1
                meter.update(out)
                speed.update(rows(batch) * accelerator.num_processes)
                if accelerator.sync_gradients:
                    grad_norm, skipped = optimizer_step(accelerator, model, optimizer, scheduler, args.max_grad_norm,
                                                        guard=guard)
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            if skipped:  # which loss term broke (averaged over processes), or the fp16 scaler's own skip
                accelerator.log(guard.event or {"skipped_update": 1.0, "loss_scale": loss_scale(accelerator)},
                                step=step)
            if step % args.logging_steps == 0 or step == total:
                values = meter.mean(accelerator)
                values.update(lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, epoch=epoch,
                              samples_per_s=speed.rate(), **extra)
                accelerator.log(values, step=step)
                bar.set_postfix(loss=f"{values.get('loss', float('nan')):.3f}")
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                state = {"epoch": epoch, "args": vars(args), "log_window": meter.state_dict(accelerator)}
                if stream is not None:
                    state["stream"] = stream.state_dict(accelerator)
                save_checkpoint(accelerator, checkpoint_dir, step, state, args.checkpoints_total_limit)
                speed.reset()
            if args.eval_steps and step % args.eval_steps == 0:
                metrics = evaluate(step)
                speed.reset()
            if step >= total:
                break
        if step >= total:
            break
    bar.close()
    if not (args.eval_steps and step % args.eval_steps == 0):
        metrics = evaluate(step)
    return step, metrics


class LossMeter:
    """Averages `loss*` and `*accuracy` outputs over the updates between two logs, and over processes. A
    non-finite value is left out of its average (a skipped update is logged on its own), so one bad batch does
    not turn a whole logging window into NaN; a key with no finite value in the window logs NaN."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.count = 0

    def update(self, output) -> None:
        for key, value in output.items():
            # every loss term and every accuracy (ViLTA adds itm_accuracy_inbatch / _synthetic), plus codebook stats
            logged = key.startswith(("loss", "codebook_")) or "accuracy" in key
            if value is not None and logged and torch.is_tensor(value) and value.ndim == 0:
                value = value.detach().float()
                finite = torch.isfinite(value)
                # every key is registered even when non-finite, so every process reduces the same keys
                self.sums[key] = self.sums.get(key, 0) + torch.where(finite, value, 0.0)
                self.counts[key] = self.counts.get(key, 0) + finite.float()
        self.count += 1

    def state_dict(self, accelerator) -> dict:
        """The open window's sums of every process, for a checkpoint (call on every process: it gathers)."""
        keys = sorted(self.sums)
        if not keys:
            return {"keys": []}
        local = torch.stack([self.sums[k] for k in keys] + [self.counts[k] for k in keys])
        every = accelerator.gather(local[None].to(accelerator.device)).cpu()  # (processes, 2 x keys)
        return {"keys": keys, "count": self.count, "values": every.tolist()}  # float32 -> JSON floats exactly

    def load_state_dict(self, state: dict | None, accelerator) -> None:
        """Reopen the window a checkpoint saved, each process with its own sums (on another number of processes
        the first takes them all: the logged means are the same, up to rounding)."""
        if not state or not state.get("keys"):
            return
        keys, values = state["keys"], torch.tensor(state["values"], dtype=torch.float32)
        if len(values) == accelerator.num_processes:
            row = values[accelerator.process_index]
        else:
            row = values.sum(0) if accelerator.is_main_process else torch.zeros_like(values[0])
        row = row.to(accelerator.device)
        self.sums = {k: row[i].clone() for i, k in enumerate(keys)}
        self.counts = {k: row[len(keys) + i].clone() for i, k in enumerate(keys)}
        self.count = int(state.get("count", 0))

    def mean(self, accelerator) -> dict[str, float]:
        """Call on every process (it all-reduces)."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] for k in keys] + [self.counts[k] for k in keys])
        values = accelerator.reduce(values.to(accelerator.device), reduction="sum").cpu()
        sums, counts = values[: len(keys)], values[len(keys):]
        self.sums, self.counts, self.count = {}, {}, 0
        return {k: float(s / c) if c > 0 else float("nan") for k, s, c in zip(keys, sums, counts)}


def save_final(accelerator, model, processor, output_dir: Path) -> None:
    """`save_pretrained` of the unwrapped model and the processor: a folder ready to push or load."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save, state_dict=accelerator.get_state_dict(model))
    if accelerator.is_main_process:
        processor.save_pretrained(output_dir)
    accelerator.wait_for_everyone()


def _result_key(record: dict) -> tuple:
    """What makes two results records the same evaluation: task, dataset, split, `zero_shot` and, for grounding,
    the `protocol` (supervised and weak results of one model are two records). A grounding record written before
    records said their protocol is a supervised one, the only protocol then."""
    default = "supervised" if record.get("task") == "grounding" else None
    return (record.get("task"), record.get("dataset"), record.get("split"), bool(record.get("zero_shot")),
            record.get("protocol", default))


def write_results(path: Path, records: list[dict]) -> list[dict]:
    """Merge `records` (`{"task", "dataset", "split", "metrics": {...}}`, the format the Hub model-card code
    reads) into the JSON list at `path`: a record replaces the one with the same task, dataset, split,
    `zero_shot` and grounding `protocol`, others are kept. Written atomically; returns the whole list."""
    path = Path(path)
    old = json.loads(path.read_text()) if path.is_file() else []
    keys = {_result_key(r) for r in records}
    merged = [r for r in old if _result_key(r) not in keys] + list(records)
    write_atomic(path, json.dumps(merged, indent=2))
    return merged


def load_quietly(load, *args, **kwargs):
    """`from_pretrained` without transformers' per-tensor load report (a new task head lists every tensor);
    returns (model, loading_info) so the caller can summarise it in one line. Tensors missing or unexpected
    beyond what the class declares (its task head; the method's pre-training-only modules) raise `ValueError`
    listing them: silenced, weights that do not fit (another method's, under a rewritten model_type) would load
    as a mostly random model."""
    import transformers

    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        model, info = load(*args, output_loading_info=True, **kwargs)
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    check = getattr(model, "check_loaded_keys", None)  # vl_models' models declare what may be fresh or left out
    if check is not None:
        check(info, args[0] if args else kwargs.get("pretrained_model_name_or_path"))
    return model, info


def push_to_hub(model, processor, repo_id: str, private: bool = False, results_file: Path | None = None):
    """Through `vl_models.hub.push_to_hub` (model card with the evaluation results of `results_file`, remote
    code) when that module provides it, else plain `push_to_hub` of the model and the processor."""
    try:
        from .. import hub
    except ImportError:
        hub = None
    push = getattr(hub, "push_to_hub", None)
    if push is None:
        model.push_to_hub(repo_id, private=private)
        processor.push_to_hub(repo_id, private=private)
        return repo_id
    kwargs = {"private": private}
    if results_file is not None and Path(results_file).is_file():
        results = [r for r in json.loads(Path(results_file).read_text()) if r.get("metrics")]
        kwargs.update({"results": results} if results else {})
    return push(model, processor, repo_id, **kwargs)


def default_output_dir(*parts: str) -> Path:
    return Path(os.environ.get("VL_MODELS_OUTPUT", "outputs")) / "-".join(parts)


__all__ = [
    "FINETUNE_DEFAULTS",
    "TRAINING_PRESETS",
    "LossMeter",
    "add_training_args",
    "train_updates",
    "apply_presets",
    "default_output_dir",
    "load_quietly",
    "make_accelerator",
    "optimizer_step",
    "parse_overrides",
    "push_to_hub",
    "run_config",
    "save_final",
    "schedule",
    "step_generator",
    "write_results",
]
