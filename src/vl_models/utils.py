"""Small input checks shared by every boundary (layers, processors, models).

Every check raises ``ValueError`` naming the argument, what was expected and what came, so a user
never meets a bare ``IndexError`` deep inside a matmul.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def describe(value) -> str:
    """A short description of a value for error messages: shape and dtype for tensors."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:200]


def check_tensor(
    name: str,
    value,
    *,
    ndim: int | Iterable[int] | None = None,
    dtype: str | None = None,
    last_dim: int | None = None,
) -> torch.Tensor:
    """Validate a tensor argument.

    dtype is a family: ``"float"`` (any floating point), ``"int"`` (any integer), ``"bool"``,
    ``"int_or_bool"``.
    """
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {describe(value)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"`{name}` must have {want} dimensions, got {describe(value)}")
    if dtype is not None:
        ok = {
            "float": value.is_floating_point(),
            "int": not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool,
            "bool": value.dtype == torch.bool,
            "int_or_bool": not value.is_floating_point() and not value.is_complex(),
        }[dtype]
        if not ok:
            raise ValueError(f"`{name}` must be a {dtype} tensor, got {describe(value)}")
    if last_dim is not None and value.shape[-1] != last_dim:
        raise ValueError(f"`{name}` must have last dimension {last_dim}, got {describe(value)}")
    return value


def check_same_batch(**tensors) -> int:
    """All given (non-None) tensors share their first dimension; returns it."""
    sizes = {k: v.shape[0] for k, v in tensors.items() if v is not None}
    if len(set(sizes.values())) > 1:
        got = ", ".join(f"`{k}` has {n}" for k, n in sizes.items())
        raise ValueError(f"batch sizes must match: {got}")
    return next(iter(sizes.values())) if sizes else 0


def check_range(name: str, value: float, low: float, high: float, *, high_inclusive: bool = False) -> None:
    """low <= value < high (or <= high)."""
    ok = low <= value <= high if high_inclusive else low <= value < high
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"`{name}` must be in [{low}, {high}{bracket}, got {value!r}")
