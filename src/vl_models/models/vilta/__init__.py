from ...presets import FROM_SCRATCH_INIT
from ...registry import Method
from .configuration_vilta import ViltaConfig
from .modeling_vilta import (
    ViltaForImagesAndTextClassification,
    ViltaForImageTextRetrieval,
    ViltaForPreTraining,
    ViltaForQuestionAnswering,
    ViltaForVisualGrounding,
    ViltaModel,
    ViltaPreTrainedModel,
    ViltaPreTrainingOutput,
    ViltaTextTeacher,
)
from .processing_vilta import ViltaProcessor

# ViLTA keeps no feature queue; base/large: a full language encoder (BERT-base / -large depth) and METER's 6
# co-attention layers (ours; the paper's sizes are unverified)
# tiny and small start from scratch, where the frozen teacher would be an untrained network giving uniform soft
# labels: no distillation (alpha 0) until a teacher that knows language is set (docs/methods/vilta.md); and the
# from-scratch init of the fusion family (presets.FROM_SCRATCH_INIT)
_PRESETS = {
    "tiny": {"queue_size": 0, "alpha": 0.0, **FROM_SCRATCH_INIT},
    "small": {"queue_size": 0, "alpha": 0.0, **FROM_SCRATCH_INIT},
    "base": {"queue_size": 0, "text_config": {"num_hidden_layers": 12, "num_fusion_layers": 6}},
    "large": {"queue_size": 0, "text_config": {"num_hidden_layers": 24, "num_fusion_layers": 6}},
}

METHOD = Method(
    name="vilta",
    config_class=ViltaConfig,
    model_class=ViltaModel,
    pretraining_class=ViltaForPreTraining,
    processor_class=ViltaProcessor,
    task_classes={
        "retrieval": ViltaForImageTextRetrieval,
        "vqa": ViltaForQuestionAnswering,
        "grounding": ViltaForVisualGrounding,
        "nlvr2": ViltaForImagesAndTextClassification,
    },
    presets=_PRESETS,
    objectives=("itm", "mlm"),  # + "itc" when config.itc_weight > 0 (not in the paper)
    paper="ViLTA: Enhancing Vision-Language Pre-training through Textual Augmentation (Wang et al., ICCV 2023), "
          "arXiv 2308.16689",
)

__all__ = [
    "METHOD",
    "ViltaConfig",
    "ViltaForImagesAndTextClassification",
    "ViltaForImageTextRetrieval",
    "ViltaForPreTraining",
    "ViltaForQuestionAnswering",
    "ViltaForVisualGrounding",
    "ViltaModel",
    "ViltaPreTrainedModel",
    "ViltaPreTrainingOutput",
    "ViltaProcessor",
    "ViltaTextTeacher",
]
