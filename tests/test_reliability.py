"""Reliability (docs/reliability.md): bad input at the processor, collator, config and checkpoint-loading
boundaries; training under faults (non-finite losses skipped on every process with the codebook EMA reverted,
damaged checkpoints reported and skipped, nothing unpickled without weights_only, a pre-training process
SIGKILLed mid-checkpoint resuming exactly)."""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from huggingface_hub.errors import StrictDataclassClassValidationError as ConfigError
from huggingface_hub.errors import StrictDataclassFieldValidationError as FieldError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

import vl_models
from vl_models.data.collators import INDEX_KEY, PreTrainingCollator
from vl_models.layers.codebook import VectorQuantizer
from vl_models.processing import VlImageProcessor, VlProcessor
from vl_models.training import (
    LossMeter,
    NonFiniteGuard,
    NonFiniteLossError,
    build_scheduler,
    loss_scale,
    optimizer_step,
    read_log,
)
from vl_models.training.checkpoint import (
    CRASH_ENV,
    FILES_KEY,
    STATE_FILE,
    check_pickles,
    checkpoint_problems,
    latest_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from vl_models.training.logging import JsonlTracker

ROOT = Path(__file__).resolve().parents[1]


def png(width: int, height: int, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "TIFF" if mode == "CMYK" else "PNG")  # PNG has no CMYK
    return buffer.getvalue()


# -- processors: bad images and text -------------------------------------------------------------------------


def test_truncated_image_bytes_give_a_value_error_naming_images():
    data = png(64, 64)
    lazy = PIL.Image.open(io.BytesIO(data[: len(data) // 2]))  # opens (header only); decoding fails later
    with pytest.raises(ValueError, match=r"`images` must be decodable, got a PIL image .* does not decode: .*trunc"):
        VlImageProcessor(size=8)(lazy)
    with pytest.raises(ValueError, match="`images` must be a PIL image.*got bytes"):  # raw bytes: decode first
        VlImageProcessor(size=8)(data)


def test_decompression_bombs_are_refused_before_decoding(monkeypatch):
    processor = VlImageProcessor(size=8)
    # PIL.Image.open refuses a file over twice the limit itself; the processor applies the same limit to images
    # opened earlier (or with another limit) and to arrays, and refuses a lazily opened file from its header
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", None)
    lazy = PIL.Image.open(io.BytesIO(png(40, 30)))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(PIL.Image.DecompressionBombError):
        PIL.Image.open(io.BytesIO(png(40, 30)))
    for image in (lazy, np.zeros((30, 40, 3), np.uint8), torch.zeros(3, 30, 40)):
        with pytest.raises(ValueError, match=r"at most 2 x PIL.Image.MAX_IMAGE_PIXELS = 1000 pixels.*"
                                             r"30 x 40 = 1200 pixels"):
            processor(image)
    assert lazy._im is None  # refused from the header, nothing decoded
    assert processor(np.zeros((25, 40, 3), np.uint8))["pixel_values"].shape == (1, 3, 8, 8)  # 1000: at the limit
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", None)  # the documented way to lift it
    assert processor(lazy)["pixel_values"].shape == (1, 3, 8, 8)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                                  "LAB", "HSV", "I", "I;16", "I;16B", "I;16L", "F"])
def test_every_pil_mode_gives_finite_normalised_pixels(mode):
    image = PIL.Image.new(mode, (5, 3))
    pixels = VlImageProcessor(size=4, do_normalize=False)(image)["pixel_values"]
    assert pixels.shape == (1, 3, 4, 4) and torch.isfinite(pixels).all()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_max_length_below_two_is_refused_instead_of_ignored():
    # the tokenizer silently ignores max_length=1 (it cannot fit [CLS] and [SEP]) and returns every token
    with pytest.raises(ValueError, match=r"`max_length` must be an int >= 2 \(it counts \[CLS\] and \[SEP\]\), got int 1"):
        VlProcessor()(text="a red circle", max_length=1)
    with pytest.raises(ValueError, match="`max_length` must be an int >= 2"):
        VlProcessor(max_length=True)


_TEXT = st.one_of(st.text(max_size=40), st.none(), st.integers(), st.binary(max_size=5))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.one_of(_TEXT, st.lists(_TEXT, max_size=4)), max_length=st.integers(2, 12))
def test_processor_text_either_value_error_or_framed_ids(texts, max_length):
    """Any text input: a ValueError naming `text`, or ids of at most max_length tokens framed [CLS] ... [SEP]."""
    processor = _processor()
    try:
        out = processor(text=texts, max_length=max_length)
    except ValueError as error:
        assert "`text`" in str(error)
        return
    ids, mask = out["input_ids"], out["attention_mask"]
    tokenizer = processor.tokenizer
    assert ids.shape[0] == (1 if isinstance(texts, str) else len(texts)) and ids.shape[1] <= max_length
    for row, row_mask in zip(ids, mask):
        length = int(row_mask.sum())
        assert row[0] == tokenizer.cls_token_id and row[length - 1] == tokenizer.sep_token_id
        assert (row[length:] == tokenizer.pad_token_id).all()


_ARRAY = st.tuples(
    st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_, np.complex64]),
    st.lists(st.integers(0, 6), min_size=1, max_size=4),
    st.sampled_from([0.0, 0.5, 1.0, 255.0, -1.0, float("nan"), float("inf")]),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(spec=_ARRAY)
