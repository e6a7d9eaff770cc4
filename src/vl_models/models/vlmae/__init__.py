from ...presets import align_fuse_preset
from ...registry import Method
from .configuration_vlmae import VlmaeConfig
from .modeling_vlmae import (
    VlmaeForImagesAndTextClassification,
    VlmaeForImageTextRetrieval,
    VlmaeForPreTraining,
    VlmaeForQuestionAnswering,
    VlmaeForVisualGrounding,
    VlmaeModel,
    VlmaePreTrainedModel,
)
from .processing_vlmae import VlmaeProcessor

# decoder sizes per preset (ours; MAE's light decoder is 512-d at base)
_DECODER = {"tiny": (32, 1, 2), "small": (128, 2, 4), "base": (512, 4, 16), "large": (512, 8, 16)}
# the CPU presets align on the full image: a quarter of a Shapes image often misses an object its caption names
# (small, 150 updates: in-batch ITC accuracy 0.086 from the full image, 0.047 from the visible quarter)
_FULL_IMAGE_ALIGNMENT = {"tiny": {"align_on_masked_image": False}, "small": {"align_on_masked_image": False}}

METHOD = Method(
    name="vlmae",
    config_class=VlmaeConfig,
    model_class=VlmaeModel,
    pretraining_class=VlmaeForPreTraining,
    processor_class=VlmaeProcessor,
    task_classes={
        "retrieval": VlmaeForImageTextRetrieval,
        "vqa": VlmaeForQuestionAnswering,
        "grounding": VlmaeForVisualGrounding,
        "nlvr2": VlmaeForImagesAndTextClassification,
    },
    presets={
        size: {"decoder_hidden_size": d, "decoder_num_layers": n, "decoder_num_heads": h, **align_fuse_preset(size),
               **_FULL_IMAGE_ALIGNMENT.get(size, {})}
        for size, (d, n, h) in _DECODER.items()
    },
    objectives=("itc", "itm", "mlm", "rmim", "ifr"),
    paper="VLMAE: Vision-Language Masked Autoencoder (He et al., 2022), arXiv 2208.09374",
)

__all__ = [
    "METHOD",
    "VlmaeConfig",
    "VlmaeForImagesAndTextClassification",
    "VlmaeForImageTextRetrieval",
    "VlmaeForPreTraining",
    "VlmaeForQuestionAnswering",
    "VlmaeForVisualGrounding",
    "VlmaeModel",
    "VlmaePreTrainedModel",
    "VlmaeProcessor",
]
