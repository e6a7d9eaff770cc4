"""The metrics as plain numpy functions; the ``evaluate`` modules beside this file wrap them.

Every function returns a dict with the same keys as its ``evaluate`` module. Fractions are in
[0, 1], not percent. Importing this module costs nothing beyond numpy (``evaluate`` is slow to import).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# ---- VQA -------------------------------------------------------------------------------------

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!:*#&%$^|~]")


def normalize_vqa_answer(answer: str) -> str:
    """Normalise an answer the way the official VQA evaluation does, in a simplified form: lower case,
    punctuation to spaces (commas inside numbers dropped: "1,000" -> "1000"), full stops dropped unless
    inside a number, number words to digits, articles dropped. Unlike the official script it has no
    table of contractions ("dont" stays "dont")."""
    text = answer.lower().replace("\n", " ").replace("\t", " ")
    text = re.sub(r"(?<=\d),(?=\d)", "", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", "", text)
    text = _PUNCTUATION.sub(" ", text)
    words = [_NUMBER_WORDS.get(word, word) for word in text.split()]
    return " ".join(word for word in words if word not in _ARTICLES)


def vqa_answer_score(matches: int, num_answers: int = 10) -> float:
    """Accuracy of an answer given by ``matches`` of ``num_answers`` humans: min(1, matches / 3)
    averaged over the leave-one-annotator-out subsets, as in the official evaluation. For 10 answers
    that is 0.3, 0.6, 0.9 and 1.0 for 1, 2, 3 and 4+ matches."""
    if num_answers <= 0:
        raise ValueError(f"`num_answers` must be positive, got {num_answers!r}")
    if not 0 <= matches <= num_answers:
        raise ValueError(f"`matches` must be in [0, {num_answers}], got {matches!r}")
    left_out_match = matches * min(1.0, (matches - 1) / 3)  # the left-out annotator gave this answer
    left_out_other = (num_answers - matches) * min(1.0, matches / 3)
    return (left_out_match + left_out_other) / num_answers


def vqa_soft_scores(answers: Sequence[str]) -> dict[str, float]:
    """{normalised answer: score} for the human answers of one question."""
    normalized = [normalize_vqa_answer(a) for a in answers]
    return {a: vqa_answer_score(normalized.count(a), len(normalized)) for a in dict.fromkeys(normalized)}


def vqa_accuracy(
    predictions: Sequence[int], labels: Sequence[Sequence[int]], scores: Sequence[Sequence[float]]
) -> dict[str, float]:
    """Mean soft score of the predicted answer index: ``labels[i]``/``scores[i]`` are the answer
    indices of question i that have a non-zero score and those scores (the dataset's ``labels`` and
    ``scores`` columns); a prediction outside ``labels[i]`` scores 0."""
    _same_length(predictions=predictions, labels=labels, scores=scores)
    total = 0.0
    for i, (prediction, label_row, score_row) in enumerate(zip(predictions, labels, scores)):
        if len(label_row) != len(score_row):
            raise ValueError(f"`labels[{i}]` and `scores[{i}]` must have the same length, got {len(label_row)} and {len(score_row)}")
        total += sum(float(s) for label, s in zip(label_row, score_row) if int(label) == int(prediction))
    return {"accuracy": total / len(predictions) if len(predictions) else 0.0}


def vqa_accuracy_from_answers(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Official-style VQA accuracy of answer strings against each question's human answers."""
    _same_length(predictions=predictions, answers=answers)
    total = 0.0
    for i, (prediction, humans) in enumerate(zip(predictions, answers)):
        if len(humans) == 0:
            raise ValueError(f"`answers[{i}]` must hold at least one human answer, got an empty list")
        target = normalize_vqa_answer(prediction)
        total += vqa_answer_score(sum(normalize_vqa_answer(h) == target for h in humans), len(humans))
    return {"accuracy": total / len(predictions) if len(predictions) else 0.0}


# ---- retrieval -------------------------------------------------------------------------------

