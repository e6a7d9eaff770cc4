"""RefCOCO / RefCOCO+ / RefCOCOg (referring expressions with boxes, and the detection proposals of the weakly
supervised protocol) and NLVR2 (image pairs with true/false sentences) readers."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import datasets

from .files import existing_path, field, filter_readable_images, image_file, load_json, load_jsonl, top_level

REFCOCO_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "image_id": datasets.Value("int64"),
        "ref_id": datasets.Value("int64"),
        "ann_id": datasets.Value("int64"),
        "split": datasets.Value("string"),
        "expression": datasets.Value("string"),
        "box": datasets.Sequence(datasets.Value("float32"), length=4),
        "image_width": datasets.Value("int32"),
        "image_height": datasets.Value("int32"),
    }
)
NLVR2_FEATURES = datasets.Features(
    {
        "image_left": datasets.Image(),
        "image_right": datasets.Image(),
        "identifier": datasets.Value("string"),
        "sentence": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["False", "True"]),
    }
)
PROPOSALS_FEATURE = datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4))
_NUMBER = (int, float)


class _RefsUnpickler(pickle.Unpickler):
    """The official refs(unc).p holds lists, dicts, str, int and float only, which pickle builds without naming any
    class or function. Any name it asks for is refused, so a crafted file cannot call code (`os.system`) while it
    is read."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it names {module}.{name}, which unpickling would call (a refs pickle holds "
                                     f"only lists, dicts, str and numbers)")


def _load_refs(refs_file) -> list:
    path = existing_path(refs_file, "refs file")
    if path.suffix in (".p", ".pkl", ".pickle"):
        try:
            with open(path, "rb") as f:
                refs = _RefsUnpickler(f).load()
        except Exception as error:  # unpickling raises many types for a damaged file
            raise ValueError(f"{path}: not a readable refs pickle ({error!r})") from None
    else:
        refs = load_json(path, "refs file")
    if not isinstance(refs, list):
        raise ValueError(f"{path}: refs must be a list of dicts, got {type(refs).__name__}")
    return refs


def _instances(instances_file) -> tuple[dict, dict]:
    data = load_json(instances_file, "instances file")
    images = {}
    for index, record in enumerate(top_level(data, "images", instances_file)):
        image_id = field(record, "id", instances_file, f"image {index}", int)
        where = f"image {index} (id={image_id})"
        images[image_id] = (
            field(record, "file_name", instances_file, where, str),
            field(record, "width", instances_file, where, int),
            field(record, "height", instances_file, where, int),
        )
    boxes = {}
    for index, record in enumerate(top_level(data, "annotations", instances_file)):
        ann_id = field(record, "id", instances_file, f"annotation {index}", int)
        bbox = field(record, "bbox", instances_file, f"annotation {index} (id={ann_id})", list)
        if len(bbox) != 4 or not all(isinstance(v, _NUMBER) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"{instances_file}: annotation {index} (id={ann_id}) field 'bbox' must be [x, y, w, h] "
                             f"with w, h >= 0, got {bbox!r}")
        boxes[ann_id] = bbox
    return images, boxes


def read_detections(detections_file: str | os.PathLike) -> dict[int, list[list[float]]]:
    """The detection proposals of the weakly supervised grounding protocol (ALBEF's ``dets.json``, the COCO
    detections of each RefCOCO+ image): a JSON object {image id: [[x, y, w, h, ...], ...]} in pixels; numbers after
    the first four (a score, a class) are dropped. -> {image id (int): [[x, y, w, h], ...]}."""
    data = load_json(detections_file, "detections file")
    if not isinstance(data, dict):
        raise ValueError(f"{detections_file}: detections must be a JSON object {{image id: [[x, y, w, h], ...]}}, "
                         f"got {type(data).__name__}")
    out = {}
    for key, boxes in data.items():
        try:
            image_id = int(key)
        except ValueError:
            raise ValueError(f"{detections_file}: key {key!r} is no image id (an integer)") from None
        if not isinstance(boxes, list):
            raise ValueError(f"{detections_file}: image {key} must map to a list of boxes, got {boxes!r:.80}")
        for j, box in enumerate(boxes):
            if (not isinstance(box, list) or len(box) < 4 or not all(isinstance(v, _NUMBER) for v in box[:4])
                    or box[2] < 0 or box[3] < 0):
                raise ValueError(f"{detections_file}: image {key} box {j} must be [x, y, w, h, ...] with w, h >= 0, "
                                 f"got {box!r:.80}")
        out[image_id] = [[float(v) for v in box[:4]] for box in boxes]
    return out


def _normalised(box, width: int, height: int) -> list[float]:
    x, y, w, h = box
    return [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]


