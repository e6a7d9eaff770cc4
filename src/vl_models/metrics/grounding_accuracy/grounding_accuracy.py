"""Visual grounding accuracy (IoU >= 0.5) and mean IoU as an `evaluate` metric."""

from __future__ import annotations

import datasets
import evaluate

from vl_models.metrics.functional import grounding_accuracy

_DESCRIPTION = """
Grounding accuracy: the fraction of predicted boxes whose IoU with the reference box is at least
`iou_threshold` (0.5), and the mean IoU. Boxes are 4 numbers in `box_format`: "cxcywh" (default,
the datasets' normalised centre/size convention), "xyxy" or "xywh".
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of [4] boxes.
    references: list of [4] boxes, same format.
    box_format: "cxcywh" | "xyxy" | "xywh".
    iou_threshold: float, default 0.5.
Returns:
    accuracy, mean_iou.
Example:
    >>> metric = vl_models.metrics.load("grounding_accuracy")
    >>> metric.compute(predictions=[[0, 0, 2, 2]], references=[[1, 0, 3, 2]], box_format="xyxy")
    {'accuracy': 0.0, 'mean_iou': 0.3333333333333333}
"""
_CITATION = "Yu et al., Modeling Context in Referring Expressions, ECCV 2016 (RefCOCO/RefCOCO+)."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GroundingAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64"), length=4),
                    "references": datasets.Sequence(datasets.Value("float64"), length=4),
                }
            ),
        )

    def _compute(self, predictions, references, box_format="cxcywh", iou_threshold=0.5):
        return grounding_accuracy(predictions, references, box_format=box_format, iou_threshold=iou_threshold)
