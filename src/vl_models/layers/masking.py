"""Masking: MAE random patch masking, BEiT block-wise patch masking and BERT text masking.

Every function takes an explicit ``generator`` so masks are reproducible in tests and resumed runs.
Random numbers are drawn on the generator's device and then moved, so a CPU generator works for CUDA
outputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from vl_models.layers.draws import rand, randint
from vl_models.utils import check_index_range, check_range, check_same_batch, check_tensor, describe


@dataclass
class MaskingOutput:
    """Result of :func:`random_masking`.

    ids_keep: [B, n_keep] long, indices of the visible patches (in random order).
    ids_restore: [B, N] long, inverse permutation: ``shuffled.gather(1, ids_restore)`` unshuffles.
    mask: [B, N] bool, True where the patch is masked (hidden from the encoder).
    """

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """ceil((1 - mask_ratio) * N), at least 1; rounding first so float error (1 - 0.7 = 0.30000000000000004)
    does not add a patch."""
    return max(1, min(num_patches, math.ceil(round((1.0 - mask_ratio) * num_patches, 6))))


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MaskingOutput:
    """MAE per-sample random masking: argsort of uniform noise, the first ``n_keep`` indices are kept."""
    if batch_size < 1 or num_patches < 1:
        raise ValueError(f"`batch_size` and `num_patches` must be >= 1, got {batch_size} and {num_patches}")
    check_range("mask_ratio", mask_ratio, 0.0, 1.0)
    n_keep = num_kept(num_patches, mask_ratio)
    noise = rand((batch_size, num_patches), generator, device)  # [B, N]
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch_size, num_patches, dtype=torch.bool, device=noise.device)
    mask[:, :n_keep] = False
    mask = torch.gather(mask, 1, ids_restore)  # back to patch order
    return MaskingOutput(ids_keep=ids_shuffle[:, :n_keep], ids_restore=ids_restore, mask=mask)


def check_image_mask(name: str, mask, shape: tuple[int, int]) -> torch.Tensor:
    """An image mask given to a model (from a collator): bool of the batch's patch `shape` [B, N], True = masked,
    with at least one masked patch, since an all-False mask leaves the masked-image losses a mean over nothing
    (NaN). Like `check_index_range`, a host check on CPU only; elsewhere a device-side assertion, so an
    accelerator is not stalled every step."""
    check_tensor(name, mask, ndim=2, dtype="bool")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {tuple(shape)}, got {describe(mask)}")
    message = f"`{name}` must mask at least one patch (True = masked), got an all-False mask"
    if mask.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(mask.any()):
            raise ValueError(message)
    else:
        torch._assert_async(mask.any(), message)
    return mask


def masking_from_mask(mask: torch.Tensor, *, num_patches: int, batch_size: int) -> MaskingOutput:
    """Keep/restore ids for a given mask [B, N] (True = masked, the same count in every row), e.g. from a
    collator: the visible patches keep their order, the masked ones follow."""
    check_image_mask("image_mask", mask, (batch_size, num_patches))
    counts = mask.sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise ValueError(f"`image_mask` must mask the same number of patches in every row, got {counts.tolist()}")
    ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible first
    n_keep = num_patches - int(counts[0])
    return MaskingOutput(ids_keep=ids_shuffle[:, :n_keep], ids_restore=torch.argsort(ids_shuffle, dim=1), mask=mask)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Select tokens per sample: x [B, N, D], ids [B, n] -> [B, n, D]."""
    check_tensor("x", x, ndim=3)
    check_tensor("ids", ids, ndim=2, dtype="int")
    if ids.shape[0] != x.shape[0]:
        raise ValueError(f"`ids` must have batch size {x.shape[0]} like `x`, got {describe(ids)}")
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class _Uniforms:
    """Scalar uniforms from a torch generator, fetched in chunks (one torch call per scalar is slow)."""

    def __init__(self, generator: torch.Generator | None, chunk: int = 256):
        self.generator, self.chunk, self.values, self.i = generator, chunk, [], 0

    def __call__(self) -> float:
        if self.i == len(self.values):
            self.values = rand(self.chunk, self.generator).tolist()
            self.i = 0
        self.i += 1
        return self.values[self.i - 1]


def _add_block(mask, remaining, min_num_patches, log_aspect, uniform, attempts: int = 10) -> int:
    """Try to mask one rectangle adding 1..remaining new patches; returns how many were added."""
    height, width = mask.shape
    for _ in range(attempts):
        low = min(min_num_patches, remaining)
        area = low + uniform() * (remaining - low)
        aspect = math.exp(log_aspect[0] + uniform() * (log_aspect[1] - log_aspect[0]))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if not (1 <= h <= height and 1 <= w <= width):
            continue
        top = min(int(uniform() * (height - h + 1)), height - h)
        left = min(int(uniform() * (width - w + 1)), width - w)
        block = mask[top : top + h, left : left + w]
        new = h * w - int(block.sum())
        if 0 < new <= remaining:  # never overshoot, so no trimming is needed
            block[:] = True
            return new
    return 0


