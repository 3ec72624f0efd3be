"""A training run's record read back: its EMA network rebuilt from a checkpoint, or from a pretrained folder.

Everything that consumes a trained model (the sample command, evaluation, the CI regression, the study) loads
it here, from a run_dir (newest checkpoint), a checkpoint file, or a folder written by ``save_pretrained``
(``export_pretrained`` writes one from a run, with the diffusion and data settings needed to sample from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archbench.diffusion import Objective
from archbench.training import checkpoint as ckpt
from archbench.training.config import diffusion_node
from archbench.training.ema import EMA
from archbench.training.setup import build_model, build_objective
from backbones.hub import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    PretrainedError,
    from_pretrained,
    is_pretrained_dir,
    save_pretrained,
)

# The parts of a run's config a pretrained folder carries in its ``extra`` section.
EXPORTED_SECTIONS = ("diffusion", "data", "sample")
# The most diffusion steps a pretrained folder may declare: the objective allocates its schedules (a few arrays of T
# values) on loading, so a hostile T=10**9 would take gigabytes before any sampling setting is checked.
MAX_DIFFUSION_STEPS = 10**6


class PretrainedFolderError(ckpt.CheckpointError, PretrainedError):
    """A pretrained folder that cannot be loaded: both the error the run loaders raise (CheckpointError, one line
    and exit 1 in every command) and the one ``archbench.from_pretrained`` raises (PretrainedError)."""


@dataclass(frozen=True)
class LoadedRun:
    """A trained model read back: the EMA network (eval mode), its objective, the run's config record, the step
    it reached, the file or folder it came from, and the run folder."""

    net: nn.Module
    objective: Objective
    config: dict[str, Any]
    step: int
    path: Path
    run_dir: Path

    @property
    def data(self) -> dict[str, Any]:
        """The run's ``data`` section (name, image_size, channels, ...)."""
        return dict(self.config.get("data") or {})

    @property
    def sample(self) -> dict[str, Any]:
        """The run's ``sample`` section: the sampling settings it was trained to preview with."""
        return dict(self.config.get("sample") or {})

    @property
    def backbone(self) -> str | None:
        """The registry name of the network."""
        return (self.config.get("backbone") or {}).get("name")

    @property
    def num_classes(self) -> int:
        return int(getattr(self.net, "num_classes", 0) or 0)


@dataclass(frozen=True)
class ExportedRun:
    """What :func:`export_pretrained` wrote: the run it read, the folder, and the folder's ``extra`` section."""

    run: LoadedRun
    folder: Path
    extra: dict[str, Any]


def load_ema_model(run_dir: str | Path | None, checkpoint: str | Path | None, device: torch.device) -> LoadedRun:
    """The EMA network (eval mode, on ``device``) with its objective, config, step, source path and run folder.

    ``run_dir`` may be a training run (its newest checkpoint is used unless ``checkpoint`` names one) or a
    pretrained folder; everything needed to sample from a finished or running training run.
    """
    if run_dir is not None and checkpoint is None and is_pretrained_dir(run_dir):
        return _load_pretrained(Path(run_dir), device)
    path = Path(checkpoint) if checkpoint else ckpt.latest_checkpoint(run_dir) if run_dir else None
    half = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if run_dir and (Path(run_dir) / name).is_file()]
    if path is None and len(half) == 1:
        lacking = WEIGHTS_FILE if half == [CONFIG_FILE] else CONFIG_FILE
        raise PretrainedFolderError(f"{run_dir} holds {half[0]} but no {lacking}: a pretrained folder needs both "
                                    f"(and it has no checkpoints under {ckpt.checkpoint_dir(run_dir)})")
    if path is None:
        raise ckpt.CheckpointError(
            f"no checkpoints under {ckpt.checkpoint_dir(run_dir or '.')} (and {run_dir} is not a pretrained folder)"
        )
    state = ckpt.load_checkpoint(path)
    config = ckpt.checkpoint_config(state)
    ema = EMA(build_model(config), decay=1.0)
    try:
        ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError) as exc:
        raise ckpt.CheckpointError(f"checkpoint {path}: EMA weights do not fit the stored config ({exc})") from None
    return LoadedRun(
        net=ema.model.to(device).eval(),
        objective=build_objective(config),
        config=config,
        step=int(state["step"]),
        path=path,
        run_dir=Path(run_dir) if run_dir else path.parent.parent,
    )


