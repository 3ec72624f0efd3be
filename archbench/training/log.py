"""Where training numbers go: ``run_dir/metrics.jsonl`` (one JSON object per logged step) and a tracker.

On resume the metrics file is cut back to the resumed step, so steps logged after the last checkpoint by an
interrupted run are not duplicated.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from archbench.console.files import write_text_atomic
from archbench.training.trackers import Tracker

log = logging.getLogger("archbench.train")

METRICS_FILE = "metrics.jsonl"


def _parse_rows(path: Path) -> tuple[list[str], list[dict[str, Any]], bool]:
    """Complete lines and their rows; a last line cut short by a kill mid-write is dropped (flag True)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows: list[dict[str, Any]] = []
    for index, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if index == len(lines) - 1:
                return lines[:-1], rows, True
            raise ValueError(f"{path}: line {index + 1} is not JSON (the file was edited or damaged)") from None
    return lines, rows, False


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All complete rows of ``run_dir/metrics.jsonl`` (empty if absent)."""
    path = Path(run_dir) / METRICS_FILE
    return _parse_rows(path)[1] if path.is_file() else []


def _truncate(path: Path, last_step: int) -> None:
    """Keep the rows up to ``last_step`` (those a resumed run will not log again), rewriting atomically."""
    if not path.is_file():
        return
    lines, rows, cut = _parse_rows(path)
    if cut:
        log.warning("%s: dropped an incomplete last line (the previous run was killed while writing it)", path)
    kept = [line for line, row in zip(lines, rows, strict=True) if row["step"] <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _json_number(value: Any) -> Any:
    # JSON has no NaN/inf; keep the row parseable by strict readers.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends metric rows to ``metrics.jsonl`` and hands the same scalars (and sample grids) to a tracker."""

    def __init__(self, run_dir: str | Path, *, start_step: int, tracker: Tracker | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        _truncate(self.path, start_step)
        self.handle = open(self.path, "a", encoding="utf-8")
        self.tracker = tracker or Tracker()

    def write(self, row: dict[str, Any]) -> None:
        self.handle.write(json.dumps({k: _json_number(v) for k, v in row.items()}) + "\n")
        self.handle.flush()
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        self.tracker.log_scalars(int(row["step"]), scalars)

    def image(self, tag: str, path: Path, step: int) -> None:
        self.tracker.log_image(tag, path, step)

    def close(self) -> None:
        self.handle.close()
        self.tracker.close()


def peak_memory_mb(device: Any) -> float:
    """This process's peak memory so far: the CUDA allocator's peak on a GPU, the resident-set high-water
    mark (VmHWM) on the CPU.  A study runs every training run in a fresh process, so the CPU number is the
    run's own."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # not Linux
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
