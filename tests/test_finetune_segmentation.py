"""examples/finetune.py and examples/evaluate.py on the segmentation task, in this process at tiny size: VL-BEiT from a
pre-training folder on Shapes masks and on an ADE20K-layout folder (reduce_labels), and the one-line refusal of a
method without a segmentation head."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vl_models
from test_scripts import script
from vl_models.data import SEGMENTATION_CLASSES
from vl_models.data.collators import WithIndex
from vl_models.models.vl_beit import VlBeitForPreTraining, VlBeitForSemanticSegmentation
from vl_models.training import load_task_data, read_log, task_collator

RUN = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--max_train_steps", "3",
       "--checkpointing_steps", "0", "--logging_steps", "1", "--seed", "0"]
SHAPES = ["--num_train_images", "24", "--num_val_images", "8", "--num_test_images", "8", "--shapes_image_size", "32"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A VL-BEiT tiny pre-training folder (random weights, as examples/pretrain.py saves one)."""
    folder = tmp_path_factory.mktemp("vl_beit_pretrain")
    torch.manual_seed(0)
    VlBeitForPreTraining(vl_models.get_config("vl_beit", "tiny")).save_pretrained(folder)
    vl_models.build_processor("vl_beit", "tiny").save_pretrained(folder)
    return folder


def test_finetune_then_evaluate_on_shapes_masks(pretrained, tmp_path):
    out = tmp_path / "seg"
    result = script("finetune").main(["--task", "segmentation", "--model_name_or_path", str(pretrained),
                                      "--output_dir", str(out), *SHAPES, *RUN])
    metrics = result["metrics"]
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and 0.0 <= metrics["pixel_accuracy"] <= 1.0
    assert {f"iou_{name}" for name in SEGMENTATION_CLASSES} >= set(metrics) - {"mean_iou", "pixel_accuracy"}
    assert "iou_background" in metrics  # every image has background
    [record] = json.loads((out / "eval_results.json").read_text())
    assert record["task"] == "segmentation" and record["split"] == "validation" and record["metrics"] == metrics
    assert [r["eval/mean_iou"] for r in read_log(out / "logs" / "log.jsonl") if "eval/mean_iou" in r] == [
        metrics["mean_iou"]]
    model = VlBeitForSemanticSegmentation.from_pretrained(out)
    assert [model.config.id2label[i] for i in range(5)] == list(SEGMENTATION_CLASSES)

    [test] = script("evaluate").main(["--model_name_or_path", str(out), "--split", "test", *SHAPES])
    assert test["task"] == "segmentation" and test["num_examples"] == 8 and 0.0 <= test["metrics"]["mean_iou"] <= 1
    assert [r["split"] for r in json.loads((out / "eval_results.json").read_text())] == ["validation", "test"]


def test_a_method_without_a_segmentation_head_exits_2_before_training(tmp_path, capsys):
    folder = tmp_path / "vlmae"
    vl_models.get_config("vlmae", "tiny").save_pretrained(folder)  # the config alone decides
    for name, args in (("finetune", ["--task", "segmentation", "--output_dir", str(tmp_path / "out"), *RUN]),
                       ("evaluate", ["--task", "segmentation"])):
        module = script(name)
        with pytest.raises(SystemExit) as exit_info:
            module.run_cli(module.main, ["--model_name_or_path", str(folder), *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, err
        assert err == f"error: --task segmentation needs a checkpoint of vl_beit; {folder} is vlmae\n", name
    assert not (tmp_path / "out" / "model.safetensors").exists()


def _ade20k(root, split: str, count: int) -> None:
    """Tiny ADE20K-layout files: rows of class 0 ("other"), 1, 2 and 3, each painted its own grey."""
    (root / "images" / split).mkdir(parents=True)
    (root / "annotations" / split).mkdir(parents=True)
    for i in range(count):
        mask = np.repeat(np.roll(np.arange(4, dtype=np.uint8), i), 8)[:, None].repeat(32, 1)  # [32, 32]
        Image.fromarray(np.stack([mask * 60] * 3, -1)).save(root / "images" / split / f"ADE_{i:03d}.jpg")
        Image.fromarray(mask).save(root / "annotations" / split / f"ADE_{i:03d}.png")


def test_an_ade20k_folder_is_read_with_reduce_labels(pretrained, tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _ade20k(root, "training", 16)
    _ade20k(root, "validation", 8)
    data, info = load_task_data("segmentation", str(root))
    assert info["reduce_labels"] and info["labels"] == ["class_1", "class_2", "class_3"]  # from the masks' values
    processor = vl_models.build_processor("vl_beit", "tiny")
    collator = task_collator("segmentation", processor, reduce_labels=True, num_labels=3)
    batch = collator([WithIndex(data["train"])[i] for i in range(2)])
    side = batch["pixel_values"].shape[-1]
    assert batch["labels"].shape == (2, side, side)
    expected = np.asarray(Image.open(root / "annotations" / "training" / "ADE_001.png").resize((side, side),
                                                                                              Image.NEAREST))
    assert np.array_equal(batch["labels"][1].numpy(), np.where(expected == 0, 255, expected.astype(np.int64) - 1))
    with pytest.raises(ValueError, match=r"row 0: annotation classes \[2\] are outside the model's 2 labels"):
        task_collator("segmentation", processor, reduce_labels=True, num_labels=2)([WithIndex(data["train"])[0]])

    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.15\t11664\t1172\twall\n"
                                            "2\t0.1\t6046\t612\tbuilding;edifice\n3\t0.09\t8265\t796\tsky\n")
    out = tmp_path / "seg"
    result = script("finetune").main(["--task", "segmentation", "--model_name_or_path", str(pretrained),
                                      "--data", str(root), "--output_dir", str(out), *RUN])
    assert 0.0 <= result["metrics"]["mean_iou"] <= 1.0
    assert VlBeitForSemanticSegmentation.from_pretrained(out).config.id2label == {0: "wall", 1: "building", 2: "sky"}
    [record] = script("evaluate").main(["--model_name_or_path", str(out), "--data", str(root)])
    assert record["num_examples"] == 8 and record["metrics"]["iou_sky"] >= 0.0
