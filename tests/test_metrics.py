"""Metrics against hand-computed examples and brute-force references, as numpy functions and as
``evaluate`` modules loaded offline from inside the package."""

from __future__ import annotations

import itertools

import evaluate
import numpy as np
import pytest

from vl_models import metrics
from vl_models.metrics import (
    grounding_accuracy,
    metric_path,
    nlvr2_accuracy,
    normalize_vqa_answer,
    retrieval_recall,
    vqa_accuracy,
    vqa_accuracy_from_answers,
    vqa_answer_score,
)

# 3 images, 5 texts: image 0 owns texts 0 and 1, image 1 owns text 2, image 2 owns texts 3 and 4.
SIM = [
    [0.9, 0.1, 0.8, 0.2, 0.3],
    [0.5, 0.4, 0.3, 0.6, 0.7],
    [0.1, 0.2, 0.3, 0.35, 0.0],
]
OWNER = [0, 0, 1, 2, 2]


@pytest.fixture(scope="module", autouse=True)
def evaluate_cache(tmp_path_factory):
    """evaluate copies module scripts and writes lock files under its cache: keep them in tmp. Its paths
    are read at import time, so patch the config too (one folder for the module, because evaluate
    imports the copied scripts as a package rooted there)."""
    home = tmp_path_factory.getbasetemp() / "hf_home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(home))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(evaluate.config, "HF_MODULES_CACHE", home / "modules")
        patch.setattr(evaluate.config, "HF_METRICS_CACHE", home / "metrics")
        yield home


# ---- VQA -------------------------------------------------------------------------------------

def test_vqa_answer_score_is_the_leave_one_out_average():
    assert [vqa_answer_score(m) for m in (0, 1, 2, 3, 4, 10)] == pytest.approx([0, 0.3, 0.6, 0.9, 1, 1])
    # 3 annotators, 1 match: left out the match -> 0/3, left out another -> 1/3; mean 2/9
    assert vqa_answer_score(1, 3) == pytest.approx(2 / 9)
    with pytest.raises(ValueError, match=r"`matches` must be in \[0, 10\], got 11"):
        vqa_answer_score(11)


@pytest.mark.parametrize(
    "raw, normalized",
    [("Two", "2"), ("The Cat.", "cat"), ("1,000", "1000"), ("t-shirt", "t shirt"), ("3.5", "3.5"),
     ("yes!", "yes"), ("a dog's toy", "dog's toy"), ("  None\n", "0")],
)
def test_normalize_vqa_answer(raw, normalized):
    assert normalize_vqa_answer(raw) == normalized


def test_vqa_accuracy_by_hand():
    # question 0 predicts label 2 (score 0.6), question 1 predicts a label with no score, question 2 has none
    got = vqa_accuracy([2, 0, 7], [[2, 5], [1], []], [[0.6, 1.0], [1.0], []])
    assert got == {"accuracy": pytest.approx(0.6 / 3)}
    humans = [["2"] * 3 + ["3"] * 7, ["no"] * 10, ["red", "Red", "blue"] + ["green"] * 7]
    got = vqa_accuracy_from_answers(["two", "yes", "red"], humans)
    assert got == {"accuracy": pytest.approx((0.9 + 0 + 0.6) / 3)}
    with pytest.raises(ValueError, match="`predictions` has 1, `labels` has 2"):
        vqa_accuracy([1], [[1], [2]], [[1.0], [1.0]])


# ---- retrieval -------------------------------------------------------------------------------

def test_retrieval_recall_by_hand():
    got = retrieval_recall(SIM, OWNER, ks=(1, 5, 10))
    # image->text ranks (wrong texts scoring >= the best right one): 0, 4, 0
    # text->image ranks (other images scoring >= the right one): 0, 2, 2 (a tie), 1, 2
    want = {"image_to_text_r1": 2 / 3, "image_to_text_r5": 1.0, "image_to_text_r10": 1.0,
            "text_to_image_r1": 1 / 5, "text_to_image_r5": 1.0, "text_to_image_r10": 1.0}
    want["mean_recall"] = sum(want.values()) / 6
    assert got == pytest.approx(want)
    assert retrieval_recall(SIM, OWNER, ks=(2,)) == pytest.approx(
        {"image_to_text_r2": 2 / 3, "text_to_image_r2": 2 / 5, "mean_recall": (2 / 3 + 2 / 5) / 2})
    # ties count against the model: a constant similarity retrieves nothing at rank 1
    constant = retrieval_recall(np.ones((3, 5)), OWNER, ks=(1,))
    assert constant["image_to_text_r1"] == 0 and constant["text_to_image_r1"] == 0


