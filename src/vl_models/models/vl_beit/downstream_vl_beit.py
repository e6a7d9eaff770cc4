"""VL-BEiT fine-tuning: VQA, grounding and NLVR2 through the VL experts (the joint pass), retrieval as a dual
encoder (image-only and text-only passes, contrastive) that a fusion encoder (the joint pass + ITM) re-ranks, and
image classification and semantic segmentation from the vision path alone."""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import SemanticSegmenterOutput

from ...layers.momentum import freeze
from ...layers.outputs import VlClassificationOutput
from ...layers.tasks import (
    ImagesAndTextClassificationMixin,
    ImageTextRetrievalMixin,
    QuestionAnsweringMixin,
    VisualGroundingMixin,
    check_pair,
)
from ...utils import check_tensor
from .modeling_vl_beit import VlBeitModel, VlBeitPreTrainedModel


class _JointPassMixin:
    """Fused tasks read the pair's joint pass; the top layers' text and image experts only serve unimodal passes,
    so they are frozen here (every trainable parameter gets a gradient: DDP)."""

    def _build_backbone(self, config, *, uses_itc: bool = False):
        super()._build_backbone(config, uses_itc=uses_itc)
        for layer in self.base_model.layers:
            if "vl" in layer.experts:
                freeze(layer.experts["text"])
                freeze(layer.experts["image"])

    def _pooled(self, pixel_values, input_ids, attention_mask, interpolate_pos_encoding=False):
        mask = check_pair(pixel_values, input_ids, attention_mask)
        return self.base_model.fuse(pixel_values, input_ids, mask, interpolate_pos_encoding)[:, 0]  # [B, D]


class VlBeitForQuestionAnswering(_JointPassMixin, QuestionAnsweringMixin, VlBeitPreTrainedModel):
    _backbone_class = VlBeitModel


class VlBeitForVisualGrounding(_JointPassMixin, VisualGroundingMixin, VlBeitPreTrainedModel):
    """The pooled feature and the patches both come from the joint pass (text first, then the image's [CLS])."""

    _backbone_class = VlBeitModel

    def _grounding_features(self, pixel_values, input_ids, attention_mask, interpolate_pos_encoding=False):
        mask = check_pair(pixel_values, input_ids, attention_mask)
        joint = self.base_model.fuse(pixel_values, input_ids, mask, interpolate_pos_encoding)  # [B, T + 1 + N, D]
        return joint[:, 0], joint[:, input_ids.shape[1] + 1:]


class VlBeitForImagesAndTextClassification(_JointPassMixin, ImagesAndTextClassificationMixin,
                                           VlBeitPreTrainedModel):
    _backbone_class = VlBeitModel


class VlBeitForImageTextRetrieval(ImageTextRetrievalMixin, VlBeitPreTrainedModel):
    """Dual encoder: ITC between the image-only and the text-only passes ranks everything cheaply. Fusion encoder:
    an ITM head on the joint pass re-ranks the top k (`rank`). Training: contrastive + ITM with hard negatives."""

    _backbone_class = VlBeitModel

    def _fusion_inputs(self, image_embeds, text_embeds, pixel_values, input_ids):
        return pixel_values, input_ids  # the joint pass starts from the inputs, not from the unimodal passes

    def _fuse(self, images, texts, attention_mask, interpolate_pos_encoding=False):
        return self.base_model.fuse(images, texts, attention_mask, interpolate_pos_encoding)


class _VisionPathMixin:
    """Vision tasks read the image-only pass before the backbone's final norm (BEiT: the head brings its own);
    everything else of the backbone is frozen, so every trainable parameter gets a gradient (DDP). The frozen
    modules stay in the model, so pre-training checkpoints load with the same key names."""

    def _build_vision_backbone(self, config):
        self.vl_beit = VlBeitModel(config)
        for module in [self.vl_beit.text_embeddings, self.vl_beit.vision_proj, self.vl_beit.text_proj,
                       self.vl_beit.norm]:
            freeze(module)
        for layer in self.vl_beit.layers:
            freeze(layer.experts["text"])
            if "vl" in layer.experts:
                freeze(layer.experts["vl"])

    def _image_states(self, pixel_values, interpolate_pos_encoding):
        if pixel_values is None:
            raise ValueError("`pixel_values` is required, got None")
        check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
        return self.vl_beit.image_hidden_states(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)


