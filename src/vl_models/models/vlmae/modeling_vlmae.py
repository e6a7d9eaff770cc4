"""VLMAE: ALBEF's objectives computed from visible patches only, plus text-guided masked patch reconstruction
(RMIM) and image feature reconstruction (IFR). Everything ALBEF-like comes from `layers.align_fuse`."""

from __future__ import annotations

from torch import nn

from ...layers.align_fuse import (
    ALIGN_FUSE_PRETRAINING_MODULES,
    AlignFuseModelMixin,
    AlignFusePreTrainingMixin,
)
from ...layers.attention import key_padding_mask
from ...layers.embeddings import DecoderEmbeddings
from ...layers.losses import feature_reconstruction_loss, masked_patch_mse, patchify
from ...layers.masking import masking_from_mask, random_masking
from ...layers.outputs import VlPreTrainingOutput
from ...layers.tasks import (
    AlignFuseRetrievalMixin,
    ImagesAndTextClassificationMixin,
    QuestionAnsweringMixin,
    VisualGroundingMixin,
)
from ...layers.transformer import EncoderLayer
from ...modeling_utils import VlPreTrainedModel
from .configuration_vlmae import VlmaeConfig


class VlmaePreTrainedModel(VlPreTrainedModel):
    config_class = VlmaeConfig
    base_model_prefix = "vlmae"
    _pretraining_only_modules = (*ALIGN_FUSE_PRETRAINING_MODULES, "decoder")
    # the decoder's image queries cross-attend to padded caption keys; transformers' flash path unpads queries
    # with the key mask (equal lengths assumed), so flash stays off
    _supports_flash_attn = False


class VlmaeModel(AlignFuseModelMixin, VlmaePreTrainedModel):
    """Image encoder, text encoder and fusion encoder (fine-tuning and inference see the full image)."""


class VlmaeDecoder(nn.Module):
    """Light MAE decoder: visible features + mask tokens, cross-attending to the caption, predicting the pixels
    and the teacher features of every patch."""

    def __init__(self, config: VlmaeConfig):
        super().__init__()
        vision, text, dim = config.vision_config, config.text_config, config.decoder_hidden_size
        self.config = config
        self.embed = nn.Linear(vision.hidden_size, dim)
        self.embeddings = DecoderEmbeddings(vision.num_patches, dim)
        self.layers = nn.ModuleList(
            EncoderLayer(config, dim, config.decoder_num_heads, 4 * dim, norm_first=True, eps=vision.layer_norm_eps,
                         cross_attention_dim=text.hidden_size if config.decoder_use_text else None)
            for _ in range(config.decoder_num_layers)
        )
        self.norm = nn.LayerNorm(dim, eps=vision.layer_norm_eps)
        self.pixel_head = nn.Linear(dim, vision.patch_size**2 * vision.num_channels)
        self.feature_head = nn.Linear(dim, vision.hidden_size)

    def forward(self, visible, ids_restore, mask, text_embeds=None, text_mask=None):
        # visible [B, 1 + n, Dv] -> predictions at the masked patches: pixels [M, p*p*C], features [M, Dv]
        x = self.embeddings(self.embed(visible), ids_restore)  # [B, 1 + N, Dd]
        cross_mask = key_padding_mask(self.config, x, text_mask, keys=text_embeds) if text_embeds is not None else None
        for layer in self.layers:
            x = layer(x, None, text_embeds, cross_mask)
        x = self.norm(x)[:, 1:][mask]  # [M, Dd]: only masked patches are predicted
        return self.pixel_head(x), self.feature_head(x)


class VlmaeForPreTraining(AlignFusePreTrainingMixin, VlmaePreTrainedModel):
    _backbone_class = VlmaeModel

    def _build_method_heads(self, config: VlmaeConfig):
        self.decoder = VlmaeDecoder(config)

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, mlm_input_ids=None, mlm_labels=None,
                image_mask=None, alpha=None, generator=None, **kwargs) -> VlPreTrainingOutput:
        """`image_mask` [B, N] bool (True = hidden from the encoder, same count per row) comes from a collator;
        without it, MAE random masking at `config.mask_ratio` draws one from `generator`."""
        cfg = self.config
        attention_mask = self._check_pretraining_inputs(pixel_values, input_ids, attention_mask)
        num_patches = cfg.vision_config.num_patches
        if image_mask is None:
            masking = random_masking(pixel_values.shape[0], num_patches, cfg.mask_ratio, generator=generator,
                                     device=pixel_values.device)
        else:
            masking = masking_from_mask(image_mask, num_patches=num_patches, batch_size=pixel_values.shape[0])
        # the student image encoder never sees the masked patches: this is VLMAE's pre-training speed-up
        visible = self.vlmae.encode_image(pixel_values, ids_keep=masking.ids_keep)  # [B, 1 + n_keep, D]
        image_embeds = visible if cfg.align_on_masked_image else self.vlmae.encode_image(pixel_values)
        losses, extras = self.align_fuse_losses(
            image_embeds=image_embeds, pixel_values=pixel_values, input_ids=input_ids,
            attention_mask=attention_mask, mlm_input_ids=mlm_input_ids, mlm_labels=mlm_labels, alpha=alpha,
            generator=generator,
        )
        text = extras["text_embeds"] if cfg.decoder_use_text else None
        pixels, features = self.decoder(visible, masking.ids_restore, masking.mask, text,
                                        attention_mask if cfg.decoder_use_text else None)
        target = patchify(pixel_values, cfg.vision_config.patch_size)  # [B, N, p*p*C]
        losses["loss_rmim"] = masked_patch_mse(pixels, target, masking.mask, norm_pix=cfg.norm_pix_loss)
        teacher_patches = extras["image_embeds_m"][:, 1:][masking.mask]  # [M, D] features of the full image
        losses["loss_ifr"] = feature_reconstruction_loss(features, teacher_patches, cfg.ifr_loss)
        reconstruction = pixels.detach().reshape(masking.mask.shape[0], -1, pixels.shape[-1])  # [B, N_masked, P]
        return self.pretraining_output(losses, extras, image_mask=masking.mask, reconstruction=reconstruction)


class VlmaeForImageTextRetrieval(AlignFuseRetrievalMixin, VlmaePreTrainedModel):
    _backbone_class = VlmaeModel


class VlmaeForQuestionAnswering(QuestionAnsweringMixin, VlmaePreTrainedModel):
    _backbone_class = VlmaeModel


class VlmaeForVisualGrounding(VisualGroundingMixin, VlmaePreTrainedModel):
    _backbone_class = VlmaeModel


class VlmaeForImagesAndTextClassification(ImagesAndTextClassificationMixin, VlmaePreTrainedModel):
    _backbone_class = VlmaeModel


__all__ = [
    "VlmaePreTrainedModel",
    "VlmaeModel",
    "VlmaeForPreTraining",
    "VlmaeForImageTextRetrieval",
    "VlmaeForQuestionAnswering",
    "VlmaeForVisualGrounding",
    "VlmaeForImagesAndTextClassification",
]
