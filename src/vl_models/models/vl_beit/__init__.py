from ...presets import FROM_SCRATCH_INIT
from ...registry import Method
from .configuration_vl_beit import VlBeitConfig, VlBeitTokenizerConfig
from .downstream_vl_beit import (
    VlBeitForImageClassification,
    VlBeitForImagesAndTextClassification,
    VlBeitForImageTextRetrieval,
    VlBeitForQuestionAnswering,
    VlBeitForSemanticSegmentation,
    VlBeitForVisualGrounding,
)
from .modeling_vl_beit import VlBeitModel, VlBeitPreTrainedModel
from .pretraining_vl_beit import VlBeitForPreTraining
from .processing_vl_beit import VlBeitProcessor
from .tokenizer_vl_beit import VlBeitTokenizerOutput, VlBeitVisualTokenizer

# VL experts in the top layers (VLMo: 2 of 12 at base, 3 of 24 at large); the visual tokenizer's codebook (ours
# at tiny/small; BEiT v2's 8192 x 32 at base/large) and decoder depth (BEiT v2 recommends 3)
# tiny/small train from scratch at std 0.1 (presets.FROM_SCRATCH_INIT; the tokenizer keeps its own 0.02)
# and with a locality prior on the relative position bias, so MIM finds a masked patch's neighbours in a short run
_FROM_SCRATCH = {**FROM_SCRATCH_INIT, "relative_position_init": "locality"}
_PRESETS = {
    "tiny": {"num_vl_layers": 1, "tokenizer_config": {"num_codes": 32, "code_dim": 8, "decoder_layers": 1},
             **_FROM_SCRATCH},
    # small: the patch-local tokenizer (a frozen random encoder + online k-means): the trained ViT one collapsed to
    # 6 of 1024 codes with 90% of object patches on the background's (docs/methods/vl_beit.md, "Does it learn?")
    "small": {"num_vl_layers": 1, "tokenizer_config": {"num_codes": 1024, "code_dim": 16, "decoder_layers": 1,
                                                       "encoder": "patch", "freeze_encoder": True},
              **_FROM_SCRATCH},
    "base": {"num_vl_layers": 2},
    "large": {"num_vl_layers": 3, "layer_scale_init_value": 1e-5},
}

METHOD = Method(
    name="vl_beit",
    config_class=VlBeitConfig,
    model_class=VlBeitModel,
    pretraining_class=VlBeitForPreTraining,
    processor_class=VlBeitProcessor,
    task_classes={
        "retrieval": VlBeitForImageTextRetrieval,
        "vqa": VlBeitForQuestionAnswering,
        "grounding": VlBeitForVisualGrounding,
        "nlvr2": VlBeitForImagesAndTextClassification,
    },
    presets=_PRESETS,
    # from scratch at 1e-3: at the shared 3e-4, MIM at tiny (64 px) still predicted the unigram after 600 updates
    # (object patches 0.02 against 0.30 at 1e-3; docs/methods/vl_beit.md, "Does it learn?")
    training_presets={"tiny": {"learning_rate": 1e-3}, "small": {"learning_rate": 1e-3}},
    objectives=("mlm", "mim", "mvlm"),
    paper="VL-BEiT: Generative Vision-Language Pretraining (Bao, Wang et al., 2022), arXiv 2206.01127",
    # trained on its own (examples/pretrain.py --method vl_beit_tokenizer) before VL-BEiT; loads with AutoModel
    companions=(VlBeitVisualTokenizer,),
)


def tokenizer_config(size: str = "base", **overrides) -> VlBeitTokenizerConfig:
    """The visual tokenizer of `VlBeitConfig` at a named size (its `tokenizer_config`), keyword overrides win."""
    from ...presets import merge
    from ...registry import get_config

    config = get_config("vl_beit", size).tokenizer_config.to_dict()
    return VlBeitTokenizerConfig(**merge(config, overrides))


__all__ = [
    "METHOD",
    "VlBeitConfig",
    "VlBeitForImageClassification",
    "VlBeitForImagesAndTextClassification",
    "VlBeitForImageTextRetrieval",
    "VlBeitForPreTraining",
    "VlBeitForQuestionAnswering",
    "VlBeitForSemanticSegmentation",
    "VlBeitForVisualGrounding",
    "VlBeitModel",
    "VlBeitPreTrainedModel",
    "VlBeitProcessor",
    "VlBeitTokenizerConfig",
    "VlBeitTokenizerOutput",
    "VlBeitVisualTokenizer",
    "tokenizer_config",
]
