"""Shapes: a built-in synthetic vision-language benchmark (captions, VQA, grounding, NLVR2; semantic
segmentation on request).

``build_shapes`` returns one ``datasets.DatasetDict`` whose splits are named ``"<task>_<split>"``
(``"vqa_train"``, ``"grounding_validation"``, ...); ``select_task`` turns that into a plain
train/validation/test ``DatasetDict`` for one task. Every record is a pure function of
(seed, split, index, task), so changing ``num_train`` or the task list never changes other records.
Schema and examples: docs/data.md.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import datasets
import pyarrow as pa
from datasets.table import InMemoryTable

from .shapes_language import (
    QUESTION_TYPES,
    SHAPES_ANSWERS,
    caption_words,
    make_captions,
    make_hard_negatives,
    make_question,
    make_referring_expression,
    make_statement,
)
from .shapes_scene import (
    COLORS,
    MAX_OBJECTS,
    RELATIONS,
    SEGMENTATION_CLASSES,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    encode_png,
    generate_scene,
    render_mask,
    render_scene,
)

_VERSION = "shapes-v1"  # bump when generation changes, so cached fingerprints change too
TASKS = ("captions", "vqa", "grounding", "nlvr2")  # what `build_shapes` makes by default
# on request only (`tasks=("segmentation",)`), so default builds keep their splits and cost
OPTIONAL_TASKS = ("segmentation",)
ALL_TASKS = TASKS + OPTIONAL_TASKS
SPLITS = ("train", "validation", "test")
NLVR2_LABELS = ("False", "True")

_OBJECTS = [
    {
        "shape": datasets.Value("string"),
        "color": datasets.Value("string"),
        "size": datasets.Value("string"),
        "box": datasets.Sequence(datasets.Value("float32"), length=4),
    }
]
FEATURES = {
    "captions": datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "captions": datasets.Sequence(datasets.Value("string")),
            "negatives": datasets.Sequence(datasets.Value("string")),
            "negative_changes": [
                {
                    "kind": datasets.Value("string"),
                    "position": datasets.Value("int32"),
                    "original": datasets.Value("string"),
                    "replacement": datasets.Value("string"),
                }
            ],
            "objects": _OBJECTS,
        }
    ),
    "vqa": datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "question_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "answers": datasets.Sequence(datasets.Value("string")),
            "labels": datasets.Sequence(datasets.ClassLabel(names=list(SHAPES_ANSWERS))),
            "scores": datasets.Sequence(datasets.Value("float32")),
            "objects": _OBJECTS,
        }
    ),
    "grounding": datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "expression": datasets.Value("string"),
            "box": datasets.Sequence(datasets.Value("float32"), length=4),
            "target_index": datasets.Value("int32"),
            "image_width": datasets.Value("int32"),
            "image_height": datasets.Value("int32"),
            "objects": _OBJECTS,
        }
    ),
    # scene_parse_150's columns (image, annotation); the annotation's pixel values are SEGMENTATION_CLASSES ids
    "segmentation": datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "annotation": datasets.Image(),
            "objects": _OBJECTS,
        }
    ),
    "nlvr2": datasets.Features(
        {
            "image_left": datasets.Image(),
            "image_right": datasets.Image(),
            "identifier": datasets.Value("string"),
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(NLVR2_LABELS)),
            "objects_left": _OBJECTS,
            "objects_right": _OBJECTS,
        }
    ),
}
_ANSWER_ID = {answer: i for i, answer in enumerate(SHAPES_ANSWERS)}


def _objects(scene: Scene) -> list[dict]:
    return [{**obj.attributes(), "box": obj.box_cxcywh(scene.image_size)} for obj in scene.objects]


def _png(scene: Scene) -> dict:
    return {"bytes": encode_png(render_scene(scene)), "path": None}


def _captions_record(scene: Scene, rng: random.Random, captions_per_image: int) -> dict:
    captions = make_captions(scene, rng, captions_per_image)
    negatives = make_hard_negatives(scene, captions[0], rng)
    return {
        "captions": [" ".join(caption_words(*caption)) for caption in captions],
        "negatives": [text for text, _ in negatives],
        "negative_changes": [change for _, change in negatives],
    }


def _vqa_record(scene: Scene, rng: random.Random) -> dict:
    question_type, question, answer = make_question(scene, rng)
    return {
        "question": question,
        "question_type": question_type,
        "answer": answer,
        "answers": [answer],
        "labels": [_ANSWER_ID[answer]],
        "scores": [1.0],
    }


def _grounding_record(scene: Scene, rng: random.Random) -> dict:
    expression, index = make_referring_expression(scene, rng)
    return {
        "expression": expression,
        "box": scene.objects[index].box_cxcywh(scene.image_size),
        "target_index": index,
        "image_width": scene.image_size,
        "image_height": scene.image_size,
    }


def generate_records(
    split: str,
    index: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    tasks: Sequence[str] = TASKS,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
    captions_per_image: int = 3,
) -> dict[str, dict]:
    """The records of sample ``index`` of ``split``, one per task (images as PNG bytes dicts).

    The captions, VQA and grounding records share one scene (and image); the NLVR2 record pairs that
    scene (left) with a second one (right).
    """
    key = f"shapes/{seed}/{split}/{index}"
    scene = generate_scene(random.Random(key), image_size, min_objects=min_objects, max_objects=max_objects)
    image = _png(scene)
    shared = {"image": image, "image_id": index, "objects": _objects(scene)}
    out = {}
    for task in tasks:
        rng = random.Random(f"{key}/{task}")
        if task == "captions":
            out[task] = {**shared, **_captions_record(scene, rng, captions_per_image)}
        elif task == "vqa":
            out[task] = {**shared, "question_id": index, **_vqa_record(scene, rng)}
        elif task == "grounding":
            out[task] = {**shared, **_grounding_record(scene, rng)}
        elif task == "segmentation":
            mask = {"bytes": encode_png(render_mask(scene)), "path": None}
            out[task] = {**shared, "annotation": mask}
        else:
            right = generate_scene(rng, image_size, min_objects=min_objects, max_objects=max_objects)
            sentence, truth = make_statement(scene, right, rng)
            out[task] = {
                "image_left": image,
                "image_right": _png(right),
                "identifier": f"shapes-{split}-{index}",
                "sentence": sentence,
                "label": int(truth),
                "objects_left": shared["objects"],
                "objects_right": _objects(right),
            }
    return out


def _check_count(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative int, got {value!r}")


def build_shapes(
    num_train: int = 1000,
    num_val: int = 200,
    num_test: int = 200,
    image_size: int = 64,
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    *,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
    captions_per_image: int = 3,
) -> datasets.DatasetDict:
    """Generate the Shapes benchmark in memory.

    Returns a ``DatasetDict`` with splits ``f"{task}_{split}"`` for each task in ``tasks`` and each
    split in ("train", "validation", "test") (empty splits are kept, with their features).
    """
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        _check_count(name, value)
    if isinstance(tasks, str):
        tasks = (tasks,)
    unknown = [task for task in tasks if task not in ALL_TASKS]
    if unknown or not tasks:
        raise ValueError(f"`tasks` must be a non-empty subset of {ALL_TASKS}, got {tuple(tasks)!r}")
    if not isinstance(captions_per_image, int) or captions_per_image < 1:
        raise ValueError(f"`captions_per_image` must be an int >= 1, got {captions_per_image!r}")
    tasks = tuple(dict.fromkeys(tasks))
    out = {}
    for split, count in zip(SPLITS, (num_train, num_val, num_test)):
        columns: dict[str, dict[str, list]] = {task: {name: [] for name in FEATURES[task]} for task in tasks}
        for index in range(count):
            records = generate_records(
                split, index, seed=seed, image_size=image_size, tasks=tasks, min_objects=min_objects,
                max_objects=max_objects, captions_per_image=captions_per_image,
            )
            for task, record in records.items():
                for name, value in record.items():
                    columns[task][name].append(value)
        for task in tasks:
            params = (_VERSION, task, split, count, image_size, seed, min_objects, max_objects, captions_per_image)
            out[f"{task}_{split}"] = _to_dataset(columns[task], FEATURES[task], repr(params))
    return datasets.DatasetDict(out)


def _to_dataset(columns: dict[str, list], features: datasets.Features, key: str) -> datasets.Dataset:
    # The records are already in Arrow storage form, so skip Dataset.from_dict's per-value encoding
    # and its content hashing (together 6x the cost of building the table); the fingerprint is a hash
    # of the generation parameters instead, which identifies the content just as well.
    table = pa.Table.from_pydict(columns, schema=features.arrow_schema)
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    info = datasets.DatasetInfo(features=features)
    return datasets.Dataset(InMemoryTable(table), info=info, fingerprint=fingerprint)


def select_task(shapes: datasets.DatasetDict, task: str) -> datasets.DatasetDict:
    """The ``{"train", "validation", "test"}`` splits of one task from ``build_shapes``'s output."""
    found = {split: shapes[f"{task}_{split}"] for split in SPLITS if f"{task}_{split}" in shapes}
    if not found:
        raise ValueError(f"`task` {task!r} has no splits in this DatasetDict; it has {sorted(shapes)}")
    return datasets.DatasetDict(found)


__all__ = [
    "COLORS",
    "FEATURES",
    "MAX_OBJECTS",
    "ALL_TASKS",
    "NLVR2_LABELS",
    "QUESTION_TYPES",
    "OPTIONAL_TASKS",
    "RELATIONS",
    "SEGMENTATION_CLASSES",
    "SHAPES",
    "SHAPES_ANSWERS",
    "SIZES",
    "SPLITS",
    "TASKS",
    "Scene",
    "ShapeObject",
    "build_shapes",
    "encode_png",
    "generate_records",
    "generate_scene",
    "render_mask",
    "render_scene",
    "select_task",
]
