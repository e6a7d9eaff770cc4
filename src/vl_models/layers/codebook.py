"""Vector quantizer shared by the tokenizer-based methods (VQ-VAE EMA / BEiT-v2 cosine codebooks).

The nearest code comes from `vl_models.kernels.nearest_code`, so no N x K matrix is ever built; EMA
statistics use `bincount` / `index_add_` (no one-hot) and are all-reduced across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from vl_models.kernels import nearest_code
from vl_models.layers.accumulation import PerUpdateState
from vl_models.layers.draws import randint, randperm
from vl_models.utils import check_range, describe


@dataclass
class QuantizerOutput(ModelOutput):
    """What `VectorQuantizer.forward` returns.

    quantized: codes in the shape of the input, with a straight-through gradient to the input.
    indices: LongTensor of the input's leading shape, the chosen code per vector.
    loss: commitment loss (EMA mode) or codebook + commitment loss (gradient mode), a scalar.
    perplexity: exp of the entropy of this batch's code histogram (1 .. num_codes).
    usage: fraction of codes used at least once in this batch.
    num_restarted: dead codes replaced in this step (0 outside training or without restarts).
    """

    quantized: torch.FloatTensor | None = None
    indices: torch.LongTensor | None = None
    loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    usage: torch.FloatTensor | None = None
    num_restarted: torch.LongTensor | None = None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce_(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t)
    return t


def _broadcast_(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def _is_rank0() -> bool:
    return not _distributed() or dist.get_rank() == 0


def _check_positive_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {describe(value)}")


def kmeans(
    x: torch.Tensor, num_codes: int, iters: int, *, cosine: bool = False, generator=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on x [N, D] (float32) -> centres [K, D] and cluster sizes [K].

    Starts from random rows of x; an empty cluster keeps its centre.
    """
    n = x.shape[0]
    if n >= num_codes:
        start = randperm(n, generator, x.device)[:num_codes]
    else:
        start = randint(0, n, (num_codes,), generator, x.device)
    centres = x[start].clone()  # [K, D]
    counts = torch.zeros(num_codes, device=x.device)
    for _ in range(iters):
        idx = nearest_code(x, centres, cosine=cosine)  # [N]
        counts = torch.bincount(idx, minlength=num_codes).float()  # [K]
        sums = torch.zeros_like(centres).index_add_(0, idx, x)  # [K, D]
        means = sums / counts.clamp_min(1).unsqueeze(1)
        if cosine:
            means = F.normalize(means, dim=-1)
        centres = torch.where(counts.unsqueeze(1) > 0, means, centres)
    return centres, counts


