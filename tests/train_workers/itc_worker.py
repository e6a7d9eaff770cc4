"""Worker for test_training.py: `torchrun --standalone --nproc_per_node 2 itc_worker.py OUT_DIR`.

Every rank builds the same ALBEF tiny pre-training model (queue_size 0, alpha 0, no dropout) and the same global
batch from one seed, runs the model on its half, and saves loss_itc and the ITC gradients to OUT_DIR/rank{r}.pt.
The test compares their mean with one process on the whole batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import vl_models

OVERRIDES = {"queue_size": 0, "alpha": 0.0,
             "text_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}
GRAD_NAMES = ("albef.vision_proj.weight", "albef.text_proj.weight", "temp")


def build(seed: int = 0):
    torch.manual_seed(seed)
    return vl_models.AlbefForPreTraining(vl_models.get_config("albef", "tiny", **OVERRIDES)).train()


def global_batch(config, batch_size: int = 8, seq_len: int = 9) -> dict:
    g = torch.Generator().manual_seed(1234)
    vision, text = config.vision_config, config.text_config
    pixels = torch.randn(batch_size, 3, vision.image_size, vision.image_size, generator=g)
    ids = torch.randint(max(text.special_token_ids) + 1, text.vocab_size, (batch_size, seq_len), generator=g)
    ids[:, 0], ids[:, -1] = text.cls_token_id, text.sep_token_id
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids)}


def itc_step(model, batch: dict) -> dict:
    out = model(**batch, generator=torch.Generator().manual_seed(0))
    out.loss_itc.backward()
    params = dict(model.named_parameters())
    return {"loss_itc": out.loss_itc.item(), **{name: params[name].grad.clone() for name in GRAD_NAMES}}


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build()
    batch = global_batch(model.config)
    half = batch["input_ids"].shape[0] // world
    local = {k: v[rank * half : (rank + 1) * half] for k, v in batch.items()}
    torch.save(itc_step(model, local), out_dir / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # avoids a rare SIGABRT at exit after gloo on this machine (research/environment.md §6)
