"""VL-BEiT fine-tuning: VQA, grounding and NLVR2 through the VL experts (the joint pass), retrieval as a dual
encoder (image-only and text-only passes, contrastive) that a fusion encoder (the joint pass + ITM) re-ranks, and
image classification from the vision path alone."""

from __future__ import annotations

from torch import nn

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


class VlBeitForImageClassification(VlBeitPreTrainedModel):
    """The vision path alone: image-only pass, mean of the patch states (BEiT's pooling), a linear classifier over
    `config.id2label`; cross-entropy with integer `labels` [B]."""

    _fresh_modules = ("fc_norm", "classifier")

    def __init__(self, config):
        super().__init__(config)
        self.vl_beit = VlBeitModel(config)
        for module in [self.vl_beit.text_embeddings, self.vl_beit.vision_proj, self.vl_beit.text_proj]:
            freeze(module)  # unused by the vision path
        for layer in self.vl_beit.layers:
            freeze(layer.experts["text"])
            if "vl" in layer.experts:
                freeze(layer.experts["vl"])
        width = config.vision_config.hidden_size
        self.fc_norm = nn.LayerNorm(width, eps=config.vision_config.layer_norm_eps)
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def forward(self, pixel_values=None, labels=None, interpolate_pos_encoding=False,
                **kwargs) -> VlClassificationOutput:
        if pixel_values is None:
            raise ValueError("`pixel_values` is required, got None")
        hidden = self.vl_beit.encode_image(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        logits = self.classifier(self.fc_norm(hidden[:, 1:].mean(1)))  # [B, num_labels]
        loss = None
        if labels is not None:
            check_tensor("labels", labels, ndim=1, dtype="int")
            loss = nn.functional.cross_entropy(logits, labels)
        return VlClassificationOutput(loss=loss, logits=logits)


__all__ = [
    "VlBeitForImageClassification",
    "VlBeitForImageTextRetrieval",
    "VlBeitForImagesAndTextClassification",
    "VlBeitForQuestionAnswering",
    "VlBeitForVisualGrounding",
]
