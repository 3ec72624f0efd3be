"""What may change when a run resumes, and the record of what the weights were trained with.

A checkpoint's weights, optimiser and scheduler state belong to the config they were trained with: resuming
under another learning rate, objective or dataset would silently mix two experiments (the saved scheduler
state would even override a new learning rate). So a resume may change only keys that do not touch the
training trajectory: the step budget, logging, checkpoint/sample intervals, workers, the device and sampling
settings. Any other change is refused in one line naming each key with its old and new value.
``config.yaml`` keeps the original config; every resumption appends one line to ``config_history.jsonl``.
"""

from __future__ import annotations

import fnmatch
import json
import time
from pathlib import Path
from typing import Any

from archbench.console.files import write_text_atomic
from archbench.training.config import ConfigError, to_yaml

# Keys a resumed run may change (fnmatch patterns over dotted keys).
RESUMABLE = (
    "run_dir",
    "device",
    "threads",  # a machine setting; the thread count is chosen per process anyway
    "train.steps",
    "train.resume",
    "train.init_from_sha256",  # filled when the run started; a resume continues from its own checkpoint
    "train.log_every",
    "train.ckpt_every",
    "train.sample_every",
    "train.keep_last",
    "train.progress",
    "train.grad_checkpoint",  # recomputation changes memory, not results
    "train.compile",  # compiled or eager: the same computation
    "train.logger",
    "train.project",
    "data.num_workers",
    "data.root",  # where the same data lives now
    "backbone.scan",  # an implementation choice, not the weights
    "sample.*",  # preview grids and sampling defaults only
)
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "config_history.jsonl"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def changed_keys(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs, as ``key -> (old, new)``; keys the saved config predates are not changes."""
    old_flat, new_flat = flatten(saved), flatten(new)
    return {
        key: (old_flat.get(key), new_flat.get(key))
        for key in sorted(set(old_flat) | set(new_flat))
        if key in old_flat and old_flat.get(key) != new_flat.get(key)
    }


def _resumable(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE)


def trajectory_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The changes between two configs that alter what the weights are (every key but :data:`RESUMABLE`)."""
    return {k: v for k, v in changed_keys(saved, new).items() if not _resumable(k)}


def read_run_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The config a run was started with (its ``config.yaml``), or None for a run not started yet."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({' '.join(str(exc).split())[:120]}); move the run away") from None
    return loaded if isinstance(loaded, dict) else None


def check_resume_config(saved: dict[str, Any], new: dict[str, Any], checkpoint: str | Path) -> dict[str, Any]:
    """Refuse a resume that changes anything but :data:`RESUMABLE` keys; returns the allowed changes."""
    changes = changed_keys(saved, new)
    refused = trajectory_changes(saved, new)
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ConfigError(
            f"cannot resume {checkpoint} with a different configuration ({listed}); a resume may change only "
            f"{', '.join(RESUMABLE)}. Start a fresh run in a new run_dir= to train with the new settings"
        )
    return {k: list(v) for k, v in changes.items()}


def record_config(run_dir: Path, config: dict[str, Any], resumed_step: int | None, changes: dict[str, Any]) -> None:
    """A fresh run writes ``config.yaml``; a resumed one leaves it alone and appends to the history."""
    if resumed_step is None or not (run_dir / CONFIG_FILE).is_file():
        write_text_atomic(run_dir / CONFIG_FILE, to_yaml(config))
    if resumed_step is not None:
        entry = {"resumed_at_step": resumed_step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changed": changes}
        with open(run_dir / HISTORY_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