def test_image_arrays_either_value_error_or_finite_pixels(spec):
    """Any dtype, rank, size and fill, numpy or torch: a ValueError naming `images`, or finite [1, 3, S, S]."""
    dtype, shape, fill, as_torch = spec
    with np.errstate(invalid="ignore"):
        array = np.full(shape, fill).astype(dtype)
    image = torch.from_numpy(array) if as_torch and dtype not in (np.uint16, np.complex64) else array
    try:
        pixels = VlImageProcessor(size=3)(image)["pixel_values"]
    except ValueError as error:
        assert "`images`" in str(error)
        return
    assert pixels.shape == (shape[0] if len(shape) == 4 else 1, 3, 3, 3) and torch.isfinite(pixels).all()


@functools.cache
def _processor() -> VlProcessor:
    return VlProcessor(VlImageProcessor(size=16))


# -- collators -----------------------------------------------------------------------------------------------


@functools.cache
def _vlmae():
    return vl_models.get_config("vlmae", "tiny"), vl_models.build_processor("vlmae", "tiny")


_ROW = st.tuples(
    st.sampled_from(["ok", "ok", "ok", "truncated", "garbage", "empty"]),
    st.integers(1, 40), st.integers(1, 40), st.sampled_from(["RGB", "L", "RGBA", "P", "I;16", "CMYK"]),
    st.lists(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30)
             .filter(str.strip), min_size=1, max_size=3),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(_ROW, min_size=1, max_size=5), seed=st.integers(0, 3), epoch=st.integers(0, 2))
