from ...presets import align_fuse_preset
from ...registry import Method
from .configuration_vq_mim import VqMimConfig
from .modeling_vq_mim import (
    VqMimForImagesAndTextClassification,
    VqMimForImageTextRetrieval,
    VqMimForPreTraining,
    VqMimForQuestionAnswering,
    VqMimForVisualGrounding,
    VqMimModel,
    VqMimPreTrainedModel,
)
from .processing_vq_mim import VqMimProcessor

# codebook size, code dimension and MIM fusion depth per preset (ours; base follows BEiT v2's 8192 x 32)
_CODEBOOK = {"tiny": (32, 8, 1), "small": (1024, 16, 1), "base": (8192, 32, 2), "large": (8192, 32, 2)}

METHOD = Method(
    name="vq_mim",
    config_class=VqMimConfig,
    model_class=VqMimModel,
    pretraining_class=VqMimForPreTraining,
    processor_class=VqMimProcessor,
    task_classes={
        "retrieval": VqMimForImageTextRetrieval,
        "vqa": VqMimForQuestionAnswering,
        "grounding": VqMimForVisualGrounding,
        "nlvr2": VqMimForImagesAndTextClassification,
    },
    presets={
        size: {"num_codes": k, "code_dim": d, "mim_fusion_layers": n, **align_fuse_preset(size)} for size, (k, d, n) in _CODEBOOK.items()
    },
    objectives=("itc", "itm", "mlm", "mim", "vq"),
    paper="Augmenting Vision Language Pretraining by Learning Codebook with Visual Semantics "
    "(Guo et al., 2022), arXiv 2208.00475",
)

__all__ = [
    "METHOD",
    "VqMimConfig",
    "VqMimForImagesAndTextClassification",
    "VqMimForImageTextRetrieval",
    "VqMimForPreTraining",
    "VqMimForQuestionAnswering",
    "VqMimForVisualGrounding",
    "VqMimModel",
    "VqMimPreTrainedModel",
    "VqMimProcessor",
]
