"""Where training numbers go: ``run_dir/metrics.jsonl`` (one JSON object per logged step) and TensorBoard.

On resume the metrics file is cut back to the resumed step, so steps logged after the last checkpoint by an
interrupted run are not duplicated.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

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


def wants_tensorboard(setting: bool | str) -> bool | None:
    """``true`` -> True (required), ``auto`` -> None (if installed), ``false`` -> False."""
    text = str(setting).lower()
    if setting is True or text == "true":
        return True
    return None if text == "auto" else False


def check_tensorboard(setting: bool | str) -> None:
    """Fail early, before any data is loaded, when TensorBoard is required but missing."""
    if wants_tensorboard(setting):
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ImportError("train.tensorboard=true needs TensorBoard: pip install tensorboard") from None


class MetricsLog:
    """Appends metric rows; writes TensorBoard scalars too when ``tensorboard`` is on (``auto`` = if installed)."""

    def __init__(self, run_dir: str | Path, *, start_step: int, tensorboard: bool | str = "auto") -> None:
        self.path = Path(run_dir) / METRICS_FILE
        _truncate(self.path, start_step)
        self.handle = open(self.path, "a", encoding="utf-8")
        self.writer = None
        if wants_tensorboard(tensorboard) is not False:
            check_tensorboard(tensorboard)
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.debug("TensorBoard not installed; metrics go to %s only", self.path)
            else:
                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)

    def write(self, row: dict[str, Any]) -> None:
        self.handle.write(json.dumps({k: _json_number(v) for k, v in row.items()}) + "\n")
        self.handle.flush()
        if self.writer is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()
