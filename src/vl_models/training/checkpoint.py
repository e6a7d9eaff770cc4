"""Atomic checkpoints around `accelerator.save_state`.

A checkpoint is written into `<dir>/step_<n>.tmp`, every file is fsync'ed, a `trainer_state.json` (the step,
the epoch, what the run needs to continue) is written last, and only then is the folder renamed to
`<dir>/step_<n>`. The `latest` file naming it is replaced the same way (write a temporary file, fsync, rename).
A crash at any point leaves either the previous checkpoint or the new one, never a half-written folder that
resume would pick: resume reads `latest`, and falls back to the newest complete `step_*` folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


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
    """The folder named by `latest` when it is complete, else the newest complete `step_*` folder."""
    root = Path(checkpoint_dir)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named.is_dir() and is_complete(named):
            return named
    found = list_checkpoints(root)
    return found[-1] if found else None


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
        fsync_tree(tmp)
        write_atomic(tmp / STATE_FILE, json.dumps({"step": step, **state}, indent=2, default=str))
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


def load_checkpoint(accelerator, folder: str | os.PathLike) -> dict:
    """`accelerator.load_state(folder)`; returns the `trainer_state.json` saved with it."""
    folder = Path(folder)
    accelerator.load_state(str(folder))
    return json.loads((folder / STATE_FILE).read_text())


__all__ = [
    "LATEST_FILE",
    "STATE_FILE",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
    "write_atomic",
]
