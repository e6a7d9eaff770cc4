"""Reliability at the model and loader boundaries (docs/reliability.md, issue 18 items 5, 6 and 13): weights that do
not fit the class they load into, a RefCOCO refs pickle that would run code, VLMAE mask ratios that mask nothing,
all-False image masks and MLM labels outside the vocabulary."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError as ConfigError

import vl_models
from conftest import make_batch
from fixtures_data import refcoco_dataset
from vl_models.data.readers_grounding import read_refcoco
from vl_models.training import load_quietly

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"vl_examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(method: str, **overrides):
    return vl_models.get_config(method, "tiny", **overrides)


# -- item 5: weights that do not fit the class --------------------------------------------------------------------


@pytest.fixture
def albef_weights_as_vlmae(tmp_path) -> Path:
    """An ALBEF pre-training folder whose config.json was rewritten to say `vlmae`."""
    torch.manual_seed(0)
    vl_models.AlbefForPreTraining(tiny("albef")).save_pretrained(tmp_path)
    vl_models.build_processor("albef", "tiny").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "vlmae"
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_weights_of_another_method_under_a_rewritten_model_type_stop_the_load(albef_weights_as_vlmae, capsys):
    folder = albef_weights_as_vlmae
    # the loader: the count and the first keys on each side
    with pytest.raises(ValueError, match=r"\d+ missing tensors \(vlmae\..*\d+ unexpected tensors \(albef\.") as info:
        load_quietly(vl_models.VlmaeForQuestionAnswering.from_pretrained, folder)
    assert str(folder) in str(info.value) and "model_type" in str(info.value)
    # finetune.py's loader
    finetune = script("finetune")
    args = finetune.parse_args(["--task", "vqa", "--model_name_or_path", str(folder)])
    with pytest.raises(ValueError, match=r"missing tensors \(vlmae\."):
        finetune.load_model(args, finetune.checkpoint_class(args), ["yes", "no"])
    # evaluate.py from the command line's entry: one line, exit status 2, no metrics
    evaluate = script("evaluate")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.run_cli(evaluate.main, ["--model_name_or_path", str(folder), "--num_test_images", "4"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after transformers' progress bars
    assert last.startswith(f"error: --model_name_or_path {folder}: ") and "missing tensors (vlmae." in last
    # the Hub side's loader (`vl_models.hub.load_for_task`, used to push a head of a checkpoint)
    from vl_models.hub.push import load_for_task

    with pytest.raises(ValueError, match=r"missing tensors \(vlmae\."):
        load_for_task(folder, "vqa")


@pytest.mark.parametrize("method", vl_models.list_methods())
def test_pretraining_to_task_and_task_to_task_loads_still_pass(method, tmp_path):
    """Fine-tuning leaves the pre-training-only tensors out and starts the task head fresh; a fine-tuned folder
    loads into its own class exactly, and into another task's class (the other head left out, its own fresh)."""
    spec = vl_models.get_method(method)
    torch.manual_seed(0)
    queues = {"queue_size": 8} if method in ("albef", "vlmae", "vq_mim") else {}  # the tiny preset has none
    spec.pretraining_class(tiny(method, **queues)).save_pretrained(tmp_path / "pretrained")
    for task, cls in spec.task_classes.items():
        model, info = load_quietly(cls.from_pretrained, tmp_path / "pretrained")
        assert info["unexpected_keys"], task  # reported, not hidden: finetune.py logs the counts
        model.save_pretrained(tmp_path / task)
        _, info = load_quietly(cls.from_pretrained, tmp_path / task)
        assert not info["missing_keys"] and not info["unexpected_keys"], task
    load_quietly(spec.task_classes["grounding"].from_pretrained, tmp_path / "vqa")
    load_quietly(spec.task_classes["retrieval"].from_pretrained, tmp_path / "nlvr2")


