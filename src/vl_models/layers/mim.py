"""Masked image modeling on discrete visual tokens, shared by VQ-MIM and VL-BEiT.

A target source gives every patch a code index:
- `CodebookTargets`: a codebook learned with the model (VQ-MIM). Teacher patch features are encoded to the
  code dimension, quantized by `VectorQuantizer` (nearest code via `kernels.nearest_code`) and decoded back to
  the features: VQ-VAE with the teacher's features as the data (BEiT v2's VQ-KD has the same shape).
- `TokenizerTargets`: an external frozen visual tokenizer, any module mapping pixel_values [B, C, H, W] to code
  indices [B, N] (BEiT's dVAE, BEiT v2's VQ-KD).

`MaskedImageModelingHead` predicts the code of every masked patch: cross-entropy over the K codes, computed at
masked positions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from ..kernels import nearest_code
from ..utils import check_index_range, check_tensor, describe
from .codebook import VectorQuantizer
from .heads import TokenClassifierHead
from .losses import feature_reconstruction_loss, masked_cross_entropy

RECONSTRUCTION_LOSSES = ("cosine", "smooth_l1", "none")


@dataclass
class VisualTargets(ModelOutput):
    """Code index of every patch and the statistics of this batch's codes.

    indices: [B, N] long. loss: the codebook objective (None for a frozen tokenizer). perplexity: exp of the
    entropy of the code histogram (1 .. K). usage: fraction of the K codes used at least once. num_restarted:
    dead codes revived in this step.
    """

    indices: torch.LongTensor | None = None
    loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    usage: torch.FloatTensor | None = None
    num_restarted: torch.LongTensor | None = None


@dataclass
class MimOutput(ModelOutput):
    """loss: CE at masked patches. logits [M, K] and labels [M]: the masked patches only, in `hidden[mask]` order.
    target_indices [B, N]: the code of every patch; codebook_loss, perplexity, usage: from the target source."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None
    target_indices: torch.LongTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    usage: torch.FloatTensor | None = None
    num_restarted: torch.LongTensor | None = None


