"""VQAv2 reader: questions + annotations JSON -> one row per question with soft scores over an
answer vocabulary (the VQA accuracy of each answer against the 10 human answers)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import datasets

from ..metrics.functional import normalize_vqa_answer, vqa_soft_scores
from .files import existing_path, field, filter_readable_images, image_file, load_json, top_level

DEFAULT_IMAGE_TEMPLATE = "COCO_{data_subtype}_{image_id:012d}.jpg"


def vqa_features(answer_vocab: Sequence[str]) -> datasets.Features:
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "question_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "answer_type": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "answers": datasets.Sequence(datasets.Value("string")),
            "labels": datasets.Sequence(datasets.ClassLabel(names=list(answer_vocab))),
            "scores": datasets.Sequence(datasets.Value("float32")),
        }
    )


def _annotations(annotations_file) -> list[dict]:
    data = load_json(annotations_file)
    records = top_level(data, "annotations", annotations_file)
    for index, record in enumerate(records):
        where = f"annotation {index}"
        question_id = field(record, "question_id", annotations_file, where, int)
        where = f"annotation {index} (question_id={question_id})"
        field(record, "multiple_choice_answer", annotations_file, where, str)
        for j, answer in enumerate(field(record, "answers", annotations_file, where, list)):
            field(answer, "answer", annotations_file, f"{where} answer {j}", str)
    return records


def build_vqa_answer_vocab(
    annotations_files: str | os.PathLike | Sequence[str | os.PathLike], min_count: int = 9
) -> list[str]:
    """Answers (normalised ``multiple_choice_answer``) given for at least ``min_count`` questions,
    most frequent first, ties alphabetical. VQAv2 train+val with ``min_count=9`` gives the usual 3129."""
    files = [annotations_files] if isinstance(annotations_files, str | os.PathLike) else list(annotations_files)
    counts = Counter()
    for path in files:
        counts.update(normalize_vqa_answer(r["multiple_choice_answer"]) for r in _annotations(path))
    return [a for a, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if n >= min_count and a]


def read_vqav2(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike | None,
    image_dir: str | os.PathLike,
    *,
    answer_vocab: Sequence[str] | None = None,
    min_answer_count: int = 9,
    image_template: str = DEFAULT_IMAGE_TEMPLATE,
    check_images: bool = True,
) -> datasets.Dataset:
    """Read VQAv2 (``v2_OpenEnded_mscoco_*_questions.json`` + ``v2_mscoco_*_annotations.json``).

    ``labels``/``scores`` hold the vocabulary answers with a non-zero soft score (see
    ``vl_models.metrics.functional.vqa_answer_score``); human answers outside the vocabulary are
    dropped from them but kept in ``answers``. Without ``answer_vocab`` the vocabulary is built from
    this annotation file (``build_vqa_answer_vocab(annotations_file, min_answer_count)``); it is stored
    in the features: ``ds.features["labels"].feature.names``. ``annotations_file=None`` reads a test
    split (no answers) and then needs ``answer_vocab``. The image of a question is
    ``image_dir / image_template.format(image_id=..., data_subtype=...)``, ``data_subtype`` coming from
    the questions file (e.g. "train2014").
    """
    data = load_json(questions_file)
    questions = top_level(data, "questions", questions_file)
    image_dir = existing_path(image_dir, "image directory")
    if annotations_file is None and answer_vocab is None:
        raise ValueError("`answer_vocab` is required when `annotations_file` is None (nothing to build it from)")
    by_question = {}
    if annotations_file is not None:
        by_question = {r["question_id"]: r for r in _annotations(annotations_file)}
        if answer_vocab is None:
            answer_vocab = build_vqa_answer_vocab(annotations_file, min_answer_count)
    answer_vocab = list(answer_vocab)
    if not answer_vocab:
        raise ValueError(f"`answer_vocab` is empty (no answer reaches min_answer_count={min_answer_count})")
    answer_id = {a: i for i, a in enumerate(answer_vocab)}
    features = vqa_features(answer_vocab)
    columns = {name: [] for name in features}
    for index, record in enumerate(questions):
        question_id = field(record, "question_id", questions_file, f"question {index}", int)
        where = f"question {index} (question_id={question_id})"
        image_id = field(record, "image_id", questions_file, where, int)
        question = field(record, "question", questions_file, where, str)
        annotation = by_question.get(question_id)
        if annotations_file is not None and annotation is None:
            raise ValueError(f"{annotations_file}: no annotation for question_id={question_id} ({questions_file} {where})")
        answers = [a["answer"] for a in annotation["answers"]] if annotation else []
        scored = [(answer_id[a], s) for a, s in vqa_soft_scores(answers).items() if a in answer_id and s > 0]
        name = _image_name(image_template, image_id, data, questions_file)
        columns["image"].append(image_file(image_dir, name, questions_file, where))
        columns["image_id"].append(image_id)
        columns["question_id"].append(question_id)
        columns["question"].append(question)
        columns["question_type"].append(annotation.get("question_type", "") if annotation else "")
        columns["answer_type"].append(annotation.get("answer_type", "") if annotation else "")
        columns["answer"].append(annotation["multiple_choice_answer"] if annotation else "")
        columns["answers"].append(answers)
        columns["labels"].append([label for label, _ in scored])
        columns["scores"].append([score for _, score in scored])
    ds = datasets.Dataset.from_dict(columns, features=features)
    return filter_readable_images(ds) if check_images else ds


def _image_name(template: str, image_id: int, data: dict, source: Path | str) -> str:
    if "{data_subtype" in template and not data.get("data_subtype"):
        raise ValueError(
            f"{source}: missing top-level field 'data_subtype' that `image_template` {template!r} needs; "
            "pass an image_template without it, e.g. '{image_id:012d}.jpg'"
        )
    try:
        return template.format(image_id=image_id, data_subtype=data.get("data_subtype"))
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"`image_template` {template!r} cannot be filled for image_id={image_id}: {error!r}") from None