def _top_up(mask: torch.Tensor, count: int, generator: torch.Generator | None) -> None:
    """Mask ``count`` more patches, preferring unmasked neighbours of the mask so blocks just grow."""
    grid = mask.float()[None, None]
    padded = torch.nn.functional.pad(grid, (1, 1, 1, 1))
    neighbour = (
        padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]
    )
    score = rand(mask.shape, generator, mask.device) + (neighbour[0, 0] > 0).float()
    score[mask] = -1.0
    idx = torch.topk(score.flatten(), count).indices
    mask.view(-1)[idx] = True


def block_masking(
    batch_size: int,
    grid_size: tuple[int, int],
    num_masked: int,
    *,
    min_num_patches: int = 4,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """BEiT block-wise masking -> bool [B, H*W] (True = masked), exactly ``num_masked`` per sample.

    Rectangles with area ~ U(min_num_patches, remaining) and log-uniform aspect ratio in
    [min_aspect, max_aspect] (default 1/min_aspect) are added until the target is met; a rectangle
    that would overshoot is rejected, and when 10 tries in a row fail the rest is topped up with
    patches next to the mask.
    """
    if len(grid_size) != 2 or min(grid_size) < 1:
        raise ValueError(f"`grid_size` must be two positive ints (H, W), got {grid_size!r}")
    height, width = int(grid_size[0]), int(grid_size[1])
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    if not 0 <= num_masked <= height * width:
        raise ValueError(
            f"`num_masked` must be in [0, {height * width}] for grid {grid_size}, got {num_masked}"
        )
    if min_num_patches < 1:
        raise ValueError(f"`min_num_patches` must be >= 1, got {min_num_patches}")
    max_aspect = 1.0 / min_aspect if max_aspect is None and min_aspect > 0 else max_aspect
    if not (min_aspect > 0 and max_aspect >= min_aspect):
        raise ValueError(f"need 0 < `min_aspect` <= `max_aspect`, got {min_aspect} and {max_aspect}")
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    uniform = _Uniforms(generator)
    masks = np.zeros((batch_size, height, width), dtype=bool)  # numpy: tiny per-block ops are much cheaper
    for b in range(batch_size):
        count = 0
        while count < num_masked:
            added = _add_block(masks[b], num_masked - count, min_num_patches, log_aspect, uniform)
            if added == 0:
                _top_up(torch.from_numpy(masks[b]), num_masked - count, generator)  # shares memory
                break
            count += added
    out = torch.from_numpy(masks).flatten(1)  # [B, H*W]
    return out if device is None else out.to(device)


def beit_image_mask(pixel_values: torch.Tensor, patch_size: int, mask_ratio: float, given=None, *,
                    generator: torch.Generator | None = None, name: str = "image_mask") -> torch.Tensor:
    """The image mask [B, N] of a masked-image-modeling step: `given` (from a collator, argument `name`) checked,
    else block-wise masking of round(mask_ratio * N) patches per image, at least one, drawn from `generator`."""
    grid = (pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size)
    shape = (pixel_values.shape[0], grid[0] * grid[1])
    if given is not None:
        return check_image_mask(name, given, shape).to(pixel_values.device)
    num_masked = min(shape[1], max(1, round(mask_ratio * shape[1])))
    return block_masking(shape[0], grid, num_masked, generator=generator, device=pixel_values.device)


def _check_text_inputs(input_ids, mask_token_id, vocab_size, special, attention_mask, probability, word_ids):
    check_tensor("input_ids", input_ids, ndim=2, dtype="int")
    if vocab_size < 1:
        raise ValueError(f"`vocab_size` must be >= 1, got {vocab_size}")
    check_index_range("input_ids", input_ids, vocab_size)
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"`mask_token_id` must be in [0, {vocab_size}), got {mask_token_id}")
    if any(not 0 <= s < vocab_size for s in special):
        raise ValueError(f"`special_token_ids` must be in [0, {vocab_size}), got {sorted(special)}")
    check_range("probability", probability, 0.0, 1.0, high_inclusive=True)
    for name, t in (("attention_mask", attention_mask), ("whole_word_ids", word_ids)):
        if t is not None:
            check_tensor(name, t, ndim=2, dtype="int_or_bool")
            if t.shape != input_ids.shape:
                raise ValueError(f"`{name}` must have shape {tuple(input_ids.shape)}, got {describe(t)}")
    if word_ids is not None and word_ids.numel() and int(word_ids.min()) < -1:
        raise ValueError("`whole_word_ids` must be >= -1 (-1 marks special tokens), got smaller values")


