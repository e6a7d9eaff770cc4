"""One run per output folder.

Two runs writing to one `--output_dir` would interleave their logs and replace each other's checkpoints and
final model. The main process of a run holds an exclusive `flock` on `<output_dir>/.run.lock` for the whole run
and writes its host, pid and start time into it; a second run finds the lock held and stops with those.

The stale-lock rule comes from the kernel: the lock belongs to an open file of a live process, so it is released
when the holder exits or dies (`kill -9` and out-of-memory kills included); on NFS the server releases it when the
holder's lease ends. A leftover `.run.lock` file is no lock. Where the filesystem has no locks at all the run goes
on with a warning, unprotected.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from .data import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"


def _holder(fd: int) -> str:
    """The holder's own description ("host h, pid p, since t"), or what can be said without it."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"host {info['host']}, pid {info['pid']}, since {info['started']}"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


@contextmanager
def run_lock(folder: str | os.PathLike, enabled: bool = True):
    """Hold the lock of `folder` (created if missing) while the block runs; `enabled=False` (the other processes
    of a distributed run: the main one locks for all) does nothing. A held lock raises `UserError` naming the
    holder."""
    if not enabled:
        yield None
        return
    path = Path(folder) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"--output_dir {folder} is in use by another run ({_holder(fd)}): wait for it to "
                            f"end, or choose another --output_dir") from None
        except OSError as error:  # a filesystem without locks
            logger.warning("cannot lock %s (%s): nothing stops a second run from writing to the same folder",
                           path, error)
        else:
            info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        yield path
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


__all__ = ["LOCK_FILE", "run_lock"]
