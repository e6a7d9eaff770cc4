"""VL-BEiT's visual tokenizer: a VQ-KD-style model (BEiT v2) whose code indices are the MIM targets.

pixel_values -> ViT encoder (or a patch-local one, `encoder="patch"`) -> Linear-Tanh-Linear -> `VectorQuantizer`
(cosine codes, EMA) -> a small transformer decoder -> (normalised) patch pixels or a teacher's patch features.
It is trained on its own (`forward` returns `loss`), then frozen inside `VlBeitForPreTraining`, which only calls
`get_codebook_indices`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from ...kernels import nearest_code
from ...layers.codebook import VectorQuantizer
from ...layers.draws import randn, randperm
from ...layers.losses import feature_reconstruction_loss, masked_patch_mse, patchify
from ...layers.towers import VisionTransformer
from ...layers.transformer import EncoderLayer
from ...modeling_utils import VlPreTrainedModel
from ...utils import check_tensor, describe
from .configuration_vl_beit import VlBeitTokenizerConfig


@dataclass
class VlBeitTokenizerOutput(ModelOutput):
    """loss = loss_vq + loss_rec. indices [B, N]: the code of every patch. reconstruction [B, N, P]: the decoder's
    prediction of the target (normalised pixels, P = p*p*C, or teacher features, P = teacher_dim)."""

    loss: torch.FloatTensor | None = None
    loss_vq: torch.FloatTensor | None = None
    loss_rec: torch.FloatTensor | None = None
    indices: torch.LongTensor | None = None
    codebook_perplexity: torch.FloatTensor | None = None
    codebook_usage: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None


def _task_layer(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))  # BEiT v2's task layers


_DISTINCT = 0.05  # patch features closer than this (relative to their norm) are one for the codebook's init
_MAX_DISTINCT = 4096


class VlBeitPatchEncoder(nn.Module):
    """Patch-local encoder: pixel_values [B, C, H, W] -> [B, N, D], each patch from its own raw pixels only: every
    pixel through one linear map, then the maximum over the patch's pixels. No attention across patches and no
    position embeddings, so identical patches get identical features wherever they are (and the same code); raw
    pixels, not per-patch normalised ones, so colour is kept. The maximum says which colours a patch holds rather
    than how much of it they cover or where: on Shapes the codes become colour sets (background, "red and black",
    "red"), while a linear map of the whole patch split each colour by coverage and put 18% of the object patches
    (tiny) on the background's code, against 5% here (docs/methods/vl_beit.md, "Does it learn?")."""

    def __init__(self, vision):
        super().__init__()
        self.image_size, self.patch_size, self.num_channels = vision.image_size, vision.patch_size, vision.num_channels
        self.proj = nn.Linear(vision.num_channels, vision.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
        expected = (self.num_channels, self.image_size, self.image_size)
        if tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(f"`pixel_values` must be [B, {', '.join(map(str, expected))}], "
                             f"got {describe(pixel_values)}")
        patches = patchify(pixel_values, self.patch_size)  # [B, N, p*p*C], values ordered (row, col, channel)
        pixels = patches.unflatten(-1, (-1, self.num_channels))  # [B, N, p*p, C]
        return self.proj(pixels.to(self.proj.weight.dtype)).amax(dim=2)  # [B, N, D]


class VlBeitVisualTokenizer(VlPreTrainedModel):
    """pixel_values [B, C, H, W] -> code indices [B, N] (`get_codebook_indices`, deterministic, no statistics
    touched); `forward` trains it (VQ loss + reconstruction loss)."""

    config_class = VlBeitTokenizerConfig
    base_model_prefix = "visual_tokenizer"
    input_modalities = ("image",)

    def __init__(self, config: VlBeitTokenizerConfig):
        super().__init__(config)
        vision = config.vision_config
        width = vision.hidden_size
        self.encoder = VlBeitPatchEncoder(vision) if config.encoder == "patch" else VisionTransformer(vision)
        self.encode_task = _task_layer(width, width, config.code_dim)
        self.quantizer = VectorQuantizer(config.num_codes, config.code_dim, decay=config.codebook_decay,
                                         commitment_weight=config.commitment_weight, cosine=config.cosine_codes,
                                         kmeans_init=config.kmeans_init, dead_code_after=config.dead_code_after)
        self.decoder_embed = nn.Linear(config.code_dim, width)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, vision.num_patches, width))
        self.decoder = nn.ModuleList(
            EncoderLayer(vision, width, vision.num_attention_heads, vision.intermediate_size, norm_first=True,
                         eps=vision.layer_norm_eps, act=vision.hidden_act)
            for _ in range(config.decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(width, eps=vision.layer_norm_eps)
        target_dim = config.teacher_dim if config.reconstruction_target == "features" else \
            vision.patch_size**2 * vision.num_channels
        self.decode_task = _task_layer(width, width, target_dim)
        self.post_init()
        if config.freeze_encoder:  # the codes are a k-means of random features; the decoder only reports on them
            self.encoder.requires_grad_(False)
            self.encode_task.requires_grad_(False)

    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    def _init_method_parameters(self):
        init.trunc_normal_(self.decoder_pos_embed, std=self.config.initializer_range)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(pixel_values)  # [B, N, D] (patch-local) or [B, 1 + N, D] (ViT: CLS first)
        return self.encode_task(hidden if self.config.encoder == "patch" else hidden[:, 1:])  # [B, N, d]

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(quantized) + self.decoder_pos_embed  # [B, N, D]
        for layer in self.decoder:
            x = layer(x)
        return self.decode_task(self.decoder_norm(x))  # [B, N, P]

    @torch.no_grad()
    def _init_codes_on_distinct_patches(self, z: torch.Tensor, generator) -> None:
        """k-means init over the batch's distinct patch features, each counted once. A patch-local encoder maps
        identical patches (Shapes: the black background, most of the batch) to one vector; k-means started from
        random rows of the whole batch would put many codes on that vector, and equal codes split it at random
        (near ties in the lookup), so its code would flip with pixel noise. Features closer than
        `_DISTINCT` (relative distance; pixel noise of std 0.01 moves them ~0.01) count as one. Fewer distinct
        features than codes: the rest start as random vectors, away from the patches. (The quantizer's snapshot
        for `revert_updates` is taken after this init, so a dropped first update keeps it.)"""
        flat = z.reshape(-1, z.shape[-1]).float()  # [B*N, d]
        if self.quantizer.cosine:
            flat = F.normalize(flat, dim=-1)
        flat = torch.unique(flat, dim=0)  # [M, d], exact duplicates gone (sorted order)
        if flat.shape[0] > _MAX_DISTINCT:  # bounds the M x M distances below
            flat = flat[randperm(flat.shape[0], generator, flat.device)[:_MAX_DISTINCT]]
        scale = flat.norm(dim=-1).mean().clamp_min(1e-12)
        near = torch.cdist(flat, flat) < _DISTINCT * scale  # [M, M]
        flat = flat[~near.tril(diagonal=-1).any(dim=1)]  # keep a row unless an earlier row is near it
        missing = self.quantizer.num_codes - flat.shape[0]
        if missing > 0:
            extra = randn((missing, flat.shape[1]), generator, flat.device)
            flat = torch.cat([flat, F.normalize(extra, dim=-1) if self.quantizer.cosine else extra * scale])
        self.quantizer.init_codes(flat, generator)  # the quantizer's own k-means, over these rows

    @torch.no_grad()
    def get_codebook_indices(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """The code of every patch [B, N]: a pure nearest-code lookup, the same in train and eval mode."""
        z = self.encode(pixel_values)
        if self.quantizer.cosine:  # exactly as the quantizer does, so near ties resolve the same way
            z = F.normalize(z, dim=-1)
        flat = z.reshape(-1, z.shape[-1]).float()  # [B*N, d]
        return nearest_code(flat, self.quantizer.codes().detach(), cosine=self.quantizer.cosine).view(z.shape[:-1])

    def lookup(self, *, features=None, pixel_values=None) -> torch.LongTensor:
        """The target-source protocol of `layers.mim` (`TokenizerTargets.lookup`)."""
        if pixel_values is None:
            raise ValueError("`pixel_values` are required by the visual tokenizer, got None")
        return self.get_codebook_indices(pixel_values)

    def forward(self, pixel_values=None, teacher_features=None, generator=None, **kwargs) -> VlBeitTokenizerOutput:
        """Extra batch keys (captions from a pre-training collator) are ignored. `teacher_features` [B, N, D_t]:
        the reconstruction target when `config.reconstruction_target == "features"`."""
        if pixel_values is None:
            raise ValueError("`pixel_values` is required, got None")
        check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
        cfg = self.config
        z = self.encode(pixel_values)  # [B, N, d]
        if cfg.encoder == "patch" and self.training and self.quantizer.kmeans_init and not self.quantizer.initted:
            self._init_codes_on_distinct_patches(z, generator)
        quantized = self.quantizer(z, generator=generator)
        reconstruction = self.decode(quantized.quantized)  # [B, N, P]
        if cfg.reconstruction_target == "features":
            if teacher_features is None:
                raise ValueError("`teacher_features` [B, N, teacher_dim] are required when "
                                 "reconstruction_target='features', got None")
            check_tensor("teacher_features", teacher_features, ndim=3, dtype="float", last_dim=cfg.teacher_dim)
            if teacher_features.shape[:2] != reconstruction.shape[:2]:
                raise ValueError(f"`teacher_features` must have shape {tuple(reconstruction.shape[:2])} + "
                                 f"(teacher_dim,), got {describe(teacher_features)}")
            loss_rec = feature_reconstruction_loss(reconstruction, teacher_features, "cosine")
        else:
            target = patchify(pixel_values, cfg.vision_config.patch_size)  # [B, N, p*p*C]
            every_patch = torch.ones(target.shape[:2], dtype=torch.bool, device=target.device)
            loss_rec = masked_patch_mse(reconstruction, target, every_patch, norm_pix=cfg.norm_pix_loss)
        return VlBeitTokenizerOutput(loss=quantized.loss + loss_rec, loss_vq=quantized.loss, loss_rec=loss_rec,
                                     indices=quantized.indices, codebook_perplexity=quantized.perplexity,
                                     codebook_usage=quantized.usage, reconstruction=reconstruction)


__all__ = ["VlBeitPatchEncoder", "VlBeitTokenizerOutput", "VlBeitVisualTokenizer"]
