"""Weakly supervised grounding (ALBEF's protocol): Grad-CAM and proposal scores against a hand computation, the
Grad-CAM pass of every method's fusion encoder, the detections-file reader, and finetune.py + evaluate.py
(`--grounding_protocol weak`) in this process at tiny size on Shapes and on RefCOCO files with dets.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vl_models
from conftest import make_batch
from fixtures_data import refcoco_dataset, write_json
from test_scripts import script
from vl_models.data.readers_grounding import read_detections, read_refcoco
from vl_models.layers.gradcam import (
    default_layer,
    fusion_attention,
    gradcam_map,
    itm_gradcam,
    score_proposals,
)
from vl_models.training import load_task_data
from vl_models.training.evaluation import row_proposals

RUN = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--max_train_steps", "3",
       "--checkpointing_steps", "0", "--logging_steps", "1", "--seed", "0"]
SHAPES = ["--num_train_images", "24", "--num_val_images", "8", "--num_test_images", "8", "--shapes_image_size", "32"]
WEAK = ["--task", "grounding", "--grounding_protocol", "weak"]


def test_gradcam_picks_the_proposal_that_holds_the_positive_mass():
    """A 2x2 patch grid, 2 heads, 3 text tokens (the last one padding): the gradient is positive only at the
    bottom-right patch, so Grad-CAM puts all its mass there and the proposal around it wins."""
    attention = torch.tensor([[[[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.0, 0.0, 0.0, 1.0]],
                               [[0.25, 0.25, 0.25, 0.25], [0.1, 0.1, 0.1, 0.7], [0.0, 0.0, 0.0, 1.0]]]])  # [1, 2, 3, 4]
    gradient = torch.tensor([[[[-1.0, -5.0, -2.0, 2.0], [-3.0, -1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 100.0]],
                              [[-1.0, -1.0, -3.0, 4.0], [-1.0, -1.0, -1.0, 2.0], [0.0, 0.0, 0.0, 100.0]]]])
    mask = torch.tensor([[1, 1, 0]])
    cam = gradcam_map(attention, gradient, mask)  # [1, 4]
    # by hand: patch 3 = mean over the 2 real tokens of the mean over heads of attention * max(gradient, 0)
    # token 0: (0.4 * 2 + 0.25 * 4) / 2 = 0.9; token 1: (0.1 * 1 + 0.7 * 2) / 2 = 0.75; the padded token is left out
    assert cam[0].tolist() == pytest.approx([0.0, 0.0, 0.0, (0.9 + 0.75) / 2])

    # a 4x4 image, each patch 2x2 pixels after nearest upsampling; proposals as normalised (cx, cy, w, h)
    proposals = torch.tensor([[0.25, 0.25, 0.5, 0.5],  # the top-left patch: no mass
                              [0.75, 0.75, 0.5, 0.5],  # the bottom-right patch: 4 pixels of 0.825, area 4
                              [0.5, 0.5, 1.0, 1.0],  # the whole image: the same mass, area 16
                              [0.625, 0.625, 0.75, 0.75]])  # pixels 1..3 x 1..3: the same mass, area 9
    heat = cam.view(2, 2)
    scores = score_proposals(heat, proposals, (4, 4), mode="nearest")
    mass = 4 * 0.825
    assert scores.tolist() == pytest.approx([0.0, mass / 2, mass / 4, mass / 3])
    assert int(scores.argmax()) == 1
    # ALBEF's bicubic upsampling spreads the mass a little but keeps the answer
    assert int(score_proposals(heat, proposals, (4, 4)).argmax()) == 1
    # the area exponent decides between a tight box and a large one: at 0 (plain sums) the large boxes tie or win
    plain = score_proposals(heat, proposals, (4, 4), mode="nearest", area_exponent=0.0)
    assert plain.tolist() == pytest.approx([0.0, mass, mass, mass])


def test_boxes_are_truncated_to_pixels_as_albef_slices_them():
    heat = torch.arange(4.0).view(2, 2)  # nearest to 4x4: [[0,0,1,1],[0,0,1,1],[2,2,3,3],[2,2,3,3]]
    # pixel box x=1.5, y=0.5, w=2, h=2 -> rows int(0.5)..int(2.5) = 0, 1 and columns int(1.5)..int(3.5) = 1, 2
    # (ALBEF's mask[int(y):int(y + h), int(x):int(x + w)]), divided by sqrt(w * h) = 2
    box = torch.tensor([[(1.5 + 1) / 4, (0.5 + 1) / 4, 0.5, 0.5]])
    assert score_proposals(heat, box, (4, 4), mode="nearest").tolist() == pytest.approx([(0 + 1 + 0 + 1) / 2])
    assert score_proposals(heat, torch.zeros(0, 4), (4, 4)).shape == (0,)


@pytest.mark.parametrize("method", vl_models.list_methods())
def test_itm_gradcam_of_every_fusion_encoder(method):
    torch.manual_seed(0)
    config = vl_models.get_config(method, "tiny")
    config._attn_implementation = "sdpa"
    model = vl_models.get_method(method).task_classes["retrieval"](config).train()
    batch = make_batch(config, batch_size=3)
    cams = itm_gradcam(model, **batch)
    side = config.vision_config.image_size // config.vision_config.patch_size
    assert cams.shape == (3, side, side) and torch.isfinite(cams).all() and (cams >= 0).all() and cams.sum() > 0
    # the kernel and the mode come back; nothing is kept on the module or accumulated in the parameters
    assert config._attn_implementation == "sdpa" and model.training
    module, _ = fusion_attention(model.base_model)
    assert not hasattr(module, "kept_attention") and not module.keep_attention
    assert all(p.grad is None for p in model.parameters())
    # rows are independent: a row alone gets the map it got in the batch
    alone = itm_gradcam(model, **{k: v[1:2, : int(batch["attention_mask"][1].sum())] if k != "pixel_values" else v[1:2]
                                  for k, v in batch.items()})
    torch.testing.assert_close(alone[0], cams[1], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="`layer` must index"):
        itm_gradcam(model, **batch, layer=99)


def test_default_layer_is_albefs_depth():
    assert default_layer(6) == 2  # ALBEF: BERT layer 8 = the 3rd of 6 fusion layers
    assert default_layer(12, joint=True) == 8 and default_layer(1) == 0 and default_layer(2, joint=True) == 1


def test_read_detections_and_refcoco_proposals(tmp_path):
    refs_file, instances, image_dir, _ = refcoco_dataset(tmp_path)
    dets = write_json(tmp_path / "dets.json", {"1": [[10, 20, 30, 40], [0, 0, 48, 48, 0.9]], "2": [[0, 0, 96, 32]]})
    assert read_detections(dets) == {1: [[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 48.0, 48.0]], 2: [[0.0, 0.0, 96.0, 32.0]]}
    ds = read_refcoco(refs_file, instances, image_dir, detections_file=dets)
    np.testing.assert_allclose(ds[0]["proposals"], [[25 / 96, 40 / 96, 30 / 96, 40 / 96], [0.25, 0.25, 0.5, 0.5]],
                               rtol=1e-6)
    np.testing.assert_allclose(ds[2]["proposals"], [[0.5, 0.25, 1.0, 0.5]], rtol=1e-6)  # the 96x64 picture
    assert read_refcoco(refs_file, instances, image_dir, split=("test", "testA"))["ref_id"] == [1]
    for bad, message in (([[1, 2, 3, 4]], "JSON object"), ({"x": []}, "no image id"),
                         ({"1": [[1, 2, 3]]}, "box 0 must be"), ({"1": [[0, 0, -1, 2]]}, "w, h >= 0")):
        with pytest.raises(ValueError, match=message):
            read_detections(write_json(tmp_path / "bad.json", bad))


def test_shapes_proposals_are_the_scene_objects():
    data, _ = load_task_data("grounding", "shapes", splits=("test",), num_test=4, image_size=32)
    for row in data["test"]:
        proposals = row_proposals(row)
        assert len(proposals) == len(row["objects"]) and proposals[row["target_index"]] == pytest.approx(row["box"])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """An ALBEF tiny pre-training folder (random weights, as examples/pretrain.py saves one)."""
    folder = tmp_path_factory.mktemp("albef_pretrain")
    torch.manual_seed(0)
    vl_models.AlbefForPreTraining(vl_models.get_config("albef", "tiny")).save_pretrained(folder)
    vl_models.build_processor("albef", "tiny").save_pretrained(folder)
    return folder


def test_weak_finetune_then_evaluate_on_shapes(pretrained, tmp_path, capsys):
    out = tmp_path / "weak"
    result = script("finetune").main([*WEAK, "--model_name_or_path", str(pretrained), "--output_dir", str(out),
                                      *SHAPES, *RUN])
    metrics = result["metrics"]
    assert set(metrics) == {"accuracy", "mean_iou", "chance_accuracy", "proposal_upper_bound"}
    assert metrics["proposal_upper_bound"] == 1.0  # the proposals are the scene's objects, the referred one too
    assert 0.0 < metrics["chance_accuracy"] <= 1.0 and 0.0 <= metrics["accuracy"] <= 1.0
    [record] = json.loads((out / "eval_results.json").read_text())
    assert record["protocol"] == "weak" and record["task"] == "grounding"
    # trained without boxes: the checkpoint is the retrieval model (ITC + ITM heads), no box head
    assert json.loads((out / "config.json").read_text())["architectures"] == ["AlbefForImageTextRetrieval"]

    [test] = script("evaluate").main(["--model_name_or_path", str(out), *WEAK, "--split", "test", *SHAPES])
    assert test["protocol"] == "weak" and test["num_examples"] == 8 and "zero_shot" not in test
    assert test["metrics"]["proposal_upper_bound"] == 1.0
    assert "grounding (weakly supervised) on shapes [test]" in capsys.readouterr().out

    # the supervised protocol (the default) needs a box head, and says how this model is evaluated
    module = script("evaluate")
    with pytest.raises(SystemExit) as exit_info:
        module.run_cli(module.main, ["--model_name_or_path", str(out), "--task", "grounding", *SHAPES])
    assert exit_info.value.code == 2 and "--grounding_protocol weak" in capsys.readouterr().err


def test_weak_evaluation_reads_refcoco_with_detections(pretrained, tmp_path, capsys):
    refs_file, instances, image_dir, _ = refcoco_dataset(tmp_path)
    # the cat picture's (image 2, testA) detections: the referred top half and the bottom half
    dets = write_json(tmp_path / "dets.json", {"1": [[10, 20, 30, 40]], "2": [[0, 0, 96, 32], [0, 32, 96, 32]]})
    data = ["--data", str(refs_file), "--instances_file", str(instances), "--image_dir", str(image_dir),
            "--proposals", str(dets)]
    [record] = script("evaluate").main(["--model_name_or_path", str(pretrained), *WEAK, *data, "--split", "test",
                                        "--output_file", str(tmp_path / "results.json")])
    assert record["zero_shot"] is True and record["protocol"] == "weak" and record["num_examples"] == 1
    metrics = record["metrics"]
    assert metrics["chance_accuracy"] == 0.5 and metrics["proposal_upper_bound"] == 1.0
    assert metrics["accuracy"] in (0.0, 1.0) and np.isfinite(metrics["mean_iou"])
    # without proposals, RefCOCO cannot be ranked: one line, exit 2
    module = script("evaluate")
    with pytest.raises(SystemExit) as exit_info:
        module.run_cli(module.main, ["--model_name_or_path", str(pretrained), *WEAK, *data[:6], "--split", "test",
                                     "--output_file", str(tmp_path / "results.json")])
    assert exit_info.value.code == 2
    # and weak fine-tuning refuses it before any update, not when it evaluates at the end (the cat ref as val)
    _, _, _, refs = refcoco_dataset(tmp_path)
    write_json(refs_file, [refs[0], {**refs[1], "split": "val"}])
    module = script("finetune")
    with pytest.raises(SystemExit) as exit_info:
        module.run_cli(module.main, ["--model_name_or_path", str(pretrained), *WEAK, *data[:6], "--output_dir",
                                     str(tmp_path / "weak"), "--max_train_steps", "1"])
    assert exit_info.value.code == 2 and "--proposals" in capsys.readouterr().err
    assert not (tmp_path / "weak" / "checkpoints").exists()
