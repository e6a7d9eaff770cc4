"""Non-finite losses: skip the update on every process together, log what broke, stop after too many."""

from __future__ import annotations

import math

import torch


class NonFiniteLossError(RuntimeError):
    """Raised on every process together when too many updates in a row had a non-finite loss or gradient."""


class NonFiniteGuard:
    """Collects the loss terms of an update's micro-batches (`observe`, no host sync) so that `optimizer_step`
    can skip the update on every process when any of them is non-finite on any process. Counts the skips and
    raises `NonFiniteLossError` after `max_consecutive` skipped updates in a row. `event` describes the update
    just skipped (its loss terms averaged over processes: a NaN or inf shows which term broke); None after an
    update the guard let through."""

    def __init__(self, max_consecutive: int = 10):
        if isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int) or max_consecutive < 1:
            raise ValueError(f"`max_consecutive` must be an int >= 1, got {max_consecutive!r}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0
        self.event: dict[str, float] | None = None
        self._terms: dict[str, torch.Tensor] = {}
        self._micro = 0

    def observe(self, output) -> None:
        """Call once per micro-batch with the model's output (or a dict of scalar loss tensors)."""
        for key, value in output.items():
            if key.startswith("loss") and torch.is_tensor(value) and value.ndim == 0:
                value = value.detach().float()
                self._terms[key] = self._terms[key] + value if key in self._terms else value
        self._micro += 1

    def decide(self, accelerator, grad_norm: float, norm_counts: bool) -> bool:
        """Whether to skip this update; identical on every process (one all-reduce). Resets the terms."""
        keys = sorted(self._terms)
        device = accelerator.device
        terms = torch.stack([self._terms[k] for k in keys]).to(device) if keys else torch.zeros(0, device=device)
        local_bad = (~torch.isfinite(terms)).any() | (norm_counts and not math.isfinite(grad_norm))
        values = accelerator.reduce(torch.cat([local_bad.float().reshape(1), terms]), reduction="sum")
        micro, self._terms, self._micro = max(1, self._micro), {}, 0
        skip = bool(values[0] > 0)
        if skip:
            self.consecutive += 1
            self.total += 1
            means = (values[1:] / (micro * accelerator.num_processes)).tolist()
            self.event = {"skipped_update": 1.0, "skipped_total": float(self.total),
                          "skipped_consecutive": float(self.consecutive), "skipped/grad_norm": grad_norm,
                          **{f"skipped/{k}": v for k, v in zip(keys, means)}}
        else:
            self.consecutive, self.event = 0, None
        return skip

    def check(self) -> None:
        """Raise `NonFiniteLossError` once `max_consecutive` updates in a row were skipped."""
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"stopping: {self.consecutive} updates in a row were skipped because the loss or the gradient norm "
                f"was not finite on some process (last one: {describe_event(self.event)}). The weights are those "
                "of the last finite update; resume from the last checkpoint with a lower --learning_rate or "
                "--max_grad_norm, check the data, or raise --max_consecutive_skips."
            )


def describe_event(event: dict | None) -> str:
    if not event:
        return "no loss terms"
    return ", ".join(f"{k.removeprefix('skipped/')}={v:.4g}" for k, v in event.items() if k.startswith("skipped/"))