def read_refcoco(
    refs_file: str | os.PathLike,
    instances_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    split: str | tuple[str, ...] | None = None,
    detections_file: str | os.PathLike | None = None,
    check_images: bool = True,
) -> datasets.Dataset:
    """Read RefCOCO/+/g: ``refs`` (a JSON list or the official ``refs(unc).p`` pickle of dicts with
    ``ref_id``, ``ann_id``, ``image_id``, ``split``, ``sentences: [{"sent"}]``) and COCO
    ``instances.json`` (``images`` with id/file_name/width/height, ``annotations`` with id/bbox).

    One row per sentence; ``box`` is the referred annotation's box as normalised (cx, cy, w, h) in
    [0, 1] (pixel ``[x, y, w, h]`` divided by the image size). ``split`` keeps one split ("train",
    "val", "testA", "testB", "test") or those of a tuple (RefCOCO+'s test: ("testA", "testB")).
    ``detections_file`` (``read_detections``) adds ``proposals``: the image's detections, normalised (cx, cy,
    w, h) [K, 4], empty for an image it does not list.
    """
    refs = _load_refs(refs_file)
    images, boxes = _instances(instances_file)
    image_dir = existing_path(image_dir, "image directory")
    detections = read_detections(detections_file) if detections_file is not None else None
    wanted = {split} if isinstance(split, str) else set(split) if split is not None else None
    columns = {name: [] for name in REFCOCO_FEATURES}
    proposals = []
    seen_splits = set()
    for index, ref in enumerate(refs):
        ref_id = field(ref, "ref_id", refs_file, f"ref {index}", int)
        where = f"ref {index} (ref_id={ref_id})"
        ann_id = field(ref, "ann_id", refs_file, where, int)
        image_id = field(ref, "image_id", refs_file, where, int)
        ref_split = field(ref, "split", refs_file, where, str)
        sentences = [field(s, "sent", refs_file, f"{where} sentence {j}", str)
                     for j, s in enumerate(field(ref, "sentences", refs_file, where, list))]
        seen_splits.add(ref_split)
        if wanted is not None and ref_split not in wanted:
            continue
        if ann_id not in boxes:
            raise ValueError(f"{instances_file}: no annotation with id={ann_id}, named by {refs_file} {where}")
        if image_id not in images:
            raise ValueError(f"{instances_file}: no image with id={image_id}, named by {refs_file} {where}")
        file_name, width, height = images[image_id]
        path = image_file(image_dir, file_name, instances_file, f"image id={image_id}")
        box = _normalised(boxes[ann_id], width, height)
        for sentence in sentences:
            if detections is not None:
                proposals.append([_normalised(d, width, height) for d in detections.get(image_id, [])])
            for name, value in (("image", path), ("image_id", image_id), ("ref_id", ref_id), ("ann_id", ann_id),
                                ("split", ref_split), ("expression", sentence), ("box", box),
                                ("image_width", width), ("image_height", height)):
                columns[name].append(value)
    if wanted is not None and not columns["image"]:
        raise ValueError(f"{refs_file}: `split` {split!r} matches no ref; its splits are {sorted(seen_splits)}")
    features = REFCOCO_FEATURES
    if detections is not None:
        columns["proposals"] = proposals
        features = datasets.Features({**REFCOCO_FEATURES, "proposals": PROPOSALS_FEATURE})
    ds = datasets.Dataset.from_dict(columns, features=features)
    return filter_readable_images(ds) if check_images else ds


def _label(record, source, where: str) -> int:
    value = field(record, "label", source, where, (str, bool))
    text = str(value).lower()
    if text not in ("true", "false"):
        raise ValueError(f"{source}: {where} field 'label' must be \"True\" or \"False\", got {value!r}")
    return int(text == "true")


def read_nlvr2(
    jsonl_file: str | os.PathLike, image_dir: str | os.PathLike, *, check_images: bool = True
) -> datasets.Dataset:
    """Read an NLVR2 split file (``train.json``, ``dev.json``, ``test1.json``: JSON lines with
    ``identifier``, ``sentence``, ``label``).

    Images follow the NLVR2 layout: identifier ``dev-850-0-0`` names the pair ``dev-850-0-img0.png``
    (left) and ``dev-850-0-img1.png`` (right) in ``image_dir``, or in ``image_dir/<directory>/`` when
    the record has a ``directory`` field (the train split's numbered sub-folders). The URLs
    (``left_url``, ``right_url``) are not used.
    """
    records = load_jsonl(jsonl_file)
    image_dir = existing_path(image_dir, "image directory")
    columns = {name: [] for name in NLVR2_FEATURES}
    for line, record in enumerate(records, start=1):
        identifier = field(record, "identifier", jsonl_file, f"line {line}", str)
        where = f"line {line} (identifier={identifier!r})"
        if identifier.count("-") < 1:
            raise ValueError(f"{jsonl_file}: {where} field 'identifier' must look like 'dev-850-0-0'")
        sentence = field(record, "sentence", jsonl_file, where, str)
        label = _label(record, jsonl_file, where)
        folder = Path(str(record["directory"])) if "directory" in record else Path()
        stem = identifier.rsplit("-", 1)[0]
        columns["image_left"].append(image_file(image_dir, str(folder / f"{stem}-img0.png"), jsonl_file, where))
        columns["image_right"].append(image_file(image_dir, str(folder / f"{stem}-img1.png"), jsonl_file, where))
        columns["identifier"].append(identifier)
        columns["sentence"].append(sentence)
        columns["label"].append(label)
    ds = datasets.Dataset.from_dict(columns, features=NLVR2_FEATURES)
    return filter_readable_images(ds) if check_images else ds
