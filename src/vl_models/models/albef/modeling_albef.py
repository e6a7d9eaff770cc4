"""ALBEF: align before fuse. Everything is shared with the family (`layers.align_fuse`, `layers.tasks`);
this file only names the classes."""

from __future__ import annotations

from ...layers.align_fuse import (
    ALIGN_FUSE_PRETRAINING_MODULES,
    AlignFuseModelMixin,
    AlignFusePreTrainingMixin,
)
from ...layers.outputs import VlPreTrainingOutput
from ...layers.tasks import (
    AlignFuseRetrievalMixin,
    ImagesAndTextClassificationMixin,
    QuestionAnsweringMixin,
    VisualGroundingMixin,
)
from ...modeling_utils import VlPreTrainedModel
from .configuration_albef import AlbefConfig


class AlbefPreTrainedModel(VlPreTrainedModel):
    config_class = AlbefConfig
    base_model_prefix = "albef"
    _pretraining_only_modules = ALIGN_FUSE_PRETRAINING_MODULES


class AlbefModel(AlignFuseModelMixin, AlbefPreTrainedModel):
    """Image encoder, text encoder and fusion encoder; returns embeddings (`VlModelOutput`)."""


class AlbefForPreTraining(AlignFusePreTrainingMixin, AlbefPreTrainedModel):
    """ITC (momentum distillation, queues) + ITM (hard negatives) + MLM (momentum distillation)."""

    _backbone_class = AlbefModel

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, mlm_input_ids=None, mlm_labels=None,
                alpha=None, generator=None, interpolate_pos_encoding=False, **kwargs) -> VlPreTrainingOutput:
        attention_mask = self._check_pretraining_inputs(pixel_values, input_ids, attention_mask)
        image_embeds = self.albef.encode_image(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        losses, extras = self.align_fuse_losses(
            image_embeds=image_embeds, pixel_values=pixel_values, input_ids=input_ids,
            attention_mask=attention_mask, mlm_input_ids=mlm_input_ids, mlm_labels=mlm_labels, alpha=alpha,
            generator=generator, interpolate_pos_encoding=interpolate_pos_encoding,
        )
        return self.pretraining_output(losses, extras)


class AlbefForImageTextRetrieval(AlignFuseRetrievalMixin, AlbefPreTrainedModel):
    _backbone_class = AlbefModel


class AlbefForQuestionAnswering(QuestionAnsweringMixin, AlbefPreTrainedModel):
    _backbone_class = AlbefModel


class AlbefForVisualGrounding(VisualGroundingMixin, AlbefPreTrainedModel):
    _backbone_class = AlbefModel


class AlbefForImagesAndTextClassification(ImagesAndTextClassificationMixin, AlbefPreTrainedModel):
    _backbone_class = AlbefModel


__all__ = [
    "AlbefPreTrainedModel",
    "AlbefModel",
    "AlbefForPreTraining",
    "AlbefForImageTextRetrieval",
    "AlbefForQuestionAnswering",
    "AlbefForVisualGrounding",
    "AlbefForImagesAndTextClassification",
]