def mask_text(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_token_ids: Iterable[int],
    attention_mask: torch.Tensor | None = None,
    probability: float = 0.15,
    whole_word_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking -> (masked_input_ids [B, T], labels [B, T] with -100 at unmasked positions).

    Each maskable token is chosen with ``probability``; chosen tokens become [MASK] 80%, a random
    non-special token 10%, unchanged 10% (drawn per token, also within a whole word, as BERT's code
    does). Special tokens (and ``mask_token_id``) and padding (``attention_mask == 0``) are never chosen. With ``whole_word_ids`` ([B, T], word index per token,
    -1 for specials, which are then never chosen) the choice is made per word so all sub-tokens of a
    word are masked together. Every row with a maskable token gets at least one masked token (one
    whole word), so the MLM loss is always defined.
    """
    special = {int(s) for s in special_token_ids} | {int(mask_token_id)}
    _check_text_inputs(
        input_ids, mask_token_id, vocab_size, special, attention_mask, probability, whole_word_ids
    )
    device = input_ids.device
    batch, length = input_ids.shape
    special_t = torch.tensor(sorted(special), device=device, dtype=input_ids.dtype)
    maskable = ~torch.isin(input_ids, special_t)
    if attention_mask is not None:
        maskable &= attention_mask.bool()

    if whole_word_ids is None:
        chosen = rand((batch, length), generator, device) < probability
    else:
        words = whole_word_ids.long()
        maskable &= words >= 0
        # one draw per (row, word), shared by the word's tokens
        num_words = int(words.max()) + 1 if words.numel() else 1
        word_draw = rand((batch, max(num_words, 1)), generator, device)
        chosen = word_draw.gather(1, words.clamp(min=0)) < probability
    chosen &= maskable

    # rows with nothing chosen get one random maskable token (and its whole word)
    need = maskable.any(1) & ~chosen.any(1)  # [B]
    score = rand((batch, length), generator, device).masked_fill(~maskable, -1.0)
    pos = score.argmax(1, keepdim=True)  # [B, 1]
    if whole_word_ids is None:
        extra = torch.zeros_like(chosen).scatter_(1, pos, True)
    else:
        extra = words == words.gather(1, pos)
    chosen |= extra & maskable & need[:, None]

    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100)).long()
    action = rand((batch, length), generator, device)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    num_allowed = vocab_size - len(special)  # the special ids are distinct and checked to be in the vocabulary
    if num_allowed == 0:
        raise ValueError(f"`special_token_ids` cover the whole vocabulary of size {vocab_size}")
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    allowed[special_t.long()] = False
    # nonzero_static and torch.where instead of nonzero and boolean indexing: no read-back to the host
    allowed_ids = torch.nonzero_static(allowed, size=num_allowed).squeeze(1).to(input_ids.dtype)
    random_ids = allowed_ids[randint(0, num_allowed, (batch, length), generator, device)]
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    return torch.where(to_random, random_ids, masked), labels


def mlm_inputs(input_ids, attention_mask, mlm_input_ids, mlm_labels, *, text_config, probability: float,
               generator: torch.Generator | None = None, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The masked-language-modeling inputs of a step: those a collator made (`mlm_input_ids`, `mlm_labels`,
    checked against the batch), or `mask_text` of `input_ids` here with `text_config`'s special tokens.
    `prefix` names the arguments in errors (VL-BEiT's `text_` stream)."""
    if (mlm_input_ids is None) != (mlm_labels is None):
        raise ValueError(f"pass both `{prefix}mlm_input_ids` and `{prefix}mlm_labels` (from a collator) or neither")
    if mlm_input_ids is not None:
        check_same_batch(**{f"{prefix}input_ids": input_ids, f"{prefix}mlm_input_ids": mlm_input_ids,
                            f"{prefix}mlm_labels": mlm_labels})
        name = f"{prefix}mlm_labels"
        check_tensor(name, mlm_labels, ndim=2, dtype="int")
        if mlm_labels.shape != mlm_input_ids.shape:
            raise ValueError(f"`{name}` must have shape {tuple(mlm_input_ids.shape)} (as `{prefix}mlm_input_ids`), "
                             f"got {describe(mlm_labels)}")
        # -100 marks a position without a label (the loss ignores it); any other label indexes the vocabulary,
        # which the MLM loss would do with a bare IndexError (or a device-side assert)
        check_index_range(name, mlm_labels.masked_fill(mlm_labels == -100, 0), text_config.vocab_size)
        return mlm_input_ids, mlm_labels
    return mask_text(input_ids, mask_token_id=text_config.mask_token_id, vocab_size=text_config.vocab_size,
                     special_token_ids=text_config.special_token_ids, attention_mask=attention_mask,
                     probability=probability, generator=generator)
