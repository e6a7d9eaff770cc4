"""VQ-MIM: ALBEF plus masked image modeling whose targets are the codes of a visual codebook learned with the
model (VQ-VAE-style). Everything ALBEF-like comes from `layers.align_fuse`, the MIM pieces from `layers.mim`."""

from __future__ import annotations

import torch
from torch import nn

from ...layers.align_fuse import (
    ALIGN_FUSE_PRETRAINING_MODULES,
    AlignFuseModelMixin,
    AlignFusePreTrainingMixin,
)
from ...layers.attention import key_padding_mask
from ...layers.masking import beit_image_mask
from ...layers.mim import CodebookTargets, MaskedImageModelingHead, TokenizerTargets
from ...layers.outputs import VlPreTrainingOutput
from ...layers.tasks import (
    AlignFuseRetrievalMixin,
    ImagesAndTextClassificationMixin,
    QuestionAnsweringMixin,
    VisualGroundingMixin,
)
from ...layers.transformer import EncoderLayer
from ...modeling_utils import VlPreTrainedModel
from ...utils import check_tensor
from .configuration_vq_mim import VqMimConfig


class VqMimPreTrainedModel(VlPreTrainedModel):
    config_class = VqMimConfig
    base_model_prefix = "vq_mim"
    _pretraining_only_modules = (*ALIGN_FUSE_PRETRAINING_MODULES, "mim_fusion", "mim_head")


class VqMimModel(AlignFuseModelMixin, VqMimPreTrainedModel):
    """Image encoder, text encoder and fusion encoder (fine-tuning and inference see the full image)."""

    def post_init(self):
        # the [MASK] patch embedding only serves pre-training's masked pass: frozen so that fine-tuning, which
        # never masks, has no trainable parameter without a gradient (DDP); `VqMimForPreTraining` unfreezes it.
        # Frozen before post_init, which records what is frozen for `from_pretrained` to freeze again
        self.vision.embeddings.mask_token.requires_grad_(False)
        super().post_init()


class VqMimFusion(nn.Module):
    """Image tokens (hidden patches replaced by [MASK]) self-attend and cross-attend to the caption: the MIM
    counterpart of the fusion encoder, where text tokens attend to the image."""

    def __init__(self, config: VqMimConfig):
        super().__init__()
        vision, text = config.vision_config, config.text_config
        self.config = config
        self.layers = nn.ModuleList(
            EncoderLayer(config, vision.hidden_size, vision.num_attention_heads, vision.intermediate_size,
                         norm_first=True, eps=vision.layer_norm_eps, act=vision.hidden_act,
                         cross_attention_dim=text.hidden_size)
            for _ in range(config.mim_fusion_layers)
        )

    def forward(self, image_embeds, text_embeds, text_mask):
        # image_embeds [B, 1 + N, Dv], text_embeds [B, T, Dt] -> [B, 1 + N, Dv]
        if len(self.layers) == 0:
            return image_embeds
        cross_mask = key_padding_mask(self.config, image_embeds, text_mask, keys=text_embeds)
        x = image_embeds
        for layer in self.layers:
            x = layer(x, None, text_embeds, cross_mask)
        return x


def _codebook_targets(config: VqMimConfig) -> CodebookTargets:
    return CodebookTargets(
        config.vision_config.hidden_size, config.num_codes, config.code_dim, decay=config.codebook_decay,
        commitment_weight=config.commitment_weight, cosine=config.cosine_codes, kmeans_init=config.kmeans_init,
        dead_code_after=config.dead_code_after, reconstruction=config.vq_reconstruction,
        frozen=config.freeze_codebook,
    )


