"""Worker for test_losses.py: run with ``torchrun --standalone --nproc_per_node 2 dist_losses_worker.py OUT_DIR``.

Every rank builds the same global data from one seed, works on its own half, and saves what it saw to
OUT_DIR/rank{r}.pt; the test compares with one process on the whole batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from vl_models.layers.losses import contrastive_loss
from vl_models.layers.momentum import FeatureQueue


def make_data() -> dict:
    g = torch.Generator().manual_seed(1234)
    world = dist.get_world_size()
    # three queue steps: global batch 6, 6, then 14 (> queue size 10, so it wraps and trims)
    local_sizes = [3, 3, 7]
    return {
        "image": torch.randn(8, 16, generator=g),
        "text": torch.randn(8, 16, generator=g),
        "temperature": 0.07,
        "queue_dim": 4,
        "queue_size": 10,
        "queue_init": torch.randn(10, 4, generator=g),
        "queue_batches": [torch.randn(world * n, 4, generator=g) for n in local_sizes],
        "local_sizes": local_sizes,
    }


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = make_data()
    half = data["image"].shape[0] // world
    rows = slice(rank * half, (rank + 1) * half)
    img = data["image"][rows].clone().requires_grad_(True)
    txt = data["text"][rows].clone().requires_grad_(True)
    temp = torch.tensor(data["temperature"], requires_grad=True)
    loss = contrastive_loss(img, txt, temp)
    loss.backward()

    queue = FeatureQueue(data["queue_dim"], data["queue_size"])
    queue.features.copy_(data["queue_init"])
    for batch, n in zip(data["queue_batches"], data["local_sizes"]):
        queue.enqueue(batch[rank * n : (rank + 1) * n])

    torch.save(
        {
            "data": data,
            "loss": loss.item(),
            "image_grad": img.grad,
            "text_grad": txt.grad,
            "temp_grad": temp.grad.item(),
            "queue_features": queue.features.clone(),
            "queue_ptr": queue.ptr.clone(),
        },
        out_dir / f"rank{rank}.pt",
    )
    dist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    # explicit teardown and hard exit: avoids a rare SIGABRT at interpreter exit seen on this machine
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
