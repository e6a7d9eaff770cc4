"""Register the vl_models pipelines with transformers (`PIPELINE_REGISTRY`); runs on `import vl_models`.

Our task names start with "vl-": transformers' own `zero-shot-image-classification` and `fill-mask` expect
other model outputs (CLIP's `logits_per_image`, a text-only masked LM), and `visual-question-answering` is a
removed task that transformers 5 refuses before it looks at the registry.
"""

from __future__ import annotations

from transformers.pipelines import PIPELINE_REGISTRY

from .base import VlCheckpoint
from .capabilities import FILL_MASK, GROUNDING, MATCHING, VQA, ZERO_SHOT
from .fill_mask import VlFillMaskPipeline
from .grounding import VlVisualGroundingPipeline
from .matching import VlImageTextMatchingPipeline
from .vqa import VlVisualQuestionAnsweringPipeline
from .zero_shot import VlZeroShotImageClassificationPipeline

PIPELINE_TASKS = {
    ZERO_SHOT: VlZeroShotImageClassificationPipeline,
    MATCHING: VlImageTextMatchingPipeline,
    VQA: VlVisualQuestionAnsweringPipeline,
    GROUNDING: VlVisualGroundingPipeline,
    FILL_MASK: VlFillMaskPipeline,
}


def register_pipelines() -> None:
    """Idempotent: registering again replaces the entries with the same ones."""
    for task, pipeline_class in PIPELINE_TASKS.items():
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is pipeline_class:
            continue
        PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class, pt_model=VlCheckpoint,
                                            type="multimodal")
