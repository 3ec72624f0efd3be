"""Where archbench's log lines go: ``[archbench] message`` on stderr, optionally a file too."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (test harnesses swap it); a line logged while a progress
    bar (:mod:`archbench.console.progress`) is shown goes above the bar instead of into it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        tqdm = sys.modules.get("tqdm")  # no bar can be showing before tqdm is imported
        if tqdm is None or not getattr(tqdm.tqdm, "_instances", None):
            super().emit(record)
            return
        with tqdm.tqdm.external_write_mode(file=self.stream):
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
