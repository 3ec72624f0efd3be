"""``python -m archbench.sample run_dir=DIR [num_samples=64] [sampler=ddim] [steps=50] [cfg_scale=1.5] [out=grid.png]
[labels=0,1,2 | class=3] [seed=0] [checkpoint=PATH] [batch_size=64] [device=auto] [guide_channels=3]
[format=auto|png|npz] [chunk_size=64] [keep_parts=false]``

Loads the EMA weights of the newest checkpoint in ``run_dir`` (or ``checkpoint=``), rebuilds the backbone
and objective from the config stored in it (``run_dir`` may also be a pretrained folder written by
``save_pretrained`` / ``python -m archbench.export``), and writes:

* a PNG grid plus an ``.npz`` next to it (``arr_0``: uint8 images [N, H, W, C], ``arr_1``: int64 labels, -1
  when unconditional) when ``out`` ends with ``.png`` (the default, ``format=auto``) or ``format=png``;
* a sample set for FID-50k when ``out`` ends with ``.npz`` or ``format=npz`` (default out
  ``<run_dir>/samples/samples_step<N>_n<num_samples>_seed<seed>.npz``): the same ``arr_0``/``arr_1`` layout as
  ADM's and DiT's ``sample_ddp.py`` (their evaluator reads it), plus a ``meta`` JSON array saying how it was
  drawn. It may be launched under ``torchrun --nproc_per_node=K -m archbench.sample ...`` (gloo on CPU, NCCL
  on GPUs): the ranks split the chunks of ``chunk_size`` samples, each chunk drawn as one batch from a
  generator seeded by (seed, chunk index), so the file is identical for any K. Finished chunks are kept in
  ``<out>.parts/``; a re-run after an interruption draws only the missing or damaged ones, then rank 0
  merges them into ``out`` and removes the folder (``keep_parts=true`` keeps it). ``chunk_size`` is also
  the forward batch, so ``batch_size`` (the PNG grid's batch) does not apply; chunks are drawn whole (the
  last is cut), so a smaller set is a prefix of a larger one.

Labels cycle through ``labels=``, ``class=`` or, by default, every class: sample i gets class i mod C.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from archbench.console import command_args, fail, interruptible, one_line
from archbench.training.runs import load_ema_model

if TYPE_CHECKING:
    from archbench.sampling.shards import SampleSetResult

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
    "batch_size": None,  # None: 64 (PNG grids only; a sample set's batch is its chunk_size)
    "device": "auto",
    "nrow": None,
    "progress": True,
    "format": "auto",  # auto: npz when out ends with .npz, else png
    "chunk_size": 64,
    "keep_parts": False,
}
FORMATS = ("auto", "png", "npz")
PNG_BATCH_SIZE = 64


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
    for key in ("num_samples", "batch_size", "seed", "chunk_size"):
        if key == "batch_size" and args[key] is None:
            continue
        if not isinstance(args[key], int) or isinstance(args[key], bool) or (key != "seed" and args[key] < 1):
            raise SampleError(f"{key} must be a positive integer, got {args[key]!r}")
    if args["format"] not in FORMATS:
        raise SampleError(f"format must be one of {', '.join(FORMATS)}, got {args['format']!r}")
    if not isinstance(args["keep_parts"], bool):
        raise SampleError(f"keep_parts must be true or false, got {args['keep_parts']!r}")
    out = str(args["out"]) if args["out"] is not None else None
    if args["format"] == "auto":
        args["format"] = "npz" if out is not None and out.endswith(".npz") else "png"
    if args["format"] == "npz" and out is not None and not out.endswith(".npz"):
        raise SampleError(f"format=npz writes a .npz file; out={out} does not end with .npz")
    if args["format"] == "png" and out is not None and out.endswith(".npz"):
        raise SampleError(f"format=png writes a PNG grid (plus an .npz beside it); give out=<name>.png, not {out}")
    if args["format"] == "npz" and args["batch_size"] is not None:
        raise SampleError(
            f"batch_size does not apply to an .npz sample set: it is drawn in chunks of chunk_size="
            f"{args['chunk_size']} (the forward batch and the seeding unit); set chunk_size= instead"
        )
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


def _label_cycle(args: dict[str, Any], num_classes: int) -> list[int] | None:
    """Labels that sample i cycles through (i mod their count): ``labels=``/``class=``, else every class; None when
    the model is unconditional."""
    wanted = args["labels"] if args["labels"] is not None else args["class"]
    if wanted is None:
        return list(range(num_classes)) if num_classes > 0 else None
    if num_classes <= 0:
        raise SampleError("this model is unconditional; drop labels=/class=")
    values = [wanted] if not isinstance(wanted, list) else wanted
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < num_classes for v in values):
        raise SampleError(f"labels must be integers in [0, {num_classes - 1}], got {wanted!r}")
    return values


def _load(args: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The run's EMA model plus what sampling it needs: label cycle, image shape, sampler settings."""
    from archbench.sampling.settings import sampling_settings

    loaded = load_ema_model(args["run_dir"], args["checkpoint"], device)
    num_classes = int(getattr(loaded["net"], "num_classes", 0) or 0)
    data = loaded["config"]["data"]
    try:
        chosen = sampling_settings(args, loaded["config"].get("sample", {}), loaded["objective"])
    except ValueError as exc:
        raise SampleError(one_line(exc)) from None
    shape = (int(data["channels"]), int(data["image_size"]), int(data["image_size"]))
    return {**loaded, "cycle": _label_cycle(args, num_classes), "num_classes": num_classes, "shape": shape,
            "chosen": chosen}


