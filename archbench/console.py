"""How the command-line tools report an expected failure: one line on stderr and exit code 1, no traceback.

Exit codes, the same for every ``python -m archbench.X`` command: 0 success; 1 an expected failure (a bad
argument, a missing or unusable input, a failed check such as an FD regression); 128 + N when training was
stopped by signal N after writing its checkpoint (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK, EXIT_FAILURE = 0, 1


def one_line(exc: BaseException | str) -> str:
    """The message of ``exc`` collapsed to a single line."""
    text = str(exc).strip() or (type(exc).__name__ if isinstance(exc, BaseException) else "")
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def fail(program: str, message: str) -> int:
    """Print ``program: error: message`` to stderr and return the exit code to use (1)."""
    print(f"{program}: error: {one_line(message)}", file=sys.stderr)
    return 1


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (test harnesses swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(rank: int = 0, log_file: str | Path | None = None) -> None:
    """``[archbench] message`` lines on stderr (rank 0 at INFO, other ranks warnings only), plus an optional file.

    Idempotent: handlers added by an earlier call (an earlier run in the same process) are replaced.
    """
    root = logging.getLogger("archbench")
    for handler in [h for h in root.handlers if getattr(h, "_archbench", False)]:
        root.removeHandler(handler)
        handler.close()
    console = _CurrentStderr()
    console.setFormatter(logging.Formatter("[archbench] %(message)s"))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        handlers.append(file_handler)
    for handler in handlers:
        handler._archbench = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    root.propagate = False


class ArgumentParser(argparse.ArgumentParser):
    """argparse with this project's convention: a usage error is one line and exit code 1 (argparse's is 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_FAILURE, f"{self.prog}: error: {one_line(message)} (see --help)\n")


EXIT_INTERRUPTED = 130  # 128 + SIGINT


def interruptible(program: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's ``main`` so Ctrl-C outside the training loop (while importing, loading data,
    sampling) ends with one line and exit code 130 instead of a traceback (the loop itself checkpoints first)."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                print(f"{program}: interrupted (Ctrl-C)", file=sys.stderr)
                return EXIT_INTERRUPTED

        return run

    return wrap


def command_args(argv: Sequence[str] | None, doc: str | None) -> list[str] | None:
    """A key=value command's arguments (``sys.argv`` by default) with logging set up, or None once ``doc`` has
    been printed for ``-h``/``--help`` (the caller then exits 0)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(doc)
        return None
    setup_logging()
    return args


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place: a reader (or a run killed
    mid-write) never sees half a file, which is the promise every archbench output makes."""
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
