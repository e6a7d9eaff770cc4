"""What a checkpoint can do: which vl_models pipelines a model supports, read from its method record (registry)
and its head, never from method names.

- ITC similarity: a retrieval head, or a pre-training / base checkpoint whose method trained ITC.
- ITM probability: an `itm_head` on a retrieval head or on a pre-training checkpoint that trained ITM.
- MLM: the `mlm_head` of a pre-training checkpoint that trained MLM.
- VQA / grounding: the method's "vqa" / "grounding" head (`Method.task_classes`).
"""

from __future__ import annotations

from ..registry import list_methods, method_of, task_of

ZERO_SHOT = "vl-zero-shot-image-classification"
MATCHING = "vl-image-text-matching"
VQA = "vl-visual-question-answering"
GROUNDING = "vl-visual-grounding"
FILL_MASK = "vl-fill-mask"
TASKS = (ZERO_SHOT, MATCHING, VQA, GROUNDING, FILL_MASK)
_OPTIONAL_OBJECTIVES = ("itc", "itm", "mlm")  # a method may switch these on in its config (ViLTA's itc_weight)


def trained_objectives(model) -> set[str]:
    """The pre-training objectives the checkpoint's config gives a weight > 0."""
    spec, config = method_of(model), model.config
    names = set(spec.objectives) | {n for n in _OPTIONAL_OBJECTIVES if hasattr(config, f"{n}_weight")}
    return {n for n in names if getattr(config, f"{n}_weight", 1.0) > 0}


def _has_backbone_features(model) -> bool:
    backbone = getattr(model, "base_model", None)
    return hasattr(backbone, "get_image_features") and hasattr(backbone, "get_text_features")


def has_itc(model) -> bool:
    head = task_of(model)
    if not _has_backbone_features(model):
        return False
    return head == "retrieval" or (head in ("pretraining", "base") and "itc" in trained_objectives(model))


def has_itm(model) -> bool:
    head = task_of(model)
    if not hasattr(model, "itm_head"):
        return False
    return head == "retrieval" or (head == "pretraining" and "itm" in trained_objectives(model))


def has_mlm(model) -> bool:
    return (hasattr(model, "mlm_head") and task_of(model) == "pretraining"
            and "mlm" in trained_objectives(model))


_SUPPORTS = {
    ZERO_SHOT: has_itc,
    MATCHING: lambda model: has_itc(model) or has_itm(model),
    VQA: lambda model: task_of(model) == "vqa",
    GROUNDING: lambda model: task_of(model) == "grounding",
    FILL_MASK: has_mlm,
}


def _check_model(model) -> None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in list_methods():
        raise ValueError(f"`model` must be a vl_models model (model_type one of {list_methods()}), got "
                         f"{type(model).__name__} with model_type {model_type!r}")


def supported_tasks(model) -> list[str]:
    """The vl_models pipeline tasks `model` (a vl_models model) can run."""
    _check_model(model)
    return [task for task in TASKS if _SUPPORTS[task](model)]


def _needs(spec, task: str) -> str:
    head = {VQA: "vqa", GROUNDING: "grounding"}.get(task)
    if head is not None:
        if head not in spec.task_classes:
            return f"a {head} head, and method {spec.name!r} has none (its heads: {sorted(spec.task_classes)})"
        return (f"a fine-tuned {head} head ({spec.task_classes[head].__name__}; "
                f"`examples/finetune.py --task {head}` makes one)")
    return {
        ZERO_SHOT: "trained ITC projections: a retrieval head, or a pre-training checkpoint whose method trains ITC",
        MATCHING: "ITM or ITC: a retrieval head, or a pre-training checkpoint that trained either",
        FILL_MASK: "the MLM head of a pre-training checkpoint that trained MLM",
    }[task]


def check_supports(model, task: str) -> None:
    """Raise a ValueError naming the method, the task and the tasks `model` does support."""
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {list(TASKS)}, got {task!r}")
    supported = supported_tasks(model)
    spec = method_of(model)
    if task in supported:
        return
    head = task_of(model)
    raise ValueError(
        f"{type(model).__name__} (method {spec.name!r}, a {head!r} checkpoint) does not support the {task!r} "
        f"pipeline, which needs {_needs(spec, task)}. It supports: "
        f"{', '.join(repr(t) for t in supported) if supported else 'none of the vl_models pipelines'}"
    )
