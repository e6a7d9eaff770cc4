"""Momentum (EMA) teachers and feature queues for the ALBEF family."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from vl_models.layers.draws import randn
from vl_models.layers.losses import gather_no_grad
from vl_models.utils import check_range, check_tensor

ModulePairs = Iterable[tuple[nn.Module, nn.Module]]


class FeatureQueue(nn.Module):
    """A ring buffer of L2-normalised features [size, dim] filled from every rank (ALBEF/MoCo queue).

    ``features`` and ``ptr`` are persistent buffers, so a checkpoint resumes with the same queue.
    """

    def __init__(self, dim: int, size: int):
        super().__init__()
        if dim < 1 or size < 1:
            raise ValueError(f"`dim` and `size` must be >= 1, got {dim} and {size}")
        self.dim, self.size = dim, size
        self.register_buffer("features", torch.empty(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # only through transformers' init functions: they skip tensors already loaded from a checkpoint
        noise = randn((self.size, self.dim), generator, self.features.device)
        init.copy_(self.features, F.normalize(noise, dim=1))
        init.zeros_(self.ptr)

    @torch.no_grad()
    def enqueue(self, feats: torch.Tensor) -> None:
        """Append feats [B, dim] from every rank (rank order); only the newest ``size`` are kept when the
        global batch is larger than the queue. Stays on device: no host sync."""
        check_tensor("feats", feats, ndim=2, dtype="float", last_dim=self.dim)
        feats = gather_no_grad(feats).to(self.features.dtype)  # [R*B, dim]
        total = feats.shape[0]
        if total == 0:
            return
        ring_write(self.features, feats, self.ptr)
        self.ptr.copy_((self.ptr + total) % self.size)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"


def _unwrapped_names(module: nn.Module, getter: str) -> tuple[dict, dict]:
    """(name -> tensor as if no PEFT adapter wrapped a layer, adapter name -> tensor). A PEFT tuner layer (LoRA's
    `lora.Linear`: anything holding its original layer as `base_layer`) renames that layer's weights to
    `<layer>.base_layer.weight` and adds its own (`<layer>.lora_A.default.weight`, ...)."""
    wrapped = [f"{name}." for name, m in module.named_modules()
               if name and isinstance(getattr(m, "base_layer", None), nn.Module)]
    plain, adapters = {}, {}
    for name, tensor in getattr(module, getter)():
        layer = next((w for w in wrapped if name.startswith(w)), None)
        if layer is None:
            plain[name] = tensor
        elif name.startswith(f"{layer}base_layer."):
            plain[layer + name[len(f"{layer}base_layer."):]] = tensor
        else:
            adapters[name] = tensor
    return plain, adapters


@torch.no_grad()
def ring_write(buffer: torch.Tensor, rows: torch.Tensor, ptr: torch.Tensor) -> None:
    """Write `rows` [N, ...] into the ring `buffer` [size, ...] from position `ptr` on, in order, wrapping around:
    writing all N and keeping the last `size` == writing those last `size` from ptr + (N - size)."""
    size = buffer.shape[0]
    kept = rows[-size:]
    start = ptr + (rows.shape[0] - kept.shape[0])
    buffer.index_copy_(0, (start + torch.arange(kept.shape[0], device=buffer.device)) % size, kept)


def _paired_tensors(pairs: ModulePairs):
    """Matching (student, teacher) parameter and buffer lists; names must agree. A teacher tensor that two pairs
    share (a tied weight: the MLM decoder is the word embeddings) is listed once, so an EMA step moves it once.

    PEFT adapters (LoRA on the student's attention): the wrapped layers' own weights pair with the teacher's
    whether or not the teacher is wrapped too. Adapters pair with the teacher's when it has the same ones (a
    target pattern that matched both: the teacher follows them by EMA) and are left out otherwise (the teacher
    keeps following the base weights, which PEFT freezes)."""
    s_params, t_params, s_bufs, t_bufs = [], [], [], []
    seen = set()
    for student, teacher in pairs:
        for kind, s_list, t_list, getter in (
            ("parameters", s_params, t_params, "named_parameters"),
            ("buffers", s_bufs, t_bufs, "named_buffers"),
        ):
            (s_named, s_adapters), (t_named, t_adapters) = _unwrapped_names(student, getter), \
                _unwrapped_names(teacher, getter)
            if s_adapters.keys() == t_adapters.keys():  # mirrored adapters (or none at all)
                s_named, t_named = {**s_named, **s_adapters}, {**t_named, **t_adapters}
            if s_named.keys() != t_named.keys():
                diff = sorted(s_named.keys() ^ t_named.keys())[:5]
                raise ValueError(f"`pairs`: student and teacher {kind} differ, e.g. {diff}")
            for name, s in s_named.items():
                if s.shape != t_named[name].shape:
                    raise ValueError(
                        f"`pairs`: shape of {name} differs: {tuple(s.shape)} vs {tuple(t_named[name].shape)}"
                    )
                if id(t_named[name]) in seen:
                    continue
                seen.add(id(t_named[name]))
                s_list.append(s)
                t_list.append(t_named[name])
    return s_params, t_params, s_bufs, t_bufs


@torch.no_grad()
def momentum_update(pairs: ModulePairs, momentum: float) -> None:
    """EMA teacher update: teacher = momentum * teacher + (1 - momentum) * student; buffers copied."""
    check_range("momentum", momentum, 0.0, 1.0, high_inclusive=True)
    s_params, t_params, s_bufs, t_bufs = _paired_tensors(pairs)
    if t_params:
        # lerp(t, s, w) = t + w * (s - t) = (1 - w) * t + w * s with w = 1 - momentum
        torch._foreach_lerp_(t_params, [s.to(t.dtype) for s, t in zip(s_params, t_params)], 1.0 - momentum)
    for s, t in zip(s_bufs, t_bufs):
        t.copy_(s)


@torch.no_grad()
def init_teachers_from_students(pairs: ModulePairs) -> None:
    """`_init_weights`-time copy of each student's parameters into its teacher, through transformers'
    `initialization.copy_`, which leaves tensors already loaded from a checkpoint alone."""
    s_params, t_params, _, _ = _paired_tensors(pairs)
    for s, t in zip(s_params, t_params):
        init.copy_(t, s)


@torch.no_grad()
def copy_student_to_teacher(pairs: ModulePairs) -> None:
    """Initialise teachers as exact copies of their students (parameters and buffers)."""
    s_params, t_params, s_bufs, t_bufs = _paired_tensors(pairs)
    for s, t in zip(s_params + s_bufs, t_params + t_bufs):
        t.copy_(s)


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients to every parameter of ``module`` (teachers are updated by EMA only); returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def linear_ramp(step: int, warmup_steps: int, final_value: float) -> float:
    """final_value * min(1, step / warmup_steps): ALBEF ramps its distillation alpha over epoch one."""
    if step < 0:
        raise ValueError(f"`step` must be >= 0, got {step}")
    if warmup_steps <= 0:
        return final_value
    return final_value * min(1.0, step / warmup_steps)
