"""Atomic file writing: a reader, or a run killed mid-write, never sees half a file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place: a reader (or a run killed
    mid-write) never sees half a file, which is the promise every archbench output makes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Run ``write(handle)`` on a temporary binary file beside ``path``, flush it to disk and rename it into place
    only if it succeeds (for writers that take a file handle: ``torch.save``, ``np.savez``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
