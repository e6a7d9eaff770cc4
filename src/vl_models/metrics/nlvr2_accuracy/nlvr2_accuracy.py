"""NLVR2 accuracy (true/false statements about image pairs) as an `evaluate` metric."""

from __future__ import annotations

import datasets
import evaluate

from vl_models.metrics.functional import nlvr2_accuracy

_DESCRIPTION = "NLVR2 accuracy: the fraction of true/false (1/0) predictions equal to the labels."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of int (0 = false, 1 = true) or bool.
    references: list of int or bool.
Returns:
    accuracy in [0, 1].
Example:
    >>> metric = vl_models.metrics.load("nlvr2_accuracy")
    >>> metric.compute(predictions=[1, 0, 1], references=[1, 1, 1])
    {'accuracy': 0.6666666666666666}
"""
_CITATION = "Suhr et al., A Corpus for Reasoning About Natural Language Grounded in Photographs, ACL 2019."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Nlvr2Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://lil.nlp.cornell.edu/nlvr/"],
        )

    def _compute(self, predictions, references):
        return nlvr2_accuracy(predictions, references)
