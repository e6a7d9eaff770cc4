"""Streamed pre-training data (issue 19 items 1 and 2): WebDataset / parquet shards through `datasets`' streaming
builders, split between processes and workers without repeats, corrupt samples skipped and counted with full
batches, and a resume after kill -9 that sees the uninterrupted run's batches (1 and 2 processes)."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from vl_models.data import build_shapes
from vl_models.training import UserError, read_log
from vl_models.training.checkpoint import CRASH_ENV
from vl_models.training.runner import load_script
from vl_models.training.streaming import ShardBatches, StreamLoader, expand_braces, open_stream, stream_files

ROOT = Path(__file__).resolve().parents[1]
NUM_SHARDS, PER_SHARD = 4, 10
BROKEN, NO_CAPTION = 17, 28  # sample indices: a JPEG that does not decode (shard 1), no .txt (shard 2)
VALID = NUM_SHARDS * PER_SHARD - 2
RUN = ["--method", "albef", "--size", "tiny", "--per_device_train_batch_size", "4", "--seed", "0",
       "--eval_steps", "0", "--logging_steps", "1"]
LOGGED = ("loss", "loss_itc", "loss_itm", "loss_mlm", "itm_accuracy", "lr")


def write_shards(folder: Path) -> Path:
    """Shapes JPEGs + captions in WebDataset tar shards `00000.tar`... (samples `000000.jpg` + `000000.txt`)."""
    rows = build_shapes(NUM_SHARDS * PER_SHARD, 0, 0, image_size=32, seed=0, tasks=("captions",))["captions_train"]
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(NUM_SHARDS):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for i in range(shard * PER_SHARD, (shard + 1) * PER_SHARD):
                jpeg = io.BytesIO()
                rows[i]["image"].convert("RGB").save(jpeg, format="JPEG")
                files = {"jpg": jpeg.getvalue() if i != BROKEN else b"not a jpeg",
                         "txt": rows[i]["captions"][0].encode()}
                if i == NO_CAPTION:
                    del files["txt"]
                for ext, payload in files.items():
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


def pattern(folder: Path) -> str:
    return str(folder / "{00000..00003}.tar")


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true", **extra}


def test_brace_patterns_globs_and_folders(tmp_path, shards):
    assert expand_braces("a/{08..11}.tar") == ["a/08.tar", "a/09.tar", "a/10.tar", "a/11.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    expected = [str(shards / f"{i:05d}.tar") for i in range(NUM_SHARDS)]
    for data in (pattern(shards), str(shards / "*.tar"), str(shards)):
        assert stream_files(data) == ("webdataset", expected)
    assert stream_files(str(shards / "00000.tar")) == ("webdataset", expected[:1])
    assert stream_files("shapes") is None and stream_files(str(tmp_path)) is None  # in-memory readers take them
    with pytest.raises(UserError, match=r"1 of 5 shards do not exist"):
        stream_files(str(shards / "{00000..00004}.tar"))


def keys(rows: list[dict]) -> dict:
    return {"keys": [(row["__pass__"], row["__key__"]) for row in rows]}


def read(batches: list[ShardBatches], num_workers: int, count: int) -> list[tuple[int, str]]:
    """The (pass, key) of the rows of `count` batches of each process."""
    out = []
    for part in batches:
        loader = iter(StreamLoader(part, num_workers=num_workers))
        out += [k for _ in range(count) for k in next(loader)["keys"]]
    return out


@pytest.mark.parametrize(("processes", "num_workers"), [(1, 2), (2, 2)])
def test_no_sample_twice_per_pass_across_processes_and_workers(shards, processes, num_workers):
    """Every valid sample once in the first pass, whatever reads it; the broken ones never; then the second pass."""
    ds, image, text = open_stream(pattern(shards))
    parts = [ShardBatches(ds, image, text, keys, 3, rank=r, world_size=processes, seed=0, shuffle_buffer=5)
             for r in range(processes)]
    seen = read(parts, num_workers, count=16 // processes)  # 48 rows: the 38 valid ones and 10 of the next pass
    first = [key for p, key in seen if p == 0]
    assert len(first) == len(set(first)) == VALID
    assert {f"{BROKEN:06d}", f"{NO_CAPTION:06d}"}.isdisjoint(k for _, k in seen)
    assert Counter(p for p, _ in seen)[1] == 48 - VALID


def test_the_shuffle_buffer_and_pass_change_the_order(shards):
    ds, image, text = open_stream(pattern(shards))
    plain = read([ShardBatches(ds, image, text, keys, 2, shuffle_buffer=0)], 0, 19)
    mixed = read([ShardBatches(ds, image, text, keys, 2, shuffle_buffer=8)], 0, 38)
    assert [k for _, k in plain] == sorted(k for _, k in plain)  # shard order
    first, second = ([k for p, k in mixed if p == e] for e in (0, 1))
    assert sorted(first) == sorted(second) == sorted(k for _, k in plain) and first != second != sorted(first)


def test_pretrain_streams_shards_and_counts_skipped_samples(shards, tmp_path):
    """9 updates of 4 in shard order read the first 38 samples: both bad ones skipped, counted, every batch full."""
    pretrain = load_script(ROOT / "examples" / "pretrain.py")
    out = pretrain.main([*RUN, "--data", pattern(shards), "--max_train_steps", "9", "--shuffle_buffer", "0",
                         "--output_dir", str(tmp_path / "out")])
    assert (out["step"], out["skipped_images"], out["skipped_captions"]) == (9, 1, 1)
    records = read_log(tmp_path / "out" / "logs" / "log.jsonl")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 10))
    assert [(r["data/skipped_images"], r["data/skipped_captions"]) for r in records
            if "data/skipped_images" in r] == [(1, 1)]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_pretrain_streams_parquet_shards(tmp_path, monkeypatch):
    # datasets sleeps 5 s whenever a parquet stream's iterator closes (an arrow thread-shutdown workaround): at every
    # pass end of a worker, which these 6-row passes would hit four times
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    rows = build_shapes(12, 0, 0, image_size=32, seed=1, tasks=("captions",))["captions_train"]
    folder = tmp_path / "parquet"
    folder.mkdir()
    for part in range(2):
        images, texts = [], []
        for row in rows.select(range(part * 6, part * 6 + 6)):
            jpeg = io.BytesIO()
            row["image"].convert("RGB").save(jpeg, format="JPEG")
            images.append(jpeg.getvalue())
            texts.append(row["captions"][0])
        pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "text": texts}),
                       folder / f"part-{part}.parquet")
    pretrain = load_script(ROOT / "examples" / "pretrain.py")
    out = pretrain.main([*RUN, "--data", str(folder), "--max_train_steps", "4", "--num_workers", "2",
                         "--output_dir", str(tmp_path / "out")])
    assert (out["step"], out["skipped_images"], out["skipped_captions"]) == (4, 0, 0)


def test_streams_need_max_train_steps_and_enough_shards(shards, tmp_path):
    pretrain = load_script(ROOT / "examples" / "pretrain.py")
    for extra, message in ((["--num_workers", "0"], "a stream has no length; give --max_train_steps"),
                           (["--max_train_steps", "2", "--num_workers", "5"], "4 shards per process cannot feed "
                                                                               "--num_workers 5")):
        with pytest.raises(UserError, match=message):
            pretrain.main([*RUN, "--data", pattern(shards), *extra, "--output_dir", str(tmp_path / "out")])


def logged(folder: Path) -> list[tuple[int, dict]]:
    return [(r["step"], {k: r[k] for k in LOGGED}) for r in read_log(folder / "logs" / "log.jsonl") if "loss" in r]


def launch(processes: int, output_dir: Path, *args: str, **environ) -> subprocess.CompletedProcess:
    script = [str(ROOT / "examples" / "pretrain.py"), *RUN, *args, "--output_dir", str(output_dir)]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "29641", *script]
    return subprocess.run(cmd, env=env(**environ), capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_resume_in_process_from_the_middle_of_a_pass_is_exact(shards, tmp_path):
    """The fast version of the test below: a run's checkpoint at update 5 (mid-pass: 20 of the 38 samples read, two
    workers) resumed in this process logs the uninterrupted run's values from update 6 on."""
    pretrain = load_script(ROOT / "examples" / "pretrain.py")
    flags = [*RUN, "--data", pattern(shards), "--max_train_steps", "8", "--checkpointing_steps", "5",
             "--num_workers", "2", "--shuffle_buffer", "6"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain.main([*flags, "--output_dir", str(straight)])
    shutil.copytree(straight, resumed)
    assert (resumed / "checkpoints" / "latest").read_text() == "step_5"
    for name in ("model.safetensors", "trainer_state.json"):
        (resumed / name).unlink()
    before = len(logged(resumed))
    pretrain.main([*flags, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    reference, again = dict(logged(straight)), logged(resumed)[before:]
    assert [step for step, _ in again] == [6, 7, 8]
    assert all(values == reference[step] for step, values in again)
    final, expected = load_file(resumed / "model.safetensors"), load_file(straight / "model.safetensors")
    assert [k for k in expected if not torch.equal(final[k], expected[k])] == []


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_resume_after_kill_9_sees_the_uninterrupted_batches(shards, tmp_path, processes):
    """A run SIGKILLed while writing the checkpoint of a random update (so it resumes from the one before, in the
    middle of a pass, with prefetched batches and the shuffle buffer lost) logs the uninterrupted run's losses bit
    for bit from there on and ends with its weights. 2 data-loader workers per process, a shuffle buffer."""
    total, every = 10, 2
    crash = random.Random(processes).choice(range(2 * every, total, every))
    flags = ["--data", pattern(shards), "--max_train_steps", str(total), "--checkpointing_steps", str(every),
             "--num_workers", "2", "--shuffle_buffer", "6"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = launch(processes, straight, *flags)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    killed = launch(processes, resumed, *flags, **{CRASH_ENV: str(crash)})
    assert killed.returncode != 0 and not (resumed / "model.safetensors").exists()
    before = len(logged(resumed))
    result = launch(processes, resumed, *flags, "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"at update {crash - every}" in result.stdout + result.stderr
    reference, again = dict(logged(straight)), logged(resumed)[before:]
    assert [step for step, _ in again] == list(range(crash - every + 1, total + 1))
    for step, values in again:
        assert values == reference[step], step
    state = json.loads((resumed / "checkpoints" / f"step_{total}" / "trainer_state.json").read_text())["stream"]
    assert (state["num_processes"], state["num_workers"]) == (processes, 2)
    final, expected = load_file(resumed / "model.safetensors"), load_file(straight / "model.safetensors")
    assert [k for k in expected if not torch.equal(final[k], expected[k])] == []
