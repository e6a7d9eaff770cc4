"""vl_models: vision-language pre-training methods as Hugging Face models.

Importing the package registers every method with transformers' Auto classes, so
`AutoModelForPreTraining.from_pretrained("org/vlmae-base")` works after `import vl_models`.
"""

from . import hub, models  # noqa: F401  (models registers the methods)
from .configuration_utils import AlignFuseConfig, TextTowerConfig, VisionTowerConfig
from .layers.accumulation import accumulating
from .models.albef import (
    AlbefConfig,
    AlbefForImagesAndTextClassification,
    AlbefForImageTextRetrieval,
    AlbefForPreTraining,
    AlbefForQuestionAnswering,
    AlbefForVisualGrounding,
    AlbefModel,
    AlbefProcessor,
)
from .models.vilta import (
    ViltaConfig,
    ViltaForImagesAndTextClassification,
    ViltaForImageTextRetrieval,
    ViltaForPreTraining,
    ViltaForQuestionAnswering,
    ViltaForVisualGrounding,
    ViltaModel,
    ViltaProcessor,
)
from .models.vl_beit import (
    VlBeitConfig,
    VlBeitForImageClassification,
    VlBeitForImagesAndTextClassification,
    VlBeitForImageTextRetrieval,
    VlBeitForPreTraining,
    VlBeitForQuestionAnswering,
    VlBeitForSemanticSegmentation,
    VlBeitForVisualGrounding,
    VlBeitModel,
    VlBeitProcessor,
    VlBeitTokenizerConfig,
    VlBeitVisualTokenizer,
)
from .models.vlmae import (
    VlmaeConfig,
    VlmaeForImagesAndTextClassification,
    VlmaeForImageTextRetrieval,
    VlmaeForPreTraining,
    VlmaeForQuestionAnswering,
    VlmaeForVisualGrounding,
    VlmaeModel,
    VlmaeProcessor,
)
from .models.vq_mim import (
    VqMimConfig,
    VqMimForImagesAndTextClassification,
    VqMimForImageTextRetrieval,
    VqMimForPreTraining,
    VqMimForQuestionAnswering,
    VqMimForVisualGrounding,
    VqMimModel,
    VqMimProcessor,
)
from .pipelines import (  # noqa: F401  (importing registers the vl-* pipeline tasks with transformers)
    PIPELINE_TASKS,
    VlFillMaskPipeline,
    VlImageTextMatchingPipeline,
    VlVisualGroundingPipeline,
    VlVisualQuestionAnsweringPipeline,
    VlZeroShotImageClassificationPipeline,
    supported_tasks,
)
from .presets import SIZES
from .processing import VlImageProcessor, VlProcessor, default_tokenizer, load_tokenizer, train_tokenizer
from .registry import build, build_processor, get_config, get_method, list_methods

__version__ = "0.1.0"

__all__ = [
    "SIZES",
    "AlbefConfig",
    "AlbefForImagesAndTextClassification",
    "AlbefForImageTextRetrieval",
    "AlbefForPreTraining",
    "AlbefForQuestionAnswering",
    "AlbefForVisualGrounding",
    "AlbefModel",
    "AlbefProcessor",
    "AlignFuseConfig",
    "TextTowerConfig",
    "VisionTowerConfig",
    "ViltaConfig",
    "ViltaForImagesAndTextClassification",
    "ViltaForImageTextRetrieval",
    "ViltaForPreTraining",
    "ViltaForQuestionAnswering",
    "ViltaForVisualGrounding",
    "ViltaModel",
    "ViltaProcessor",
    "VlBeitConfig",
    "VlBeitForImageClassification",
    "VlBeitForSemanticSegmentation",
    "VlBeitForImagesAndTextClassification",
    "VlBeitForImageTextRetrieval",
    "VlBeitForPreTraining",
    "VlBeitForQuestionAnswering",
    "VlBeitForVisualGrounding",
    "VlBeitModel",
    "VlBeitProcessor",
    "VlBeitTokenizerConfig",
    "VlBeitVisualTokenizer",
    "VlImageProcessor",
    "VlProcessor",
    "VlmaeConfig",
    "VlmaeForImagesAndTextClassification",
    "VlmaeForImageTextRetrieval",
    "VlmaeForPreTraining",
    "VlmaeForQuestionAnswering",
    "VlmaeForVisualGrounding",
    "VlmaeModel",
    "VlmaeProcessor",
    "VqMimConfig",
    "VqMimForImagesAndTextClassification",
    "VqMimForImageTextRetrieval",
    "VqMimForPreTraining",
    "VqMimForQuestionAnswering",
    "VqMimForVisualGrounding",
    "VqMimModel",
    "VqMimProcessor",
    "accumulating",
    "build",
    "build_processor",
    "default_tokenizer",
    "get_config",
    "get_method",
    "list_methods",
    "load_tokenizer",
    "train_tokenizer",
]
