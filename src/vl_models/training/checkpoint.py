"""Atomic checkpoints around `accelerator.save_state`.

A checkpoint is written into `<dir>/step_<n>.tmp`, every file is fsync'ed, a `trainer_state.json` (the step,
the epoch, what the run needs to continue) is written last, and only then is the folder renamed to
`<dir>/step_<n>`. The `latest` file naming it is replaced the same way (write a temporary file, fsync, rename).
A crash at any point leaves either the previous checkpoint or the new one, never a half-written folder that
resume would pick: resume reads `latest`, and falls back to the newest complete `step_*` folder.

`trainer_state.json` also lists every file of the checkpoint with its size and SHA-256, and every safetensors
header is checked against its file's size: a truncated or corrupted file is reported by name and `latest` falls
back to the previous checkpoint. Nothing is unpickled without `weights_only=True` (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import struct
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
FILES_KEY = "files"  # in trainer_state.json: {relative path: {"size": bytes, "sha256": hex}}
CRASH_ENV = "VL_MODELS_TEST_CRASH_AT_CHECKPOINT"  # tests only: SIGKILL mid-write at this step
_STEP_DIR = re.compile(r"^step_(\d+)$")
_MAX_HEADER = 100_000_000  # safetensors' own limit


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (a rename inside it); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(root))


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` so a reader sees the old content or the new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(folder: str | os.PathLike) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file under `folder` except `trainer_state.json`."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STATE_FILE)
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a whole safetensors file (truncated, bad header, trailing bytes), or None. Reads only
    the header: the byte buffer must end exactly where the header's last tensor ends."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER or 8 + length > size:
            return f"{size} bytes, but the header alone claims {length} bytes (truncated?)"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"unreadable header ({error})"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    expected = 8 + length + max(ends, default=0)
    if expected != size:
        return f"{size} bytes, but its header describes {expected} (truncated or padded)"
    return None


def check_model_folder(name_or_path: str | os.PathLike) -> None:
    """Before `from_pretrained` of a local folder: a damaged safetensors file raises ValueError naming it (the
    loader's own error is a bare `SafetensorError` without the file). Hub ids and other paths pass."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            raise ValueError(f"{path}: {problem}")


def checkpoint_problems(folder: str | os.PathLike, *, checksums: bool = True) -> list[str]:
    """What is wrong with a checkpoint folder, one line per file ([] when it is whole): a missing or unreadable
    `trainer_state.json`, a listed file missing or of another size or SHA-256 (`checksums=False` skips hashing),
    a safetensors file whose header does not match its size."""
    folder = Path(folder)
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        return [f"{STATE_FILE}: missing (an interrupted save?)"]
    try:
        state = json.loads(state_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return [f"{STATE_FILE}: unreadable ({error})"]
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        return [f"{STATE_FILE}: no update number (`step`, an int >= 0)"]
    problems = []
    for name, expected in (state.get(FILES_KEY) or {}).items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{name}: {path.stat().st_size} bytes, {expected['size']} when saved (truncated?)")
        elif checksums and _sha256(path) != expected["sha256"]:
            problems.append(f"{name}: SHA-256 differs from the one saved (corrupted)")
    for path in sorted(folder.rglob("*.safetensors")):
        name = path.relative_to(folder).as_posix()
        problem = safetensors_problem(path)
        if problem and not any(p.startswith(f"{name}:") for p in problems):
            problems.append(f"{name}: {problem}")
    return problems


def is_complete(folder: Path) -> bool:
    return _STEP_DIR.match(folder.name) is not None and (folder / STATE_FILE).is_file()


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (`step_<n>` with a `trainer_state.json`), oldest first; tmp folders are ignored."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The folder named by `latest`, else the newest complete `step_*` folder, skipping (with a warning naming
    the file) any whose files fail `checkpoint_problems`. None when there is no checkpoint at all; a ValueError
    listing the problems when there are checkpoints but none is whole."""
    root = Path(checkpoint_dir)
    candidates = list(reversed(list_checkpoints(root)))
    named = _named_by_latest(root)
    if named is not None and named.is_dir() and is_complete(named):
        candidates = [named] + [c for c in candidates if c != named]
    rejected = []
    for folder in candidates:
        problems = checkpoint_problems(folder)
        if not problems:
            return folder
        rejected.append(f"{folder.name}: {'; '.join(problems)}")
        logger.warning("checkpoint %s is damaged (%s); trying the previous one", folder, "; ".join(problems))
    if rejected:
        raise ValueError(f"no usable checkpoint in {root}: " + " | ".join(rejected))
    return None


def _named_by_latest(root: Path) -> Path | None:
    """The `step_<n>` folder of `root` that the `latest` file names; None (with a warning) when it names anything
    else: a path (`../other-run/checkpoints/step_12` would resume another run's state) or undecodable bytes."""
    pointer = root / LATEST_FILE
    if not pointer.is_file():
        return None
    name = pointer.read_bytes().decode("utf-8", errors="replace").strip()
    if _STEP_DIR.match(name) is None:
        logger.warning("%s names %r, not a step_<n> folder beside it; using the newest complete checkpoint",
                       pointer, name[:200])
        return None
    return root / name


def resolve_checkpoint(spec: str | os.PathLike | None, checkpoint_dir: str | os.PathLike) -> Path | None:
    """`--resume_from_checkpoint`: None or "" -> None (start fresh); "latest" -> `latest_checkpoint` (None when
    there is none yet, so a restarted job starts fresh); a path -> that folder, which must be complete."""
    if spec is None or str(spec) == "":
        return None
    if str(spec) == "latest":
        return latest_checkpoint(checkpoint_dir)
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder does not exist: {folder}")
    if not (folder / STATE_FILE).is_file():
        raise ValueError(f"{folder} is not a complete checkpoint: it has no {STATE_FILE} (an interrupted save?)")
    problems = checkpoint_problems(folder)
    if problems:
        raise ValueError(f"{folder} is damaged: {'; '.join(problems)}")
    return folder


def save_checkpoint(accelerator, checkpoint_dir: str | os.PathLike, step: int, state: dict,
                    total_limit: int | None = None) -> Path:
    """`accelerator.save_state` into a tmp folder, then fsync, `trainer_state.json`, rename, `latest`.

    Call it on every process (each saves its RNG state); only the main process renames and prunes. Keeps the
    newest `total_limit` checkpoints when given. Returns the final folder.
    """
    root = Path(checkpoint_dir)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by a crash at this very step
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _crash_for_tests(tmp, step)
        fsync_tree(tmp)
        manifest = {FILES_KEY: file_manifest(tmp)}
        write_atomic(tmp / STATE_FILE, json.dumps({"step": step, **state, **manifest}, indent=2, default=str))
        if final.exists():  # a re-run of the same step: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        write_atomic(root / LATEST_FILE, final.name)
        if total_limit is not None and total_limit > 0:
            for old in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _crash_for_tests(tmp: Path, step: int) -> None:
    """With $VL_MODELS_TEST_CRASH_AT_CHECKPOINT == step: cut the weights file in half and SIGKILL this process,
    as a machine failure in the middle of writing the checkpoint would (tests/test_reliability.py)."""
    if os.environ.get(CRASH_ENV) != str(step):
        return
    for path in sorted(tmp.glob("*.safetensors")):
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size // 2)
    os.kill(os.getpid(), signal.SIGKILL)


def check_pickles(folder: str | os.PathLike) -> None:
    """accelerate unpickles the state of objects registered with `register_for_checkpointing` (the schedule)
    with `weights_only=False`: refuse the folder unless each of them loads with the restricted unpickler (plain
    tensors, numbers, strings, containers), so a checkpoint cannot run code on resume."""
    for path in sorted(Path(folder).glob("custom_checkpoint_*.pkl")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # the unpickler raises UnpicklingError, but also others on garbage
            raise ValueError(
                f"{path}: refusing to load: it does not load with torch.load(weights_only=True) "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
            ) from None


def load_checkpoint(accelerator, folder: str | os.PathLike) -> dict:
    """`accelerator.load_state(folder)` after `check_pickles`; returns the `trainer_state.json` saved with it
    (without the file list). Model weights come from safetensors; accelerate loads the optimizer, RNG and
    sampler states with `weights_only=True`."""
    folder = Path(folder)
    check_pickles(folder)
    accelerator.load_state(str(folder))
    state = json.loads((folder / STATE_FILE).read_text())
    state.pop(FILES_KEY, None)
    return state


__all__ = [
    "CRASH_ENV",
    "LATEST_FILE",
    "STATE_FILE",
    "check_model_folder",
    "check_pickles",
    "checkpoint_problems",
    "file_manifest",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "safetensors_problem",
    "save_checkpoint",
    "write_atomic",
]
