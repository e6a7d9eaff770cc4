"""Worker for test_reliability.py: `torchrun --standalone --nproc_per_node 2 nonfinite_worker.py OUT_DIR`.

Both ranks train the same VQ-MIM tiny model (DDP through accelerate, gloo) on their own batches with
`NonFiniteGuard`. On some updates rank 1 alone adds a NaN constant to its loss: its gradients stay finite (the
constant has none), so only the all-reduced flag can tell rank 0 to skip too. Each rank writes what it saw to
OUT_DIR/rank{r}.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

import vl_models
from vl_models.training import (
    NonFiniteGuard,
    NonFiniteLossError,
    build_optimizer,
    build_scheduler,
    optimizer_step,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_batch  # noqa: E402

# update -> does rank 1 poison its loss; updates 4 and 5 in a row reach max_consecutive=2
POISON = {0: False, 1: True, 2: False, 3: False, 4: True, 5: True, 6: False}


def codebook_state(model) -> dict[str, torch.Tensor]:
    quantizer = model.mim_head.target.quantizer
    return {name: tensor.detach().clone() for name, tensor in quantizer._state().items()}


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def main(out_dir: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    torch.manual_seed(0)
    config = vl_models.get_config("vq_mim", "tiny", queue_size=0)
    model = vl_models.VqMimForPreTraining(config).train()
    optimizer = build_optimizer(model, 1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer.optimizer, 0, 20)
    inner = accelerator.unwrap_model(model)
    guard = NonFiniteGuard(max_consecutive=2)
    report = {"skipped": [], "weights_kept": [], "codebook_kept": [], "lr": [], "events": [], "stopped_at": None}
    for update, poison in POISON.items():
        before_w, before_c = weights(inner), codebook_state(inner)
        batch = make_batch(config, seed=10 * update + rank)
        out = model(**batch, generator=torch.Generator().manual_seed(update))
        loss = out.loss + float("nan") if poison and rank == 1 else out.loss
        guard.observe({**out, "loss": loss})
        accelerator.backward(loss)
        try:
            _, skipped = optimizer_step(accelerator, model, optimizer, scheduler, 1.0, guard=guard)
        except NonFiniteLossError as error:
            report["stopped_at"], report["message"] = update, str(error)
            skipped = True
        report["skipped"].append(skipped)
        report["weights_kept"].append(equal(before_w, weights(inner)))
        report["codebook_kept"].append(equal(before_c, codebook_state(inner)))
        report["lr"].append(scheduler.get_last_lr()[0])
        report["events"].append(guard.event if skipped else None)
        if report["stopped_at"] is not None:
            break
    report["final_weight_sum"] = float(sum(p.double().sum() for p in weights(inner).values()))
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report, default=str))
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # avoids a rare SIGABRT at exit after gloo on this machine (research/environment.md §6)
