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


def check_index_range(name: str, value: torch.Tensor, high: int, *, low: int = 0) -> None:
    """Integer values in [low, high) (token ids, code indices), checked without stalling an accelerator.

    On CPU tensors (outside torch.compile) a ``ValueError`` names the values that came. Elsewhere the check is a
    device-side assertion (``torch._assert_async``): reading min / max back to the host would make every forward
    wait for the GPU and break a compiled graph, and an id out of range would otherwise surface as a bare
    device-side assert inside an embedding lookup; the assertion carries this message instead (a
    ``RuntimeError``, raised when the device is next synchronised)."""
    if value.numel() == 0:
        return
    message = f"`{name}` must be in [{low}, {high})"
    if value.device.type == "cpu" and not torch.compiler.is_compiling():
        lowest, highest = int(value.min()), int(value.max())
        if lowest < low or highest >= high:
            raise ValueError(f"{message}, got values in [{lowest}, {highest}]")
        return
    torch._assert_async(((value >= low) & (value < high)).all(), message)


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


def check_pretraining_pairs(pixel_values, input_ids, attention_mask, *, needs_negatives: bool) -> torch.Tensor:
    """The boundary of every image-text pre-training forward: both inputs present, ranks and dtypes, one batch
    size, at least 2 pairs when ITM draws its negatives from the batch. Returns the attention mask (all ones when
    none is given), checked to have the shape of `input_ids`."""
    if pixel_values is None:
        raise ValueError("`pixel_values` is required for pre-training, got None")
    if input_ids is None:
        raise ValueError("`input_ids` is required for pre-training, got None")
    check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
    check_tensor("input_ids", input_ids, ndim=2, dtype="int")
    batch = check_same_batch(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    if batch < 2 and needs_negatives:
        raise ValueError(f"pre-training needs a batch of at least 2 pairs (ITM samples negatives in the batch), "
                         f"got {batch}")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    check_tensor("attention_mask", attention_mask, ndim=2, dtype="int_or_bool")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"`attention_mask` must have shape {tuple(input_ids.shape)} like `input_ids`, "
                         f"got {tuple(attention_mask.shape)}")
    return attention_mask
