"""VL-BEiT fine-tuning: VQA, grounding and NLVR2 through the VL experts (the joint pass), retrieval as a dual
encoder (image-only and text-only passes, contrastive) that a fusion encoder (the joint pass + ITM) re-ranks, and
image classification from the vision path alone."""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from ...layers.align_fuse import itm_with_hard_negatives
from ...layers.losses import contrastive_loss
from ...layers.momentum import freeze
from ...layers.outputs import VlClassificationOutput, VlRetrievalOutput
from ...layers.tasks import (
    ImagesAndTextClassificationMixin,
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
    _backbone_class = VlBeitModel


class VlBeitForImagesAndTextClassification(_JointPassMixin, ImagesAndTextClassificationMixin,
                                           VlBeitPreTrainedModel):
    _backbone_class = VlBeitModel


class VlBeitForImageTextRetrieval(VlBeitPreTrainedModel):
    """Dual encoder: ITC between the image-only and the text-only passes ranks everything cheaply. Fusion encoder:
    an ITM head on the joint pass re-ranks the top k (`rank`). Training: contrastive + ITM with hard negatives."""

    def __init__(self, config):
        super().__init__(config)
        self.vl_beit = VlBeitModel(config)
        self.itm_head = nn.Linear(config.vision_config.hidden_size, 2)
        self.temp = nn.Parameter(torch.tensor(float(config.temperature)))
        self.post_init()

    def _init_method_parameters(self):
        init.constant_(self.temp, self.config.temperature)

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, return_loss=None, generator=None,
                interpolate_pos_encoding=False, **kwargs) -> VlRetrievalOutput:
        mask = check_pair(pixel_values, input_ids, attention_mask)
        model = self.vl_beit
        image_feat = model.get_image_features(pixel_values, interpolate_pos_encoding)  # [B, E]
        text_feat = model.get_text_features(input_ids, mask)
        temp = self.temp.clamp(0.001, 0.5)
        logits_per_image = image_feat @ text_feat.t() / temp  # [B, B]
        itm_logits = self.itm_head(model.fuse(pixel_values, input_ids, mask, interpolate_pos_encoding)[:, 0])
        out = VlRetrievalOutput(logits_per_image=logits_per_image, logits_per_text=logits_per_image.t(),
                                itm_logits=itm_logits, image_feat=image_feat, text_feat=text_feat)
        if return_loss if return_loss is not None else self.training:
            # VL-BEiT fuses from the inputs, so the hard-negative ITM is handed pixels and ids to pair up
            loss_itm, _, _ = itm_with_hard_negatives(model, self.itm_head, pixel_values, input_ids, mask,
                                                     logits_per_image, logits_per_image.t(), generator)
            out.loss = contrastive_loss(image_feat, text_feat, temp) + loss_itm
        return out

    @torch.no_grad()
    def rank(self, pixel_values, input_ids, attention_mask=None, *, k: int = 16, batch_size: int = 64):
        """Scores [N_images, N_texts]: ITC similarity everywhere, plus 2 + the ITM match probability for each
        image's top-k texts and each text's top-k images (re-ranked pairs sort first)."""
        check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
        check_tensor("input_ids", input_ids, ndim=2, dtype="int")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        model = self.vl_beit
        images = torch.cat([model.get_image_features(p) for p in pixel_values.split(batch_size)])
        texts = torch.cat([model.get_text_features(t, m) for t, m in zip(input_ids.split(batch_size),
                                                                          mask.split(batch_size))])
        sims = images @ texts.t()  # [I, T]
        k_t, k_i = min(k, sims.shape[1]), min(k, sims.shape[0])
        pairs = {(i, int(t)) for i in range(sims.shape[0]) for t in sims[i].topk(k_t).indices}
        pairs |= {(int(i), t) for t in range(sims.shape[1]) for i in sims[:, t].topk(k_i).indices}
        pairs = torch.tensor(sorted(pairs), device=sims.device)
        scores = sims.clone()
        for idx in pairs.split(batch_size):
            fused = model.fuse(pixel_values[idx[:, 0]], input_ids[idx[:, 1]], mask[idx[:, 1]])
            scores[idx[:, 0], idx[:, 1]] = 2.0 + self.itm_head(fused[:, 0]).softmax(-1)[:, 1]
        return scores


class VlBeitForImageClassification(VlBeitPreTrainedModel):
    """The vision path alone: image-only pass, mean of the patch states (BEiT's pooling), a linear classifier over
    `config.id2label`; cross-entropy with integer `labels` [B]."""

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
