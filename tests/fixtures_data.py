"""Small on-disk data sets in the real formats (Karpathy JSON, VQAv2, RefCOCO, NLVR2, image folder),
built from scikit-image's photos and hand-written captions, for the reader tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")


def photo(name: str, width: int = 96) -> Image.Image:
    """A real photo from skimage.data, shrunk so the tests stay fast (camera is grayscale)."""
    from skimage import data

    array = getattr(data, name)()
    image = Image.fromarray(np.asarray(array))
    height = max(1, round(image.height * width / image.width))
    return image.resize((width, height))


def save_photo(path: Path, name: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = photo(name)
    image.save(path, format="PNG" if path.suffix == ".png" else "JPEG")
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in half: opens (the header is fine) but fails to decode."""
    save_photo(path, "coffee")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_text_as_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n")
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


KARPATHY_CAPTIONS = {
    "astronaut": ["An astronaut in an orange suit smiles.", "A woman in a space suit beside a flag."],
    "chelsea": ["A tabby cat looks to the side.", "A ginger cat with green eyes."],
    "coffee": ["A cup of coffee on a saucer with a spoon."],
    "rocket": ["A rocket on the launch pad.", "A space shuttle ready for launch.", "Smoke at the base of a rocket."],
}


def karpathy_dataset(root: Path) -> tuple[Path, Path]:
    """COCO-style Karpathy file: astronaut/chelsea in val2014 (test split), coffee in train2014
    (train), rocket in val2014 (restval). Returns (annotation file, image dir)."""
    image_dir = root / "coco"
    entries = []
    layout = [("astronaut", "val2014", "test"), ("chelsea", "val2014", "test"),
              ("coffee", "train2014", "train"), ("rocket", "val2014", "restval")]
    for imgid, (name, folder, split) in enumerate(layout):
        filename = f"COCO_{folder}_{imgid:012d}.jpg"
        save_photo(image_dir / folder / filename, name)
        entries.append({
            "filepath": folder, "filename": filename, "split": split, "imgid": imgid, "cocoid": 1000 + imgid,
            "sentences": [{"raw": s, "tokens": s.lower().strip(".").split()} for s in KARPATHY_CAPTIONS[name]],
        })
    return write_json(root / "dataset_coco.json", {"images": entries, "dataset": "coco"}), image_dir


# question_id -> (image name, question, 10 human answers, multiple_choice_answer)
VQA_QUESTIONS = {
    101: ("astronaut", "Is the person smiling?", ["yes"] * 10, "yes"),
    102: ("chelsea", "How many cats are there?", ["1"] * 9 + ["one"], "1"),
    103: ("coffee", "What color is the cup?",
          ["white", "white", "White.", "blue", "blue", "white and blue", "the white", "cream", "blue", "yes"], "white"),
    104: ("rocket", "Is it flying?", ["no"] * 6 + ["yes"] * 4, "no"),
}


def vqa_dataset(root: Path) -> tuple[Path, Path, Path]:
    """VQAv2 questions + annotations for four COCO-named photos. Returns (questions, annotations, image dir)."""
    image_dir = root / "train2014"
    questions, annotations = [], []
    for question_id, (name, question, answers, best) in VQA_QUESTIONS.items():
        image_id = question_id * 10
        save_photo(image_dir / f"COCO_train2014_{image_id:012d}.jpg", name)
        questions.append({"image_id": image_id, "question": question, "question_id": question_id})
        annotations.append({
            "question_id": question_id, "image_id": image_id, "question_type": "what", "answer_type": "other",
            "multiple_choice_answer": best,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
        })
    q = write_json(root / "questions.json", {"data_subtype": "train2014", "task_type": "Open-Ended", "questions": questions})
    a = write_json(root / "annotations.json", {"data_subtype": "train2014", "annotations": annotations})
    return q, a, image_dir


def refcoco_dataset(root: Path) -> tuple[Path, Path, Path, list[dict]]:
    """RefCOCO refs (JSON) + instances.json over two photos. Returns (refs, instances, image dir, refs list)."""
    image_dir = root / "train2014"
    images, annotations = [], []
    for image_id, name in ((1, "astronaut"), (2, "chelsea")):
        path = save_photo(image_dir / f"COCO_train2014_{image_id:012d}.jpg", name)
        with Image.open(path) as image:
            images.append({"id": image_id, "file_name": path.name, "width": image.width, "height": image.height})
    annotations.append({"id": 11, "image_id": 1, "bbox": [10, 20, 30, 40], "category_id": 1})
    annotations.append({"id": 21, "image_id": 2, "bbox": [0, 0, 96, 32.0], "category_id": 17})
    refs = [
        {"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [{"sent": "woman in the orange suit", "tokens": []}, {"sent": "the astronaut", "tokens": []}]},
        {"ref_id": 1, "ann_id": 21, "image_id": 2, "split": "testA", "category_id": 17,
         "sentences": [{"sent": "top of the cat picture", "tokens": []}]},
    ]
    instances = write_json(root / "instances.json", {"images": images, "annotations": annotations, "categories": []})
    return write_json(root / "refs.json", refs), instances, image_dir, refs


NLVR2_RECORDS = [
    {"identifier": "train-10171-0-0", "sentence": "One image shows a cat.", "label": "True", "directory": 46,
     "left_url": "http://example.invalid/l.jpg", "right_url": "http://example.invalid/r.jpg"},
    {"identifier": "train-10171-0-1", "sentence": "Both images show a rocket.", "label": "False", "directory": 46},
]
NLVR2_DEV_RECORDS = [{"identifier": "dev-850-0-0", "sentence": "There is a cup of coffee.", "label": "True"}]


def nlvr2_dataset(root: Path) -> tuple[Path, Path, Path]:
    """NLVR2 train (numbered sub-folder) and dev (flat) layouts. Returns (train.json, dev.json, image root)."""
    images = root / "images"
    save_photo(images / "train" / "46" / "train-10171-0-img0.png", "chelsea")
    save_photo(images / "train" / "46" / "train-10171-0-img1.png", "rocket")
    save_photo(images / "dev" / "dev-850-0-img0.png", "coffee")
    save_photo(images / "dev" / "dev-850-0-img1.png", "camera")
    train = write_jsonl(root / "train.json", NLVR2_RECORDS)
    return train, write_jsonl(root / "dev.json", NLVR2_DEV_RECORDS), images


FOLDER_CAPTIONS = {"astronaut.jpg": "an astronaut with a flag", "cat.png": "a cat", "rocket.jpg": "a rocket on its pad"}


def image_folder(root: Path) -> Path:
    folder = root / "folder"
    for file_name, name in zip(FOLDER_CAPTIONS, ("astronaut", "chelsea", "rocket")):
        save_photo(folder / file_name, name)
    write_jsonl(folder / "metadata.jsonl", [{"file_name": f, "text": t} for f, t in FOLDER_CAPTIONS.items()])
    return folder
