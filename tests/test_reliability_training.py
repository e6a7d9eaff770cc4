"""Reliability of the training scripts, second round (docs/reliability.md, "Training runs"): a restarted finished
run is a no-op, resume is exact under gradient accumulation and reopens the logging window, one run per output
folder, `latest` stays inside its folder, and bad flags, data and checkpoints stop with one line and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from vl_models.training import UserError, read_log
from vl_models.training.checkpoint import LATEST_FILE, STATE_FILE, latest_checkpoint, resolve_checkpoint
from vl_models.training.lock import LOCK_FILE, run_lock

ROOT = Path(__file__).resolve().parents[1]
# 44 images / batch 4 = 11 batches per epoch: an epoch is no multiple of the accumulation or the logging window
RUN = ["--method", "albef", "--size", "tiny", "--num_train_images", "44", "--num_val_images", "8",
       "--per_device_train_batch_size", "4", "--seed", "0", "--max_train_steps", "12", "--checkpointing_steps", "4",
       "--eval_steps", "0"]
LOGGED = ("loss", "loss_itc", "loss_itm", "loss_mlm", "itm_accuracy", "lr")


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true", **extra}


def python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], env=env(), capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def pretrain(output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    result = python("pretrain.py", *RUN, "--output_dir", str(output_dir), *extra)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def logged(folder: Path) -> list[tuple[int, dict]]:
    return [(r["step"], {k: r[k] for k in LOGGED}) for r in read_log(folder / "logs" / "log.jsonl") if "loss" in r]


def interrupt_after(folder: Path, step: int) -> None:
    """Make `folder` look like a run preempted after its checkpoint at `step`: later checkpoints, the final model
    and the finished marker gone (the log keeps what was written)."""
    checkpoints = folder / "checkpoints"
    for later in checkpoints.glob("step_*"):
        if int(later.name.split("_")[1]) > step:
            shutil.rmtree(later)
    (checkpoints / LATEST_FILE).write_text(f"step_{step}")
    for name in ("model.safetensors", "config.json", STATE_FILE, "eval_results.json"):
        (folder / name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    pretrain(out, "--logging_steps", "1")
    return out


@pytest.mark.slow
def test_restarting_a_finished_run_is_a_no_op(finished, tmp_path):
    """Issue 18 item 1: with 11 updates per epoch and 12 in all, `--resume_from_checkpoint latest` on the finished
    folder used to train update 13 and replace the final model."""
    again = tmp_path / "again"
    shutil.copytree(finished, again)
    weights = (again / "model.safetensors").read_bytes()
    result = pretrain(again, "--logging_steps", "1", "--resume_from_checkpoint", "latest")
    assert "already finished at update 12: nothing to do" in result.stdout
    assert (again / "model.safetensors").read_bytes() == weights
    assert max(step for step, _ in logged(again)) == 12

    # preempted after the last checkpoint, before the final save: the restart saves the checkpoint's model, no
    # update more
    interrupt_after(again, 12)
    pretrain(again, "--logging_steps", "1", "--resume_from_checkpoint", "latest")
    assert max(step for step, _ in logged(again)) == 12
    final, expected = load_file(again / "model.safetensors"), load_file(finished / "model.safetensors")
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_resume_under_accumulation_is_exact_and_reopens_the_logging_window(tmp_path):
    """Issue 18 items 2 and 3: accumulation 2 over 11 batches per epoch (an epoch's last update takes one batch)
    and a checkpoint every 4 updates inside 3-update logging windows. Resumed from update 8 (in the second epoch,
    in the middle of the window 7-9), the run logs the uninterrupted run's values bit for bit and ends with its
    weights. The micro-step counter used to be rebuilt as step x accumulation (other ITM negatives) and the window's
    sums were lost."""
    flags = ["--gradient_accumulation_steps", "2", "--logging_steps", "3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain(straight, *flags)
    shutil.copytree(straight, resumed)
    interrupt_after(resumed, 8)
    before = len(logged(resumed))
    result = pretrain(resumed, *flags, "--resume_from_checkpoint", "latest")
    assert "step_8 at update 8" in result.stdout
    reference = dict(logged(straight))
    again = logged(resumed)[before:]
    assert [step for step, _ in again] == [9, 12]
    for step, values in again:
        assert values == reference[step], step
    final, expected = load_file(resumed / "model.safetensors"), load_file(straight / "model.safetensors")
    assert final.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(final[k], expected[k])] == []


@pytest.mark.slow
def test_resuming_with_another_method_or_size_is_refused(finished, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    interrupt_after(folder, 8)
    for flag, value in (("--method", "vlmae"), ("--size", "small")):
        args = [*RUN, "--output_dir", str(folder), "--resume_from_checkpoint", "latest"]
        args[args.index(flag) + 1] = value
        result = python("pretrain.py", *args)
        assert result.returncode == 2, result.stderr[-3000:]
        old = {"--method": "albef", "--size": "tiny"}[flag]
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: --resume_from_checkpoint: {folder / 'checkpoints' / 'step_8'} was saved by a run with "
            f"{flag} {old}, this one has {flag} {value}")


def test_a_second_run_on_the_same_output_dir_is_refused_until_the_holder_dies(tmp_path):
    """Issue 18 item 4: the lock names its holder; a kill -9 of the holder frees the folder (the kernel drops the
    lock with the process), though the lock file stays."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom vl_models.training.lock import run_lock\n"
         f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(120)"],
        env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        held = rf"--output_dir {tmp_path} is in use by another run \(host .+, pid {holder.pid}, since .+\): wait"
        with pytest.raises(UserError, match=held), run_lock(tmp_path):
            pass
        # the scripts stop before writing anything
        result = python("pretrain.py", *RUN, "--output_dir", str(tmp_path))
        assert result.returncode == 2 and f"pid {holder.pid}" in result.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "logs" / "log.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_FILE).is_file()
    with run_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    with run_lock(tmp_path, enabled=False) as path:  # the other processes of a distributed run
        assert path is None


def _checkpoint(root: Path, step: int, **state) -> Path:
    folder = root / f"step_{step}"
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text(json.dumps({"step": step, "files": {}, **state}))
    return folder


@pytest.mark.parametrize("pointer", [b"../../other-run/checkpoints/step_12", b"/abs/step_12", b"step_12/..",
                                     b"\xff\xfestep_2\x80", b""])
def test_latest_names_only_a_checkpoint_beside_it(tmp_path, pointer, caplog):
    """Issue 18 items 7 and 11: a `latest` naming a path (another run's checkpoint here) or holding undecodable
    bytes falls back, with a warning, to the newest complete checkpoint of this run instead of resuming another
    run's state or stopping."""
    other = _checkpoint(tmp_path / "other-run" / "checkpoints", 12)
    root = tmp_path / "run" / "checkpoints"
    _checkpoint(root, 2)
    newest = _checkpoint(root, 4)
    (root / LATEST_FILE).write_bytes(pointer)
    assert other.is_dir() and (root / pointer.decode("utf-8", "replace")).resolve() != newest
    assert latest_checkpoint(root) == newest == resolve_checkpoint("latest", root)
    assert "not a step_<n> folder beside it; using the newest complete checkpoint" in caplog.text


@pytest.mark.parametrize("state", [{"step": None}, {"step": "4"}, {"step": -1}, {}])
def test_trainer_state_without_a_step_is_a_damaged_checkpoint(tmp_path, state):
    """Issue 18 item 10: used to end in a KeyError after the state was loaded."""
    root = tmp_path / "checkpoints"
    older = _checkpoint(root, 2)
    bad = root / "step_4"
    bad.mkdir()
    (bad / STATE_FILE).write_text(json.dumps({"files": {}, **state}))
    assert latest_checkpoint(root) == older
    with pytest.raises(ValueError, match=r"step_4 is damaged: trainer_state.json: no update number \(`step`"):
        resolve_checkpoint(str(bad), root)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--gradient_accumulation_steps", "0", "--gradient_accumulation_steps must be >= 1, got 0"),
    ("--logging_steps", "0", "--logging_steps must be >= 1, got 0"),
    ("--per_device_train_batch_size", "0", "--per_device_train_batch_size must be >= 1, got 0"),
    ("--max_train_steps", "0", "--max_train_steps must be >= 1, got 0"),
    ("--max_train_steps", "-3", "--max_train_steps must be >= 1, got -3"),
    ("--learning_rate", "nan", "--learning_rate must be finite and > 0, got nan"),
    ("--learning_rate", "-1e-4", "--learning_rate must be finite and > 0, got -0.0001"),
    ("--checkpointing_steps", "-1", "--checkpointing_steps must be >= 0, got -1"),
    ("--eval_steps", "-1", "--eval_steps must be >= 0, got -1"),
    ("--num_train_epochs", "0", "--num_train_epochs must be >= 1, got 0"),
    ("--weight_decay", "inf", "--weight_decay must be >= 0, got inf"),
])
@pytest.mark.parametrize("script", ["pretrain.py", "finetune.py"])
def test_bad_training_flags_exit_2_naming_the_flag(tmp_path, script, flag, value, message):
    """Issue 18 item 10: these used to crash after training started (`--logging_steps 0`), train anyway or save a
    checkpoint every update (`--checkpointing_steps -1`). Nothing is written."""
    model = ["--task", "vqa", "--model_name_or_path", str(tmp_path / "model")] if script == "finetune.py" else []
    result = python(script, *model, f"{flag}={value}", "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"error: {message}"], result.stderr
    assert not (tmp_path / "out").exists()


def test_empty_metadata_and_a_parquet_without_rows_are_refused(tmp_path):
    """Issue 18 item 10: `datasets` used to fail deep inside its builders (an IndexError, a DatasetGenerationError)."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text("\n")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"image": pa.array([], pa.binary()), "text": pa.array([], pa.string())}), empty)
    for data, message in ((folder, f"{folder / 'metadata.jsonl'}: no records; expected one "
                                   '{"file_name": ..., "text": ...} per line'), (empty, f"{empty}: no rows")):
        result = python("pretrain.py", *RUN, "--data", str(data), "--output_dir", str(tmp_path / "out"))
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == f"error: --data {data}: {message}"


@pytest.mark.slow
def test_a_truncated_model_file_is_named_by_finetune_and_evaluate(finished, tmp_path):
    """Issue 18 item 10: used to end in safetensors' bare `SafetensorError: invalid header length` traceback."""
    model = tmp_path / "model"
    shutil.copytree(finished, model, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    weights = model / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    for script, extra in (("evaluate.py", ["--task", "retrieval"]),
                          ("finetune.py", ["--task", "vqa", "--output_dir", str(tmp_path / "out")])):
        result = python(script, "--model_name_or_path", str(model), *extra)
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and last.startswith(f"error: --model_name_or_path {model}: {weights}: "), last
        assert "truncated" in last


def test_datasets_writes_its_arrow_copies_under_cache_dir(tmp_path):
    """Issue 18 item 8: a folder or parquet source is copied to arrow files by `datasets`; with `--cache_dir` they
    (and their locks) go there, not under $HF_HOME, so a read-only home or a shared cache does not break a run."""
    import PIL.Image

    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(4):
        PIL.Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": f"red {i}"}) + "\n"
                                                   for i in range(4)))
    home, cache = tmp_path / "home", tmp_path / "cache"
    code = ("from vl_models.training import load_captions\n"
            f"data, _ = load_captions({str(folder)!r}, cache_dir={str(cache)!r})\n"
            "print(len(data['train']) + len(data['validation']))")
    clean = {k: v for k, v in env(HF_HOME=str(home)).items() if k != "HF_DATASETS_CACHE"}
    result = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "4", result.stderr[-2000:]
    assert list(cache.rglob("*.arrow"))
    assert not list(home.rglob("*.arrow")) and not list(home.rglob("*.lock"))
