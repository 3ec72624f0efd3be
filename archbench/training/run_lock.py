"""One writer per run_dir: an exclusive lock held for the whole training run, and clean-up of what a killed
writer left behind.

The lock is ``fcntl.flock`` on ``run_dir/.lock``: the operating system drops it when its holder exits, however
it exits (kill -9 included), so a crashed run never blocks the next one. The file names the holder (PID, host,
start time) so the second writer can say who holds it. Once the lock is held nobody else writes the run_dir,
so temporary checkpoint files found then are leftovers of a killed writer and are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from archbench.training.checkpoint import checkpoint_dir

log = logging.getLogger("archbench.train")

LOCK_FILE = ".lock"


class RunDirLockedError(RuntimeError):
    """Another live process is training into this run_dir."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"PID {info.get('pid', '?')} on host {info.get('host', '?')} (since {started})"


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete half-written checkpoint files (``.step_*.pt.tmp-PID``) under ``run_dir``; call with the lock held."""
    folder = checkpoint_dir(run_dir)
    stale = sorted(folder.glob(".step_*.pt.tmp-*")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.warning("removed %d partial checkpoint file(s) left by an interrupted run: %s",
                    len(stale), ", ".join(p.name for p in stale))
    return stale


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold the exclusive lock on ``run_dir`` for the ``with`` body (a no-op when not ``enabled``: DDP ranks > 0)."""
    if not enabled:
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirLockedError(
                f"run_dir {run_dir} is in use by {_holder(path)}; wait for that run to finish or stop it, "
                "or train into another run_dir="
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode())
        os.fsync(fd)
        remove_stale_temporaries(Path(run_dir))
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
