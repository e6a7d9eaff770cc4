"""Metrics as ``evaluate`` modules that load offline, plus the plain numpy functions behind them.

``load("vqa_accuracy")`` is ``evaluate.load(<folder inside this package>)``; the same folder path
(``metric_path``) works with ``evaluate.load`` directly. ``evaluate`` is imported only when a module
is loaded, because importing it takes seconds.
"""

from __future__ import annotations

from pathlib import Path

from .functional import (
    BOX_FORMATS,
    box_iou,
    boxes_to_xyxy,
    grounding_accuracy,
    mean_iou,
    nlvr2_accuracy,
    normalize_vqa_answer,
    retrieval_recall,
    vqa_accuracy,
    vqa_accuracy_from_answers,
    vqa_answer_score,
    vqa_soft_scores,
)

METRICS = ("vqa_accuracy", "retrieval_recall", "grounding_accuracy", "nlvr2_accuracy", "mean_iou")


def metric_path(name: str) -> str:
    """The folder of a metric's ``evaluate`` script, for ``evaluate.load(metric_path(name))``."""
    if name not in METRICS:
        raise ValueError(f"`name` must be one of {METRICS}, got {name!r}")
    return str(Path(__file__).resolve().parent / name)


def load(name: str, **kwargs):
    """``evaluate.load`` of one of ``METRICS`` from inside the package (no Hub access); ``kwargs`` go
    to ``evaluate.load`` (e.g. ``experiment_id``, ``cache_dir``, ``keep_in_memory``)."""
    path = metric_path(name)
    import evaluate

    return evaluate.load(path, **kwargs)


__all__ = [
    "BOX_FORMATS",
    "METRICS",
    "box_iou",
    "boxes_to_xyxy",
    "grounding_accuracy",
    "load",
    "mean_iou",
    "metric_path",
    "nlvr2_accuracy",
    "normalize_vqa_answer",
    "retrieval_recall",
    "vqa_accuracy",
    "vqa_accuracy_from_answers",
    "vqa_answer_score",
    "vqa_soft_scores",
]
