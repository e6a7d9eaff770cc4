"""Shapes benchmark: determinism, exact boxes, and every caption, negative, answer, referring
expression and NLVR2 label checked against a reference reading of the scene written here."""

from __future__ import annotations

import random
import re

import datasets
import numpy as np
import pytest

from vl_models.data.shapes import (
    COLORS,
    SHAPES,
    SHAPES_ANSWERS,
    SIZES,
    Scene,
    ShapeObject,
    build_shapes,
    generate_records,
    generate_scene,
    render_scene,
    select_task,
)
from vl_models.data.shapes_language import make_hard_negatives

PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle", "crosses": "cross"}


@pytest.fixture(scope="module")
def shapes():
    return build_shapes(num_train=60, num_val=10, num_test=10, seed=3)


# ---- a reference reading of the scene, independent of the generator ----------------------------

def parse_phrase(words: list[str]) -> dict[str, str]:
    """["small", "red", "circle"] -> description; "object" means any shape."""
    out = {}
    for word in words:
        key = "size" if word in SIZES else "color" if word in COLORS else "shape" if word in SHAPES else None
        assert key is not None or word == "object", word
        if key:
            out[key] = word
    return out


def matching(objects, description) -> list[int]:
    return [i for i, o in enumerate(objects) if all(o[k] == v for k, v in description.items())]


def offset(objects, i, j, relation) -> tuple[float, float]:
    """(along, across) offset of object i relative to j for the relation, in image fractions."""
    (ax, ay), (bx, by) = objects[i]["box"][:2], objects[j]["box"][:2]
    return {"left of": (bx - ax, by - ay), "right of": (ax - bx, by - ay),
            "above": (by - ay, bx - ax), "below": (ay - by, bx - ax)}[relation]


def clearly(objects, i, j, relation) -> bool:
    along, across = offset(objects, i, j, relation)
    return along >= 0.1 - 1e-6 and along >= abs(across) / 2


def possibly(objects, i, j, relation) -> bool:
    return offset(objects, i, j, relation)[0] > 0


def parse_caption(text: str):
    words = text.split()
    a = parse_phrase(words[1:4])
    if len(words) == 4:
        return a, None, None
    relation = " ".join(words[4:6]) if words[4] in ("left", "right") else words[4]
    return a, relation, parse_phrase(words[-3:])


def caption_true(objects, caption, relation_test) -> bool:
    a, relation, b = caption
    if relation is None:
        return bool(matching(objects, a))
    return any(i != j and relation_test(objects, i, j, relation)
               for i in matching(objects, a) for j in matching(objects, b))


# ---- structure and determinism ---------------------------------------------------------------

def test_splits_features_and_sizes(shapes):
    assert set(shapes) == {f"{t}_{s}" for t in ("captions", "vqa", "grounding", "nlvr2")
                           for s in ("train", "validation", "test")}
    assert len(shapes["vqa_train"]) == 60 and len(shapes["nlvr2_test"]) == 10
    assert isinstance(shapes["captions_train"].features["image"], datasets.Image)
    assert shapes["vqa_train"].features["labels"].feature.names == list(SHAPES_ANSWERS)
    row = shapes["grounding_validation"][0]
    assert row["image"].size == (64, 64) and row["image"].mode == "RGB"
    small = build_shapes(num_train=2, num_val=0, num_test=0, image_size=32, tasks=("nlvr2",))
    assert list(small) == ["nlvr2_train", "nlvr2_validation", "nlvr2_test"]
    assert small["nlvr2_train"][0]["image_right"].size == (32, 32)
    task = select_task(shapes, "vqa")
    assert list(task) == ["train", "validation", "test"] and task["train"] is shapes["vqa_train"]


def test_deterministic_and_independent_of_counts_and_tasks(shapes):
    again = build_shapes(num_train=60, num_val=10, num_test=10, seed=3)
    for name in shapes:
        assert shapes[name].data.table.equals(again[name].data.table), name
        assert shapes[name]._fingerprint == again[name]._fingerprint
    fewer = build_shapes(num_train=5, num_val=0, num_test=10, seed=3, tasks=("grounding",))
    assert fewer["grounding_train"].to_dict() == shapes["grounding_train"].select(range(5)).to_dict()
    assert fewer["grounding_test"].data.table.equals(shapes["grounding_test"].data.table)
    other = build_shapes(num_train=5, num_val=0, num_test=0, seed=4, tasks=("grounding",))
    assert other["grounding_train"]["expression"] != fewer["grounding_train"]["expression"]
    record = generate_records("validation", 7, seed=3, tasks=("captions",))["captions"]
    assert record["captions"] == shapes["captions_validation"][7]["captions"]


