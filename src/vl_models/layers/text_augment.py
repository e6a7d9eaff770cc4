"""Text augmentation with a masked language model (ViLTA): captions made into fluent hard negatives, and the
soft-label MLM loss a frozen language model's distribution gives.

- `choose_positions` picks content tokens to rewrite (never special tokens or padding).
- `sample_replacements` draws a likely token for each position from MLM logits, never the original token and
  never a special token, so every rewritten caption differs from its source.
- `synthesize_negatives` masks the chosen positions, asks a predictor for logits there and writes the draws back:
  same length, same padding, same special tokens.
- `soft_label_mlm_loss` mixes the one-hot CE with a distillation CE against a teacher's softened distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..utils import check_range, check_tensor, describe
from .draws import multinomial, rand
from .losses import masked_cross_entropy, soft_target_cross_entropy


@dataclass
class SyntheticCaptions:
    """input_ids [B, T]: the rewritten captions (rows with nothing to rewrite are left as they were);
    replaced [B, T] bool: the rewritten positions; valid [B] bool: rows that differ from their source."""

    input_ids: torch.Tensor
    replaced: torch.Tensor
    valid: torch.Tensor


def _maskable(input_ids, attention_mask, special_token_ids) -> torch.Tensor:
    special = torch.tensor(sorted({int(s) for s in special_token_ids}), device=input_ids.device,
                           dtype=input_ids.dtype)
    maskable = ~torch.isin(input_ids, special)
    if attention_mask is not None:
        maskable &= attention_mask.bool()
    return maskable  # [B, T]


def choose_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *,
                     special_token_ids: Iterable[int], ratio: float, min_tokens: int = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """bool [B, T]: per row max(min_tokens, round(ratio * n)) of its n content tokens (capped at n), uniformly
    at random. Special tokens and padding (attention_mask == 0) are never chosen."""
    check_tensor("input_ids", input_ids, ndim=2, dtype="int")
    check_range("ratio", ratio, 0.0, 1.0, high_inclusive=True)
    if min_tokens < 0:
        raise ValueError(f"`min_tokens` must be >= 0, got {min_tokens}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"`attention_mask` must have shape {tuple(input_ids.shape)}, got {describe(attention_mask)}")
    maskable = _maskable(input_ids, attention_mask, special_token_ids)
    available = maskable.sum(1)  # [B]
    count = torch.clamp(torch.round(available * ratio).long(), min=min_tokens).minimum(available)
    score = rand(input_ids.shape, generator, input_ids.device)
    score = score.masked_fill(~maskable, 2.0)  # content tokens sort first, in random order
    rank = score.argsort(1).argsort(1)  # [B, T] rank of each position in its row
    return (rank < count[:, None]) & maskable


def sample_replacements(logits: torch.Tensor, original: torch.Tensor, *, banned_token_ids: Iterable[int] = (),
                        top_k: int | None = None, temperature: float = 1.0,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of logits [M, V], drawn from softmax(logits / temperature) restricted to the top_k
    allowed tokens (all allowed ones when None). The row's original token [M] and `banned_token_ids` are never
    drawn. top_k = 1 takes the most likely allowed token."""
    check_tensor("logits", logits, ndim=2, dtype="float")
    check_tensor("original", original, ndim=1, dtype="int")
    if original.shape[0] != logits.shape[0]:
        raise ValueError(f"`original` must have {logits.shape[0]} entries like `logits`, got {describe(original)}")
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature!r}")
    vocab = logits.shape[1]
    banned = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
    banned[[int(b) for b in banned_token_ids if 0 <= int(b) < vocab]] = True
    if int((~banned).sum()) < 2:
        raise ValueError(f"`banned_token_ids` leave fewer than 2 of {vocab} tokens: nothing differs from the original")
    if top_k is not None and top_k < 1:
        raise ValueError(f"`top_k` must be >= 1 or None, got {top_k!r}")
    if logits.shape[0] == 0:
        return original.clone()
    scores = logits.detach().float() / temperature
    excluded = banned.expand_as(scores).clone()
    excluded[torch.arange(scores.shape[0], device=scores.device), original.long()] = True
    scores = scores.masked_fill(excluded, float("-inf"))
    k = min(top_k or vocab, int((~banned).sum()) - 1)  # every row keeps at least k allowed tokens
    values, idx = scores.topk(k, dim=-1)  # [M, k]
    pick = multinomial(values.softmax(-1), 1, generator)
    return idx.gather(1, pick).squeeze(1).to(original.dtype)  # [M]


def synthesize_negatives(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    predict: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor],
    *,
    mask_token_id: int,
    special_token_ids: Iterable[int],
    ratio: float = 0.15,
    top_k: int | None = 10,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> SyntheticCaptions:
    """Rewrite a few content tokens of every caption with a masked language model's likely alternatives.

    `predict(masked_ids [B, T], attention_mask, positions [B, T] bool) -> logits [M, V]` at the M chosen positions
    (row-major order); it runs without gradients. All chosen positions of a caption are masked together and
    filled in one pass. Rows without a content token come back unchanged with valid = False.
    """
    special = {int(s) for s in special_token_ids} | {int(mask_token_id)}
    positions = choose_positions(input_ids, attention_mask, special_token_ids=special, ratio=ratio,
                                 generator=generator)  # [B, T]
    masked = input_ids.masked_fill(positions, mask_token_id)
    with torch.no_grad():
        logits = predict(masked, attention_mask, positions)  # [M, V]
    if logits.shape[0] != int(positions.sum()):
        raise ValueError(f"`predict` must return one row per chosen position ({int(positions.sum())}), "
                         f"got {describe(logits)}")
    new = sample_replacements(logits, input_ids[positions], banned_token_ids=special, top_k=top_k,
                              temperature=temperature, generator=generator)
    out = input_ids.clone()
    out[positions] = new
    return SyntheticCaptions(input_ids=out, replaced=positions, valid=positions.any(1))


def soft_label_mlm_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None, *,
                        alpha: float, temperature: float = 1.0,
                        top_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(1 - alpha) * CE(logits, labels) + alpha * soft-target CE against softmax(teacher_logits / temperature).

    logits, teacher_logits [M, V] at the masked positions, labels [M]. The soft term is Hinton's: the student is
    softened by the same temperature and the term scaled by temperature**2; `top_k` keeps the teacher's k most
    likely tokens (renormalised). alpha = 0 needs no teacher and returns exactly the one-hot CE.
    Returns (loss, one-hot CE, soft CE or None).
    """
    check_range("alpha", alpha, 0.0, 1.0, high_inclusive=True)
    hard = masked_cross_entropy(logits, labels)
    if alpha == 0:
        return hard, hard, None
    if teacher_logits is None:
        raise ValueError(f"`teacher_logits` are required when alpha > 0, got None (alpha={alpha})")
    soft = soft_target_cross_entropy(logits, teacher_logits, temperature=temperature, top_k=top_k)
    return (1 - alpha) * hard + alpha * soft, hard, soft


def normalized_entropy(logits: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean entropy of softmax(logits / temperature) over rows, divided by log(V): 1.0 for uniform
    predictions (an untrained teacher), near 0 for confident ones. logits [M, V]."""
    if logits.shape[0] == 0:
        return float("nan")
    logp = (logits.float() / temperature).log_softmax(-1)
    return float(-(logp.exp() * logp).sum(-1).mean() / math.log(logits.shape[-1]))


__all__ = ["SyntheticCaptions", "choose_positions", "normalized_entropy", "sample_replacements",
           "soft_label_mlm_loss", "synthesize_negatives"]