def test_pretraining_collator_on_random_rows(specs, seed, epoch):
    """Random image sizes and modes, broken image bytes and any unicode captions: the broken rows are dropped and
    counted, masks and labels are consistent, the same rows give the same batch; all broken: a ValueError."""
    config, processor = _vlmae()
    rows = []
    for index, (kind, width, height, mode, captions) in enumerate(specs):
        data = png(width, height, mode, seed=index) if kind in ("ok", "truncated") else b""
        data = {"truncated": data[: len(data) // 2], "garbage": b"\x89PNG not an image"}.get(kind, data)
        rows.append({"image": {"bytes": data, "path": f"{index}.png"}, "captions": captions, INDEX_KEY: index})
    collator = PreTrainingCollator(processor, config, vl_models.VlmaeForPreTraining, seed=seed)
    collator.set_epoch(epoch)
    good = sum(kind == "ok" for kind, *_ in specs)
    if good == 0:
        with pytest.raises(ValueError, match="every image of this batch"):
            collator(rows)
        return
    batch = collator(rows)
    assert collator.num_skipped == len(specs) - good
    ids, labels, masked = batch["input_ids"], batch["mlm_labels"], batch["mlm_input_ids"]
    assert batch["pixel_values"].shape == (good, 3, 32, 32) and torch.isfinite(batch["pixel_values"]).all()
    assert ids.shape == labels.shape == masked.shape == batch["attention_mask"].shape and ids.shape[0] == good
    assert ids.shape[1] <= processor.max_length
    chosen = labels != -100
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    special = torch.isin(ids, torch.tensor(config.text_config.special_token_ids))
    assert not (chosen & special).any()  # [CLS], [SEP] and padding are never MLM targets
    keep = round(config.vision_config.num_patches * (1 - config.mask_ratio))
    assert (batch["image_mask"].sum(1) == config.vision_config.num_patches - keep).all()
    again = PreTrainingCollator(processor, config, vl_models.VlmaeForPreTraining, seed=seed)
    again.set_epoch(epoch)
    assert all(torch.equal(v, again(rows)[k]) for k, v in batch.items())


# -- configs and loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ({"vision_config": {"hidden_size": 0}}, "`vision_config.hidden_size` must be an int >= 1, got int 0"),
    ({"vision_config": {"num_hidden_layers": -1}}, "`vision_config.num_hidden_layers` must be an int >= 1"),
    ({"vision_config": {"num_channels": 0}}, "`vision_config.num_channels` must be an int >= 1"),
    ({"vision_config": {"hidden_dropout_prob": 1.5}}, r"`vision_config.hidden_dropout_prob` must be a number in \[0.0, 1.0\)"),
    ({"vision_config": {"layer_norm_eps": 0.0}}, r"`vision_config.layer_norm_eps` must be a number in \(0.0, inf\)"),
    ({"text_config": {"hidden_act": "nope"}}, "`text_config.hidden_act` must be one of .*'gelu'.*got 'nope'"),
    ({"text_config": {"max_position_embeddings": 1}}, "`text_config.max_position_embeddings` must be an int >= 2"),
    ({"text_config": {"intermediate_size": 0}}, "`text_config.intermediate_size` must be an int >= 1"),
    ({"text_config": {"attention_probs_dropout_prob": -0.1}}, "`text_config.attention_probs_dropout_prob`"),
    ({"itc_weight": float("nan")}, r"`itc_weight` must be a number in \[0.0, inf\), got float nan"),
    ({"embed_dim": "256"}, "Field 'embed_dim' expected int, got str"),  # the declared type, checked first
    ({"momentum": float("nan")}, "`momentum` must be a real number, got float nan"),
    ({"alpha": "0.4"}, "Field 'alpha' expected float, got str"),
])
def test_invalid_config_values_fail_when_built(overrides, message):
    for method in ("albef", "vq_mim"):
        with pytest.raises((ConfigError, FieldError), match=message):
            vl_models.get_config(method, "tiny", **overrides)


def test_float_fields_take_ints_and_refuse_bools():
    # `--config_overrides itm_weight=3` parses 3 as an int; transformers' own configs declare such fields
    # `float | int` too. A bool is no number here, although Python's bool is an int.
    for method in ("albef", "vilta", "vq_mim", "vlmae"):
        config = vl_models.get_config(method, "tiny", alpha=0, itm_weight=3, vision_config={"drop_path_rate": 0})
        assert (config.alpha, config.itm_weight, config.vision_config.drop_path_rate) == (0, 3, 0)
        with pytest.raises(FieldError, match="Field 'itm_weight' expected float, got bool"):
            vl_models.get_config(method, "tiny", itm_weight=True)
    assert vl_models.get_config("vl_beit", "tiny", mim_weight=2, layer_scale_init_value=1).mim_weight == 2


@pytest.mark.parametrize(("method", "overrides", "message"), [
    ("albef", {"quue_size": 0}, r"unknown config field 'quue_size' for AlbefConfig; did you mean 'queue_size'\?"),
    ("vlmae", {"vision_config": {"hiden_size": 8}}, r"'vision_config.hiden_size' for VisionTowerConfig; did you "
                                                     r"mean 'hidden_size'"),
    ("vl_beit", {"tokenizer_config": {"num_code": 8}}, r"'tokenizer_config.num_code' for VlBeitTokenizerConfig; "
                                                        r"did you mean 'num_codes'"),
    ("albef", {"tokenizer_config": {}}, r"unknown config field 'tokenizer_config' for AlbefConfig"),
])
def test_unknown_config_fields_are_refused_with_the_closest_names(method, overrides, message):
    # a config keeps unknown keys as attributes (transformers' convention, for loading): without this check a typo
    # was saved into config.json and changed nothing
    with pytest.raises(ValueError, match=message):
        vl_models.get_config(method, "tiny", **overrides)
    config = vl_models.get_config(method, "tiny", num_labels=3)  # properties and known fields still pass
    assert config.num_labels == 3


