"""Optimizer parameter groups, the warmup + cosine schedule and ALBEF's distillation ramp."""

from __future__ import annotations

import math

import torch
from torch import nn

# modules whose weights get no weight decay (as in BERT, ViT, MAE): every norm and every embedding table
_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.Embedding)
# parameter names that are embeddings or tokens even when they are bare nn.Parameters
_NO_DECAY_NAMES = ("bias", "cls_token", "mask_token", "pos_embed", "position_embedding", "temp", "gamma",
                   "logit_scale", "codebook")


def no_decay(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """True for biases, norm weights, embeddings, learned tokens, temperatures and any 0-/1-d parameter."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or isinstance(module, _NO_DECAY_MODULES) or any(k in leaf for k in _NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: the weight matrices of linear/conv layers with `weight_decay`, everything else
    (biases, norms, embeddings, tokens, temperature) without. Frozen parameters (momentum teachers) are left
    out. Each group carries `names`, so a test or a log can see where a parameter went."""
    decay, rest = {"params": [], "names": [], "weight_decay": weight_decay}, {"params": [], "names": [],
                                                                             "weight_decay": 0.0}
    seen = set()
    for module_name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))  # tied weights are listed once
            group = rest if no_decay(module, leaf, param) else decay
            group["params"].append(param)
            group["names"].append(f"{module_name}.{leaf}" if module_name else leaf)
    return [g for g in (decay, rest) if g["params"]]


def build_optimizer(model: nn.Module, learning_rate: float, weight_decay: float = 0.02,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *,
                    head_learning_rate: float | None = None) -> torch.optim.AdamW:
    """AdamW over `param_groups` (ALBEF: lr 1e-4, weight decay 0.02). `head_learning_rate`: the learning rate of
    every parameter outside the backbone (`model.base_model`): a task head that starts from scratch can move
    faster than the pre-trained weights under it (ViLT and METER train their heads at 10x); None: `learning_rate`."""
    for name, value in (("learning_rate", learning_rate), ("head_learning_rate", head_learning_rate)):
        if value is not None and value <= 0:
            raise ValueError(f"`{name}` must be > 0, got {value}")
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}")
    groups = param_groups(model, weight_decay)
    if head_learning_rate is None:
        groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    else:
        prefix = getattr(model, "base_model_prefix", "")
        if not prefix or not isinstance(getattr(model, prefix, None), nn.Module) or getattr(model, prefix) is model:
            raise ValueError(f"`head_learning_rate` needs a model with a backbone under `base_model_prefix`; "
                             f"{type(model).__name__} has none")
        groups = [part for group in groups for part in _split_head(group, f"{prefix}.", head_learning_rate)]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)


def _split_head(group: dict, backbone_prefix: str, head_learning_rate: float) -> list[dict]:
    """One parameter group -> (backbone part, head part at `head_learning_rate`), empty parts left out."""
    backbone = [p for p, n in zip(group["params"], group["names"]) if n.startswith(backbone_prefix)]
    head = [p for p, n in zip(group["params"], group["names"]) if not n.startswith(backbone_prefix)]
    decay = group["weight_decay"]
    return [g for g in ({"params": backbone, "weight_decay": decay},
                        {"params": head, "weight_decay": decay, "lr": head_learning_rate}) if g["params"]]


def warmup_cosine(step: int, num_warmup_steps: int, num_training_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear from 0 to 1 over the warmup, then cosine down to `min_ratio` at the
    last step."""
    if step < num_warmup_steps:
        return (step + 1) / (num_warmup_steps + 1)
    progress = (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer, num_warmup_steps: int, num_training_steps: int, *, name: str = "cosine",
                    min_lr_ratio: float = 0.0):
    """"cosine" (ours: warmup then cosine to `min_lr_ratio`), or any name `transformers.get_scheduler` knows
    ("linear", "constant_with_warmup", ...). Steps count optimizer updates."""
    if num_warmup_steps < 0 or num_training_steps < 1:
        raise ValueError(f"need `num_warmup_steps` >= 0 and `num_training_steps` >= 1, got {num_warmup_steps} "
                         f"and {num_training_steps}")
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, num_warmup_steps, num_training_steps, min_lr_ratio))
    from transformers import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)


def ramp(value: float, step: int, ramp_steps: int) -> float:
    """`value * min(1, step / ramp_steps)`: ALBEF ramps its distillation weight alpha over the first epoch."""
    return value if ramp_steps <= 0 else value * min(1.0, step / ramp_steps)


__all__ = ["build_optimizer", "build_scheduler", "no_decay", "param_groups", "ramp", "warmup_cosine"]
