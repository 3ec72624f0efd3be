"""One training run from ``key=value`` overrides or from the typed config they compose to: what ``python -m
archbench.train`` and a study job both do.

Composing, checking, logging to ``run_dir/train.log``, starting (and tearing down) torch.distributed and
stopping cleanly on SIGTERM/SIGINT live here once, so a study's run is exactly an ordinary training run. A caller
that composes the config itself (a study job, which also compares it with a run on disk) hands over the
:class:`~archbench.training.schema.RunConfig` rather than strings to compose again.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from archbench.console.errors import one_line
from archbench.console.logs import setup_logging
from archbench.data import DatasetNotFoundError
from archbench.training.checkpoint import CheckpointError
from archbench.training.config import ConfigError, compose_config, to_container
from archbench.training.distributed import cleanup, init_distributed
from archbench.training.loop import NonFiniteLossError, TrainResult, train
from archbench.training.run_lock import RunDirLockedError
from archbench.training.schema import RunConfig, run_config
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


def compose_run(overrides: Sequence[str]) -> RunConfig:
    """The typed config ``overrides`` compose to (recipe, groups, keys checked, the dataset's facts filled)."""
    return run_config(to_container(compose_config(list(overrides))))


def config_record(config: RunConfig) -> dict[str, Any]:
    """The resolved dict a run keeps (``config.yaml``, its checkpoints): ``config``'s fields, as composing gives."""
    record = dataclasses.asdict(config)
    record.pop("defaults", None)  # Hydra's composition order, not a setting of the run
    return record


def train_from_overrides(overrides: Sequence[str]) -> TrainResult:
    """Compose ``overrides``, train to ``train.steps`` (resuming per ``train.resume``), return how it ended.

    Under torchrun every rank calls this; ``RANK``/``WORLD_SIZE`` come from the environment.
    """
    return train_from_config(compose_run(overrides))


def train_from_config(config: RunConfig) -> TrainResult:
    """Train the run ``config`` describes to ``train.steps`` (resuming per ``train.resume``); how it ended."""
    rank = int(os.environ.get("RANK", "0"))
    record = config_record(config)
    run_dir = prepare_run(record, rank, int(os.environ.get("WORLD_SIZE", "1")))  # checked once, folder made once
    setup_logging(rank, run_dir / "train.log" if rank == 0 else None)
    try:
        dist = init_distributed(config.device)
    except RuntimeError as exc:
        raise ConfigError(f"device={config.device}: {one_line(exc)}") from None
    try:
        with StopRequest() as stop:
            return train(record, dist, stop, run_dir)
    finally:
        cleanup()
