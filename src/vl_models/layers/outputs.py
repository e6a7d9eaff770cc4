"""ModelOutput dataclasses shared by every method."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class VlModelOutput(ModelOutput):
    """What a method's `XModel` returns.

    image_embeds: [B, 1 + N, Dv] image tokens (CLS first). text_embeds: [B, T, Dt] unimodal text tokens.
    multimodal_embeds: [B, T, Dt] fused tokens (when both modalities are given). image_feat / text_feat:
    [B, E] L2-normalised ITC embeddings (what retrieval and zero-shot classification compare).
    """

    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    multimodal_embeds: torch.FloatTensor | None = None
    image_feat: torch.FloatTensor | None = None
    text_feat: torch.FloatTensor | None = None


@dataclass
class VlPreTrainingOutput(ModelOutput):
    """Pre-training losses, one field per objective (None where a method lacks it), plus training signals.

    `loss` is the config-weighted sum of the method's objectives. `itm_accuracy` is measured on the
    positives and the sampled hard negatives; codebook fields show collapse early.
    """

    loss: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    loss_mlm: torch.FloatTensor | None = None
    loss_rmim: torch.FloatTensor | None = None
    loss_ifr: torch.FloatTensor | None = None
    loss_mim: torch.FloatTensor | None = None
    loss_vq: torch.FloatTensor | None = None
    loss_mvlm: torch.FloatTensor | None = None
    itm_accuracy: torch.FloatTensor | None = None
    # top-1 accuracy at masked text tokens (text-only rows) / masked patches (image-only rows) and, for VL-BEiT's
    # pairs, at their masked tokens and patches: detached tensors, no host sync
    mlm_accuracy: torch.FloatTensor | None = None
    mim_accuracy: torch.FloatTensor | None = None
    mvlm_text_accuracy: torch.FloatTensor | None = None
    mvlm_image_accuracy: torch.FloatTensor | None = None
    codebook_perplexity: torch.FloatTensor | None = None
    codebook_usage: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None  # [M, V] at masked positions only
    image_mask: torch.BoolTensor | None = None  # [B, N] True = masked patch
    reconstruction: torch.FloatTensor | None = None  # [B, N_masked, p*p*C] predicted (normalised) pixels


@dataclass
class VlRetrievalOutput(ModelOutput):
    """logits_per_image [B_img, B_txt] ITC similarities (scaled); itm_logits [B, 2] for given pairs."""

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    image_feat: torch.FloatTensor | None = None
    text_feat: torch.FloatTensor | None = None


@dataclass
class VlClassificationOutput(ModelOutput):
    """VQA (scores over the answer vocabulary) and NLVR2 (true/false) logits."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


@dataclass
class VlGroundingOutput(ModelOutput):
    """pred_boxes [B, 4] normalised (cx, cy, w, h) in [0, 1]; scores [B] the head's confidence in each box;
    patch_logits [B, N] where the head looks for the object, one logit per image patch (row-major)."""

    loss: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    patch_logits: torch.FloatTensor | None = None