def code_statistics(indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, usage) of a batch of code indices: exp(entropy of the histogram), fraction of codes used."""
    counts = torch.bincount(indices.reshape(-1), minlength=num_codes)  # [K]
    probs = counts.float() / max(indices.numel(), 1)
    return torch.exp(-torch.xlogy(probs, probs).sum()), (counts > 0).float().mean()


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    # Linear -> Tanh -> Linear: BEiT v2's encode/decode task layers around its quantizer
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, out_dim))


class CodebookTargets(nn.Module):
    """A jointly learned codebook: features [B, N, D] -> encoder -> VectorQuantizer -> code indices [B, N].

    The loss is VQ-VAE's with the (frozen, EMA) teacher's features as the data: the quantizer's commitment term
    (plus its codebook term when ``decay`` is None) and, unless ``reconstruction`` is "none", a decoder that
    reconstructs the features from the quantized codes (straight-through), which keeps the encoder from
    collapsing onto a few codes. ``frozen``: no gradients and no codebook statistics (always in eval mode), so
    the same features always give the same targets.
    """

    uses_features = True

    def __init__(self, feature_dim: int, num_codes: int, code_dim: int, *, decay: float | None = 0.99,
                 commitment_weight: float = 0.25, cosine: bool = True, kmeans_init: bool = True,
                 dead_code_after: int | None = None, reconstruction: str = "cosine", frozen: bool = False):
        super().__init__()
        if reconstruction not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"`reconstruction` must be one of {list(RECONSTRUCTION_LOSSES)}, got {reconstruction!r}")
        self.num_codes, self.frozen, self.reconstruction = num_codes, frozen, reconstruction
        self.encoder = _mlp(feature_dim, feature_dim, code_dim)
        self.quantizer = VectorQuantizer(num_codes, code_dim, decay=decay, commitment_weight=commitment_weight,
                                         cosine=cosine, kmeans_init=kmeans_init, dead_code_after=dead_code_after)
        self.decoder = _mlp(code_dim, feature_dim, feature_dim) if reconstruction != "none" else None
        if frozen:
            self.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(mode and not self.frozen)

    def forward(self, *, features: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> VisualTargets:
        features = self._check_features(features)
        # frozen means no gradient even where requires_grad was turned back on (transformers' loading does that)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.quantizer(self.encoder(features), generator=generator)  # indices [B, N]
            loss = out.loss
            if self.decoder is not None:
                loss = loss + feature_reconstruction_loss(self.decoder(out.quantized), features, self.reconstruction)
        return VisualTargets(indices=out.indices, loss=loss, perplexity=out.perplexity, usage=out.usage,
                             num_restarted=out.num_restarted)

    @torch.no_grad()
    def lookup(self, *, features: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None):
        """The codes `forward` would pick now, [B, N], without touching any codebook statistics."""
        z = self.encoder(self._check_features(features))
        if self.quantizer.cosine:  # exactly as the quantizer does, so near ties resolve the same way
            z = F.normalize(z, dim=-1)
        flat = z.reshape(-1, z.shape[-1]).float()  # [B*N, d]
        codes = self.quantizer.codes().detach()
        return nearest_code(flat, codes, cosine=self.quantizer.cosine).view(z.shape[:-1])

    def _check_features(self, features):
        if features is None:
            raise ValueError("`features` (teacher patch features [B, N, D]) are required by a learned codebook")
        return check_tensor("features", features, ndim=3, dtype="float",
                            last_dim=self.encoder[0].in_features).detach()


def _mark_initialized(module: nn.Module) -> None:
    # transformers initialises every tensor of a model it builds or loads unless flagged: a pretrained tokenizer
    # must keep its weights whatever checkpoint the model around it loads
    for part in module.modules():
        part._is_hf_initialized = True
    for tensor in list(module.parameters()) + list(module.buffers()):
        tensor._is_hf_initialized = True


def _drop_tokenizer_state(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "tokenizer.")]:
        del state_dict[key]


def _ignore_missing_tokenizer_state(module, incompatible_keys) -> None:
    # the keys are full names here; a missing key is the tokenizer's when it ends with one of its own names
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not any(k == t or k.endswith("." + t) for t in module._tokenizer_keys)]


class TokenizerTargets(nn.Module):
    """A frozen external visual tokenizer: pixel_values [B, C, H, W] -> code indices [B, N] in [0, num_codes).

    The tokenizer is a submodule, so it moves with the model, but it stays frozen and in eval mode, transformers'
    weight init skips it, and it is left out of the state dict: a checkpoint holds the model's own weights only
    (a ViT-B tokenizer would double its size), and loading one never replaces the tokenizer's weights. Pass the
    tokenizer again when loading.
    """

    uses_features = False

    def __init__(self, tokenizer: nn.Module, num_codes: int):
        super().__init__()
        if not isinstance(tokenizer, nn.Module):
            raise ValueError(f"`visual_tokenizer` must be an nn.Module mapping pixel_values to code indices, "
                             f"got {describe(tokenizer)}")
        if num_codes < 2:
            raise ValueError(f"`num_codes` must be >= 2, got {num_codes}")
        self.num_codes = num_codes
        self.tokenizer = tokenizer.requires_grad_(False).eval()
        _mark_initialized(tokenizer)
        self._tokenizer_keys = {f"tokenizer.{name}" for name in tokenizer.state_dict()}
        self.register_state_dict_post_hook(_drop_tokenizer_state)
        self.register_load_state_dict_post_hook(_ignore_missing_tokenizer_state)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, *, features: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> VisualTargets:
        indices = self.lookup(pixel_values=pixel_values)
        perplexity, usage = code_statistics(indices, self.num_codes)
        return VisualTargets(indices=indices, perplexity=perplexity, usage=usage,
                             num_restarted=torch.zeros((), dtype=torch.long, device=indices.device))

    @torch.no_grad()
    def lookup(self, *, features: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None):
        if pixel_values is None:
            raise ValueError("`pixel_values` are required by an external visual tokenizer, got None")
        indices = self.tokenizer(pixel_values)
        if not isinstance(indices, torch.Tensor) or indices.ndim != 2 or indices.is_floating_point() \
                or indices.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"`visual_tokenizer` must return integer code indices [B, N] with B = "
                             f"{pixel_values.shape[0]}, got {describe(indices)}")
        check_index_range("visual_tokenizer codes", indices, self.num_codes)
        return indices.long()


class MaskedImageModelingHead(nn.Module):
    """Predicts the target code of every masked patch (LayerNorm + linear over K) and scores it with CE.

    `target` is a `CodebookTargets` (give `features`) or a `TokenizerTargets` (give `pixel_values`); swap it to
    change where targets come from. Only the masked rows ever reach the classifier.
    """

    def __init__(self, hidden_size: int, target: CodebookTargets | TokenizerTargets, eps: float = 1e-6):
        super().__init__()
        self.target = target
        self.classifier = TokenClassifierHead(hidden_size, target.num_codes, eps)

    @property
    def num_codes(self) -> int:
        return self.classifier.proj.out_features

    def forward(self, hidden: torch.Tensor, bool_masked_pos: torch.Tensor, *, features: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, generator: torch.Generator | None = None) -> MimOutput:
        """hidden [B, N, D] patch states (no CLS), bool_masked_pos [B, N] (True = masked)."""
        check_tensor("hidden", hidden, ndim=3, dtype="float")
        check_tensor("bool_masked_pos", bool_masked_pos, ndim=2, dtype="bool")
        if bool_masked_pos.shape != hidden.shape[:2]:
            raise ValueError(f"`bool_masked_pos` must have shape {tuple(hidden.shape[:2])}, "
                             f"got {describe(bool_masked_pos)}")
        targets = self.target(features=features, pixel_values=pixel_values, generator=generator)
        if targets.indices.shape != bool_masked_pos.shape:
            raise ValueError(f"the targets must have one code per patch {tuple(bool_masked_pos.shape)}, "
                             f"got {describe(targets.indices)}")
        logits = self.classifier(hidden[bool_masked_pos])  # [M, K]: unmasked patches never reach the codes
        labels = targets.indices[bool_masked_pos]  # [M]
        return MimOutput(loss=masked_cross_entropy(logits, labels), logits=logits, labels=labels,
                         target_indices=targets.indices, codebook_loss=targets.loss, perplexity=targets.perplexity,
                         usage=targets.usage, num_restarted=targets.num_restarted)


__all__ = [
    "CodebookTargets",
    "MaskedImageModelingHead",
    "MimOutput",
    "TokenizerTargets",
    "VisualTargets",
    "code_statistics",
]
