"""The training configuration as typed dataclasses: the schema Hydra composes over, and the object the run reads.

Hydra/OmegaConf take these as structured configs, so types, merging, interpolation and the override grammar come
from the library; every key's one-line doc lives in its field's metadata, and ``--help`` and the README's key
table are generated from it (:func:`key_rows`). ``backbone`` and ``diffusion`` are group options generated from
the registry and from ``archbench.diffusion`` (each objective's ``Settings``), so they stay mappings here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from archbench.console.errors import UsageError

DEFAULT_BACKBONE = "dis_t2"
README_BEGIN, README_END = "<!-- train-keys:begin -->", "<!-- train-keys:end -->"


class ConfigError(UsageError):
    """A user mistake in the configuration, reported as one line (no traceback); a bad argument like any
    other (:class:`~archbench.console.errors.UsageError`)."""


def key(default: Any = None, doc: str = "", *, factory: Any = None) -> Any:
    """A config field with its one-line documentation."""
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class DataConfig:
    name: str = key("auto", "dataset; auto = fashion_mnist when its Debian files exist, else digits")
    root: str | None = key(None, "folder of the data (datasets that are not built in)")
    split: str = key("train", "split to train on")
    image_size: int | None = key(None, "resize (or pad) to this size; null = the dataset's native size")
    resize_mode: str = key("resize", "resize | pad (array datasets only)")
    download: bool = key(False, "download when missing (datasets that can be downloaded)")
    class_cond: bool = key(True, "false trains unconditionally (backbone.num_classes = 0)")
    random_flip: bool = key(False, "horizontal flips, drawn from the per-example seeds")
    num_workers: int = key(0, "DataLoader workers")
    channels: int | None = key(None, "filled from the dataset")
    num_classes: int | None = key(None, "filled from the dataset (0 when class_cond is false)")
    caption_vocab: int | None = key(None, "filled from the dataset: its caption vocabulary (0: no captions, or "
                                    "class_cond false)")
    caption_tokens: int | None = key(None, "filled from the dataset: words per caption (the features' T with "
                                     "caption_features)")
    caption_features: str | None = key(None, "an .npz of precomputed caption features (captions (K,), features "
                                       "(K, T, D)): y is then each caption's features, the backbone's caption_dim D")
    caption_dim: int | None = key(None, "filled: the width D of caption_features (0 without)")


@dataclass
class TrainConfig:
    steps: int = key(1000, "optimiser steps")
    batch_size: int = key(64, "global batch: split across ranks and gradient-accumulation micro-batches")
    grad_accum: int = key(1, "gradient-accumulation micro-batches per step")
    lr: float = key(1e-4, "AdamW learning rate (peak, after warmup)")
    weight_decay: float = key(0.0, "AdamW weight decay")
    betas: list[float] = key(doc="AdamW betas", factory=lambda: [0.9, 0.999])
    adam_eps: float = key(1e-8, "AdamW epsilon")
    warmup_steps: int = key(0, "linear learning-rate warmup steps")
    lr_schedule: str = key("constant", "constant | cosine (after warmup)")
    min_lr: float = key(0.0, "floor of the cosine schedule")
    grad_clip: float | None = key(None, "max global grad norm; null = no clipping (the norm is still logged)")
    precision: str = key("auto", "auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32")
    grad_checkpoint: bool = key(False, "recompute each block in the backward pass: less memory, same results")
    compile: Any = key(None, "torch.compile the backbone: true (inductor), null/false (eager) or a backend name")
    ema_decay: float = key(0.9999, "EMA decay")
    ema_warmup: bool = key(False, "decay min(ema_decay, (1+n)/(10+n)): lets short runs sample from the EMA")
    log_every: int = key(10, "steps between metrics rows")
    ckpt_every: int = key(1000, "steps between checkpoints (0 = only at the end)")
    sample_every: int = key(1000, "steps between sample grids (0 = only at the end)")
    keep_last: int = key(3, "checkpoints kept (0 = all)")
    resume: str | None = key("auto", "auto = newest checkpoint in run_dir (if any) | a path | null = fresh")
    init_from: str | None = key(None, "start a new run (step 0, fresh optimiser) from these weights: a run_dir (its "
                                "EMA), a checkpoint, a save_pretrained folder, a Hub id or an official checkpoint; "
                                "position and label tables are fitted to this run's size and classes")
    init_from_sha256: str | None = key(None, "filled at the start: SHA-256 of the file init_from's weights came "
                                       "from")
    progress: bool = key(True, "progress bar")
    logger: str = key("auto", "beside metrics.jsonl: auto (tensorboard if installed) | tensorboard | wandb | none")
    project: str = key("archbench", "the W&B project (train.logger=wandb)")


@dataclass
class SampleConfig:
    num_samples: int = key(64, "images in each training grid")
    sampler: str | None = key(None, "null = the objective's default (ddim, euler, heun)")
    steps: int = key(50, "sampler steps")
    cfg_scale: float = key(1.0, "default guidance of python -m archbench.sample / archbench.eval")
    grid_cfg_scale: float | None = key(None, "guidance of the grids drawn during training; null = cfg_scale")
    guide_channels: int | None = key(None, "guide only the first N output channels (DiT's sample.py: 3)")
    seed: int = key(0, "seed of the grids' noise")


@dataclass
class RunConfig:
    """One training run. ``backbone`` and ``diffusion`` hold the chosen group options (build options of a registry
    name; an objective's settings), ``recipe`` the recipe's name."""

    defaults: list[Any] = field(
        default_factory=lambda: ["_self_", {"backbone": DEFAULT_BACKBONE}, {"diffusion": "ddpm"}, {"recipe": "default"}]
    )
    # The dataset is in the name, so digits and Fashion-MNIST runs of one recipe never share a run_dir.
    run_dir: str = key("runs/${recipe}-${data.name}-${backbone.name}", "where checkpoints, logs and grids go")
    seed: int = key(0, "seed of the weights, the data order and every example's noise")
    device: str = key("auto", "auto = cuda:<local rank> when available, else cpu")
    threads: Any = key("auto", "CPU intra-op threads: auto = time steps at 1, 2, 4, ... threads, keep the fastest "
                       "and re-check when steps slow down (a busy machine) | N")
    recipe: str | None = key(None, "the recipe's name (set by recipe=NAME)")
    data: DataConfig = key(doc="", factory=DataConfig)
    train: TrainConfig = key(doc="", factory=TrainConfig)
    sample: SampleConfig = key(doc="", factory=SampleConfig)
    backbone: Any = key(None, "backbone=NAME and its build options (backbone.depth=6, ...)")
    diffusion: Any = key(None, "diffusion=NAME and its settings (diffusion.T=1000, ...)")


SECTIONS = {"data": DataConfig, "train": TrainConfig, "sample": SampleConfig}
GROUPS = ("backbone", "diffusion")


def run_config(config: dict[str, Any]) -> RunConfig:
    """The typed view of a resolved config dict (what a run reads; the dict stays its record)."""
    plain = {k: v for k, v in config.items() if k != "defaults"}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), plain)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"invalid configuration: {first}") from None


def key_rows() -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) for every documented key: what ``--help`` and the README's table show."""
    rows = []
    for name, section in [("", RunConfig), *SECTIONS.items()]:
        for f in dataclasses.fields(section):
            if f.name in ("defaults", *SECTIONS) or not f.metadata.get("doc"):
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            else:
                default = None
            shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
            kind = str(f.type).replace(" | None", " or null").replace("Any", "group" if f.name in GROUPS else "any")
            rows.append((f"{name}.{f.name}" if name else f.name, kind, shown, f.metadata["doc"]))
    return rows


def key_table() -> str:
    """The keys as a Markdown table (the README's, regenerated by a test)."""
    lines = ["| key | type | default | what |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {t} | `{d}` | {doc.replace('|', chr(92) + '|')} |" for k, t, d, doc in key_rows()]
    return "\n".join(lines)
