"""The example scripts end to end on tiny models and Shapes: pre-training (then a resume that reproduces the
uninterrupted run), fine-tuning, evaluation, bad input, and a real 2-process run with accelerate launch."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vl_models.training import read_log

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TINY = ["--size", "tiny", "--num_train_images", "48", "--num_val_images", "16", "--per_device_train_batch_size", "8",
        "--logging_steps", "1", "--seed", "0"]
PRETRAIN = ["--method", "vlmae", *TINY, "--max_train_steps", "4", "--checkpointing_steps", "2", "--eval_steps", "2"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}


def run(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return result


def python(script: str, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, str(EXAMPLES / script), *args])


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"vl_examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_records(folder: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_log(folder / "logs" / "log.jsonl") if "loss" in r}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    result = python("pretrain.py", *PRETRAIN, "--output_dir", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_pretrain_writes_logs_checkpoints_and_a_model_folder(pretrained):
    records = train_records(pretrained)
    assert sorted(records) == [1, 2, 3, 4]
    for record in records.values():
        for key in ("loss", "loss_itc", "loss_itm", "loss_mlm", "loss_rmim", "loss_ifr", "itm_accuracy", "lr",
                    "samples_per_s", "alpha"):
            assert isinstance(record[key], float) and math.isfinite(record[key]), key
    evals = [r for r in read_log(pretrained / "logs" / "log.jsonl") if "eval/text_to_image_r1" in r]
    assert [r["step"] for r in evals] == [2, 4]
    checkpoints = pretrained / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_2", "step_4"]
    assert (checkpoints / "latest").read_text() == "step_4"
    assert json.loads((checkpoints / "step_4" / "trainer_state.json").read_text())["step"] == 4
    results = json.loads((pretrained / "eval_results.json").read_text())
    assert results[0]["task"] == "retrieval" and results[0]["zero_shot"] and "text_to_image_r1" in results[0]["metrics"]
    from safetensors.torch import load_file
    from transformers import AutoModelForPreTraining

    model = AutoModelForPreTraining.from_pretrained(pretrained)  # the final folder loads with the Auto classes
    assert type(model).__name__ == "VlmaeForPreTraining"
    checkpoint = load_file(checkpoints / "step_4" / "model.safetensors")  # and holds the last update's weights
    for name, value in model.state_dict().items():
        if name in checkpoint:
            assert torch.equal(value, checkpoint[name]), name


@pytest.mark.slow
def test_resume_from_latest_reproduces_the_uninterrupted_run_then_pushes(pretrained, tmp_path):
    """Copy only the step-2 checkpoint (plus a half-written step-3 folder a crash would leave), resume from
    `latest`: updates 3 and 4 log exactly the losses of the uninterrupted run. The run ends with --push_to_hub
    to a Hub-compatible server on 127.0.0.1 (tests/hub_server.py)."""
    from hub_server import HubServer

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    shutil.copytree(pretrained / "checkpoints" / "step_2", checkpoints / "step_2")
    (checkpoints / "latest").write_text("step_2")
    (checkpoints / "step_3.tmp").mkdir()
    server = HubServer(tmp_path / "hub").start()
    try:
        hub_env = {"HF_ENDPOINT": server.url, "HF_TOKEN": "hf_test_token", "HF_HUB_OFFLINE": "0",
                   "HF_HOME": str(tmp_path / "hf_home")}
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "pretrain.py"), *PRETRAIN, "--output_dir", str(tmp_path),
             "--resume_from_checkpoint", "latest", "--push_to_hub", "--hub_model_id", "org/tiny-vlmae"],
            env={**env(), **hub_env}, capture_output=True, text=True, timeout=240, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        _, tree = server.store.head("models", "org/tiny-vlmae", "main")
    finally:
        server.stop()
    pushed = set(server.store.files(tree))
    assert {"config.json", "model.safetensors", "processor_config.json", "README.md"} <= pushed
    card = (tree / "README.md").read_text()
    assert "text_to_image_r1" in card and "| shapes | validation |" in card  # the run's results in the card
    assert "resumed from" in result.stdout and "step_2 at update 2" in result.stdout
    resumed, straight = train_records(tmp_path), train_records(pretrained)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        for key in ("loss", "loss_itc", "loss_itm", "loss_mlm", "loss_rmim", "loss_ifr", "lr"):
            assert resumed[step][key] == straight[step][key], (step, key)
    assert (checkpoints / "latest").read_text() == "step_4"


@pytest.mark.slow
def test_finetune_then_evaluate(pretrained, tmp_path):
    out = tmp_path / "vqa"
    result = python("finetune.py", "--task", "vqa", "--model_name_or_path", str(pretrained), "--output_dir",
                    str(out), *TINY[2:], "--max_train_steps", "3", "--checkpointing_steps", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(train_records(out)) == [1, 2, 3]
    import vl_models

    model = vl_models.VlmaeForQuestionAnswering.from_pretrained(out)
    assert model.config.num_labels == 17 and model.config.id2label[1] == "yes"
    result = python("evaluate.py", "--model_name_or_path", str(out), "--split", "test", "--num_test_images", "24")
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((out / "eval_results.json").read_text())
    test = [r for r in records if r["split"] == "test"]
    assert len(test) == 1 and test[0]["task"] == "vqa" and test[0]["num_examples"] == 24
    assert 0.0 <= test[0]["metrics"]["accuracy"] <= 1.0 and "majority_baseline" in test[0]["metrics"]
    assert any(r["split"] == "validation" for r in records)  # finetune.py's own record is kept


@pytest.mark.slow
def test_evaluate_zero_shot_retrieval_in_process(pretrained, tmp_path):
    """A pre-training folder gives zero-shot retrieval (ITC ranks, the pre-trained ITM head re-ranks)."""
    evaluate = script("evaluate")
    output = tmp_path / "results.json"
    [record] = evaluate.main(["--model_name_or_path", str(pretrained), "--split", "test", "--num_test_images", "12",
                              "--output_file", str(output)])
    assert record["task"] == "retrieval" and record["zero_shot"] and record["num_examples"] == 12
    metrics = record["metrics"]
    assert metrics["chance_text_to_image_r1"] == pytest.approx(1 / 12)
    assert all(0.0 <= metrics[f"{side}_r{k}"] <= 1.0 for side in ("text_to_image", "image_to_text") for k in (1, 5))
    assert json.loads(output.read_text()) == [record]


def test_evaluate_bad_model_path_exits_2(tmp_path, capsys):
    """Same code as the command line (run_cli), in this process: no model folder -> exit 2 with one line."""
    evaluate = script("evaluate")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.run_cli(evaluate.main, ["--model_name_or_path", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: --model_name_or_path") and "Traceback" not in err


@pytest.mark.parametrize(("overrides", "expected"), [
    ("quue_size=0", "error: model: unknown config field 'quue_size' for VlmaeConfig; did you mean 'queue_size'?"),
    ("text_config.num_fusion_layer=1", "error: model: unknown config field 'text_config.num_fusion_layer' for "
                                       "TextTowerConfig; did you mean 'num_fusion_layers'"),
    ("alpha=abc", "error: model: Validation error for field 'alpha': TypeError: Field 'alpha' with value 'abc'"),
])
def test_pretrain_bad_config_overrides_exit_2_in_one_line(tmp_path, capsys, overrides, expected):
    """An unknown key used to be saved into config.json and change nothing; a value of the wrong type escaped as a
    traceback (the config validator's error is no ValueError)."""
    pretrain = script("pretrain")
    with pytest.raises(SystemExit) as exit_info:
        pretrain.run_cli(pretrain.main, [*PRETRAIN, "--config_overrides", overrides,
                                         "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(expected), err
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.parametrize("case", ["missing", "malformed", "no_field"])
def test_pretrain_bad_data_exits_2_with_the_file_record_and_field(tmp_path, capsys, case):
    path = tmp_path / "captions.json"
    if case == "malformed":
        path.write_text('{"images": [{"filename": "a.jpg",')
    elif case == "no_field":
        path.write_text(json.dumps({"images": [{"filename": "a.jpg", "imgid": 5, "split": "train"}]}))
    pretrain = script("pretrain")
    with pytest.raises(SystemExit) as exit_info:
        pretrain.run_cli(pretrain.main, [*PRETRAIN, "--data", str(path), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and err.count("\n") == 1
    expected = {"missing": f"does not exist: {path}", "malformed": f"{path}: malformed JSON",
                "no_field": f"{path}: record 0 (imgid=5) is missing field 'sentences'"}[case]
    assert err.startswith(f"error: --data {path}: ") and expected in err


@pytest.mark.slow
def test_two_process_cpu_run(tmp_path):
    """accelerate launch with 2 gloo processes: finishes, the main process alone writes one log and one
    checkpoint folder per save (each rank adds its RNG state), and the losses are finite."""
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29637",
           str(EXAMPLES / "pretrain.py"), "--method", "albef", *TINY, "--max_train_steps", "2",
           "--checkpointing_steps", "2", "--eval_steps", "0", "--output_dir", str(tmp_path)]
    result = run(cmd, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    assert [p.name for p in tmp_path.rglob("log.jsonl")] == ["log.jsonl"]
    records = read_log(tmp_path / "logs" / "log.jsonl")
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2]  # once each: only the main process logs
    assert all(math.isfinite(r[k]) for r in records if "loss" in r for k in ("loss", "loss_itc", "loss_itm"))
    folder = tmp_path / "checkpoints" / "step_2"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_2"]
    assert {p.name for p in folder.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert len(list(folder.glob("model*.safetensors"))) == 1


@pytest.mark.slow
def test_demo_runs_every_stage_and_prints_the_table(tmp_path):
    """`make demo` at toy size: pre-training, zero-shot retrieval by ITC alone and with ITM re-ranking, three
    fine-tunings, their test evaluations and the table (the numbers of a real run: docs/training.md)."""
    result = python("demo.py", "--output_dir", str(tmp_path), "--size", "tiny", "--pretrain_steps", "2",
                    "--finetune_steps", "2", "2", "2", "--batch_size", "4", "--num_train_images", "16",
                    "--num_test_images", "8")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for row in ("retrieval text->image R@5", "with ITM re-ranking, R@5", "VQA accuracy", "grounding accuracy"):
        assert row in result.stdout
    saved = json.loads((tmp_path / "demo_results.json").read_text())["results"]
    assert set(saved) == {"zero-shot", "zero-shot-itm", "retrieval", "retrieval-itm", "vqa", "grounding"}
    for folder, name in (("pretrained", "zero-shot"), ("retrieval", "retrieval")):
        for ranking in (name, name + "-itm"):  # each ranking keeps its own results file beside the model
            assert (tmp_path / folder / f"eval_results_{ranking}.json").is_file()


def test_vilta_second_stage_distils_from_the_first_stage_student(tmp_path, capsys):
    """ViLTA's documented route to a teacher that knows language: stage 1 with alpha 0 (the small/tiny presets),
    stage 2 from its folder with --reset_teacher: the frozen teacher starts as stage 1's language encoder and MLM
    head. --reset_teacher on a method without a teacher exits 2 naming the flag."""
    from vl_models import ViltaForPreTraining

    pretrain = script("pretrain")
    stage = ["--method", "vilta", *TINY, "--max_train_steps", "2", "--checkpointing_steps", "0", "--eval_steps", "0"]
    pretrain.main([*stage, "--output_dir", str(tmp_path / "stage1")])
    first = ViltaForPreTraining.from_pretrained(tmp_path / "stage1")
    assert first.config.alpha == 0.0
    assert not torch.equal(first.teacher.text.embeddings.word_embeddings.weight,
                           first.vilta.text.embeddings.word_embeddings.weight)  # the student moved on
    args = pretrain.parse_args([*stage, "--output_dir", str(tmp_path / "stage2"), "--model_name_or_path",
                                str(tmp_path / "stage1"), "--reset_teacher", "--config_overrides", "alpha=0.4"])
    second, _ = pretrain.build_model(args)
    assert second.config.alpha == 0.4
    students = {**{f"text.{k}": v for k, v in first.vilta.text.state_dict().items()},
                **{f"mlm_head.{k}": v for k, v in first.mlm_head.state_dict().items()}}
    assert second.teacher.state_dict().keys() == students.keys()
    for name, teacher in second.teacher.state_dict().items():
        assert torch.equal(teacher, students[name]), name
    with pytest.raises(SystemExit) as exit_info:
        pretrain.run_cli(pretrain.main, [*PRETRAIN, "--reset_teacher", "--output_dir", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "--reset_teacher is for vilta" in capsys.readouterr().err


def test_a_methods_training_presets_win_over_the_shared_ones_and_flags_win_over_both():
    """VL-BEiT trains from scratch at 1e-3 at the CPU sizes (its MIM stayed at the unigram at the shared 3e-4:
    docs/methods/vl_beit.md), its visual tokenizer too; other methods keep the shared preset; a flag wins."""
    pretrain = script("pretrain")
    lr = {method: pretrain.parse_args(["--method", method, "--size", "tiny", "--output_dir", "x"]).learning_rate
          for method in ("vl_beit", "vl_beit_tokenizer", "albef")}
    assert lr == {"vl_beit": 1e-3, "vl_beit_tokenizer": 1e-3, "albef": 3e-4}
    args = pretrain.parse_args(["--method", "vl_beit", "--size", "small", "--learning_rate", "2e-4", "--output_dir", "x"])
    assert args.learning_rate == 2e-4 and args.per_device_train_batch_size == 32
