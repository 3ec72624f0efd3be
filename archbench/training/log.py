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

from archbench.training.trackers import Tracker

log = logging.getLogger("archbench.train")

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of ``run_dir/metrics.jsonl`` (empty if absent)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate(path: Path, last_step: int) -> None:
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


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
