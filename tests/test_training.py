"""Training helpers: optimizer groups, schedule, atomic checkpoints and resume, logs, clean data errors, and the
pre-training model's ITC over 2 ranks x B/2 against 1 rank x B."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from torch import nn

import vl_models
from vl_models.training import (
    LATEST_FILE,
    STATE_FILE,
    EpochSampler,
    JsonlTracker,
    LossMeter,
    UserError,
    build_optimizer,
    build_scheduler,
    latest_checkpoint,
    list_checkpoints,
    load_captions,
    load_checkpoint,
    load_task_data,
    optimizer_step,
    param_groups,
    parse_overrides,
    ramp,
    read_log,
    resolve_checkpoint,
    run_cli,
    save_checkpoint,
    step_generator,
    warmup_cosine,
    write_atomic,
    write_results,
)
from vl_models.training.evaluation import recall

ROOT = Path(__file__).resolve().parents[1]


# -- optimizer and schedule ----------------------------------------------------------------------------------


def test_param_groups_split_decay_and_skip_frozen():
    model = vl_models.AlbefForPreTraining(vl_models.get_config("albef", "tiny"))
    decay, rest = param_groups(model, 0.05)
    names = decay["names"] + rest["names"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(names) == len(set(names)) and set(names) == trainable  # each trainable parameter exactly once
    assert not any(n.startswith(("momentum_model.", "momentum_mlm_head.")) for n in names)  # the frozen teacher
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    for name in ("albef.text.embeddings.word_embeddings.weight", "albef.vision.embeddings.pos_embed",
                 "albef.vision.embeddings.cls_token", "temp", "itm_head.bias"):
        assert name in rest["names"], name
    assert all(model.get_parameter(n).ndim >= 2 for n in decay["names"])
    assert "itm_head.weight" in decay["names"] and "albef.vision_proj.weight" in decay["names"]
    norms = [f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)]
    assert set(norms) & trainable <= set(rest["names"])
    optimizer = build_optimizer(model, 1e-3, 0.05)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    with pytest.raises(ValueError, match="learning_rate"):
        build_optimizer(model, 0.0)


def test_head_learning_rate_applies_to_everything_outside_the_backbone():
    model = vl_models.AlbefForQuestionAnswering(vl_models.get_config("albef", "tiny", num_labels=3))
    optimizer = build_optimizer(model, 1e-4, 0.05, head_learning_rate=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [(g["lr"], g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in optimizer.param_groups]
    head = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("albef.")}
    assert head and all(n.startswith("vqa_head.") for n in head)
    assert [(lr, wd) for lr, wd, _ in groups] == [(1e-4, 0.05), (1e-3, 0.05), (1e-4, 0.0), (1e-3, 0.0)]
    assert set().union(*(n for lr, _, n in groups if lr == 1e-3)) == head
    # the split keeps every trainable parameter exactly once, as without it
    assert sorted(n for *_, ns in groups for n in ns) == sorted(n for n, p in model.named_parameters()
                                                                if p.requires_grad)
    with pytest.raises(ValueError, match="head_learning_rate"):
        build_optimizer(model, 1e-4, head_learning_rate=-1.0)
    with pytest.raises(ValueError, match="needs a model with a backbone"):
        build_optimizer(nn.Linear(2, 2), 1e-4, head_learning_rate=1e-3)


def test_warmup_cosine_schedule():
    ref = [(s + 1) / 5 for s in range(4)] + [0.5 * (1 + math.cos(math.pi * (s - 4) / 10)) for s in range(4, 15)]
    assert [warmup_cosine(s, 4, 14) for s in range(15)] == pytest.approx(ref)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    scheduler = build_scheduler(optimizer, 4, 14)
    lrs = []
    for _ in range(14):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.2 * r for r in ref[:14]])
    assert max(lrs) == pytest.approx(0.2) and lrs[-1] < 0.01
    linear = build_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 0, 10, name="linear")
    assert linear.get_last_lr()[0] == 1.0
    assert [ramp(0.4, s, 10) for s in (0, 5, 10, 20)] == pytest.approx([0.0, 0.2, 0.4, 0.4])
    assert ramp(0.4, 0, 0) == 0.4


def test_epoch_sampler_and_step_generator():
    sampler = EpochSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpochSampler(5, shuffle=False)) == list(range(5))
    draw = [torch.rand(3, generator=step_generator(0, 7, 1, "cpu")) for _ in range(2)]
    assert torch.equal(*draw)
    assert not torch.equal(draw[0], torch.rand(3, generator=step_generator(0, 7, 0, "cpu")))
    # --torch_compile: the same seed goes to the global RNG (dynamo cannot trace an explicit generator)
    seeded = []
    for _ in range(2):
        assert step_generator(0, 7, 1, "cpu", global_rng=True) is None
        seeded.append(torch.rand(3))
    assert torch.equal(seeded[0], draw[0]) and torch.equal(seeded[1], draw[0])


def test_parse_overrides():
    assert parse_overrides("queue_size=0,text_config.hidden_dropout_prob=0.0,vision_config.qkv_bias=false,x=abc") == {
        "queue_size": 0, "text_config": {"hidden_dropout_prob": 0.0}, "vision_config": {"qkv_bias": False}, "x": "abc"}
    assert parse_overrides(None) == {}
    # Python's spelling too: a bool field given "False" must not get the truthy string
    assert parse_overrides("align_on_masked_image=False,a=True,b=None") == {
        "align_on_masked_image": False, "a": True, "b": None}
    with pytest.raises(SystemExit, match="key=value"):
        parse_overrides("queue_size")


# -- accelerator-backed helpers ------------------------------------------------------------------------------


# `prepared` (conftest.py): a tiny model, optimizer and schedule prepared by a CPU Accelerator


def test_optimizer_step_skips_non_finite_gradients(prepared):
    accelerator, model, optimizer, scheduler = prepared
    before = model.weight.detach().clone()
    model(torch.ones(1, 3)).sum().backward()
    model.weight.grad[0, 0] = float("nan")
    norm, skipped = optimizer_step(accelerator, model, optimizer, scheduler, 1.0)
    assert skipped and not math.isfinite(norm)
    assert torch.equal(model.weight.detach(), before) and model.weight.grad is None
    model(torch.ones(1, 3)).sum().backward()
    norm, skipped = optimizer_step(accelerator, model, optimizer, scheduler, 1.0)
    assert not skipped and norm == pytest.approx(math.sqrt(6 + 2))  # 2 x 3 ones and 2 biases
    assert not torch.equal(model.weight.detach(), before)


def test_checkpoint_atomic_save_latest_and_resume(prepared, tmp_path):
    accelerator, model, optimizer, scheduler = prepared
    root = tmp_path / "checkpoints"
    assert resolve_checkpoint("latest", root) is None and resolve_checkpoint(None, root) is None
    saved = {}
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.add_(1.0)
        saved[step] = model.weight.detach().clone()
        folder = save_checkpoint(accelerator, root, step, {"epoch": 0}, total_limit=2)
        assert folder == root / f"step_{step}" and (folder / STATE_FILE).is_file()
    assert [p.name for p in list_checkpoints(root)] == ["step_2", "step_3"]  # the oldest was pruned
    assert (root / LATEST_FILE).read_text() == "step_3"
    assert not list(root.glob("*.tmp")) and not list(root.glob(".*.tmp"))

    # a crash mid-save leaves a tmp folder and maybe a renamed-but-incomplete one: neither is ever picked
    (root / "step_9.tmp").mkdir()
    (root / "step_9.tmp" / "model.safetensors").write_bytes(b"partial")
    (root / "step_8").mkdir()
    assert latest_checkpoint(root) == root / "step_3"
    (root / LATEST_FILE).write_text("step_9.tmp")  # even a pointer to it falls back to the newest complete one
    assert latest_checkpoint(root) == root / "step_3"
    (root / LATEST_FILE).unlink()
    assert latest_checkpoint(root) == root / "step_3"

    with torch.no_grad():
        model.weight.zero_()
    state = load_checkpoint(accelerator, resolve_checkpoint(str(root / "step_2"), root))
    assert state == {"step": 2, "epoch": 0}
    assert torch.equal(model.weight.detach(), saved[2])
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_checkpoint(str(root / "step_9.tmp"), root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(str(root / "step_77"), root)


def test_write_atomic_and_results_merge(tmp_path):
    path = tmp_path / "latest"
    write_atomic(path, "step_1")
    write_atomic(path, "step_2")
    assert path.read_text() == "step_2" and os.listdir(tmp_path) == ["latest"]
    results = tmp_path / "eval_results.json"
    write_results(results, [{"task": "vqa", "dataset": "shapes", "split": "validation", "metrics": {"a": 1}}])
    merged = write_results(results, [{"task": "vqa", "dataset": "shapes", "split": "validation", "metrics": {"a": 2}},
                                     {"task": "vqa", "dataset": "shapes", "split": "test", "metrics": {"a": 3}}])
    assert json.loads(results.read_text()) == merged and [r["metrics"]["a"] for r in merged] == [2, 3]


def test_results_merge_keeps_one_record_per_grounding_protocol(tmp_path):
    results = tmp_path / "eval_results.json"
    grounding = {"task": "grounding", "dataset": "shapes", "split": "test"}
    write_results(results, [{**grounding, "metrics": {"accuracy": 0.5}}])  # written before records had a protocol
    write_results(results, [{**grounding, "protocol": "supervised", "metrics": {"accuracy": 0.73}}])
    merged = write_results(results, [{**grounding, "protocol": "weak", "metrics": {"accuracy": 0.70}}])
    assert [(r["protocol"], r["metrics"]["accuracy"]) for r in merged] == [("supervised", 0.73), ("weak", 0.70)]
    merged = write_results(results, [{**grounding, "protocol": "weak", "metrics": {"accuracy": 0.59}}])
    assert [(r["protocol"], r["metrics"]["accuracy"]) for r in merged] == [("supervised", 0.73), ("weak", 0.59)]


def test_jsonl_tracker_and_loss_meter(tmp_path):
    accelerator = Accelerator(cpu=True, log_with=[JsonlTracker(tmp_path / "logs")])
    accelerator.init_trackers("test", config={"lr": 0.1, "path": tmp_path})
    meter = LossMeter()
    for value in (1.0, 3.0):
        meter.update({"loss": torch.tensor(value), "loss_itc": torch.tensor(value / 2), "itm_logits": torch.ones(2),
                      "itm_accuracy": torch.tensor(0.5), "image_mask": None})
    values = meter.mean(accelerator)
    assert values == {"itm_accuracy": 0.5, "loss": 2.0, "loss_itc": 1.0} and meter.count == 0
    accelerator.log({**values, "lr": float("nan")}, step=3)
    accelerator.end_training()
    records = read_log(tmp_path / "logs" / "log.jsonl")
    assert len(records) == 1 and records[0]["step"] == 3 and records[0]["loss"] == 2.0 and records[0]["lr"] == "nan"
    assert json.loads((tmp_path / "logs" / "config.json").read_text())["path"] == str(tmp_path)


def test_recall_with_chance_level():
    result = recall(torch.eye(4), [0, 1, 2, 3])
    assert result["text_to_image_r1"] == 1.0 and result["chance_text_to_image_r1"] == 0.25


# -- data errors ---------------------------------------------------------------------------------------------


def _karpathy(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": records}))
    return path


def _image(tmp_path: Path, name: str) -> dict:
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / name)
    return {"filename": name, "imgid": len(list(tmp_path.glob("*.png"))), "split": "train",
            "sentences": [{"raw": f"a red square {name}"}]}


def test_bad_data_raises_a_user_error_naming_file_record_and_field(tmp_path):
    with pytest.raises(UserError, match="does not exist: .*nowhere.json"):
        load_captions(str(tmp_path / "nowhere.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(UserError, match="broken.json: malformed JSON"):
        load_captions(str(broken))
    record = _image(tmp_path, "a.png")
    del record["sentences"]
    with pytest.raises(UserError, match=r"captions.json: record 0 \(imgid=1\) is missing field 'sentences'"):
        load_captions(str(_karpathy(tmp_path, [record])))
    with pytest.raises(UserError, match="--task must be one of"):
        load_task_data("captioning", "shapes")


def test_corrupt_image_is_skipped_and_counted(tmp_path, caplog):
    records = [_image(tmp_path, f"{i}.png") for i in range(4)]
    (tmp_path / "2.png").write_bytes(b"\x89PNG truncated")
    with caplog.at_level(logging.WARNING):
        data, info = load_captions(str(_karpathy(tmp_path, records)), validation_fraction=0.25)
    assert info["skipped_images"] == 1 and len(data["train"]) + len(data["validation"]) == 3
    assert "2.png" in caplog.text and "skipped 1 of" in caplog.text


def test_run_cli_prints_one_line_and_exits_2(capsys):
    def main(argv):
        raise UserError(f"--data {argv[0]}: record 3 (imgid=7) is missing field 'sentences'")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["x.json"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --data x.json: record 3 (imgid=7) is missing field 'sentences'\n"


# -- distributed ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_itc_of_the_model_over_two_ranks_equals_one_rank(tmp_path):
    """The pre-training model (queue_size 0, alpha 0, no dropout): loss_itc and the ITC gradients averaged over
    2 ranks x B/2 (features gathered across ranks) equal 1 process on the whole batch B."""
    worker = ROOT / "tests" / "train_workers" / "itc_worker.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    sys.path.insert(0, str(worker.parent))
    try:
        import itc_worker
    finally:
        sys.path.remove(str(worker.parent))
    model = itc_worker.build()
    reference = itc_worker.itc_step(model, itc_worker.global_batch(model.config))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["loss_itc"] != pytest.approx(ranks[1]["loss_itc"])  # the halves really differ
    # the halves run through GEMMs of other shapes than the whole batch, whose blocking (and so float32 rounding)
    # depends on the CPU's kernels: relative 1e-5, and an absolute slack of ~8 ulps at each gradient's own scale
    # for the entries near zero, where the rounding of the larger terms summed into them dominates
    assert (ranks[0]["loss_itc"] + ranks[1]["loss_itc"]) / 2 == pytest.approx(reference["loss_itc"], rel=1e-5)
    for name in itc_worker.GRAD_NAMES:
        scale = reference[name].abs().max().item()
        torch.testing.assert_close((ranks[0][name] + ranks[1][name]) / 2, reference[name], rtol=1e-5,
                                   atol=1e-6 * scale)
