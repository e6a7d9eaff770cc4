"""VQA accuracy as an `evaluate` metric: soft score of the predicted answer."""

from __future__ import annotations

import datasets
import evaluate

from vl_models.metrics.functional import vqa_accuracy, vqa_accuracy_from_answers

_DESCRIPTION = """
VQA accuracy. Two input forms (pick one per run):
- predictions: int answer indices; references: {"labels": [int], "scores": [float]} per question (the
  soft scores of a VQA dataset's `labels`/`scores` columns). The accuracy of a question is the score
  of the predicted index, 0 when it is not among the labels.
- predictions: answer strings; references: the human answers (list of str) per question. Answers
  are normalised and scored with min(1, #matching humans / 3) averaged over the leave-one-out
  subsets of humans, as in the official VQA evaluation.
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of int (answer index) or list of str (answer).
    references: list of {"labels": list of int, "scores": list of float}, or list of list of str.
Returns:
    accuracy: mean accuracy in [0, 1].
Example:
    >>> metric = vl_models.metrics.load("vqa_accuracy")
    >>> metric.compute(predictions=[2, 0], references=[{"labels": [2, 5], "scores": [0.6, 1.0]},
    ...                                                {"labels": [1], "scores": [1.0]}])
    {'accuracy': 0.3}
"""
_CITATION = "Antol et al., VQA: Visual Question Answering, ICCV 2015; Goyal et al., CVPR 2017 (VQAv2)."

_SOFT_SCORES = datasets.Features(
    {
        "predictions": datasets.Value("int64"),
        "references": {
            "labels": datasets.Sequence(datasets.Value("int64")),
            "scores": datasets.Sequence(datasets.Value("float64")),
        },
    }
)
_ANSWERS = datasets.Features(
    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[_SOFT_SCORES, _ANSWERS],
            reference_urls=["https://visualqa.org/evaluation.html"],
        )

    def _compute(self, predictions, references):
        if predictions and isinstance(predictions[0], str):
            return vqa_accuracy_from_answers(predictions, references)
        labels = [reference["labels"] for reference in references]
        scores = [reference["scores"] for reference in references]
        return vqa_accuracy(predictions, labels, scores)
