"""transformers pipelines for vl_models checkpoints, registered on `import vl_models` (docs/pipelines.md):

    pipeline("vl-zero-shot-image-classification", model=path)   # ITC over candidate labels
    pipeline("vl-image-text-matching", model=path)              # ITM probability + ITC similarity
    pipeline("vl-visual-question-answering", model=path)        # top-k answers of a VQA head
    pipeline("vl-visual-grounding", model=path)                 # a box in the image's pixels
    pipeline("vl-fill-mask", model=path)                        # MLM conditioned on an image

`supported_tasks(model)` says which of these a checkpoint can run.
"""

from .base import VlCheckpoint, VlPipeline, load_checkpoint
from .capabilities import (
    FILL_MASK,
    GROUNDING,
    MATCHING,
    TASKS,
    VQA,
    ZERO_SHOT,
    check_supports,
    supported_tasks,
)
from .fill_mask import VlFillMaskPipeline
from .grounding import VlVisualGroundingPipeline
from .matching import VlImageTextMatchingPipeline
from .registration import PIPELINE_TASKS, register_pipelines
from .vqa import VlVisualQuestionAnsweringPipeline
from .zero_shot import VlZeroShotImageClassificationPipeline

register_pipelines()

__all__ = [
    "FILL_MASK",
    "GROUNDING",
    "MATCHING",
    "PIPELINE_TASKS",
    "TASKS",
    "VQA",
    "ZERO_SHOT",
    "VlCheckpoint",
    "VlFillMaskPipeline",
    "VlImageTextMatchingPipeline",
    "VlPipeline",
    "VlVisualGroundingPipeline",
    "VlVisualQuestionAnsweringPipeline",
    "VlZeroShotImageClassificationPipeline",
    "check_supports",
    "load_checkpoint",
    "register_pipelines",
    "supported_tasks",
]
