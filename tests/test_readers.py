"""Readers on small fixture files in the real formats: fields and values, error messages, and the
skipping (with a logged count) of images that do not decode."""

from __future__ import annotations

import json
import logging
import pickle

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures_data import (
    FOLDER_CAPTIONS,
    KARPATHY_CAPTIONS,
    image_folder,
    karpathy_dataset,
    nlvr2_dataset,
    refcoco_dataset,
    save_photo,
    vqa_dataset,
    write_json,
    write_jsonl,
    write_text_as_jpeg,
    write_truncated_jpeg,
)
from vl_models.data import (
    build_shapes,
    build_vqa_answer_vocab,
    filter_readable_images,
    flatten_captions,
    from_hf_dataset,
    read_image_folder,
    read_karpathy_captions,
    read_nlvr2,
    read_parquet,
    read_refcoco,
    read_vqav2,
)


def _paths(ds, column="image"):
    return [row[column]["path"] for row in ds.cast_column(column, datasets.Image(decode=False))]


# ---- Karpathy captions -----------------------------------------------------------------------

def test_karpathy_fields_and_lazy_images(tmp_path):
    annotation, image_dir = karpathy_dataset(tmp_path)
    ds = read_karpathy_captions(annotation, image_dir)
    assert ds.column_names == ["image", "image_id", "file_name", "split", "captions"]
    assert ds["image_id"] == [0, 1, 2, 3]
    assert ds["split"] == ["test", "test", "train", "restval"]
    assert ds["captions"] == [KARPATHY_CAPTIONS[n] for n in ("astronaut", "chelsea", "coffee", "rocket")]
    # stored as paths (decoded only when read), under image_dir/filepath/filename
    assert _paths(ds)[2] == str(image_dir / "train2014" / "COCO_train2014_000000000002.jpg")
    image = ds[0]["image"]
    assert image.size == (96, 96) and image.mode == "RGB"


def test_karpathy_flickr_layout_without_filepath(tmp_path):
    image_dir = tmp_path / "flickr30k-images"
    save_photo(image_dir / "1000092795.jpg", "chelsea")
    entry = {"filename": "1000092795.jpg", "split": "train", "imgid": 0, "sentences": [{"raw": "A cat."}]}
    ds = read_karpathy_captions(write_json(tmp_path / "dataset_flickr30k.json", {"images": [entry]}), image_dir)
    assert _paths(ds) == [str(image_dir / "1000092795.jpg")] and ds["captions"] == [["A cat."]]


def test_karpathy_split_selection(tmp_path):
    annotation, image_dir = karpathy_dataset(tmp_path)
    assert read_karpathy_captions(annotation, image_dir, split="test")["image_id"] == [0, 1]
    assert read_karpathy_captions(annotation, image_dir, split=("train", "restval"))["image_id"] == [2, 3]
    with pytest.raises(ValueError, match=r"dataset_coco.json.*'tset'.*\['restval', 'test', 'train'\]"):
        read_karpathy_captions(annotation, image_dir, split="tset")