def retrieval_recall(
    similarity, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K both ways from an [num_images, num_texts] similarity matrix.

    ``text_to_image[j]`` is the image of text j; an image may own several texts. Image -> text: a hit
    when any of the image's texts is in its top K. Text -> image: a hit when the text's image is in
    its top K. Ties count against the model (a wrong candidate with an equal score ranks first), so a
    constant similarity scores 0 rather than 1. Keys: ``image_to_text_r{k}``, ``text_to_image_r{k}``
    and ``mean_recall`` (the mean of all of them).
    """
    sim = np.asarray(similarity, dtype=np.float64)  # [I, T]
    if sim.ndim != 2:
        raise ValueError(f"`similarity` must be a 2-D [num_images, num_texts] matrix, got shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError("`similarity` must be finite, got NaN or inf values")
    num_images, num_texts = sim.shape
    owner = np.asarray(text_to_image)
    if owner.shape != (num_texts,) or not np.issubdtype(owner.dtype, np.integer) and num_texts:
        raise ValueError(f"`text_to_image` must be {num_texts} integer image indices, got {owner.shape} of {owner.dtype}")
    owner = owner.astype(np.int64)
    if num_texts and (owner.min() < 0 or owner.max() >= num_images):
        raise ValueError(f"`text_to_image` values must be in [0, {num_images}), got min {owner.min()} max {owner.max()}")
    texts_per_image = np.bincount(owner, minlength=num_images)
    if (texts_per_image == 0).any():
        raise ValueError(f"every image needs at least one text; image {int(np.argmin(texts_per_image))} has none")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"`ks` must be positive integers, got {ks!r}")

    # image -> text: rank of the best-scoring correct text among the wrong ones, in row chunks
    i2t_rank = np.empty(num_images, dtype=np.int64)
    for start in range(0, num_images, 1024):
        rows = sim[start:start + 1024]  # [C, T]
        correct = owner[None, :] == np.arange(start, start + len(rows))[:, None]  # [C, T]
        best = np.where(correct, rows, -np.inf).max(axis=1, keepdims=True)  # [C, 1]
        i2t_rank[start:start + len(rows)] = ((rows >= best) & ~correct).sum(axis=1)
    # text -> image: how many other images score at least as high as the right one
    right = sim[owner, np.arange(num_texts)]  # [T]
    t2i_rank = (sim >= right[None, :]).sum(axis=0) - 1

    out = {}
    for k in ks:
        out[f"image_to_text_r{k}"] = float((i2t_rank < k).mean()) if num_images else 0.0
    for k in ks:
        out[f"text_to_image_r{k}"] = float((t2i_rank < k).mean()) if num_texts else 0.0
    out["mean_recall"] = float(np.mean(list(out.values())))
    return out


# ---- grounding -------------------------------------------------------------------------------

BOX_FORMATS = ("cxcywh", "xyxy", "xywh")


def boxes_to_xyxy(boxes, box_format: str = "cxcywh") -> np.ndarray:
    """[N, 4] boxes in ``box_format`` -> [N, 4] (x0, y0, x1, y1)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    if box_format == "xyxy":
        out = b.copy()
    elif box_format == "xywh":
        out = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
    elif box_format == "cxcywh":
        out = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], axis=1)
    else:
        raise ValueError(f"`box_format` must be one of {BOX_FORMATS}, got {box_format!r}")
    if (out[:, 2:] < out[:, :2]).any():
        raise ValueError(f"boxes must have non-negative width and height in format {box_format!r}")
    return out


