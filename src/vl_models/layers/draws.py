"""Seeded random draws: the one rule every mask, negative, restart and initial queue of the package follows.

A draw takes an optional `torch.Generator` (the training scripts pass one per micro-batch and process, so a resumed
run draws what the uninterrupted one did). It is made on the generator's own device, since a CPU generator cannot
fill a CUDA tensor, and returned on `device`, where the caller computes. Without a generator the global RNG of
`device` draws, as torch's own functions do.
"""

from __future__ import annotations

import torch


def _draw_device(generator: torch.Generator | None, device) -> torch.device | str | None:
    return generator.device if generator is not None else device


def _to(out: torch.Tensor, device) -> torch.Tensor:
    return out if device is None else out.to(device)


def rand(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Uniform [0, 1) of `shape`."""
    return _to(torch.rand(shape, generator=generator, device=_draw_device(generator, device)), device)


def randn(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Standard normal of `shape`."""
    return _to(torch.randn(shape, generator=generator, device=_draw_device(generator, device)), device)


def randint(low: int, high: int, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Integers in [low, high) of `shape`."""
    return _to(torch.randint(low, high, shape, generator=generator, device=_draw_device(generator, device)), device)


def randperm(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A permutation of range(n)."""
    return _to(torch.randperm(n, generator=generator, device=_draw_device(generator, device)), device)


def multinomial(probs: torch.Tensor, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`torch.multinomial` of each row of `probs`, returned on `probs`' device."""
    draw = _draw_device(generator, probs.device)
    return torch.multinomial(probs.to(draw), num_samples, generator=generator).to(probs.device)


__all__ = ["multinomial", "rand", "randint", "randn", "randperm"]