# -- item 6: a refs pickle that would run code ----------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_a_refs_pickle_that_runs_code_is_refused_before_it_runs(tmp_path):
    _, instances, images, refs = refcoco_dataset(tmp_path)
    refs[0].update(sent_ids=[0, 1], score=0.5, file_name="COCO_train2014_000000000001_11.jpg")  # as refs(unc).p
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.p"
    evil.write_bytes(pickle.dumps([_RunsCode(marker)] + refs))
    with pytest.raises(ValueError, match=r"evil\.p: not a readable refs pickle.*system"):
        read_refcoco(evil, instances, images)
    assert not marker.exists()
    # the official file (Python 2's protocols 0 and 2 too): lists, dicts, str, int, float only
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        good = tmp_path / f"refs{protocol}.p"
        good.write_bytes(pickle.dumps(refs, protocol=protocol))
        ds = read_refcoco(good, instances, images)
        assert ds["ref_id"] == [0, 0, 1] and ds["expression"][1] == "the astronaut"


# -- item 13: masks that mask nothing, MLM labels outside the vocabulary --------------------------------------------


def test_vlmae_mask_ratio_below_one_patch_is_refused_with_the_minimum():
    num_patches = tiny("vlmae").vision_config.num_patches  # 16 at tiny
    for ratio in (0.0, 0.5 / num_patches):
        with pytest.raises(ConfigError, match=rf"`mask_ratio` must be >= 1 / num_patches = 1/{num_patches}"):
            tiny("vlmae", mask_ratio=ratio)
    # a bigger image has more patches, so a smaller ratio still masks one
    assert tiny("vlmae", mask_ratio=0.5 / num_patches, vision_config={"image_size": 64}).mask_ratio > 0
    config = tiny("vlmae", mask_ratio=1 / num_patches)
    torch.manual_seed(0)
    out = vl_models.VlmaeForPreTraining(config)(**make_batch(config), generator=torch.Generator().manual_seed(0))
    assert out.image_mask.sum(1).tolist() == [1] * 4
    assert torch.isfinite(out.loss_rmim) and torch.isfinite(out.loss_ifr)


def _pretraining_model(method: str):
    torch.manual_seed(0)
    config = tiny(method)
    return vl_models.get_method(method).pretraining_class(config).eval(), make_batch(config), config


@pytest.mark.parametrize(("method", "names"), [("vlmae", ("image_mask",)), ("vq_mim", ("image_mask",)),
                                               ("vl_beit", ("bool_masked_pos", "image_bool_masked_pos"))])
def test_an_all_false_image_mask_is_refused(method, names):
    model, batch, config = _pretraining_model(method)
    none = torch.zeros(4, config.vision_config.num_patches, dtype=torch.bool)
    for name in names:
        given = {name: none}
        if name == "image_bool_masked_pos":
            given["image_pixel_values"] = batch["pixel_values"]
        with pytest.raises(ValueError, match=rf"`{name}` must mask at least one patch"):
            model(**batch, **given)
    # one masked patch in the whole batch is enough: the masked-image losses are means over the masked patches
    if method != "vlmae":  # VLMAE masks the same count in every row
        one = none.clone()
        one[0, 3] = True
        out = model(**batch, **{names[0]: one})
        assert all(torch.isfinite(v) for k, v in out.items() if k.startswith("loss"))


@pytest.mark.parametrize("method", vl_models.list_methods())
def test_mlm_labels_outside_the_vocabulary_are_refused(method):
    model, batch, config = _pretraining_model(method)
    vocab = config.text_config.vocab_size
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 2] = batch["input_ids"][:, 2]
    given = {"mlm_input_ids": batch["input_ids"], "mlm_labels": labels}
    out = model(**batch, **given)  # in range, -100 elsewhere: fine
    assert torch.isfinite(out.loss)
    for bad in (vocab, -5):
        labels[1, 2] = bad
        with pytest.raises(ValueError, match=rf"`mlm_labels` must be in \[0, {vocab}\)"):
            model(**batch, **given)
    with pytest.raises(ValueError, match=r"`mlm_labels` must have shape"):
        model(**batch, mlm_input_ids=batch["input_ids"], mlm_labels=labels[:, :-1])