def test_loading_another_methods_checkpoint_is_refused(tmp_path):
    vl_models.AlbefForPreTraining(vl_models.get_config("albef", "tiny")).save_pretrained(tmp_path)
    for cls in (vl_models.VlmaeForPreTraining, vl_models.VqMimForPreTraining):
        with pytest.raises(ValueError, match=r"model_type 'albef', but \w+Config is for '(vlmae|vq_mim)'"):
            cls.from_pretrained(tmp_path)
    assert type(vl_models.AlbefForPreTraining.from_pretrained(tmp_path)).__name__ == "AlbefForPreTraining"


def test_mismatched_shapes_name_the_keys_and_both_shapes(tmp_path):
    # with feature queues (the tiny preset has none), whose width is embed_dim too
    config = vl_models.get_config("albef", "tiny", embed_dim=24, queue_size=32)
    vl_models.AlbefForPreTraining(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"10 tensors have other shapes \(albef.text_proj.bias: checkpoint \(24,\) "
                                         r"vs model \(16,\);.*ignore_mismatched_sizes=True"):
        vl_models.AlbefForPreTraining.from_pretrained(tmp_path, embed_dim=16)
    model, info = vl_models.AlbefForPreTraining.from_pretrained(tmp_path, embed_dim=16, ignore_mismatched_sizes=True,
                                                                output_loading_info=True)
    assert model.config.embed_dim == 16 and len(info["mismatched_keys"]) == 10
    model, info = vl_models.AlbefForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["mismatched_keys"] and not info["missing_keys"]
    assert not any(p.requires_grad for p in model.momentum_model.parameters())  # frozen after loading


# -- non-finite losses ---------------------------------------------------------------------------------------