class VectorQuantizer(PerUpdateState, nn.Module):
    """Nearest-code quantizer with EMA (``decay``) or gradient (``decay=None``) codebook updates.

    Args:
        num_codes: codebook size K (>= 2).
        dim: code dimension D.
        decay: EMA decay in (0, 1) for VQ-VAE EMA updates (loss = commitment only), or None to learn
            the codebook by gradient (loss = codebook term + commitment term).
        commitment_weight: weight of ``||z - sg(q)||^2``.
        cosine: L2-normalise inputs and codes (BEiT-v2); outputs are unit vectors.
        kmeans_init: on the first training forward, set the codes by k-means on that batch.
        kmeans_iters: k-means iterations.
        dead_code_after: replace a code unused for this many consecutive training steps (optimizer updates
            under `accumulating`) by a random vector of the current batch (None: never). Costs one host sync
            per training step.
        eps: Laplace smoothing of the EMA cluster sizes.

    Buffers: ``codebook`` [K, D] (a Parameter when ``decay`` is None), ``cluster_size`` [K] and
    ``embed_sum`` [K, D] (EMA mode), ``steps_since_used`` [K], ``initted`` (k-means done).

    A training forward changes this state at once. A trainer that drops an update (non-finite loss) calls
    ``revert_updates()``, which puts back the state of the last ``commit_updates()`` (or of before the first
    training forward), so the dropped step leaves nothing in the codebook.

    Inside `vl_models.accumulating` (gradient accumulation) the forwards of one optimizer update only add up
    their code counts and sums; the update's end applies them as one EMA step (and one dead-code count, with
    restarts drawn from its last micro-batch), so k micro-batches update the codebook as their whole batch would.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        decay: float | None = 0.99,
        commitment_weight: float = 0.25,
        cosine: bool = False,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_after: int | None = None,
        eps: float = 1e-5,
    ):
        super().__init__()
        _check_positive_int("num_codes", num_codes, 2)
        _check_positive_int("dim", dim, 1)
        _check_positive_int("kmeans_iters", kmeans_iters, 1)
        if decay is not None:
            check_range("decay", decay, 0.0, 1.0)
            if decay == 0.0:
                raise ValueError(f"`decay` must be in (0, 1) or None, got {decay!r}")
        if dead_code_after is not None:
            _check_positive_int("dead_code_after", dead_code_after, 1)
        check_range("commitment_weight", commitment_weight, 0.0, float("inf"))
        if not eps > 0:
            raise ValueError(f"`eps` must be > 0, got {eps!r}")
        self.num_codes, self.dim = num_codes, dim
        self.decay, self.commitment_weight, self.eps = decay, commitment_weight, eps
        self.cosine, self.kmeans_init, self.kmeans_iters = cosine, kmeans_init, kmeans_iters
        self.dead_code_after = dead_code_after

        if decay is None:
            self.codebook = nn.Parameter(torch.empty(num_codes, dim))
        else:
            self.register_buffer("codebook", torch.empty(num_codes, dim))
            self.register_buffer("cluster_size", torch.empty(num_codes))
            self.register_buffer("embed_sum", torch.empty(num_codes, dim))
        self.register_buffer("steps_since_used", torch.empty(num_codes, dtype=torch.long))
        self.register_buffer("initted", torch.empty((), dtype=torch.bool))
        self._saved: dict[str, torch.Tensor] | None = None  # state at the last commit (not in state_dict)
        self._pending: dict | None = None  # this update's statistics so far, under gradient accumulation
        self.reset_parameters()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._saved = None  # a loaded state is committed: a revert must not bring back the one before it
        self._pending = None

    @property
    def use_ema(self) -> bool:
        return self.decay is not None

    def reset_parameters(self) -> None:
        # only transformers.initialization functions: they skip tensors loaded from a checkpoint
        init.normal_(self.codebook)
        if self.cosine:
            init.copy_(self.codebook, F.normalize(self.codebook.detach(), dim=-1))
        if self.use_ema:
            # a consistent EMA state: every code has "seen itself once", so codebook == embed_sum / size
            init.ones_(self.cluster_size)
            init.copy_(self.embed_sum, self.codebook.detach())
        init.zeros_(self.steps_since_used)
        (init.zeros_ if self.kmeans_init else init.ones_)(self.initted)
        self._saved = None
        self._pending = None

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, decay={self.decay}, cosine={self.cosine}, "
            f"dead_code_after={self.dead_code_after}"
        )

    def _state(self) -> dict[str, torch.Tensor]:
        names = ["codebook", "steps_since_used", "initted"]
        names += ["cluster_size", "embed_sum"] if self.use_ema else []
        return {name: getattr(self, name) for name in names}

    @torch.no_grad()
    def commit_updates(self) -> None:
        """Keep what the training forwards since the last commit did (the update was applied)."""
        self._saved = None

    @torch.no_grad()
    def revert_updates(self) -> bool:
        """Undo what the training forwards since the last commit did; returns whether there was anything."""
        self._pending = None
        if self._saved is None:
            return False
        for name, tensor in self._state().items():
            tensor.data.copy_(self._saved[name])  # .data: the gradient-mode codebook is a leaf Parameter
        self._saved = None
        return True

    def codes(self) -> torch.Tensor:
        """The codebook as used for lookup, [K, D] (unit rows in cosine mode)."""
        return F.normalize(self.codebook, dim=-1) if self.cosine else self.codebook

    def forward(self, z: torch.Tensor, *, generator: torch.Generator | None = None) -> QuantizerOutput:
        self._check_input(z)
        if self.cosine:
            z = F.normalize(z, dim=-1)
        flat = z.detach().reshape(-1, self.dim).float()  # [N, D]
        if self.training and self._saved is None:  # one copy per update, so that it can be reverted
            self._saved = {name: t.detach().clone() for name, t in self._state().items()}
        if self.training and self.kmeans_init and not self.initted:  # sync-free unless k-means is on
            self.init_codes(flat, generator)

        codes = self.codes()  # [K, D]
        indices = nearest_code(flat, codes.detach(), cosine=self.cosine)  # [N]
        q = F.embedding(indices, codes).view_as(z)  # [..., D], differentiable w.r.t. codes
        commit = F.mse_loss(z.float(), q.detach().float())
        loss = self.commitment_weight * commit
        if not self.use_ema:
            loss = loss + F.mse_loss(q.float(), z.detach().float())
        quantized = z + (q.to(z.dtype) - z).detach()  # straight-through

        counts = torch.bincount(indices, minlength=self.num_codes)  # [K], this rank's batch
        probs = counts.float() / indices.numel()
        perplexity = torch.exp(-torch.xlogy(probs, probs).sum())
        usage = (counts > 0).float().mean()
        num_restarted = torch.zeros((), dtype=torch.long, device=z.device)
        if self.training:
            num_restarted = self._update(flat, indices, counts, generator)
        return QuantizerOutput(
            quantized=quantized,
            indices=indices.view(z.shape[:-1]),
            loss=loss,
            perplexity=perplexity,
            usage=usage,
            num_restarted=num_restarted,
        )

    def _check_input(self, z) -> None:
        if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.ndim < 1:
            raise ValueError(f"`z` must be a float tensor of shape [..., {self.dim}], got {describe(z)}")
        if z.shape[-1] != self.dim:
            raise ValueError(f"`z` must have last dimension {self.dim}, got {describe(z)}")
        if z.numel() == 0:
            raise ValueError(f"`z` must hold at least one vector, got {describe(z)}")

    @torch.no_grad()
    def init_codes(self, flat: torch.Tensor, generator=None) -> None:
        """k-means over `flat` [N, D] (already normalised where codes are cosine) becomes the codebook; called by the
        first training forward when `kmeans_init`, or by a caller that picks the rows itself (VL-BEiT's patch-local
        tokenizer: each distinct patch once). Rank 0 clusters and every rank takes its result, so replicas start
        equal."""
        result = torch.empty(self.num_codes, self.dim + 1, device=flat.device)
        if _is_rank0():
            centres, counts = kmeans(
                flat, self.num_codes, self.kmeans_iters, cosine=self.cosine, generator=generator
            )
            result = torch.cat([centres, counts.unsqueeze(1)], 1)  # [K, D + 1], one broadcast
        _broadcast_(result)
        centres, counts = result[:, :-1], result[:, -1]
        self._set_codes(torch.ones(self.num_codes, dtype=torch.bool, device=flat.device), centres)
        if self.use_ema:
            # the EMA starts with the k-means cluster sizes as its weight (at least 1, so an empty
            # cluster keeps its centre instead of decaying to the origin)
            size = counts.clamp_min(1)
            self.cluster_size.copy_(size)
            self.embed_sum.copy_(centres * size.unsqueeze(1))
        self.steps_since_used.zero_()
        self.initted.fill_(True)

    @torch.no_grad()
    def _set_codes(self, mask: torch.Tensor, values: torch.Tensor) -> None:
        """Codes where ``mask`` become ``values`` (float32 [K, D]); their EMA state restarts from them."""
        new = torch.where(mask.unsqueeze(1), values, self.codebook.float())
        # through .data: in gradient mode this step's graph may hold the codebook (cosine
        # normalise) and must not see a version bump; the replaced rows had no gradient anyway
        self.codebook.data.copy_(new)
        if self.use_ema:
            self.embed_sum.copy_(torch.where(mask.unsqueeze(1), values, self.embed_sum.float()))
            self.cluster_size.masked_fill_(mask, 1.0)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor, generator):
        """This training forward's codebook statistics: applied now, or added to the update's pending ones under
        gradient accumulation. Returns how many dead codes were restarted now."""
        counts = counts.float()  # [K], this rank's batch
        sums = None
        if self.use_ema:
            sums = torch.zeros(self.num_codes, self.dim, device=flat.device).index_add_(0, indices, flat)  # [K, D]
        if self.deferring():
            if self._pending is not None:
                counts = counts + self._pending["counts"]
                sums = sums + self._pending["sums"] if self.use_ema else None
            # restarts draw from the update's last micro-batch (keeping every micro-batch's vectors costs memory)
            self._pending = {"counts": counts, "sums": sums, "flat": flat, "generator": generator}
            return torch.zeros((), dtype=torch.long, device=flat.device)
        return self._apply_statistics(counts, sums, flat, generator)

    def close_update(self) -> None:
        super().close_update()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._apply_statistics(pending["counts"], pending["sums"], pending["flat"], pending["generator"])

    @torch.no_grad()
    def _apply_statistics(self, counts: torch.Tensor, sums: torch.Tensor | None, flat: torch.Tensor, generator):
        """One update of codebook statistics from this rank's code counts [K] and sums [K, D] (EMA mode); returns
        how many dead codes were restarted with vectors of `flat` [N, D]."""
        counts = _all_reduce_(counts)  # [K], global batch
        if self.use_ema:
            self._ema_step(counts, _all_reduce_(sums))
        self.steps_since_used.copy_(torch.where(counts > 0, 0, self.steps_since_used + 1))
        if self.dead_code_after is None:
            return torch.zeros((), dtype=torch.long, device=flat.device)
        dead = self.steps_since_used >= self.dead_code_after  # [K], identical on every rank
        num_dead = dead.sum()
        if num_dead.item() > 0:
            # one random batch vector per code, drawn on rank 0 so every replica gets the same ones
            candidates = torch.empty(self.num_codes, self.dim, device=flat.device)
            if _is_rank0():
                candidates = flat[randint(0, flat.shape[0], (self.num_codes,), generator, flat.device)]
            _broadcast_(candidates)
            self._set_codes(dead, candidates)
            self.steps_since_used.masked_fill_(dead, 0)
        return num_dead

    def _ema_step(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        keep = self.decay
        size = self.cluster_size.float() * keep + counts * (1 - keep)
        embed_sum = self.embed_sum.float() * keep + sums * (1 - keep)
        # Laplace smoothing keeps rarely used codes from dividing by ~0
        total = size.sum()
        smoothed = (size + self.eps) / (total + self.num_codes * self.eps) * total
        codebook = embed_sum / smoothed.unsqueeze(1)
        if self.cosine:
            codebook = F.normalize(codebook, dim=-1)
        self.cluster_size.copy_(size)
        self.embed_sum.copy_(embed_sum)
        self.codebook.copy_(codebook)