def test_karpathy_errors_name_file_record_and_field(tmp_path):
    annotation, image_dir = karpathy_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_karpathy_captions(tmp_path / "missing.json", image_dir)
    with pytest.raises(FileNotFoundError, match="image directory.*nowhere"):
        read_karpathy_captions(annotation, tmp_path / "nowhere")
    data = json.loads(annotation.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(annotation.read_text()[:-20])
    with pytest.raises(ValueError, match=r"bad.json: malformed JSON at line 1"):
        read_karpathy_captions(bad, image_dir)
    del data["images"][1]["sentences"]
    write_json(bad, data)
    with pytest.raises(ValueError, match=r"bad.json: record 1 \(imgid=1\) is missing field 'sentences'"):
        read_karpathy_captions(bad, image_dir)
    data = json.loads(annotation.read_text())
    data["images"][3]["sentences"][1] = {"tokens": []}
    write_json(bad, data)
    with pytest.raises(ValueError, match=r"record 3 \(imgid=3\) sentence 1 is missing field 'raw'"):
        read_karpathy_captions(bad, image_dir)
    write_json(bad, {"annotations": []})
    with pytest.raises(ValueError, match="bad.json: missing top-level field 'images'"):
        read_karpathy_captions(bad, image_dir)
    (image_dir / "val2014" / "COCO_val2014_000000000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"record 1 \(imgid=1\) names image .*COCO_val2014_000000000001.jpg"):
        read_karpathy_captions(annotation, image_dir)


def test_karpathy_refuses_empty_sentences_and_images_outside_the_image_directory(tmp_path):
    """An empty `sentences` list used to pass the reader and crash the collator's caption draw; a `filepath` of
    `../outside` read an image outside --image_dir."""
    annotation, image_dir = karpathy_dataset(tmp_path)
    save_photo(tmp_path / "outside" / "secret.jpg", "coffee")  # exists, beside the image directory
    bad = tmp_path / "bad.json"
    data = json.loads(annotation.read_text())
    data["images"][2]["sentences"] = []
    write_json(bad, data)
    with pytest.raises(ValueError, match=r"bad.json: record 2 \(imgid=2\) has an empty `sentences` list"):
        read_karpathy_captions(bad, image_dir)
    for filepath, filename in (("../outside", "secret.jpg"), ("", str(tmp_path / "outside" / "secret.jpg")),
                               ("train2014/../../outside", "secret.jpg")):
        data = json.loads(annotation.read_text())
        data["images"][0].update(filepath=filepath, filename=filename)
        write_json(bad, data)
        with pytest.raises(ValueError, match=r"record 0 \(imgid=0\) names image .*secret.jpg'?, which is outside "
                                             r"the image directory"):
            read_karpathy_captions(bad, image_dir)
    data = json.loads(annotation.read_text())
    data["images"][2]["filepath"] = "val2014/../train2014"  # a `..` that stays inside is fine
    write_json(bad, data)
    assert read_karpathy_captions(bad, image_dir)["image_id"] == [0, 1, 2, 3]


def test_corrupt_images_are_skipped_and_logged(tmp_path, caplog):
    annotation, image_dir = karpathy_dataset(tmp_path)
    write_truncated_jpeg(image_dir / "val2014" / "COCO_val2014_000000000001.jpg")
    write_text_as_jpeg(image_dir / "val2014" / "COCO_val2014_000000000003.jpg")
    with caplog.at_level(logging.WARNING, logger="vl_models.data.files"):
        ds = read_karpathy_captions(annotation, image_dir)
    assert ds["image_id"] == [0, 2]
    [record] = [r for r in caplog.records if r.name == "vl_models.data.files"]
    assert "skipped 2 of 4 rows" in record.getMessage()
    assert "COCO_val2014_000000000001.jpg" in record.getMessage()
    assert "COCO_val2014_000000000003.jpg" in record.getMessage()
    # check_images=False keeps them (they fail later, when decoded)
    assert len(read_karpathy_captions(annotation, image_dir, check_images=False)) == 4


def test_flatten_captions(tmp_path):
    annotation, image_dir = karpathy_dataset(tmp_path)
    flat = flatten_captions(read_karpathy_captions(annotation, image_dir, split=("test", "train")))
    assert flat["image_id"] == [0, 0, 1, 1, 2]
    assert flat["caption_index"] == [0, 1, 0, 1, 0]
    assert flat["caption"] == KARPATHY_CAPTIONS["astronaut"] + KARPATHY_CAPTIONS["chelsea"] + KARPATHY_CAPTIONS["coffee"]
    assert flat[4]["image"].size == (96, 64)
    with pytest.raises(ValueError, match="'captions' column"):
        flatten_captions(flat)


# ---- VQAv2 -----------------------------------------------------------------------------------

def test_vqav2_soft_scores(tmp_path):
    questions, annotations, image_dir = vqa_dataset(tmp_path)
    vocab = ["yes", "no", "1", "white", "blue", "cream"]
    ds = read_vqav2(questions, annotations, image_dir, answer_vocab=vocab)
    assert ds.features["labels"].feature.names == vocab
    assert ds["question_id"] == [101, 102, 103, 104]
    assert ds["image_id"] == [1010, 1020, 1030, 1040]
    assert ds["answer"] == ["yes", "1", "white", "no"]
    assert len(ds[2]["answers"]) == 10
    # hand-computed: 4 of 10 humans -> 1.0, 3 -> 0.9, 1 -> 0.3 ("white and blue" is not in the vocabulary)
    expected = [
        {"yes": 1.0},
        {"1": 1.0},  # "one" normalises to "1": 10 humans
        {"white": 1.0, "blue": 0.9, "cream": 0.3, "yes": 0.3},  # "White." and "the white" are "white"
        {"no": 1.0, "yes": 1.0},
    ]
    for row, want in zip(ds, expected):
        got = {vocab[label]: score for label, score in zip(row["labels"], row["scores"])}
        assert got == pytest.approx(want)
    assert ds[0]["image"].size == (96, 96)


def test_vqav2_vocab_building_and_test_split(tmp_path):
    questions, annotations, image_dir = vqa_dataset(tmp_path)
    assert build_vqa_answer_vocab(annotations, min_count=1) == ["1", "no", "white", "yes"]
    ds = read_vqav2(questions, annotations, image_dir, min_answer_count=1)
    assert ds.features["labels"].feature.names == ["1", "no", "white", "yes"]
    assert ds[2]["labels"] == [2, 3] and ds[2]["scores"] == pytest.approx([1.0, 0.3])
    with pytest.raises(ValueError, match="no answer reaches min_answer_count=9"):
        read_vqav2(questions, annotations, image_dir)
    with pytest.raises(ValueError, match="`answer_vocab` is required"):
        read_vqav2(questions, None, image_dir)
    test = read_vqav2(questions, None, image_dir, answer_vocab=["yes", "no"])
    assert test["labels"] == [[]] * 4 and test["answers"] == [[]] * 4


def test_vqav2_errors(tmp_path):
    questions, annotations, image_dir = vqa_dataset(tmp_path)
    data = json.loads(annotations.read_text())
    del data["annotations"][2]["answers"]
    bad = write_json(tmp_path / "bad_annotations.json", data)
    with pytest.raises(ValueError, match=r"bad_annotations.json: annotation 2 \(question_id=103\) is missing field 'answers'"):
        read_vqav2(questions, bad, image_dir, answer_vocab=["yes"])
    data = json.loads(annotations.read_text())
    data["annotations"].pop(1)
    write_json(bad, data)
    with pytest.raises(ValueError, match=r"bad_annotations.json: no annotation for question_id=102"):
        read_vqav2(questions, bad, image_dir, answer_vocab=["yes"])
    data = json.loads(questions.read_text())
    data["questions"][3]["image_id"] = "1040"
    bad_q = write_json(tmp_path / "bad_questions.json", data)
    with pytest.raises(ValueError, match=r"bad_questions.json: question 3 \(question_id=104\) field 'image_id' must be int"):
        read_vqav2(bad_q, annotations, image_dir, answer_vocab=["yes"])
    del data["data_subtype"]
    data["questions"][3]["image_id"] = 1040
    write_json(bad_q, data)
    with pytest.raises(ValueError, match=r"bad_questions.json: missing top-level field 'data_subtype'"):
        read_vqav2(bad_q, annotations, image_dir, answer_vocab=["yes"])
    ds = read_vqav2(bad_q, annotations, image_dir, answer_vocab=["yes"], image_template="COCO_train2014_{image_id:012d}.jpg")
    assert len(ds) == 4


# ---- RefCOCO ---------------------------------------------------------------------------------

def test_refcoco_boxes_are_normalised_cxcywh(tmp_path):
    refs_file, instances, image_dir, refs = refcoco_dataset(tmp_path)
    ds = read_refcoco(refs_file, instances, image_dir)
    assert ds["expression"] == ["woman in the orange suit", "the astronaut", "top of the cat picture"]
    assert ds["ref_id"] == [0, 0, 1] and ds["ann_id"] == [11, 11, 21] and ds["split"] == ["train", "train", "testA"]
    assert (ds[0]["image_width"], ds[0]["image_height"]) == (96, 96)
    # bbox [10, 20, 30, 40] on 96x96 -> centre (25, 40), size (30, 40) over 96
    assert ds[0]["box"] == pytest.approx([25 / 96, 40 / 96, 30 / 96, 40 / 96])
    # bbox [0, 0, 96, 32] on the 96x64 cat picture: the top half
    assert ds[2]["box"] == pytest.approx([0.5, 0.25, 1.0, 0.5])
    assert ds[2]["image"].size == (96, 64)
    assert read_refcoco(refs_file, instances, image_dir, split="testA")["ref_id"] == [1]
    # the official refs(unc).p pickle gives the same rows
    pickled = tmp_path / "refs(unc).p"
    pickled.write_bytes(pickle.dumps(refs))
    assert read_refcoco(pickled, instances, image_dir).to_dict() == ds.to_dict()


def test_refcoco_errors(tmp_path):
    refs_file, instances, image_dir, refs = refcoco_dataset(tmp_path)
    del refs[1]["sentences"]
    bad = write_json(tmp_path / "bad_refs.json", refs)
    with pytest.raises(ValueError, match=r"bad_refs.json: ref 1 \(ref_id=1\) is missing field 'sentences'"):
        read_refcoco(bad, instances, image_dir)
    refs[1]["sentences"] = [{"sent": "x"}]
    refs[1]["ann_id"] = 99
    write_json(bad, refs)
    with pytest.raises(ValueError, match=r"instances.json: no annotation with id=99, named by .*bad_refs.json ref 1"):
        read_refcoco(bad, instances, image_dir)
    data = json.loads(instances.read_text())
    data["annotations"][0]["bbox"] = [1, 2, 3]
    bad_instances = write_json(tmp_path / "bad_instances.json", data)
    with pytest.raises(ValueError, match=r"bad_instances.json: annotation 0 \(id=11\) field 'bbox' must be \[x, y, w, h\]"):
        read_refcoco(refs_file, bad_instances, image_dir)
    (tmp_path / "broken.p").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="broken.p: not a readable refs pickle"):
        read_refcoco(tmp_path / "broken.p", instances, image_dir)
    with pytest.raises(FileNotFoundError, match="instances file does not exist"):
        read_refcoco(refs_file, tmp_path / "nope.json", image_dir)


# ---- NLVR2 -----------------------------------------------------------------------------------

def test_nlvr2_layout(tmp_path):
    train, dev, images = nlvr2_dataset(tmp_path)
    ds = read_nlvr2(train, images / "train")
    assert ds.column_names == ["image_left", "image_right", "identifier", "sentence", "label"]
    assert ds["label"] == [1, 0] and ds.features["label"].names == ["False", "True"]
    assert _paths(ds, "image_left")[0] == str(images / "train" / "46" / "train-10171-0-img0.png")
    assert _paths(ds, "image_right")[1] == str(images / "train" / "46" / "train-10171-0-img1.png")
    assert ds[0]["image_left"].size == (96, 64)  # chelsea
    dev_ds = read_nlvr2(dev, images / "dev")
    assert dev_ds["identifier"] == ["dev-850-0-0"]
    assert dev_ds[0]["image_right"].mode == "L"  # camera is grayscale: decoded as stored


def test_nlvr2_errors_and_corrupt_pair(tmp_path, caplog):
    train, dev, images = nlvr2_dataset(tmp_path)
    record = {"identifier": "dev-850-0-0", "sentence": "s"}
    bad = write_jsonl(tmp_path / "bad.json", [{**record, "label": "maybe"}])
    with pytest.raises(ValueError, match=r"bad.json: line 1 \(identifier='dev-850-0-0'\) field 'label' must be \"True\" or \"False\""):
        read_nlvr2(bad, images / "dev")
    write_jsonl(bad, [{"identifier": "dev-850-0-0", "label": "True"}])
    with pytest.raises(ValueError, match=r"bad.json: line 1 \(identifier='dev-850-0-0'\) is missing field 'sentence'"):
        read_nlvr2(bad, images / "dev")
    bad.write_text('{"identifier": "dev-850-0-0", "sentence": "s", "label": "True"}\n{"identifier": \n')
    with pytest.raises(ValueError, match="bad.json: malformed JSON on line 2"):
        read_nlvr2(bad, images / "dev")
    write_jsonl(bad, [{**record, "label": "True", "identifier": "dev-851-0-0"}])
    with pytest.raises(FileNotFoundError, match="dev-851-0-img0.png"):
        read_nlvr2(bad, images / "dev")
    write_truncated_jpeg(images / "dev" / "dev-850-0-img1.png")
    with caplog.at_level(logging.WARNING, logger="vl_models.data.files"):
        assert len(read_nlvr2(dev, images / "dev")) == 0
    assert "dev-850-0-img1.png" in caplog.text and "skipped 1 of 1 rows" in caplog.text


# ---- image folder, parquet, any datasets.Dataset --------------------------------------------

def test_image_folder(tmp_path, caplog):
    folder = image_folder(tmp_path)
    ds = read_image_folder(folder, cache_dir=tmp_path / "cache")
    by_caption = {row["captions"][0]: row["image"].size for row in ds}
    assert sorted(by_caption) == sorted(FOLDER_CAPTIONS.values())
    assert by_caption["a cat"] == (96, 64)
    assert sorted(ds["image_id"]) == [0, 1, 2]
    # corrupt file: skipped with a warning
    write_text_as_jpeg(folder / "rocket.jpg")
    with caplog.at_level(logging.WARNING, logger="vl_models.data.files"):
        ds = read_image_folder(folder, cache_dir=tmp_path / "cache2")
    assert sorted(c[0] for c in ds["captions"]) == ["a cat", "an astronaut with a flag"]
    assert "rocket.jpg" in caplog.text and "skipped 1 of 3 rows" in caplog.text


def test_image_folder_errors(tmp_path):
    folder = image_folder(tmp_path)
    write_jsonl(folder / "metadata.jsonl", [{"file_name": "cat.png", "text": "a cat"}, {"file_name": "rocket.jpg"}])
    with pytest.raises(ValueError, match=r"metadata.jsonl: line 2 \(file_name='rocket.jpg'\) is missing field 'text'"):
        read_image_folder(folder, cache_dir=tmp_path / "cache")
    write_jsonl(folder / "metadata.jsonl", [{"file_name": "dog.png", "text": "a dog"}])
    with pytest.raises(FileNotFoundError, match="metadata.jsonl: line 1 names image 'dog.png'"):
        read_image_folder(folder, cache_dir=tmp_path / "cache")
    (folder / "metadata.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="metadata file"):
        read_image_folder(folder, cache_dir=tmp_path / "cache")


def test_parquet_with_image_feature_and_with_paths(tmp_path):
    shapes = build_shapes(num_train=3, num_val=0, num_test=0, tasks=("captions",))["captions_train"]
    shapes.to_parquet(str(tmp_path / "shapes.parquet"))
    ds = read_parquet(tmp_path / "shapes.parquet", text_column="captions", cache_dir=tmp_path / "cache")
    assert ds["captions"] == shapes["captions"] and ds["image_id"] == [0, 1, 2]
    assert ds[1]["image"].tobytes() == shapes[1]["image"].tobytes()
    # a plain table: image file paths and one caption string per row
    paths = [str(save_photo(tmp_path / f"{n}.jpg", n)) for n in ("coffee", "rocket")]
    pq.write_table(pa.table({"path": paths, "caption": ["coffee", "a rocket"], "id": [7, 8]}), tmp_path / "plain.parquet")
    ds = read_parquet([tmp_path / "plain.parquet"], image_column="path", text_column="caption", cache_dir=tmp_path / "c2")
    assert ds["captions"] == [["coffee"], ["a rocket"]] and ds["id"] == [7, 8]
    assert isinstance(ds.features["image"], datasets.Image) and ds[1]["image"].size == (96, 64)


def test_parquet_errors(tmp_path):
    pq.write_table(pa.table({"path": ["x.jpg"], "caption": ["c"]}), tmp_path / "plain.parquet")
    with pytest.raises(ValueError, match=r"plain.parquet: `image_column` 'image' is not a column; the columns are \['path', 'caption'\]"):
        read_parquet(tmp_path / "plain.parquet", cache_dir=tmp_path / "cache")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="junk.parquet: not a readable parquet file"):
        read_parquet(tmp_path / "junk.parquet", cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="parquet file does not exist: .*gone.parquet"):
        read_parquet(tmp_path / "gone.parquet")


def test_from_hf_dataset_validates_columns(tmp_path, caplog):
    good = save_photo(tmp_path / "astronaut.jpg", "astronaut")
    broken = write_truncated_jpeg(tmp_path / "broken.jpg")
    ds = datasets.Dataset.from_dict({"img": [str(good), str(broken)], "txt": [["a", "b"], ["c"]], "n": [1, 2]})
    out = from_hf_dataset(ds, image_column="img", text_column="txt")
    assert out.column_names == ["image", "n", "captions", "image_id"]
    assert out["captions"] == [["a", "b"], ["c"]] and out["image_id"] == [0, 1]
    with caplog.at_level(logging.WARNING, logger="vl_models.data.files"):
        assert from_hf_dataset(ds, "img", "txt", check_images=True)["n"] == [1]
    assert "broken.jpg" in caplog.text
    with pytest.raises(ValueError, match=r"`text_column` 'text' is not a column; the columns are \['img', 'txt', 'n'\]"):
        from_hf_dataset(ds, "img")
    with pytest.raises(ValueError, match="`image_column` 'n' must hold images, file paths or image bytes"):
        from_hf_dataset(ds, "n", "txt")
    with pytest.raises(ValueError, match="got a DatasetDict"):
        from_hf_dataset(datasets.DatasetDict({"train": ds}), "img", "txt")
    empty = datasets.Dataset.from_dict({"img": [str(good)] * 2, "txt": ["fine", " "]})
    with pytest.raises(ValueError, match="row 1 field 'txt' must be a non-empty string"):
        from_hf_dataset(empty, "img", "txt")


def test_filter_readable_images_on_embedded_bytes(caplog):
    shapes = build_shapes(num_train=3, num_val=0, num_test=0, tasks=("captions",))["captions_train"]
    raw = shapes.cast_column("image", datasets.Image(decode=False))
    rows = raw.to_list()
    rows[1]["image"] = {"bytes": rows[1]["image"]["bytes"][:40], "path": None}
    damaged = datasets.Dataset.from_list(rows, features=raw.features).cast_column("image", datasets.Image())
    with caplog.at_level(logging.WARNING, logger="vl_models.data.files"):
        kept = filter_readable_images(damaged)
    assert kept["image_id"] == [0, 2]
    assert "row 1 (embedded bytes)" in caplog.text
    assert filter_readable_images(shapes) is shapes
    with pytest.raises(ValueError, match="`columns` must name Image columns"):
        filter_readable_images(shapes, ["captions"])