class _Quantized(nn.Module):
    """A linear layer into an EMA codebook: the smallest model whose forward updates a codebook."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.vq = VectorQuantizer(6, 8, decay=0.8, kmeans_init=True, dead_code_after=1)

    def forward(self, x):
        out = self.vq(self.proj(x))
        loss_fit = (out.quantized - 1.0).pow(2).mean()
        return {"loss": loss_fit + out.loss, "loss_fit": loss_fit, "loss_vq": out.loss}


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_given_to_a_model_end_in_a_non_finite_loss_not_a_crash(bad):
    """The processor refuses NaN / inf pixels; a tensor handed straight to a model gives a non-finite loss (which
    the training loop's guard skips) rather than an error from inside hard-negative sampling."""
    from conftest import make_batch

    for method in vl_models.list_methods():
        torch.manual_seed(0)
        model = vl_models.get_method(method).pretraining_class(vl_models.get_config(method, "tiny")).train()
        batch = make_batch(model.config)
        batch["pixel_values"][0, :, 0, 0] = bad
        out = model(**batch, generator=torch.Generator().manual_seed(0))
        assert not torch.isfinite(out.loss), method


def test_codebook_revert_and_commit():
    torch.manual_seed(0)
    vq = VectorQuantizer(5, 3, decay=0.9, kmeans_init=True, dead_code_after=1).train()
    before = _state(vq)
    vq(torch.randn(20, 3))  # k-means init, an EMA step and dead-code restarts
    vq(torch.randn(20, 3))
    assert vq.initted and not torch.equal(vq.codebook, before["codebook"])
    assert vq.revert_updates() and all(torch.equal(v, before[k]) for k, v in vq.state_dict().items())
    assert not vq.revert_updates()  # nothing left to revert
    vq(torch.randn(20, 3))
    vq.commit_updates()
    after = _state(vq)
    assert not vq.revert_updates() and all(torch.equal(v, after[k]) for k, v in vq.state_dict().items())
    vq.eval()(torch.randn(20, 3))  # evaluation changes nothing and takes no copy
    assert vq._saved is None
    grad_mode = VectorQuantizer(5, 3, decay=None, dead_code_after=1).train()
    start = grad_mode.codebook.detach().clone()
    grad_mode(torch.randn(20, 3) * 100)  # restarts dead codes in place
    assert not torch.equal(grad_mode.codebook, start) and grad_mode.revert_updates()
    assert torch.equal(grad_mode.codebook, start) and grad_mode.codebook.requires_grad


def test_non_finite_loss_skips_the_update_and_leaves_the_codebook_untouched(tmp_path):
    """A NaN input poisons the codebook's EMA in the forward and the loss: the update is skipped, the codebook,
    weights, optimizer and schedule are as before it, the event is logged with the loss terms and the window's
    mean leaves it out; after `max_consecutive` skips in a row training stops with a message."""
    accelerator = Accelerator(cpu=True, log_with=[JsonlTracker(tmp_path)])
    accelerator.init_trackers("test")
    torch.manual_seed(0)
    model = _Quantized().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer.optimizer, 0, 10)
    guard, meter = NonFiniteGuard(max_consecutive=2), LossMeter()

    def update(x, step):
        out = model(x)
        guard.observe(out)
        meter.update(out)
        accelerator.backward(out["loss"])
        _, skipped = optimizer_step(accelerator, model, optimizer, scheduler, 1.0, guard=guard)
        if skipped:
            accelerator.log(guard.event, step=step)
        return skipped

    assert not update(torch.randn(16, 4), 1)
    before, adam_before, lr_before = _state(model), optimizer.state_dict()["state"][0]["step"], scheduler.last_epoch
    bad = torch.randn(16, 4)
    bad[3, 1] = float("nan")
    assert update(bad, 2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # codebook and weights
    assert torch.isfinite(model.vq.codebook).all() and model.proj.weight.grad is None
    assert optimizer.state_dict()["state"][0]["step"] == adam_before and scheduler.last_epoch == lr_before
    assert guard.event["skipped_consecutive"] == 1 and math.isnan(guard.event["skipped/loss"])
    assert {"skipped/loss_fit", "skipped/loss_vq", "skipped/grad_norm"} <= set(guard.event)
    assert not update(torch.randn(16, 4), 3) and guard.consecutive == 0 and guard.total == 1
    means = meter.mean(accelerator)  # three updates, one of them non-finite: the mean is over the other two
    assert math.isfinite(means["loss"]) and set(means) == {"loss", "loss_fit", "loss_vq"}
    assert update(bad, 4)
    with pytest.raises(NonFiniteLossError, match=r"stopping: 2 updates in a row were skipped .*loss=nan.*"
                                                 r"loss_fit=nan.*resume from the last checkpoint"):
        update(bad, 5)
    accelerator.end_training()
    logged = read_log(tmp_path / "log.jsonl")
    assert [r["step"] for r in logged] == [2, 4] and logged[0]["skipped/loss"] == "nan"  # 5: in the message
    assert isinstance(logged[0]["skipped/loss_fit"], str) and logged[0]["skipped_total"] == 1


@pytest.fixture
def fresh_accelerate_state():
    """Another mixed precision than the earlier tests' needs accelerate's process-wide state reset."""
    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_fp16_non_finite_loss_still_skips(fresh_accelerate_state):
    """With fp16 a non-finite gradient norm is left to the gradient scaler (GPUs), but a non-finite loss is
    still skipped by the guard, and the updates after it are applied."""
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer.optimizer, 0, 10)
    guard, skipped = NonFiniteGuard(), []
    for poison in (False, True, False, True, False):
        with accelerator.autocast():
            loss = model(torch.ones(2, 3)).sum() + (float("nan") if poison else 0.0)
        guard.observe({"loss": loss})
        accelerator.backward(loss)
        before = model.weight.detach().clone()
        skipped.append(optimizer_step(accelerator, model, optimizer, scheduler, 1.0, guard=guard)[1])
        assert torch.equal(model.weight.detach(), before) == poison
    assert skipped == [False, True, False, True, False] and scheduler.last_epoch == 3


# accelerate's scaler step patches optimizer.step, which torch's LR scheduler notices (as on a GPU)
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_fp16_gradient_scaler_skip_holds_the_schedule_and_reverts_the_codebook(fresh_accelerate_state):
    """fp16 on a GPU: inf/NaN gradients under a finite loss make the gradient scaler skip the step and lower its
    scale. The update then counts as skipped like any other: no schedule step, the codebook statistics reverted,
    and, being routine while the scale settles, no step towards stopping. Accelerate gives a CPU no scaler, so
    a real CPU GradScaler stands in for the CUDA one (same class, same skip logic)."""
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    torch.manual_seed(0)
    model = _Quantized().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer.optimizer, 0, 10)
    guard = NonFiniteGuard(max_consecutive=1)
    poison = {"on": False}
    model.proj.weight.register_hook(lambda grad: grad * float("inf") if poison["on"] else grad)
    skipped = []
    for step in range(4):
        poison["on"] = step in (1, 2)
        before = _state(model)
        with accelerator.autocast():
            out = model(torch.randn(16, 4))
        guard.observe(out)
        accelerator.backward(out["loss"])
        skipped.append(optimizer_step(accelerator, model, optimizer, scheduler, 1.0, guard=guard)[1])
        assert math.isfinite(out["loss"].item())
        kept = all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        assert kept == poison["on"]  # weights and codebook (its k-means init and EMA) as before the forward
    assert skipped == [False, True, True, False] and scheduler.last_epoch == 2
    assert guard.consecutive == 0 and guard.total == 0 and guard.event is None  # two in a row, no stop
    assert loss_scale(accelerator) == 2.0**8  # halved by each skip


