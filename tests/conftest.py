"""Shared fixtures: tiny models for every registered method, deterministic inputs, an isolated HF cache."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path_factory, monkeypatch):
    """Nothing a test does touches the user's Hugging Face cache (evaluate and datasets write lock files)."""
    home = tmp_path_factory.getbasetemp() / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make_batch(config, batch_size: int = 4, seq_len: int = 10, seed: int = 0) -> dict:
    """Random pixels and captions of the right shapes for `config` ([CLS] ... [SEP], one row padded)."""
    g = torch.Generator().manual_seed(seed)
    vision, text = config.vision_config, config.text_config
    pixels = torch.randn(batch_size, vision.num_channels, vision.image_size, vision.image_size, generator=g)
    low = max(text.special_token_ids) + 1
    ids = torch.randint(low, text.vocab_size, (batch_size, seq_len), generator=g)
    ids[:, 0] = text.cls_token_id
    ids[:, -1] = text.sep_token_id
    mask = torch.ones_like(ids)
    if batch_size > 1:
        ids[1, -3] = text.sep_token_id
        ids[1, -2:] = text.pad_token_id
        mask[1, -2:] = 0
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}


@pytest.fixture
def prepared():
    """A tiny linear model, AdamW and a schedule prepared by a CPU `Accelerator` (the schedule registered for
    checkpointing): what the checkpoint and optimizer-step tests drive."""
    from accelerate import Accelerator
    from torch import nn

    from vl_models.training import build_scheduler

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = build_scheduler(optimizer, 0, 10)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    yield accelerator, model, optimizer, scheduler
    accelerator._custom_objects.clear()
