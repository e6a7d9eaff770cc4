"""Image-text retrieval Recall@K (both directions) as an `evaluate` metric."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from vl_models.metrics.functional import retrieval_recall

_DESCRIPTION = """
Recall@K for image -> text and text -> image retrieval from a similarity matrix. Add one row per
image: its similarity to every text (all rows the same length, the number of texts) and the indices
of its correct texts (an image may have several; every text belongs to exactly one image).
Ties count against the model.
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of list of float, row i = similarity of image i to each text.
    references: list of list of int, row i = indices of the texts that describe image i.
    ks: the K values (default (1, 5, 10)).
Returns:
    image_to_text_r{k}, text_to_image_r{k} for each k, and mean_recall (their mean); fractions in [0, 1].
Example:
    >>> metric = vl_models.metrics.load("retrieval_recall")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[[0], [1]], ks=[1])
    {'image_to_text_r1': 1.0, 'text_to_image_r1': 1.0, 'mean_recall': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, ks=(1, 5, 10)):
        lengths = {len(row) for row in predictions}
        if len(lengths) > 1:
            raise ValueError(f"every similarity row must have one score per text; got row lengths {sorted(lengths)}")
        num_texts = lengths.pop() if lengths else 0
        owner = np.full(num_texts, -1, dtype=np.int64)
        for image, texts in enumerate(references):
            for text in texts:
                if not 0 <= text < num_texts:
                    raise ValueError(f"references[{image}] names text {text}, outside [0, {num_texts})")
                if owner[text] != -1:
                    raise ValueError(f"text {text} is listed for images {owner[text]} and {image}; a text has one image")
                owner[text] = image
        missing = np.flatnonzero(owner < 0)
        if len(missing):
            raise ValueError(f"texts {missing[:10].tolist()} belong to no image in references")
        return retrieval_recall(np.asarray(predictions, dtype=np.float64).reshape(-1, num_texts), owner, ks)
