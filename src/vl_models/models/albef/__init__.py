from ...presets import SIZES, align_fuse_preset
from ...registry import Method
from .configuration_albef import AlbefConfig
from .modeling_albef import (
    AlbefForImagesAndTextClassification,
    AlbefForImageTextRetrieval,
    AlbefForPreTraining,
    AlbefForQuestionAnswering,
    AlbefForVisualGrounding,
    AlbefModel,
    AlbefPreTrainedModel,
)
from .processing_albef import AlbefProcessor

METHOD = Method(
    name="albef",
    config_class=AlbefConfig,
    model_class=AlbefModel,
    pretraining_class=AlbefForPreTraining,
    processor_class=AlbefProcessor,
    task_classes={
        "retrieval": AlbefForImageTextRetrieval,
        "vqa": AlbefForQuestionAnswering,
        "grounding": AlbefForVisualGrounding,
        "nlvr2": AlbefForImagesAndTextClassification,
    },
    presets={size: align_fuse_preset(size) for size in SIZES},
    objectives=("itc", "itm", "mlm"),
    paper="Align before Fuse (Li et al., 2021), arXiv 2107.07651",
)

__all__ = [
    "METHOD",
    "AlbefConfig",
    "AlbefForImagesAndTextClassification",
    "AlbefForImageTextRetrieval",
    "AlbefForPreTraining",
    "AlbefForQuestionAnswering",
    "AlbefForVisualGrounding",
    "AlbefModel",
    "AlbefPreTrainedModel",
    "AlbefProcessor",
]