def run(args: dict[str, Any]) -> tuple[Path, Path]:
    """Sample in one process and write the PNG grid and the .npz beside it; returns both paths."""
    from archbench.sampling.grid import generate, grid_columns, save_grid, save_npz
    from archbench.sampling.shards import labels_for
    from archbench.training.distributed import launched_by_torchrun, pick_device

    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        raise SampleError("a PNG grid is drawn by one process; under torchrun write a sample set: out=PATH.npz")
    try:
        device = pick_device(str(args["device"]))
    except RuntimeError as exc:
        raise SampleError(f"device={args['device']}: {one_line(exc)}") from None
    loaded = _load(args, device)
    n, chosen = int(args["num_samples"]), loaded["chosen"]
    labels = labels_for(loaded["cycle"], 0, n)
    cfg_scale = chosen["cfg_scale"]
    log.info("sampling %d images from %s (EMA, step %d, cfg %.2f)", n, loaded["path"], loaded["step"], cfg_scale)
    try:
        samples = generate(
            loaded["net"],
            loaded["objective"],
            num_samples=n,
            shape=loaded["shape"],
            labels=labels,
            sampler=chosen["sampler"],
            steps=chosen["steps"],
            cfg_scale=cfg_scale,
            guide_channels=chosen["guide_channels"],
            seed=int(args["seed"]),
            batch_size=int(args["batch_size"] or PNG_BATCH_SIZE),
            device=device,
            progress=bool(args["progress"]),
        )
    except ValueError as exc:  # unknown sampler, bad steps, cfg without a null class
        raise SampleError(one_line(exc)) from None
    out = Path(args["out"]) if args["out"] else loaded["run_dir"] / "samples" / f"sample_step{loaded['step']:07d}.png"
    num_classes = loaded["num_classes"]
    nrow = int(args["nrow"]) if args["nrow"] else grid_columns(n, num_classes if args["labels"] is None else 0)
    png = save_grid(samples, out, nrow)
    npz = save_npz(samples, labels, out.with_suffix(".npz"))
    return png, npz


def run_set(args: dict[str, Any]) -> SampleSetResult:
    """Draw (this rank's share of) an .npz sample set, one process or many under torchrun; rank 0 merges it."""
    from archbench.console import setup_logging
    from archbench.sampling.shards import SampleSetSpec, write_sample_set
    from archbench.training.distributed import barrier, broadcast_object, cleanup, init_distributed

    try:
        dist = init_distributed(str(args["device"]))
    except RuntimeError as exc:
        raise SampleError(f"device={args['device']}: {one_line(exc)}") from None
    setup_logging(dist.rank)
    try:
        loaded = _load(args, dist.device)
        n, chosen = int(args["num_samples"]), loaded["chosen"]
        try:
            spec = SampleSetSpec(
                num_samples=n,
                shape=loaded["shape"],
                labels=None if loaded["cycle"] is None else tuple(loaded["cycle"]),
                sampling=chosen,
                seed=int(args["seed"]),
                chunk_size=int(args["chunk_size"]),
                source={"checkpoint": str(loaded["path"]), "step": loaded["step"]},
            )
            default = f"samples_step{loaded['step']:07d}_n{n}_seed{args['seed']}.npz"
            out = Path(args["out"]) if args["out"] else loaded["run_dir"] / "samples" / default
            log.info("drawing %d samples from %s (EMA, step %d, %s, cfg %.2f) into %s, %d rank(s)",
                     n, loaded["path"], loaded["step"], chosen["sampler"], chosen["cfg_scale"], out, dist.world_size)
            return write_sample_set(
                loaded["net"],
                loaded["objective"],
                spec,
                out,
                device=dist.device,
                rank=dist.rank,
                world_size=dist.world_size,
                broadcast=broadcast_object,
                barrier=barrier,
                keep_parts=bool(args["keep_parts"]),
                progress=bool(args["progress"]) and dist.is_main,
            )
        except ValueError as exc:  # settings the sampler refuses, latents, a part that cannot be merged
            raise SampleError(one_line(exc)) from None
    finally:
        cleanup()


@interruptible("archbench.sample")
def main(argv: Sequence[str] | None = None) -> int:
    from archbench.training.checkpoint import CheckpointError
    from archbench.training.config import ConfigError

    args_in = command_args(argv, __doc__)
    if args_in is None:
        return 0
    try:
        args = parse_args(args_in)
        if args["format"] == "png":
            png, npz = run(args)
            print(f"wrote {png} and {npz}")
            return 0
        result = run_set(args)
    except (SampleError, CheckpointError, ConfigError, OSError) as exc:
        return fail(PROGRAM, one_line(exc))
    if result.rank == 0:
        print(f"wrote {result.path} ({args['num_samples']} samples in {result.num_chunks} chunks of "
              f"{args['chunk_size']}: {result.num_chunks - result.reused} drawn now, {result.reused} already drawn)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
