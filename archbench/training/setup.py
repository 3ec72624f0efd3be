"""A training run's set-up, apart from the loop: the checks that must fail before any data is loaded, the run
folder, seeds and precision, and :func:`build_run`, which builds the run's parts in reading order."""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from archbench.console.threads import parse_threads
from archbench.diffusion import Objective
from archbench.training.config import ConfigError, backbone_options
from archbench.training.data_order import build_loader
from archbench.training.distributed import DistInfo, barrier, check_device
from archbench.training.ema import EMA
from archbench.training.init_from import InitRecord, SourceWeights, start_from
from archbench.training.optim import build_optimizer, build_scheduler
from archbench.training.schema import DataConfig, RunConfig, TrainConfig, run_config

log = logging.getLogger("archbench.train")

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


def _section(config: Any, name: str) -> Any:
    """``config[name]`` of a dict, or the attribute of a typed or OmegaConf config."""
    return config[name] if isinstance(config, dict) else getattr(config, name)


def build_model(config: Any) -> nn.Module:
    """The configured backbone; a bad build option becomes a one-line ConfigError."""
    from backbones.registry import build

    name, options = backbone_options(config)
    try:
        return build(name, **options)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot build backbone {name}: {exc}") from None


def build_objective(config: Any) -> Objective:
    """``archbench.diffusion.create_diffusion`` from the ``diffusion`` section."""
    from archbench.diffusion import create_diffusion

    try:
        return create_diffusion(**_section(config, "diffusion"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid diffusion settings: {exc}") from None


def check_train_settings(train: TrainConfig, world_size: int) -> None:
    """Reject impossible ``train`` settings before any data or model is built (types are the schema's job)."""
    accum, batch = train.grad_accum, train.batch_size
    if accum < 1 or batch < 1 or batch % (world_size * accum):
        raise ConfigError(
            f"train.batch_size={batch} must be a positive multiple of world size ({world_size}) "
            f"x train.grad_accum ({accum})"
        )
    for key in ("steps", "log_every"):
        if getattr(train, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(train, key)}")
    for key in ("ckpt_every", "sample_every", "keep_last", "warmup_steps"):
        if getattr(train, key) < 0:
            raise ConfigError(f"train.{key} must be >= 0 (0 = off), got {getattr(train, key)}")
    if len(train.betas) != 2:
        raise ConfigError(f"train.betas must hold two numbers, got {list(train.betas)}")
    if not train.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {train.lr}")
    if train.weight_decay < 0 or train.min_lr < 0:
        raise ConfigError(f"train.weight_decay and train.min_lr must be >= 0, got {train.weight_decay}, {train.min_lr}")
    if not 0.0 <= train.ema_decay <= 1.0:
        raise ConfigError(f"train.ema_decay must lie in [0, 1], got {train.ema_decay}")
    if train.grad_clip is not None and not train.grad_clip > 0:
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


def check_config(config: RunConfig, world_size: int) -> None:
    """Every value check that needs no data and no model: ``--cfg`` and the run refuse the same configs."""
    from backbones.registry import check_structure

    check_train_settings(config.train, world_size)
    try:
        check_device(config.device, here=False)  # the kind of device; whether this machine has one: prepare_run
    except RuntimeError as exc:
        raise ConfigError(f"device={config.device}: {exc}") from None
    try:
        parse_threads(config.threads)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    data = config.data
    for key in ("image_size", "channels"):
        value = getattr(data, key)
        if value is None or value < 1:
            raise ConfigError(f"data.{key} must be a positive integer, got {value!r}")
    if data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be an integer >= 0, got {data.num_workers!r}")
    name, options = backbone_options(config)
    if (data.caption_vocab or data.caption_dim) and "caption_vocab" not in options:
        raise ConfigError(f"data {data.name} is captioned and backbone {name} takes no captions; choose a token "
                          "backbone (dis_*, dit_*, uvit_*, hourglass_*) or data.class_cond=false")
    try:
        check_structure(name, options)
    except ValueError as exc:
        raise ConfigError(f"cannot build backbone {exc}") from None


def prepare_run(config: dict[str, Any], rank: int = 0, world_size: int = 1) -> Path:
    """Once per run, before anything is built: check every value that needs no data or model, and create a
    writable run folder. Returns the folder."""
    check_config(run_config(config), world_size)
    try:
        check_device(config["device"])  # before the run folder is made (device=mps on a machine without one)
    except RuntimeError as exc:
        raise ConfigError(f"device={config['device']}: {exc}") from None
    return prepare_run_dir(config["run_dir"], rank)


@dataclass
class RunParts:
    """What a run trains with, built by :func:`build_run` in the order a reader meets them."""

    dataset: Any
    model: nn.Module  # the eager module: EMA, sampling and checkpoints use it
    objective: Objective
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Any
    sampler: Any
    loader_generator: torch.Generator
    train_model: nn.Module  # what the step calls: the model, under DDP and/or torch.compile when asked
    init: InitRecord | None = None  # what train.init_from loaded, resized and left new


def build_run(c: RunConfig, dist: DistInfo, micro_batch: int, init_weights: SourceWeights | None = None) -> RunParts:
    """Data, model (with ``init_weights`` fitted in, for train.init_from), objective, EMA, optimiser and LR schedule,
    loader, then DDP and compile: a run's parts in reading order, from the checked config. Every rank builds
    identical initial weights (seeded from ``seed``, or read from the same source)."""
    t = c.train
    dataset = build_training_data(c.data, dist)
    seed_everything(c.seed)
    model = build_model(c).to(dist.device)
    init = start_from(model, init_weights) if init_weights is not None else None
    if t.grad_checkpoint:
        model.set_grad_checkpointing(True)
    objective = build_objective(c)
    ema = EMA(model, decay=t.ema_decay, warmup=t.ema_warmup)
    try:
        optimizer = build_optimizer(
            model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=(t.betas[0], t.betas[1]),
            eps=t.adam_eps, device=dist.device,
        )
        scheduler = build_scheduler(
            optimizer, warmup_steps=t.warmup_steps, total_steps=t.steps, kind=t.lr_schedule, lr=t.lr,
            min_lr=t.min_lr,
        )
        loader, sampler, loader_generator = build_loader(
            dataset, global_batch=t.batch_size, micro_batch=micro_batch, rank=dist.rank,
            world_size=dist.world_size, seed=c.seed, num_workers=c.data.num_workers,
            pin_memory=dist.device.type == "cuda",
        )
    except ValueError as exc:  # a bad schedule setting, or fewer examples than one global batch
        raise ConfigError(str(exc)) from None
    train_model: nn.Module = model
    if dist.enabled:
        device_ids = [dist.device.index] if dist.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids)
    backend = compile_backend(t.compile)
    if backend is not None:
        train_model = torch.compile(train_model, backend=backend)
    return RunParts(
        dataset, model, objective, ema, optimizer, scheduler, loader, sampler, loader_generator, train_model, init
    )


def build_training_data(data: DataConfig, dist: DistInfo) -> Any:
    """The training set (rank 0 first, so a download happens once), checked against the configured shape."""
    from archbench.data import build_dataset
    from archbench.data.captions import with_caption_features

    kwargs = dict(
        root=data.root, split=data.split, image_size=data.image_size, download=data.download,
        resize_mode=data.resize_mode,
    )
    if dist.is_main:
        dataset = build_dataset(data.name, **kwargs)
        barrier()
    else:
        barrier()  # let rank 0 download first
        dataset = build_dataset(data.name, **kwargs)
    try:
        dataset = with_caption_features(dataset, data.name, data.caption_features)
    except ValueError as exc:
        raise ConfigError(f"data.caption_features: {exc}") from None
    shape = tuple(dataset[0][0].shape)
    expected = (data.channels, data.image_size, data.image_size)
    if shape != expected:
        raise ConfigError(f"data {data.name} yields examples of shape {shape}, the config expects {expected}")
    classes = f"{data.num_classes} classes" if data.num_classes else "unconditional"
    if data.caption_vocab:
        classes = f"captions of {data.caption_tokens} words from {data.caption_vocab}"
    if data.caption_dim:
        classes = f"captions as {data.caption_tokens} x {data.caption_dim} features from {data.caption_features}"
    log.info("data: %s (%s split, %d examples, %dx%dx%d, %s)", data.name, data.split, len(dataset), *shape, classes)
    return dataset


def find_resume(run_dir: Path, resume: Any) -> tuple[Path | None, dict[str, Any] | None]:
    """(checkpoint path, its state) to resume from per ``train.resume``, or (None, None) for a fresh run.

    ``auto`` takes the newest checkpoint that loads (falling back past damaged newer files); a path must load.
    A fresh run (``null``) into a folder that already holds checkpoints is refused: the two would mix.
    """
    from archbench.training import checkpoint as ckpt

    fresh = resume is None or resume is False or str(resume).lower() in ("none", "null", "false", "")
    if fresh:
        if (newest := ckpt.latest_checkpoint(run_dir)) is not None:
            raise ConfigError(
                f"run_dir {run_dir} already holds checkpoints ({newest.name}); continue it with "
                "train.resume=auto or start fresh in a new run_dir"
            )
        return None, None
    try:
        path = ckpt.resolve_resume(str(resume), run_dir)
    except ckpt.CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    if path is None:
        return None, None
    if str(resume) == "auto":
        found = ckpt.load_newest_good(run_dir, map_location="cpu")
        return found if found is not None else (None, None)
    return path, ckpt.load_checkpoint(path, map_location="cpu")