@pytest.mark.slow
def test_non_finite_loss_on_one_rank_skips_on_both(tmp_path):
    """2 gloo processes: rank 1 alone gets a NaN loss whose gradients are finite (a grad-norm check alone would
    apply the update on rank 0). Both ranks skip the same updates, keep weights and codebook, log the same
    event and stop together after 2 skips in a row."""
    worker = ROOT / "tests" / "train_workers" / "nonfinite_worker.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every decision, event and the final weights agree
    report = ranks[0]
    assert report["skipped"] == [False, True, False, False, True, True] and report["stopped_at"] == 5
    assert report["weights_kept"] == report["skipped"] and report["codebook_kept"] == report["skipped"]
    assert report["lr"][1] == report["lr"][0]  # the schedule did not move on the skipped update
    event = report["events"][1]
    assert math.isfinite(event["skipped/grad_norm"]) and event["skipped/loss"] != event["skipped/loss"]  # NaN
    assert math.isfinite(event["skipped/loss_itc"]) and "stopping: 2 updates in a row" in report["message"]


# -- checkpoints ---------------------------------------------------------------------------------------------


@pytest.fixture
def saved(prepared, tmp_path):
    accelerator, model, _, _ = prepared
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(accelerator, root, step, {"epoch": 0})
    return accelerator, model, root


def test_checkpoint_lists_its_files_with_size_and_checksum(saved):
    _, _, root = saved
    state = json.loads((root / "step_3" / STATE_FILE).read_text())
    files = state[FILES_KEY]
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"} <= set(files)
    assert files["model.safetensors"]["size"] == (root / "step_3" / "model.safetensors").stat().st_size
    assert all(len(entry["sha256"]) == 64 for entry in files.values())
    assert checkpoint_problems(root / "step_3") == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "header"])
def test_damaged_checkpoint_is_named_and_latest_falls_back(saved, damage, caplog):
    accelerator, model, root = saved
    weights = root / "step_3" / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) - 5])
    elif damage == "flip":  # same size: only the checksum sees it
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif damage == "delete":
        weights.unlink()
    else:  # a header claiming more than the file holds
        weights.write_bytes((10**6).to_bytes(8, "little") + data[8:])
    expected = {"truncate": "model.safetensors: .* bytes, .* when saved", "flip": "model.safetensors: SHA-256 differs",
                "delete": "model.safetensors: missing", "header": "model.safetensors: .*"}[damage]
    assert any(re.match(expected, p) for p in checkpoint_problems(root / "step_3"))
    with caplog.at_level(logging.WARNING, logger="vl_models.training.checkpoint"):
        assert latest_checkpoint(root) == root / "step_2"  # `latest` says step_3
    assert "step_3 is damaged" in caplog.text and "model.safetensors" in caplog.text
    with pytest.raises(ValueError, match=f"step_3 is damaged: {expected}"):
        resolve_checkpoint(str(root / "step_3"), root)
    state = load_checkpoint(accelerator, resolve_checkpoint("latest", root))
    assert state == {"step": 2, "epoch": 0} and (model.weight == 2).all()


def test_safetensors_header_is_checked_without_a_file_list(saved):
    _, _, root = saved
    folder = root / "step_3"
    state = json.loads((folder / STATE_FILE).read_text())
    del state[FILES_KEY]  # as written before file lists existed
    (folder / STATE_FILE).write_text(json.dumps(state))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-3])
    [problem] = checkpoint_problems(folder)
    assert problem.startswith("model.safetensors: ") and "truncated" in problem


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(saved):
    _, _, root = saved
    for folder in root.glob("step_*"):
        (folder / "optimizer.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no usable checkpoint in .*step_3: optimizer.bin: 0 bytes.*step_1"):
        latest_checkpoint(root)
    shutil.rmtree(root)
    assert latest_checkpoint(root) is None  # no checkpoint at all: start fresh


