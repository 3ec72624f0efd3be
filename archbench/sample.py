"""``python -m archbench.sample run_dir=DIR [num_samples=64] [sampler=ddim] [steps=50] [cfg_scale=1.5] [out=grid.png]
[labels=0,1,2 | class=3] [seed=0] [checkpoint=PATH] [batch_size=64] [device=auto] [guide_channels=3]``

Loads the EMA weights of the newest checkpoint in ``run_dir`` (or ``checkpoint=``), rebuilds the backbone
and objective from the config stored in it (``run_dir`` may also be a pretrained folder written by
``save_pretrained`` / ``python -m archbench.export``), and writes a PNG grid plus an ``.npz`` next to it (``arr_0``:
uint8 images [N, H, W, C], ``arr_1``: labels, -1 when unconditional).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from archbench.console import command_args, fail, interruptible, one_line
from archbench.training.runs import load_ema_model

log = logging.getLogger("archbench.sample")

PROGRAM = "archbench.sample"
DEFAULTS: dict[str, Any] = {
    "run_dir": None,
    "checkpoint": None,
    "num_samples": 64,
    "sampler": None,  # None: the run's sample.sampler, else ddim (ddpm) / euler (flow)
    "steps": None,  # None: the run's sample.steps
    "cfg_scale": None,  # None: the run's sample.cfg_scale
    "guide_channels": None,  # None: the run's sample.guide_channels (None there: guide every channel)
    "out": None,  # None: <run_dir>/samples/sample_step<N>.png
    "labels": None,
    "class": None,
    "seed": 0,
    "batch_size": 64,
    "device": "auto",
    "nrow": None,
    "progress": True,
}


class SampleError(ValueError):
    """A bad argument to the sample CLI."""


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments (Hydra's grammar; ``labels=0,1,2`` is a list) over :data:`DEFAULTS`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    args = dict(DEFAULTS)
    for text in argv:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException:
            raise SampleError(f"cannot parse {text!r}; arguments are key=value") from None
        key = override.key_or_group
        if key not in DEFAULTS:
            raise SampleError(f"unknown argument {key!r}; valid: {', '.join(DEFAULTS)}")
        value = override.value()
        if override.is_sweep_override():  # labels=0,1,2
            value = list(value.list)
        args[key] = value
    if args["run_dir"] is None and args["checkpoint"] is None:
        raise SampleError("give run_dir=<training run folder> (or checkpoint=<file>)")
    if args["labels"] is not None and args["class"] is not None:
        raise SampleError("give labels=... or class=..., not both")
    for key in ("num_samples", "batch_size", "seed"):
        if not isinstance(args[key], int) or isinstance(args[key], bool) or (key != "seed" and args[key] < 1):
            raise SampleError(f"{key} must be a positive integer, got {args[key]!r}")
    cfg_scale = args["cfg_scale"]
    if cfg_scale is not None and (isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float))):
        raise SampleError(f"cfg_scale must be a number (1 = no guidance), got {cfg_scale!r}")
    steps = args["steps"]
    if steps is not None and (isinstance(steps, (bool, float)) or (isinstance(steps, int) and steps < 1)):
        raise SampleError(f"steps must be a positive integer (or a respacing such as ddim25), got {steps!r}")
    gc = args["guide_channels"]
    if gc is not None and (isinstance(gc, bool) or not isinstance(gc, int) or gc < 1):
        raise SampleError(f"guide_channels must be a positive channel count (or null: all), got {gc!r}")
    return args


def _labels(args: dict[str, Any], num_classes: int) -> torch.Tensor | None:
    from archbench.sampling.grid import grid_labels

    n = int(args["num_samples"])
    wanted = args["labels"] if args["labels"] is not None else args["class"]
    if wanted is None:
        return grid_labels(n, num_classes)
    if num_classes <= 0:
        raise SampleError("this model is unconditional; drop labels=/class=")
    values = [wanted] if not isinstance(wanted, list) else wanted
    if not values or not all(isinstance(v, int) and 0 <= v < num_classes for v in values):
        raise SampleError(f"labels must be integers in [0, {num_classes - 1}], got {wanted!r}")
    return torch.tensor(values, dtype=torch.long).repeat(n // len(values) + 1)[:n]


def run(args: dict[str, Any]) -> tuple[Path, Path]:
    """Sample and write the PNG grid and the .npz; returns both paths."""
    from archbench.sampling.grid import generate, grid_columns, save_grid, save_npz
    from archbench.sampling.settings import sampling_settings
    from archbench.training.distributed import pick_device

    try:
        device = pick_device(str(args["device"]))
    except RuntimeError as exc:
        raise SampleError(f"device={args['device']}: {one_line(exc)}") from None
    loaded = load_ema_model(args["run_dir"], args["checkpoint"], device)
    net, objective, config, path = loaded["net"], loaded["objective"], loaded["config"], loaded["path"]
    num_classes = int(getattr(net, "num_classes", 0) or 0)
    labels = _labels(args, num_classes)
    data = config["data"]
    n = int(args["num_samples"])
    try:
        chosen = sampling_settings(args, config.get("sample", {}), objective)
    except ValueError as exc:
        raise SampleError(one_line(exc)) from None
    cfg_scale = chosen["cfg_scale"]
    log.info("sampling %d images from %s (EMA, step %d, cfg %.2f)", n, path, loaded["step"], cfg_scale)
    try:
        samples = generate(
            net,
            objective,
            num_samples=n,
            shape=(int(data["channels"]), int(data["image_size"]), int(data["image_size"])),
            labels=labels,
            sampler=chosen["sampler"],
            steps=chosen["steps"],
            cfg_scale=cfg_scale,
            guide_channels=chosen["guide_channels"],
            seed=int(args["seed"]),
            batch_size=int(args["batch_size"]),
            device=device,
            progress=bool(args["progress"]),
        )
    except ValueError as exc:  # unknown sampler, bad steps, cfg without a null class
        raise SampleError(one_line(exc)) from None
    out = Path(args["out"]) if args["out"] else loaded["run_dir"] / "samples" / f"sample_step{loaded['step']:07d}.png"
    nrow = int(args["nrow"]) if args["nrow"] else grid_columns(n, num_classes if args["labels"] is None else 0)
    png = save_grid(samples, out, nrow)
    npz = save_npz(samples, labels, out.with_suffix(".npz"))
    return png, npz


@interruptible("archbench.sample")
def main(argv: Sequence[str] | None = None) -> int:
    from archbench.training.checkpoint import CheckpointError
    from archbench.training.config import ConfigError

    args_in = command_args(argv, __doc__)
    if args_in is None:
        return 0
    try:
        png, npz = run(parse_args(args_in))
    except (SampleError, CheckpointError, ConfigError, OSError) as exc:
        return fail(PROGRAM, one_line(exc))
    print(f"wrote {png} and {npz}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
