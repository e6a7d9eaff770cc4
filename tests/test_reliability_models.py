"""Reliability at the model and loader boundaries (docs/reliability.md, issue 18 items 6 and 13): a RefCOCO refs
pickle that would run code; VLMAE mask ratios that mask nothing, all-False image masks and MLM labels outside the
vocabulary."""

from __future__ import annotations

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


def tiny(method: str, **overrides):
    return vl_models.get_config(method, "tiny", **overrides)


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
