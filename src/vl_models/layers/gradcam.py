"""Grad-CAM on a fusion encoder's text-to-image attention, and ranking of given proposal boxes by it: the weakly
supervised grounding of ALBEF (Li et al. 2021, its Grounding.py and grounding_eval), which never sees a box.

1. The ITM match logit of (image, expression) is back-propagated to the attention probabilities from the text to
   the image patches in one fusion layer (`fusion_attention`).
2. Grad-CAM = mean over heads of attention * clamp(gradient, min=0), averaged over the expression's tokens ([PAD]
   left out by the text mask, [CLS] and [SEP] kept, as ALBEF's mask does): a map over the patch grid (`itm_gradcam`).
3. The map is upsampled (bicubic) to the image, and each proposal scores the map's sum inside its box divided by
   its area ** 0.5; the highest-scoring proposal is the answer (`score_proposals`).

ALBEF reads layer 8 of its 12-layer BERT, the 3rd of its 6 fusion layers; `default_layer` keeps that relative
depth for other depths. Where the text meets the image, per backbone:
- a cross-attention fusion (ALBEF, VLMAE, VQ-MIM): the fusion layer's cross-attention, text queries x image keys;
- co-attention (ViLTA): the text stream's cross-attention to the image stream;
- one joint self-attention (VL-BEiT): the text-query x image-key block of the joint sequence's attention.
The image's [CLS] key is left out in every case: the map covers the patches only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig

from .attention import Attention
from .coattention import CoAttentionTransformer
from .towers import FusionTransformer
from .transformer import MultiwayLayer


def default_layer(num_layers: int, joint: bool = False) -> int:
    """ALBEF's layer at another depth: the 3rd of 6 fusion layers (index num_layers // 3); of a joint stack, where
    every layer is a fusion layer, 2/3 of the way up (ALBEF's 8 of 12)."""
    return min(num_layers - 1, (2 * num_layers) // 3 if joint else num_layers // 3)


def fusion_attention(backbone: nn.Module, layer: int | None = None
                     ) -> tuple[Attention, Callable[[torch.Tensor, int], torch.Tensor]]:
    """(the attention module whose probabilities Grad-CAM reads, `select(probabilities [B, H, Lq, Lk], text_length)`
    -> the text x patch block [B, H, T, N]). `layer`: index among the fusion layers (default `default_layer`)."""
    fusion = getattr(backbone, "fusion", None)
    if isinstance(fusion, FusionTransformer):
        layers, joint = [block.cross_attn.fn for block in fusion.layers], False
    elif isinstance(fusion, CoAttentionTransformer):
        layers, joint = [block.text_layer.cross_attn.fn for block in fusion.layers], False
    elif all(isinstance(block, MultiwayLayer) for block in getattr(backbone, "layers", [None])):
        layers, joint = [block.self_attn.fn for block in backbone.layers], True
    else:
        raise ValueError(f"{type(backbone).__name__} has no fusion encoder that Grad-CAM knows (cross-attention, "
                         f"co-attention or a joint multiway stack)")
    index = default_layer(len(layers), joint) if layer is None else layer
    if not -len(layers) <= index < len(layers):
        raise ValueError(f"`layer` must index one of the {len(layers)} fusion layers, got {layer}")

    def select(probabilities: torch.Tensor, text_length: int) -> torch.Tensor:
        if joint:  # [text | image [CLS] | patches]
            return probabilities[:, :, :text_length, text_length + 1:]
        return probabilities[:, :, :, 1:]  # keys: image [CLS] | patches

    return layers[index], select


@contextmanager
def eager_attention(model: nn.Module):
    """Every attention of `model` on the eager kernel, the one that returns probabilities (masks too are built for
    it); the configs' own kernels are restored afterwards."""
    configs = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PreTrainedConfig):
            configs[id(config)] = config
            for name in getattr(config, "sub_configs", {}) or {}:
                sub = getattr(config, name, None)
                if isinstance(sub, PreTrainedConfig):
                    configs[id(sub)] = sub
    before = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = before[key]


def gradcam_map(attention: torch.Tensor, gradient: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """attention, gradient [B, H, T, N], text_mask [B, T] (1 = token) -> Grad-CAM [B, N]: mean over heads of
    attention * clamp(gradient, min=0), then the mean over the text's tokens."""
    cam = (attention.float() * gradient.float().clamp(min=0)).mean(1)  # [B, T, N]
    mask = text_mask.to(cam.dtype)[:, :, None]  # [B, T, 1]
    return (cam * mask).sum(1) / mask.sum(1).clamp_min(1)


def itm_gradcam(model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, *, layer: int | None = None) -> torch.Tensor:
    """Grad-CAM of an `XForImageTextRetrieval` model's ITM match logit for each (image, expression) row -> maps
    [B, h, w] over the patch grid. Rows are independent (eval mode), so one backward pass serves the batch."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    module, select = fusion_attention(model.base_model, layer)
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model), torch.enable_grad():
            image_embeds, text_embeds, mask = model._encode_pair(pixel_values, input_ids, attention_mask)
            images, texts = model._fusion_inputs(image_embeds, text_embeds, pixel_values, input_ids)
            module.keep_attention = True  # the fusion pass only: a joint backbone's unimodal passes use it too
            try:
                fused = model._fuse(images, texts, mask)
            finally:
                module.keep_attention = False
            attention = module.__dict__.pop("kept_attention")  # [B, H, Lq, Lk]
            if not attention.requires_grad:
                raise ValueError("Grad-CAM needs the fusion encoder's parameters to require gradients")
            score = model.itm_head(fused[:, 0])[:, 1]  # [B]: the match logit, as ALBEF back-propagates
            (gradient,) = torch.autograd.grad(score.sum(), attention)
    finally:
        model.train(was_training)
    text_length = input_ids.shape[1]
    cam = gradcam_map(select(attention.detach(), text_length), select(gradient, text_length), mask)  # [B, N]
    patch = model.config.vision_config.patch_size
    grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
    if cam.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"the attention reaches {cam.shape[1]} image keys, the patch grid {grid} has "
                         f"{grid[0] * grid[1]}")
    return cam.view(-1, *grid)  # [B, h, w]


def boxes_to_pixels(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Normalised (cx, cy, w, h) [K, 4] -> pixel (x, y, w, h) in an image of `image_size` (height, width)."""
    height, width = image_size
    cx, cy, w, h = boxes.double().unbind(-1)
    return torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height], dim=-1)