def _load_pretrained(folder: Path, device: torch.device) -> LoadedRun:
    """A pretrained folder: the backbone from its config, the objective from the exported settings (or DDPM).

    Every way the folder can be unusable (config.json, the weights, the exported sections) is one
    :class:`PretrainedFolderError` line; the weights are checked against the config before anything is built."""
    try:
        net = from_pretrained(folder, device=device).eval()
    except PretrainedError as exc:
        raise PretrainedFolderError(str(exc)) from None
    extra = getattr(net, "pretrained_extra", {}) or {}
    build = dict(net.backbone_config)
    _check_extra(folder, extra, net)
    diffusion = extra.get("diffusion") or {**diffusion_node("ddpm"), "learn_sigma": bool(build.get("learn_sigma"))}
    data = extra.get("data") or {"name": None, "image_size": build["image_size"], "channels": build["in_channels"]}
    config = {"backbone": build, "diffusion": diffusion, "data": data, "sample": extra.get("sample") or {}}
    return LoadedRun(
        net=net, objective=build_objective(config), config=config, step=int(extra.get("step", 0)), path=folder,
        run_dir=folder,
    )


def _check_extra(folder: Path, extra: dict[str, Any], net: nn.Module) -> None:
    """The exported sections of ``config.json``'s ``extra``: objects where objects belong, a whole step, and data
    settings that fit the network (its channels; its image size when a position table pins it)."""
    where = f"{folder / CONFIG_FILE}: extra"
    for key in EXPORTED_SECTIONS:
        if extra.get(key) is not None and not isinstance(extra[key], dict):
            raise PretrainedFolderError(f"{where}.{key} must be a JSON object, got {extra[key]!r:.60}")
    steps = (extra.get("diffusion") or {}).get("T", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_DIFFUSION_STEPS:
        raise PretrainedFolderError(f"{where}.diffusion.T must be a whole number in [1, {MAX_DIFFUSION_STEPS}], got "
                                    f"{steps!r:.60}")
    step = extra.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise PretrainedFolderError(f"{where}.step must be a whole number >= 0, got {step!r:.60}")
    data = extra.get("data")
    if not data:
        return
    for key in ("image_size", "channels"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PretrainedFolderError(f"{where}.data.{key} must be a positive whole number, got {value!r:.60}")
    if data["channels"] != net.in_channels:
        raise PretrainedFolderError(f"{where}.data.channels is {data['channels']} but the network takes "
                                    f"{net.in_channels} input channels")
    if getattr(net, "fixed_size", False) and data["image_size"] != net.image_size:
        raise PretrainedFolderError(f"{where}.data.image_size is {data['image_size']} but the network's position "
                                    f"table is for {net.image_size}x{net.image_size} images")


def export_pretrained(
    run_dir: str | Path | None, out: str | Path, checkpoint: str | Path | None = None
) -> ExportedRun:
    """Write the run's EMA backbone as a pretrained folder (safetensors + config.json with the run's diffusion,
    data and sample settings), so ``archbench.from_pretrained`` and the sample/eval commands can use it."""
    run = load_ema_model(run_dir, checkpoint, torch.device("cpu"))
    extra = {key: run.config[key] for key in EXPORTED_SECTIONS if key in run.config}
    extra.update(step=run.step, source=str(run.path))
    folder = save_pretrained(run.net, out, extra)
    return ExportedRun(run=run, folder=Path(folder), extra=extra)