def brute_force_recall(sim, owner, k):
    num_images, num_texts = sim.shape
    i2t = []
    for i in range(num_images):
        order = sorted(range(num_texts), key=lambda t: (-sim[i, t], owner[t] == i))  # ties: wrong first
        i2t.append(any(owner[t] == i for t in order[:k]))
    t2i = []
    for t in range(num_texts):
        order = sorted(range(num_images), key=lambda i: (-sim[i, t], i == owner[t]))
        t2i.append(owner[t] in order[:k])
    return np.mean(i2t), np.mean(t2i)


@pytest.mark.parametrize("num_images", [1, 7, 30])
def test_retrieval_recall_matches_brute_force(num_images):
    rng = np.random.default_rng(num_images)
    # every image owns one text, some own more
    owner = np.concatenate([np.arange(num_images), rng.integers(0, num_images, num_images // 2)])
    sim = np.round(rng.random((num_images, len(owner))), 1)  # coarse values: many ties
    for k in (1, 3):
        got = retrieval_recall(sim, owner, ks=(k,))
        i2t, t2i = brute_force_recall(sim, owner, k)
        assert got[f"image_to_text_r{k}"] == pytest.approx(i2t) and got[f"text_to_image_r{k}"] == pytest.approx(t2i)


def test_retrieval_recall_chunks_many_images():
    rng = np.random.default_rng(0)
    owner = np.arange(1100)
    sim = rng.random((1100, 1100)) + 2 * np.eye(1100)  # the right pair always scores highest
    sim[5, 5] = 0.0  # except image/text 5, now below the 1,099 others in both directions
    got = retrieval_recall(sim, owner, ks=(1, 10))
    assert got["image_to_text_r1"] == pytest.approx(1099 / 1100) and got["text_to_image_r10"] == pytest.approx(1099 / 1100)


def test_retrieval_recall_errors():
    with pytest.raises(ValueError, match=r"`similarity` must be a 2-D .* got shape \(5,\)"):
        retrieval_recall(np.zeros(5), [0] * 5)
    with pytest.raises(ValueError, match="`similarity` must be finite"):
        retrieval_recall([[np.nan, 1.0]], [0, 0])
    with pytest.raises(ValueError, match=r"`text_to_image` values must be in \[0, 3\), got min 0 max 3"):
        retrieval_recall(SIM, [0, 0, 1, 2, 3])
    with pytest.raises(ValueError, match="image 1 has none"):
        retrieval_recall(SIM, [0, 0, 2, 2, 2])
    with pytest.raises(ValueError, match="`text_to_image` must be 5 integer image indices"):
        retrieval_recall(SIM, [0, 1, 2])
    with pytest.raises(ValueError, match="`ks` must be positive"):
        retrieval_recall(SIM, OWNER, ks=(0,))


# ---- grounding and NLVR2 ---------------------------------------------------------------------

XYXY_PRED = [[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2]]
XYXY_REF = [[0, 0, 2, 2], [1, 0, 3, 2], [5, 5, 6, 6], [0, 0, 2, 1]]  # IoU 1, 1/3, 0, 0.5 (counts: >=)


def _as(boxes, box_format):
    b = np.asarray(boxes, dtype=float)
    if box_format == "xywh":
        return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)
    return np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1)


def test_grounding_accuracy_by_hand_in_every_format():
    want = {"accuracy": 0.5, "mean_iou": pytest.approx((1 + 1 / 3 + 0 + 0.5) / 4)}
    assert grounding_accuracy(XYXY_PRED, XYXY_REF, box_format="xyxy") == want
    for box_format in ("xywh", "cxcywh"):
        assert grounding_accuracy(_as(XYXY_PRED, box_format), _as(XYXY_REF, box_format), box_format) == want
    assert grounding_accuracy(XYXY_PRED, XYXY_REF, "xyxy", iou_threshold=0.3)["accuracy"] == 0.75
    with pytest.raises(ValueError, match="non-negative width and height"):
        grounding_accuracy([[0.5, 0.5, -0.1, 0.2]], [[0.5, 0.5, 0.1, 0.2]])
    with pytest.raises(ValueError, match="got 2 and 1"):
        grounding_accuracy(XYXY_PRED[:2], XYXY_REF[:1], "xyxy")
    with pytest.raises(ValueError, match="`box_format` must be one of"):
        grounding_accuracy(XYXY_PRED, XYXY_REF, "yxyx")


def test_nlvr2_accuracy():
    assert nlvr2_accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == {"accuracy": 0.5}
    assert nlvr2_accuracy([True, False], [1, 0]) == {"accuracy": 1.0}
    with pytest.raises(ValueError, match=r"`predictions` must be 0/1 .* got values \[0, 2\]"):
        nlvr2_accuracy([2, 0], [1, 0])


# ---- through evaluate.load -------------------------------------------------------------------

def _batched(module, predictions, references, split=2, **compute_kwargs):
    module.add_batch(predictions=predictions[:split], references=references[:split])
    module.add_batch(predictions=predictions[split:], references=references[split:])
    return module.compute(**compute_kwargs)


def test_every_metric_loads_offline_from_the_package():
    for name in metrics.METRICS:
        module = metrics.load(name)
        assert isinstance(module, evaluate.EvaluationModule) and module.name == name
    single_file = evaluate.load(f"{metric_path('nlvr2_accuracy')}/nlvr2_accuracy.py")
    assert single_file.compute(predictions=[1, 0], references=[1, 1]) == {"accuracy": 0.5}
    with pytest.raises(ValueError, match="`name` must be one of"):
        metrics.load("bleu")


def test_vqa_through_evaluate():
    refs = [{"labels": [2, 5], "scores": [0.6, 1.0]}, {"labels": [1], "scores": [1.0]}, {"labels": [], "scores": []}]
    got = _batched(evaluate.load(metric_path("vqa_accuracy")), [2, 0, 7], refs)
    assert got == {"accuracy": pytest.approx(0.2)}
    humans = [["2"] * 3 + ["3"] * 7, ["no"] * 10, ["red", "Red", "blue"] + ["green"] * 7]
    got = _batched(evaluate.load(metric_path("vqa_accuracy")), ["two", "yes", "red"], humans, split=1)
    assert got == {"accuracy": pytest.approx(0.5)}


def test_retrieval_through_evaluate():
    module = evaluate.load(metric_path("retrieval_recall"))
    got = _batched(module, SIM, [[0, 1], [2], [3, 4]], split=1, ks=[1, 5])
    assert got == pytest.approx(retrieval_recall(SIM, OWNER, ks=(1, 5)))
    with pytest.raises(ValueError, match="text 1 is listed for images 0 and 1"):
        # keep_in_memory: a module that raised keeps its cache-file lock, and the next would wait 1 s for it
        metrics.load("retrieval_recall", keep_in_memory=True).compute(predictions=SIM, references=[[0, 1], [1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"texts \[4\] belong to no image"):
        metrics.load("retrieval_recall", keep_in_memory=True).compute(predictions=SIM, references=[[0, 1], [2], [3]])


def test_grounding_and_nlvr2_through_evaluate():
    got = _batched(evaluate.load(metric_path("grounding_accuracy")), XYXY_PRED, XYXY_REF, box_format="xyxy")
    assert got == {"accuracy": 0.5, "mean_iou": pytest.approx((1 + 1 / 3 + 0 + 0.5) / 4)}
    cxcywh = _batched(metrics.load("grounding_accuracy"), _as(XYXY_PRED, "cxcywh").tolist(),
                      _as(XYXY_REF, "cxcywh").tolist())  # the default format
    assert cxcywh == got
    predictions, references = [1, 0, 1, 1, 0], [1, 1, 1, 0, 0]
    got = _batched(evaluate.load(metric_path("nlvr2_accuracy")), predictions, references, split=3)
    assert got == {"accuracy": pytest.approx(3 / 5)}


def test_functions_agree_with_modules_on_random_inputs():
    rng = np.random.default_rng(1)
    for num_images, texts_per_image in itertools.product((4, 9), (1, 3)):
        owner = np.repeat(np.arange(num_images), texts_per_image)
        sim = rng.normal(size=(num_images, len(owner)))
        refs = [np.flatnonzero(owner == i).tolist() for i in range(num_images)]
        got = evaluate.load(metric_path("retrieval_recall")).compute(predictions=sim.tolist(), references=refs)
        assert got == pytest.approx(retrieval_recall(sim, owner))