class VqMimForPreTraining(AlignFusePreTrainingMixin, VqMimPreTrainedModel):
    """ITC + ITM + MLM (ALBEF) + MIM on the codes of the momentum encoder's patch features + the codebook's
    VQ objective.

    `visual_tokenizer`: an external frozen module mapping pixel_values [B, C, H, W] to code indices [B, N] in
    [0, config.num_codes); it replaces the learned codebook as the source of MIM targets (`loss_vq` is then 0).
    Its weights stay out of the model's state dict and checkpoints; pass it again to `from_pretrained`.
    """

    _backbone_class = VqMimModel
    # the MIM fusion's image queries cross-attend to padded caption keys; transformers' flash path unpads queries
    # with the key mask (one sequence assumed), so flash stays off here (the downstream models keep it)
    _supports_flash_attn = False

    def __init__(self, config: VqMimConfig, visual_tokenizer: nn.Module | None = None):
        super().__init__(config)
        if visual_tokenizer is not None:
            # built after post_init and flagged as initialised: the tokenizer keeps its own weights
            self.mim_head.target = TokenizerTargets(visual_tokenizer, config.num_codes)

    def _build_method_heads(self, config: VqMimConfig):
        self.vq_mim.vision.embeddings.mask_token.requires_grad_(True)  # the student's, not the teacher's
        self.mim_fusion = VqMimFusion(config)
        self.mim_head = MaskedImageModelingHead(config.vision_config.hidden_size, _codebook_targets(config),
                                                eps=config.vision_config.layer_norm_eps)

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, mlm_input_ids=None, mlm_labels=None,
                image_mask=None, alpha=None, generator=None, interpolate_pos_encoding=False,
                **kwargs) -> VlPreTrainingOutput:
        """`image_mask` [B, N] bool (True = masked) comes from a collator; without it, BEiT block-wise masking
        of `round(config.mim_mask_ratio * N)` patches per image draws one from `generator`."""
        cfg = self.config
        attention_mask = self._check_pretraining_inputs(pixel_values, input_ids, attention_mask)
        mask = self._image_mask(pixel_values, image_mask, generator)  # [B, N]
        backbone = self.vq_mim
        masked = backbone.encode_image(pixel_values, bool_masked_pos=mask,
                                       interpolate_pos_encoding=interpolate_pos_encoding)  # [B, 1 + N, Dv]
        image_embeds = masked if cfg.align_on_masked_image else backbone.encode_image(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        losses, extras = self.align_fuse_losses(
            image_embeds=image_embeds, pixel_values=pixel_values, input_ids=input_ids,
            attention_mask=attention_mask, mlm_input_ids=mlm_input_ids, mlm_labels=mlm_labels, alpha=alpha,
            generator=generator, interpolate_pos_encoding=interpolate_pos_encoding,
        )
        hidden = self.mim_fusion(masked, extras["text_embeds"], attention_mask)[:, 1:]  # [B, N, Dv]
        # targets: the momentum encoder's features of the full image (already computed for ITC)
        mim = self.mim_head(hidden, mask, features=extras["image_embeds_m"][:, 1:], pixel_values=pixel_values,
                            generator=generator)
        losses["loss_mim"] = mim.loss
        losses["loss_vq"] = mim.codebook_loss if mim.codebook_loss is not None else hidden.new_zeros(())
        return self.pretraining_output(losses, extras, image_mask=mask, codebook_perplexity=mim.perplexity,
                                       codebook_usage=mim.usage)

    @torch.no_grad()
    def mim_targets(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.LongTensor:
        """The code of every patch [B, N] as MIM would use it now: the momentum encoder's patch features quantized
        by the current codebook (or the external tokenizer's output). Updates no statistics."""
        check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
        target = self.mim_head.target
        features = None
        if target.uses_features:
            features = self.momentum_model.encode_image(
                pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)[:, 1:]  # [B, N, Dv]
        return target.lookup(features=features, pixel_values=pixel_values)

    def _image_mask(self, pixel_values, image_mask, generator):
        return beit_image_mask(pixel_values, self.config.vision_config.patch_size, self.config.mim_mask_ratio,
                               image_mask, generator=generator)


class VqMimForImageTextRetrieval(AlignFuseRetrievalMixin, VqMimPreTrainedModel):
    _backbone_class = VqMimModel


class VqMimForQuestionAnswering(QuestionAnsweringMixin, VqMimPreTrainedModel):
    _backbone_class = VqMimModel


class VqMimForVisualGrounding(VisualGroundingMixin, VqMimPreTrainedModel):
    _backbone_class = VqMimModel


class VqMimForImagesAndTextClassification(ImagesAndTextClassificationMixin, VqMimPreTrainedModel):
    _backbone_class = VqMimModel


__all__ = [
    "VqMimPreTrainedModel",
    "VqMimModel",
    "VqMimFusion",
    "VqMimForPreTraining",
    "VqMimForImageTextRetrieval",
    "VqMimForQuestionAnswering",
    "VqMimForVisualGrounding",
    "VqMimForImagesAndTextClassification",
]
