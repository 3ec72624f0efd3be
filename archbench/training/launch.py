"""One training run from ``key=value`` overrides: what ``python -m archbench.train`` and a study job both do.

Composing, checking, logging to ``run_dir/train.log``, starting (and tearing down) torch.distributed and
stopping cleanly on SIGTERM/SIGINT live here once, so a study's run is exactly an ordinary training run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from archbench.console.errors import one_line
from archbench.console.logs import setup_logging
from archbench.data import DatasetNotFoundError
from archbench.training.checkpoint import CheckpointError
from archbench.training.config import ConfigError, compose_config, to_container
from archbench.training.distributed import cleanup, init_distributed
from archbench.training.loop import NonFiniteLossError, TrainResult, train
from archbench.training.run_lock import RunDirLockedError
from archbench.training.setup import prepare_run
from archbench.training.signals import StopRequest
from archbench.training.trackers import TrackerError

# What a training run reports as one line (exit code 1) rather than a traceback.
EXPECTED_ERRORS = (
    ConfigError,
    CheckpointError,
    DatasetNotFoundError,
    NonFiniteLossError,
    ImportError,
    TrackerError,
    RunDirLockedError,
)


def train_from_overrides(overrides: Sequence[str]) -> TrainResult:
    """Compose ``overrides``, train to ``train.steps`` (resuming per ``train.resume``), return how it ended.

    Under torchrun every rank calls this; ``RANK``/``WORLD_SIZE`` come from the environment.
    """
    rank = int(os.environ.get("RANK", "0"))
    config = to_container(compose_config(list(overrides)))
    run_dir = prepare_run(config, rank, int(os.environ.get("WORLD_SIZE", "1")))  # checked once, folder made once
    setup_logging(rank, run_dir / "train.log" if rank == 0 else None)
    try:
        dist = init_distributed(str(config["device"]))
    except RuntimeError as exc:
        raise ConfigError(f"device={config['device']}: {one_line(exc)}") from None
    try:
        with StopRequest() as stop:
            return train(config, dist, stop, run_dir)
    finally:
        cleanup()
