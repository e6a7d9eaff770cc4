"""VL-BEiT's visual tokenizer: a VQ-KD-style model (BEiT v2) whose code indices are the MIM targets.

pixel_values -> ViT encoder -> Linear-Tanh-Linear -> `VectorQuantizer` (cosine codes, EMA) -> a small transformer
decoder -> normalised patch pixels or a teacher's patch features. It is trained on its own (`forward` returns
`loss`), then frozen inside `VlBeitForPreTraining`, which only calls `get_codebook_indices`.
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
        self.encoder = VisionTransformer(vision)
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
        return self.encode_task(self.encoder(pixel_values)[:, 1:])  # [B, N, d]

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(quantized) + self.decoder_pos_embed  # [B, N, D]
        for layer in self.decoder:
            x = layer(x)
        return self.decode_task(self.decoder_norm(x))  # [B, N, P]

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
        quantized = self.quantizer(self.encode(pixel_values), generator=generator)
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
            loss_rec = masked_patch_mse(reconstruction, target, every_patch, norm_pix=True)
        return VlBeitTokenizerOutput(loss=quantized.loss + loss_rec, loss_vq=quantized.loss, loss_rec=loss_rec,
                                     indices=quantized.indices, codebook_perplexity=quantized.perplexity,
                                     codebook_usage=quantized.usage, reconstruction=reconstruction)


__all__ = ["VlBeitTokenizerOutput", "VlBeitVisualTokenizer"]