def test_generate_scene_is_deterministic_and_valid():
    for seed in range(200):
        scene = generate_scene(random.Random(seed), 64)
        assert scene == generate_scene(random.Random(seed), 64)
        assert 1 <= len(scene.objects) <= 4
        triples = {(o.size, o.color, o.shape) for o in scene.objects}
        assert len(triples) == len(scene.objects)
        for k, a in enumerate(scene.objects):
            assert 0 <= a.x0 < a.x1 <= 64 and 0 <= a.y0 < a.y1 <= 64
            for b in scene.objects[k + 1:]:  # boxes never overlap
                assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0


def test_rendered_extent_is_the_box():
    for shape in SHAPES:
        for size, (x0, y0, side) in (("small", (5, 9, 9)), ("large", (30, 20, 17))):
            obj = ShapeObject(shape, "green", size, x0, y0, x0 + side, y0 + side)
            image = render_scene(Scene(64, (obj,)))
            assert image.getbbox() == (obj.x0, obj.y0, obj.x1, obj.y1), shape
            assert image.getpixel((x0 + side // 2, y0 + side // 2)) == COLORS["green"]


def test_object_boxes_and_colours_match_pixels(shapes):
    for row in shapes["captions_train"]:
        pixels = np.asarray(row["image"])
        for obj in row["objects"]:
            cx, cy, w, h = obj["box"]
            assert cx - w / 2 >= 0 and cx + w / 2 <= 1 and cy - h / 2 >= 0 and cy + h / 2 <= 1
            assert tuple(pixels[int(cy * 64), int(cx * 64)]) == COLORS[obj["color"]]
        x0, y0, x1, y1 = row["image"].getbbox()
        boxes = np.array([o["box"] for o in row["objects"]]) * 64
        assert (x0, y0) == (round(min(boxes[:, 0] - boxes[:, 2] / 2)), round(min(boxes[:, 1] - boxes[:, 3] / 2)))
        assert (x1, y1) == (round(max(boxes[:, 0] + boxes[:, 2] / 2)), round(max(boxes[:, 1] + boxes[:, 3] / 2)))


# ---- language checked against the scene ------------------------------------------------------

def test_captions_true_and_hard_negatives_false_by_one_word(shapes):
    kinds = set()
    for row in shapes["captions_train"]:
        objects = row["objects"]
        assert 1 <= len(row["captions"]) <= 3 and len(set(row["captions"])) == len(row["captions"])
        for caption in row["captions"]:
            assert caption_true(objects, parse_caption(caption), clearly), caption
        assert len(row["negatives"]) == len(row["negative_changes"]) >= 3
        primary = row["captions"][0].split()
        for negative, change in zip(row["negatives"], row["negative_changes"]):
            words = negative.split()
            diff = [k for k, (x, y) in enumerate(zip(primary, words)) if x != y]
            assert len(words) == len(primary) and diff == [change["position"]]
            assert (primary[diff[0]], words[diff[0]]) == (change["original"], change["replacement"])
            assert not caption_true(objects, parse_caption(negative), possibly), negative
            kinds.add(change["kind"])
    assert kinds == {"color", "shape", "size", "relation"}


def test_negatives_are_not_even_weakly_true():
    # The green circle is only just left of the blue square (1 px): "a small green circle left of a
    # large blue square" is arguably true, so it must never be offered as a negative.
    red = ShapeObject("circle", "red", "small", 4, 4, 13, 13)
    blue = ShapeObject("square", "blue", "large", 30, 4, 47, 21)
    green = ShapeObject("circle", "green", "small", 33, 40, 42, 49)
    scene = Scene(64, (red, blue, green))
    objects = [{**o.attributes(), "box": o.box_cxcywh(64)} for o in scene.objects]
    caption = (red.attributes(), "left of", blue.attributes())
    assert caption_true(objects, caption, clearly)
    assert caption_true(objects, ({**red.attributes(), "color": "green"}, "left of", blue.attributes()), possibly)
    for seed in range(40):
        for text, _ in make_hard_negatives(scene, caption, random.Random(seed)):
            assert not caption_true(objects, parse_caption(text), possibly), text


def reference_answer(question: str, objects) -> str:
    if m := re.fullmatch(r"what (color|shape) is the (.+)\?", question):
        [index] = matching(objects, parse_phrase(m[2].split()))
        return objects[index][m[1]]
    if m := re.fullmatch(r"how many (.+) are there\?", question):
        words = m[1].split()
        description = {"shape": PLURAL[words[0]]} if words[0] in PLURAL else parse_phrase(words[:-1])
        return str(len(matching(objects, description)))
    if m := re.fullmatch(r"is there an? (.+)\?", question):
        return "yes" if matching(objects, parse_phrase(m[1].split())) else "no"
    m = re.fullmatch(r"is the (.+) (left of|right of|above|below) the (.+)\?", question)
    [i], [j] = matching(objects, parse_phrase(m[1].split())), matching(objects, parse_phrase(m[3].split()))
    if clearly(objects, i, j, m[2]):
        return "yes"
    assert not possibly(objects, i, j, m[2]), question  # a "no" is never arguable
    return "no"


def test_vqa_answers(shapes):
    rows = list(shapes["vqa_train"]) + list(shapes["vqa_validation"])
    for row in rows:
        assert row["answer"] == reference_answer(row["question"], row["objects"]), row["question"]
        assert row["labels"] == [SHAPES_ANSWERS.index(row["answer"])] and row["scores"] == [1.0]
        assert row["answers"] == [row["answer"]]
    assert {r["question_type"] for r in rows} == {"color", "shape", "count", "existence", "relation"}
    assert {"yes", "no"} <= {r["answer"] for r in rows}


def test_referring_expressions_name_exactly_their_object(shapes):
    for row in shapes["grounding_train"]:
        words = row["expression"].split()
        assert words[0] == "the"
        assert matching(row["objects"], parse_phrase(words[1:])) == [row["target_index"]]
        assert row["box"] == pytest.approx(row["objects"][row["target_index"]]["box"])
        assert (row["image_width"], row["image_height"]) == (64, 64)


def reference_statement(sentence: str, left, right) -> bool:
    if m := re.fullmatch(r"the left image has (.+) the right image", sentence):
        n, k = len(left), len(right)
        return {"more objects than": n > k, "fewer objects than": n < k, "the same number of objects as": n == k}[m[1]]
    m = re.fullmatch(r"(the left image contains|the right image contains|both images contain|"
                     r"exactly one image contains|neither image contains) an? (.+)", sentence)
    description = parse_phrase(m[2].split())
    in_left, in_right = bool(matching(left, description)), bool(matching(right, description))
    return {"the left image contains": in_left, "the right image contains": in_right,
            "both images contain": in_left and in_right, "exactly one image contains": in_left != in_right,
            "neither image contains": not (in_left or in_right)}[m[1]]


def test_nlvr2_labels(shapes):
    rows = list(shapes["nlvr2_train"])
    for row in rows:
        assert row["label"] == int(reference_statement(row["sentence"], row["objects_left"], row["objects_right"]))
    labels = [r["label"] for r in rows]
    assert 0.3 < np.mean(labels) < 0.7
    # the left image is the scene the other tasks of the same index use
    assert shapes["nlvr2_train"][4]["image_left"].tobytes() == shapes["vqa_train"][4]["image"].tobytes()


def test_bad_arguments():
    with pytest.raises(ValueError, match="`num_train` must be a non-negative int, got -1"):
        build_shapes(num_train=-1)
    with pytest.raises(ValueError, match=r"`tasks` must be a non-empty subset of .*got \('caption',\)"):
        build_shapes(num_train=1, tasks=("caption",))
    with pytest.raises(ValueError, match="`image_size` must be >= 16, got 8"):
        build_shapes(num_train=1, image_size=8)
    with pytest.raises(ValueError, match="`max_objects` <= 4"):
        build_shapes(num_train=1, max_objects=5)
    with pytest.raises(ValueError, match="`task` 'vqa' has no splits"):
        select_task(build_shapes(num_train=1, num_val=0, num_test=0, tasks="captions"), "vqa")