def score_proposals(heatmap: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], *,
                    area_exponent: float = 0.5, mode: str = "bicubic") -> torch.Tensor:
    """ALBEF's proposal score: `heatmap` [h, w] upsampled to `image_size` (height, width) with `mode`; each box
    (normalised cx, cy, w, h [K, 4]) scores the sum of the map over its pixels, rows y..y+h and columns x..x+w
    truncated to integers as ALBEF's slicing does, divided by its area in pixels ** `area_exponent` -> [K]."""
    height, width = image_size
    heat = heatmap.float()[None, None]
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    full = F.interpolate(heat, size=(height, width), mode=mode, **kwargs)[0, 0]  # [H, W]
    scores = []
    for x, y, w, h in boxes_to_pixels(torch.as_tensor(boxes).reshape(-1, 4), image_size).tolist():
        # 1e-6: a box edge at a pixel boundary stays there after the normalised round trip
        x0, y0 = max(0, math.floor(x + 1e-6)), max(0, math.floor(y + 1e-6))
        x1, y1 = math.floor(x + w + 1e-6), math.floor(y + h + 1e-6)
        area = max(w * h, 1e-12)
        scores.append(full[y0:y1, x0:x1].sum() / area**area_exponent)
    return torch.stack(scores) if scores else full.new_zeros(0)


__all__ = [
    "boxes_to_pixels",
    "default_layer",
    "eager_attention",
    "fusion_attention",
    "gradcam_map",
    "itm_gradcam",
    "score_proposals",
]