def box_iou(boxes_a, boxes_b, box_format: str = "cxcywh") -> np.ndarray:
    """IoU of box i of ``boxes_a`` with box i of ``boxes_b`` (aligned, not all pairs): [N]."""
    a, b = boxes_to_xyxy(boxes_a, box_format), boxes_to_xyxy(boxes_b, box_format)
    if a.shape != b.shape:
        raise ValueError(f"need as many predicted as reference boxes, got {len(a)} and {len(b)}")
    size = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None)  # [N, 2]
    inter = size[:, 0] * size[:, 1]
    union = np.prod(a[:, 2:] - a[:, :2], axis=1) + np.prod(b[:, 2:] - b[:, :2], axis=1) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def grounding_accuracy(
    predictions, references, box_format: str = "cxcywh", iou_threshold: float = 0.5
) -> dict[str, float]:
    """Fraction of predicted boxes with IoU >= ``iou_threshold`` against the reference box, and the
    mean IoU. Both sets of boxes are in ``box_format`` (the datasets' own convention: normalised cxcywh)."""
    iou = box_iou(predictions, references, box_format)
    if len(iou) == 0:
        return {"accuracy": 0.0, "mean_iou": 0.0}
    return {"accuracy": float((iou >= iou_threshold).mean()), "mean_iou": float(iou.mean())}


# ---- NLVR2 -----------------------------------------------------------------------------------

def nlvr2_accuracy(predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
    """Accuracy of true/false (1/0) predictions."""
    _same_length(predictions=predictions, references=references)
    p, r = np.asarray(predictions).astype(np.int64), np.asarray(references).astype(np.int64)
    for name, values in (("predictions", p), ("references", r)):
        if len(values) and not np.isin(values, (0, 1)).all():
            raise ValueError(f"`{name}` must be 0/1 (false/true), got values {sorted(set(values.tolist()))[:10]}")
    return {"accuracy": float((p == r).mean()) if len(p) else 0.0}


# ---- semantic segmentation -------------------------------------------------------------------

def mean_iou(predictions, references, num_labels: int, ignore_index: int | None = 255) -> dict:
    """Semantic segmentation scores over a whole set, as mmseg and HF's ``mean_iou`` count them: per class,
    IoU = (pixels both call c) / (pixels either calls c), summed over every image before dividing; classes
    no prediction or reference has are NaN in ``per_category_iou`` and left out of ``mean_iou``. Reference
    pixels equal to ``ignore_index`` count nowhere. ``predictions`` / ``references``: class maps [H, W] per
    image (sizes may differ between images, not within a pair)."""
    _same_length(predictions=predictions, references=references)
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"`num_labels` must be an int >= 1, got {num_labels!r}")
    intersection, union = np.zeros(num_labels, np.int64), np.zeros(num_labels, np.int64)
    correct = total = 0
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        pred, ref = np.asarray(pred, np.int64), np.asarray(ref, np.int64)
        if pred.shape != ref.shape:
            raise ValueError(f"prediction {i} has shape {pred.shape} but its reference {ref.shape}")
        keep = ref != ignore_index if ignore_index is not None else np.ones(ref.shape, bool)
        for name, values in (("predictions", pred), ("references", ref[keep])):  # a prediction never ignores
            if values.size and (values.min() < 0 or values.max() >= num_labels):
                raise ValueError(f"`{name}` {i} has classes outside [0, {num_labels}) (ignore_index "
                                 f"{ignore_index}): {sorted(set(values[(values < 0) | (values >= num_labels)]))[:10]}")
        pred, ref = pred[keep], ref[keep]
        hits = ref[pred == ref]
        intersection += np.bincount(hits, minlength=num_labels)
        union += np.bincount(pred, minlength=num_labels) + np.bincount(ref, minlength=num_labels)
        correct, total = correct + hits.size, total + ref.size
    union -= intersection
    iou = np.divide(intersection, union, out=np.full(num_labels, np.nan), where=union > 0)
    present = ~np.isnan(iou)
    return {"mean_iou": float(iou[present].mean()) if present.any() else 0.0,
            "overall_accuracy": correct / total if total else 0.0,
            "per_category_iou": iou.tolist()}


def _same_length(**sequences) -> None:
    lengths = {name: len(value) for name, value in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError("lengths must match: " + ", ".join(f"`{k}` has {n}" for k, n in lengths.items()))
