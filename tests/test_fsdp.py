"""FSDP2 (torch's `fully_shard`, what examples/accelerate_configs/fsdp.yaml asks accelerate for) on 2 CPU processes
over gloo, against DDP on the same 2 processes: the same losses and the same final weights, teachers, queues and
codebooks. accelerate itself does not run FSDP on CPU (with `use_cpu` it falls back to DDP), so the worker shards
the model as accelerate's FSDP2 path does: every EncoderLayer / MultiwayLayer, then the whole model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "train_workers" / "fsdp_worker.py"


def _run(method: str, mode: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(WORKER), method, mode, str(out)], env=env, capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "Error" in line]
        raise RuntimeError(f"{mode} worker failed: {errors[:2]}")
    return torch.load(out / f"{mode}.pt")


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=RuntimeError, reason=(
    "known (issue 19 item 3): fully_shard refuses the 0-d `temp` parameter of the ITC heads; with it made 1-d, "
    "the momentum EMA inside forward mixes the root unit's unsharded tensors with the sub-units' sharded DTensors "
    "(`_foreach_lerp_ got mixed torch.Tensor and DTensor`), and an EMA written to unsharded tensors would be lost "
    "at reshard. Remove this marker once FSDP2 trains the align-fuse family"))
def test_fsdp2_trains_albef_as_ddp_does(tmp_path):
    ddp, fsdp = _run("albef", "ddp", tmp_path), _run("albef", "fsdp", tmp_path)
    for a, b in zip(ddp["losses"], fsdp["losses"], strict=True):
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert ddp["state"].keys() == fsdp["state"].keys()
    for key, tensor in ddp["state"].items():
        torch.testing.assert_close(fsdp["state"][key], tensor, atol=1e-5, rtol=1e-5, msg=key)
