"""Experiment trackers beside ``metrics.jsonl``: TensorBoard or Weights & Biases, chosen by ``train.logger``.

Every tracker receives the same scalar rows as ``metrics.jsonl`` and the sample grids the loop writes, so a
run looks the same in either tool. ``auto`` uses TensorBoard when it is installed and nothing otherwise;
``wandb`` honours the usual ``WANDB_*`` variables (``WANDB_MODE=offline`` writes the run under
``run_dir/wandb`` without a network) and resumes the same W&B run when the training run resumes.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("archbench.train")

LOGGERS = ("auto", "tensorboard", "wandb", "none")
WANDB_ID_FILE = "wandb_id.txt"


class TrackerError(ValueError):
    """An unknown ``train.logger`` or a tracker whose package is missing."""


class Tracker:
    """No tracker: the interface the loop calls."""

    name = "none"

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def log_image(self, tag: str, path: Path, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, run_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        self.writer.add_image(tag, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str, name: str | None) -> None:
        import wandb

        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:16]
        id_file.write_text(run_id + "\n")
        self.wandb = wandb
        self.run = wandb.init(
            project=project,
            name=name or run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
        )

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log({f"train/{k}": v for k, v in values.items()}, step=step)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        self.run.log({tag: self.wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_logger(kind: str) -> None:
    """Fail early, before any data is loaded, on an unknown logger or one whose package is missing."""
    if kind not in LOGGERS:
        raise TrackerError(f"unknown train.logger {kind!r}; valid choices: {', '.join(LOGGERS)}")
    if kind == "tensorboard" and not _installed("tensorboard"):
        raise TrackerError("train.logger=tensorboard needs TensorBoard: pip install tensorboard")
    if kind == "wandb" and not _installed("wandb"):
        raise TrackerError("train.logger=wandb needs Weights & Biases: pip install wandb (WANDB_MODE=offline works)")


def open_tracker(
    kind: str,
    run_dir: str | Path,
    *,
    start_step: int,
    config: dict[str, Any] | None = None,
    project: str = "archbench",
    name: str | None = None,
) -> Tracker:
    """The tracker ``train.logger`` asks for (``auto``: TensorBoard if installed, else none)."""
    check_logger(kind)
    run_dir = Path(run_dir)
    if kind == "auto":
        kind = "tensorboard" if _installed("tensorboard") else "none"
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir, start_step)
    if kind == "wandb":
        return WandbTracker(run_dir, config or {}, project, name)
    return Tracker()
