"""Worker for tests/test_fsdp.py: ``torchrun --standalone --nproc_per_node 2 fsdp_worker.py METHOD MODE OUT``.

Both ranks build the same tiny pre-training model (dropout off) and the same global batches; each trains on its
half for a few AdamW updates, wrapped as MODE: "ddp" (torch's DistributedDataParallel) or "fsdp" (FSDP2's
`fully_shard` on every EncoderLayer / MultiwayLayer, then the whole model, as examples/accelerate_configs/fsdp.yaml
asks accelerate to do). Negatives and masks come from a generator seeded per step and rank, so both modes draw
the same ones. Rank 0 saves the losses and the full state dict (parameters and buffers: teachers, queues,
codebooks) to OUT/MODE.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

import vl_models
from vl_models.layers.transformer import EncoderLayer, MultiwayLayer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_batch  # noqa: E402

STEPS, GLOBAL_BATCH = 3, 8
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def build(method: str):
    overrides = {"text_config": NO_DROPOUT, "vision_config": NO_DROPOUT}
    if method in ("albef", "vlmae", "vq_mim"):
        overrides["queue_size"] = 16  # the tiny preset has none; the queue must stay right under sharding
    torch.manual_seed(0)
    config = vl_models.get_config(method, "tiny", **overrides)
    return vl_models.get_method(method).pretraining_class(config).train()


def main(method: str, mode: str, out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build(method)
    if mode == "fsdp":
        mesh = init_device_mesh("cpu", (world,))
        for module in model.modules():
            if isinstance(module, EncoderLayer | MultiwayLayer):
                fully_shard(module, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
    else:
        wrapped = DistributedDataParallel(model, find_unused_parameters=False)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(STEPS):
        batch = make_batch(model.config, batch_size=GLOBAL_BATCH, seed=step)
        half = GLOBAL_BATCH // world
        local = {k: v[rank * half:(rank + 1) * half] for k, v in batch.items()}
        generator = torch.Generator().manual_seed(1000 * step + rank)
        out_step = wrapped(**local, generator=generator)
        out_step.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append({k: float(v.detach()) for k, v in out_step.items() if k.startswith("loss")})
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    state.update({k: v for k, v in model.named_buffers()})  # buffers are not sharded: every rank holds them
    if rank == 0:
        torch.save({"losses": losses, "state": {k: v.detach().clone() for k, v in state.items()}}, out / f"{mode}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