class _Payload:
    """Unpickling this runs code (it creates `marker`): what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_runs_code_is_refused_before_it_runs(saved, tmp_path):
    accelerator, _, root = saved
    marker = tmp_path / "code_ran"
    folder = root / "step_3"
    (folder / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps({"last_epoch": _Payload(marker)}, protocol=2))
    with pytest.raises(ValueError, match="custom_checkpoint_0.pkl: refusing to load: .*weights_only=True"):
        check_pickles(folder)
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(accelerator, folder)  # the file list is not even needed for this
    assert not marker.exists()
    check_pickles(root / "step_2")  # the schedule's real state passes


def test_log_keeps_whole_records_after_a_crash_mid_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    tracker = JsonlTracker(tmp_path)
    tracker.start()
    tracker.log({"loss": 1.5}, step=2)
    tracker.finish()
    assert [(r["step"], r["loss"]) for r in read_log(log)] == [(1, 2.0), (2, 1.5)]


# -- a real pre-training process killed mid-checkpoint -------------------------------------------------------

PRETRAIN = [str(ROOT / "examples" / "pretrain.py"), "--method", "vq_mim", "--size", "tiny", "--num_train_images",
            "32", "--num_val_images", "8", "--per_device_train_batch_size", "8", "--logging_steps", "1", "--seed", "0",
            "--max_train_steps", "6", "--checkpointing_steps", "2", "--eval_steps", "0",
            "--config_overrides", "queue_size=16"]  # the tiny preset has no queue; resuming must restore one
LOSSES = ("loss", "loss_itc", "loss_itm", "loss_mlm", "loss_mim", "loss_vq", "lr", "codebook_perplexity")


def _pretrain(output_dir: Path, *extra: str, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true", **env}
    return subprocess.run([sys.executable, *PRETRAIN, "--output_dir", str(output_dir), *extra], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def _losses(folder: Path) -> list[tuple[int, dict]]:
    return [(r["step"], {k: r[k] for k in LOSSES}) for r in read_log(folder / "logs" / "log.jsonl") if "loss" in r]


@pytest.mark.slow
def test_sigkill_mid_checkpoint_then_resume_is_exact(tmp_path):
    """VQ-MIM tiny (momentum queues, EMA codebook), 4 updates per epoch. Run A trains 6 updates straight. Run B
    is SIGKILLed while writing the step-4 checkpoint (weights half written); restarted with
    `--resume_from_checkpoint latest` it resumes from step 2, its log before the crash is intact, and updates 3 to
    6 (across an epoch boundary) log exactly A's losses; the final weights, codebook and queues equal A's."""
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    result = _pretrain(straight)
    assert result.returncode == 0, result.stderr[-3000:]
    result = _pretrain(crashed, **{CRASH_ENV: "4"})
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-3000:])
    checkpoints = crashed / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_2", "step_4.tmp"]
    assert (checkpoints / "latest").read_text() == "step_2" and not (checkpoints / "step_4.tmp" / STATE_FILE).exists()
    before = (crashed / "logs" / "log.jsonl").read_text()
    assert [step for step, _ in _losses(crashed)] == [1, 2, 3, 4]

    result = _pretrain(crashed, "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step_2 at update 2" in result.stdout
    log = (crashed / "logs" / "log.jsonl").read_text()
    assert log.startswith(before)  # nothing logged before the crash was lost or changed
    reference = dict(_losses(straight))
    resumed = _losses(crashed)
    assert [step for step, _ in resumed] == [1, 2, 3, 4, 3, 4, 5, 6]  # the crashed run's 3 and 4 stay, then again
    for step, values in resumed:
        assert values == reference[step], step  # bit for bit, before the crash and after the resume
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_2", "step_4", "step_6"]
    final, expected = load_file(crashed / "model.safetensors"), load_file(straight / "model.safetensors")
    assert final.keys() == expected.keys() and any("quantizer.embed_sum" in k for k in final)
    assert any("queue" in k for k in final)
    for name, tensor in expected.items():
        assert torch.equal(final[name], tensor), name
