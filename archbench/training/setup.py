"""Building blocks of a training run that do not depend on the loop: run folder, seeds, model, objective,
precision, and the sanity checks that must fail before any data is loaded."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from archbench.training.config import ConfigError, backbone_options

PRECISIONS = ("auto", "bf16", "fp32")


def prepare_run_dir(run_dir: str | Path, rank: int = 0) -> Path:
    """Create ``run_dir`` and prove it is writable, before any data or model is built."""
    path = Path(run_dir).expanduser()
    probe = path / f".write-test-{rank}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"run_dir {path} is not writable ({exc.strerror or exc}); choose another run_dir=") from None
    return path


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) at once."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (``auto``/``bf16``), or on CPU when asked for explicitly; fp32 otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown train.precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_model(config: dict[str, Any]) -> nn.Module:
    """The configured backbone; a bad build option becomes a one-line ConfigError."""
    from backbones.registry import build

    name, options = backbone_options(config)
    try:
        return build(name, **options)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot build backbone {name}: {exc}") from None


def build_objective(config: dict[str, Any]) -> Any:
    """``archbench.diffusion.create_diffusion`` from the ``diffusion`` section."""
    from archbench.diffusion import create_diffusion

    try:
        return create_diffusion(**config["diffusion"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid diffusion settings: {exc}") from None


def check_train_settings(train: Any, world_size: int) -> None:
    """Reject impossible ``train`` settings before any data or model is built."""
    accum, batch = int(train.grad_accum), int(train.batch_size)
    if accum < 1 or batch < 1 or batch % (world_size * accum):
        raise ConfigError(
            f"train.batch_size={batch} must be a positive multiple of world size ({world_size}) "
            f"x train.grad_accum ({accum})"
        )
    for key in ("steps", "log_every"):
        if int(train[key]) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {train[key]}")
    for key in ("ckpt_every", "sample_every", "keep_last", "warmup_steps"):
        if train[key] is not None and int(train[key]) < 0:
            raise ConfigError(f"train.{key} must be >= 0 (0 = off), got {train[key]}")
    if len(train.betas) != 2:
        raise ConfigError(f"train.betas must hold two numbers, got {list(train.betas)}")
    if not float(train.lr) > 0:
        raise ConfigError(f"train.lr must be > 0, got {train.lr}")
    if float(train.weight_decay) < 0 or float(train.min_lr) < 0:
        raise ConfigError(f"train.weight_decay and train.min_lr must be >= 0, got {train.weight_decay}, {train.min_lr}")
    if not 0.0 <= float(train.ema_decay) <= 1.0:
        raise ConfigError(f"train.ema_decay must lie in [0, 1], got {train.ema_decay}")
    if train.grad_clip is not None and not float(train.grad_clip) > 0:
        raise ConfigError(f"train.grad_clip must be > 0 (or null: no clipping), got {train.grad_clip}")
    compile_backend(train.compile)


def compile_backend(setting: Any) -> str | None:
    """``train.compile`` -> the torch.compile backend to use (None: eager); unknown backends are a ConfigError."""
    if setting is None or setting is False or str(setting).lower() in ("false", "0", "none", "off"):
        return None
    if setting is True or str(setting).lower() in ("true", "1", "on"):
        return "inductor"
    import torch._dynamo

    backends = sorted({"inductor", *torch._dynamo.list_backends(exclude_tags=())})
    if str(setting) not in backends:
        raise ConfigError(
            f"train.compile={setting!r}: expected true, false or a torch.compile backend ({', '.join(backends)})"
        )
    return str(setting)


def check_config(config: Any, world_size: int) -> None:
    """Every value check that needs no data and no model: ``--cfg`` and the run refuse the same configs."""
    from backbones.registry import check_structure

    check_train_settings(config.train, world_size)
    data = config.data
    for key in ("image_size", "channels"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"data.{key} must be a positive integer, got {value!r}")
    if isinstance(data.num_workers, bool) or not isinstance(data.num_workers, int) or data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be an integer >= 0, got {data.num_workers!r}")
    name, options = backbone_options(config)
    try:
        check_structure(name, options)
    except ValueError as exc:
        raise ConfigError(f"cannot build backbone {exc}") from None