class VlBeitForImageClassification(_VisionPathMixin, VlBeitPreTrainedModel):
    """The vision path alone, as BEiT classifies: mean of the last layer's patch states, then `fc_norm` (the one
    final norm: the backbone's own `norm` is skipped), then a linear classifier over `config.id2label`;
    cross-entropy with integer `labels` [B]."""

    _fresh_modules = ("fc_norm", "classifier")

    def __init__(self, config):
        super().__init__(config)
        self._build_vision_backbone(config)
        width = config.vision_config.hidden_size
        self.fc_norm = nn.LayerNorm(width, eps=config.vision_config.layer_norm_eps)
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def forward(self, pixel_values=None, labels=None, interpolate_pos_encoding=False,
                **kwargs) -> VlClassificationOutput:
        hidden = self._image_states(pixel_values, interpolate_pos_encoding)[-1]  # [B, 1 + N, D], pre-norm
        logits = self.classifier(self.fc_norm(hidden[:, 1:].mean(1)))  # [B, num_labels]
        loss = None
        if labels is not None:
            check_tensor("labels", labels, ndim=1, dtype="int")
            loss = nn.functional.cross_entropy(logits, labels)
        return VlClassificationOutput(loss=loss, logits=logits)


class VlBeitForSemanticSegmentation(_VisionPathMixin, VlBeitPreTrainedModel):
    """The vision path with a light decoder (OURS; BEiT fine-tunes UperNet over 4 layers resampled to 4 scales):
    the patch states of `config.segmentation_layer_indices` layers, each through its own LayerNorm, concatenated
    per patch, an MLP (Linear, GELU, Linear) that gives every patch the class scores of its (P/4 x P/4) cells,
    unfolded to a grid at 1/4 of the image (1/P when P < 4). `logits` [B, num_labels, H/4, W/4] stay at that
    resolution (transformers' convention); with `labels` [B, H, W] they are bilinearly upsampled to the labels'
    size for a cross-entropy that skips `config.semantic_loss_ignore_index`."""

    _fresh_modules = ("decode_norms", "decode_head")

    def __init__(self, config):
        super().__init__(config)
        self._build_vision_backbone(config)
        vision = config.vision_config
        width, layers = vision.hidden_size, config.segmentation_layer_indices
        self.cells = max(1, vision.patch_size // 4)  # output cells per patch side
        self.decode_norms = nn.ModuleList(nn.LayerNorm(width, eps=vision.layer_norm_eps) for _ in layers)
        self.decode_head = nn.Sequential(nn.Linear(len(layers) * width, width), nn.GELU(),
                                         nn.Linear(width, config.num_labels * self.cells ** 2))
        self.post_init()

    def forward(self, pixel_values=None, labels=None, interpolate_pos_encoding=False,
                **kwargs) -> SemanticSegmenterOutput:
        states = self._image_states(pixel_values, interpolate_pos_encoding)
        patch = self.config.vision_config.patch_size
        gh, gw, s = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch, self.cells
        features = torch.cat([norm(states[i][:, 1:]) for norm, i in
                              zip(self.decode_norms, self.config.segmentation_layer_indices)], dim=-1)  # [B, N, kD]
        cells = self.decode_head(features).view(-1, gh, gw, self.config.num_labels, s, s)
        logits = cells.permute(0, 3, 1, 4, 2, 5).reshape(-1, self.config.num_labels, gh * s, gw * s)
        loss = None
        if labels is not None:
            check_tensor("labels", labels, ndim=3, dtype="int")
            if labels.shape[0] != logits.shape[0]:
                raise ValueError(f"`labels` must have {logits.shape[0]} rows like `pixel_values`, got "
                                 f"{labels.shape[0]}")
            upsampled = nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
                                                  align_corners=False)  # [B, C, H, W]
            loss = nn.functional.cross_entropy(upsampled, labels.long(),
                                               ignore_index=self.config.semantic_loss_ignore_index)
        return SemanticSegmenterOutput(loss=loss, logits=logits)


__all__ = [
    "VlBeitForImageClassification",
    "VlBeitForImageTextRetrieval",
    "VlBeitForImagesAndTextClassification",
    "VlBeitForQuestionAnswering",
    "VlBeitForSemanticSegmentation",
    "VlBeitForVisualGrounding",
]
