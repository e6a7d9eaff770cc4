"""Semantic segmentation mean IoU as an `evaluate` metric."""

from __future__ import annotations

import datasets
import evaluate

from vl_models.metrics.functional import mean_iou

_DESCRIPTION = """
Mean IoU: per class, the pixels both the prediction and the reference label c over the pixels either
labels c, counted over the whole set; the mean is over the classes that occur (in a prediction or a
reference). Reference pixels equal to `ignore_index` (255, as BEiT and SegFormer use) are skipped.
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of [H, W] class maps (ints in [0, num_labels)).
    references: list of [H, W] class maps, the same shapes; `ignore_index` marks unlabelled pixels.
    num_labels: int, the number of classes.
    ignore_index: int or None, default 255.
Returns:
    mean_iou, overall_accuracy (pixel accuracy), per_category_iou (NaN for classes that never occur).
Example:
    >>> metric = vl_models.metrics.load("mean_iou")
    >>> metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 255]]], num_labels=2)
    {'mean_iou': 0.5, 'overall_accuracy': 0.6666666666666666, 'per_category_iou': [0.5, 0.5]}
"""
_CITATION = "Everingham et al., The PASCAL Visual Object Classes (VOC) Challenge, IJCV 2010."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIou(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
        )

    def _compute(self, predictions, references, num_labels=None, ignore_index=255):
        if num_labels is None:
            raise ValueError("`num_labels` is required, got None")
        return mean_iou(predictions, references, num_labels=num_labels, ignore_index=ignore_index)
