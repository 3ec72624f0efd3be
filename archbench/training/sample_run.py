"""Draw images from a trained run (``python -m archbench.sample``, see :mod:`archbench.commands.sample`).

It composes :mod:`archbench.training.runs` (read a run or a pretrained folder back) with :mod:`archbench.sampling`
(grids, resumable sample sets), so it lives in the training stage, the lowest one that sees both.

* :func:`draw_grid`: a PNG grid plus an ``.npz`` beside it (``arr_0``: uint8 images [N, H, W, C], ``arr_1``:
  int64 labels, -1 when unconditional), in one process.
* :func:`draw_set`: a sample set for FID-50k, ADM's and DiT's ``sample_ddp.py`` layout plus a ``meta`` JSON
  array, in one process or split over ``torchrun`` ranks by chunks of ``chunk_size`` samples; each chunk is drawn
  as one batch from a generator seeded by (seed, chunk), so the file is identical for any number of ranks and a
  re-run after an interruption draws only the missing or damaged chunks.

Labels cycle through ``labels``, ``class`` or, by default, every class: sample i gets class i mod C.  A captioned
run's samples cycle through ``caption`` (several separated by ';') or take the captions of ``caption_split``'s
first examples; a grid writes each caption under its image, ``arr_1`` then holds the caption tokens [N, T].

Every file written records the SHA-256 of the EMA weights it was drawn from and the settings that decide its
images (:mod:`archbench.sampling.outputs`). An existing output that holds something else (other weights, other
settings, another kind of file) is refused in one line unless ``overwrite=true``; one that holds the same thing
is rewritten (a grid) or kept (a complete set: nothing to draw).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from archbench.console.args import arg
from archbench.console.errors import UsageError, one_line
from archbench.console.threads import parse_threads
from archbench.sampling.settings import SamplingSettings
from archbench.training.runs import LoadedRun, load_ema_model

if TYPE_CHECKING:
    from archbench.sampling.shards import SampleSetResult

log = logging.getLogger("archbench.sample")

PNG_BATCH_SIZE = 64


@dataclass(frozen=True, kw_only=True)
class SampleRequest:
    """What to draw from which run, and where to write it; the fields are the sample command's keys.

    ``None`` for a sampling setting means the run's own ``sample`` setting, else the objective's default.
    """

    run_dir: str | None = arg(None, doc="a training run folder (its newest checkpoint) or a pretrained folder")
    checkpoint: str | None = arg(None, doc="a checkpoint file to use instead of run_dir's newest")
    num_samples: int = arg(64, minimum=1, doc="images to draw")
    sampler: str | None = arg(None, shown="the run's", doc="sampler (the run's sample.sampler, else the objective's "
                                                             "default: ddim for ddpm, euler for flow, heun for edm)")
    steps: int | str | None = arg(None, shown="the run's", doc="sampling steps, as sample.steps in training: an int "
                                                                 "or a respacing such as ddim25 (eval's steps: an int)")
    cfg_scale: float | None = arg(None, shown="the run's", doc="classifier-free guidance scale (1: no guidance)")
    guide_channels: int | None = arg(None, minimum=1, shown="the run's",
                                     doc="guide only the first N channels (DiT's sample.py guides 3)")
    out: str | None = arg(None, shown="run_dir/samples/...", doc="a .png grid (an .npz beside it) or an .npz set")
    labels: tuple[int, ...] | None = arg(None, shown="every class", doc="classes the samples cycle through")
    class_: int | None = arg(None, key="class", doc="one class for every sample (instead of labels)")
    caption: str | None = arg(None, shown="caption_split's", doc="a captioned run: the caption(s) the samples cycle "
                              "through, several separated by ';' (default: the captions of caption_split's first "
                              "num_samples examples)")
    caption_split: str = arg("test", doc="a captioned run: the split whose first captions the samples take")
    seed: int = arg(0, doc="the noise's seed")
    batch_size: int | None = arg(None, minimum=1, shown=str(PNG_BATCH_SIZE),
                                 doc="images per forward pass of a PNG grid (a set uses chunk_size)")
    device: str = arg("auto", doc="auto, cpu, cuda or cuda:N")
    threads: str = arg("auto", doc="CPU threads: auto (time a few forward passes at 1, 2, 4, ... and keep the "
                       "fastest; OMP_NUM_THREADS pins it) or N")
    nrow: int | None = arg(None, minimum=1, shown="one column per class", doc="grid columns")
    progress: bool = arg(True, doc="show a progress bar")
    format: Literal["auto", "png", "npz"] = arg("auto", doc="auto: npz when out ends with .npz, else png")
    chunk_size: int = arg(64, minimum=1, doc="a set's seeding unit and forward batch")
    keep_parts: bool = arg(False, doc="keep a set's finished chunks (out.parts/) after merging")
    overwrite: bool = arg(False, doc="replace an existing out (or a grid's .npz beside it) that holds something "
                                     "else: other weights, other settings, another kind of file")

    def resolved(self) -> SampleRequest:
        """The request checked as a whole, with ``format`` decided; a UsageError names what does not fit."""
        if self.run_dir is None and self.checkpoint is None:
            raise UsageError("give run_dir=<training run folder> (or checkpoint=<file>)")
        if self.labels is not None and self.class_ is not None:
            raise UsageError("give labels=... or class=..., not both")
        if self.caption is not None and (self.labels is not None or self.class_ is not None):
            raise UsageError("give caption=... (a captioned run) or labels=/class= (a class-conditional run), not both")
        try:
            parse_threads(self.threads)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        out = self.out
        fmt = self.format
        if fmt == "auto":
            fmt = "npz" if out is not None and out.endswith(".npz") else "png"
        if fmt == "npz" and out is not None and not out.endswith(".npz"):
            raise UsageError(f"format=npz writes a .npz file; out={out} does not end with .npz")
        if fmt == "png" and out is not None and out.endswith(".npz"):
            raise UsageError(f"format=png writes a PNG grid (plus an .npz beside it); give out=<name>.png, not {out}")
        if fmt == "npz" and self.batch_size is not None:
            raise UsageError(
                f"batch_size does not apply to an .npz sample set: it is drawn in chunks of chunk_size="
                f"{self.chunk_size} (the forward batch and the seeding unit); set chunk_size= instead"
            )
        if isinstance(self.steps, int) and self.steps < 1:
            raise UsageError(f"steps must be a positive integer (or a respacing such as ddim25), got {self.steps}")
        return dataclasses.replace(self, format=fmt)

    def sampling(self) -> dict[str, Any]:
        """The sampling settings asked for (None: not asked, the run's)."""
        return {"sampler": self.sampler, "steps": self.steps, "cfg_scale": self.cfg_scale,
                "guide_channels": self.guide_channels}


def condition_cycle(request: SampleRequest, run: LoadedRun) -> list[int] | list[tuple[int, ...]] | None:
    """What sample i is conditioned on, cycled (i mod its length): class labels (:func:`label_cycle`), or for a
    captioned run the token rows of ``caption`` or of ``caption_split``'s first ``num_samples`` examples."""
    if not getattr(run.net, "captioned", False):
        if request.caption is not None:
            raise UsageError("caption= is for a captioned run; this model takes class labels (labels=/class=)")
        return label_cycle(request, run.num_classes)
    if request.labels is not None or request.class_ is not None:
        raise UsageError("this run is conditioned on captions: give caption='a ... and a ...', not labels=/class=")
    from archbench.data import build_dataset
    from archbench.data.captions import encode_captions, first_captions

    name = str(run.data.get("name"))
    try:
        if request.caption is not None:
            tokens = encode_captions(name, [part for part in request.caption.split(";") if part.strip()])
        else:
            dataset = build_dataset(name, root=run.data.get("root"), split=request.caption_split)
            tokens = first_captions(dataset, request.num_samples)
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None
    return [tuple(int(v) for v in row) for row in tokens]


def label_cycle(request: SampleRequest, num_classes: int) -> list[int] | None:
    """Labels that sample i cycles through (i mod their count): ``labels``/``class``, else every class; None when
    the model is unconditional."""
    wanted = request.labels if request.labels is not None else request.class_
    if wanted is None:
        return list(range(num_classes)) if num_classes > 0 else None
    if num_classes <= 0:
        raise UsageError("this model is unconditional; drop labels=/class=")
    values = [wanted] if isinstance(wanted, int) else list(wanted)
    if not values or not all(0 <= v < num_classes for v in values):
        raise UsageError(f"labels must be integers in [0, {num_classes - 1}], got {wanted!r}")
    return values


@dataclass(frozen=True)
class Prepared:
    """A loaded run and what sampling from it needs: the label cycle, the image shape, the sampler settings."""

    run: LoadedRun
    cycle: list[int] | list[tuple[int, ...]] | None  # class labels, or caption token rows
    shape: tuple[int, int, int]
    chosen: SamplingSettings
    weights: str  # SHA-256 of the EMA weights (archbench.sampling.outputs.weights_checksum)
    conditions: Callable[[torch.Tensor], torch.Tensor] | None = None  # caption tokens -> precomputed features


def _load(request: SampleRequest, device: torch.device) -> Prepared:
    """The run's EMA model plus what sampling it needs."""
    from archbench.sampling.outputs import weights_checksum
    from archbench.sampling.settings import sampling_settings

    run = load_ema_model(request.run_dir, request.checkpoint, device)
    try:
        chosen = sampling_settings(request.sampling(), run.sample, run.objective)
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None
    shape = (int(run.data["channels"]), int(run.data["image_size"]), int(run.data["image_size"]))
    from archbench.data.captions import run_conditions

    try:
        conditions = run_conditions(run.data) if getattr(run.net, "captioned", False) else None
    except ValueError as exc:
        raise UsageError(f"data.caption_features: {one_line(exc)}") from None
    return Prepared(run, condition_cycle(request, run), shape, chosen, weights_checksum(run.net), conditions)


def grid_meta(request: SampleRequest, prepared: Prepared, columns: int) -> dict[str, Any]:
    """What a PNG grid and its .npz record: everything that decides their pixels, the weights' checksum, a
    fingerprint over both, and where the weights were read (``source``, not part of the fingerprint)."""
    from archbench.sampling.outputs import GRID_FORMAT, fingerprint

    identity = {
        "format": GRID_FORMAT,
        "num_samples": request.num_samples,
        "shape": list(prepared.shape),
        "labels": prepared.cycle,
        "sampling": prepared.chosen.as_dict(),
        "seed": request.seed,
        "batch_size": request.batch_size or PNG_BATCH_SIZE,
        "columns": columns,
        "weights": prepared.weights,
    }
    source = {"checkpoint": str(prepared.run.path), "step": prepared.run.step}
    return {**identity, "source": source, "fingerprint": fingerprint(identity)}


def draw_grid(request: SampleRequest) -> tuple[Path, Path]:
    """Sample in one process and write the PNG grid and the .npz beside it; returns both paths."""
    from archbench.data.captions import decode_captions
    from archbench.data.catalog import class_names
    from archbench.sampling.grid import draw_images, grid_columns, save_grid, save_npz
    from archbench.sampling.outputs import claim
    from archbench.sampling.shards import labels_for
    from archbench.sampling.threads import settle_threads
    from archbench.training.distributed import launched_by_torchrun, pick_device

    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        raise UsageError("a PNG grid is drawn by one process; under torchrun write a sample set: out=PATH.npz")
    try:
        device = pick_device(request.device)
    except RuntimeError as exc:
        raise UsageError(f"device={request.device}: {one_line(exc)}") from None
    prepared = _load(request, device)
    run, n, chosen = prepared.run, request.num_samples, prepared.chosen
    labels = labels_for(prepared.cycle, 0, n)
    default = run.run_dir / "samples" / f"sample_step{run.step:07d}.png"
    out = Path(request.out) if request.out else default
    captioned = getattr(run.net, "captioned", False)
    columns = request.nrow or grid_columns(n, run.num_classes if request.labels is None and not captioned else 0)
    meta = grid_meta(request, prepared, columns)
    try:
        claim([out, out.with_suffix(".npz")], meta, request.overwrite, log)
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None
    batch_size = request.batch_size or PNG_BATCH_SIZE
    settle_threads(request.threads, run.net, prepared.shape, batch_size, run.num_classes, device)
    log.info("sampling %d images from %s (EMA, step %d, cfg %.2f)", n, run.path, run.step, chosen.cfg_scale)
    try:
        model_labels = prepared.conditions(labels) if prepared.conditions and labels is not None else labels
        samples = draw_images(run.net, run.objective, chosen, num_samples=n, shape=prepared.shape, labels=model_labels,
                              seed=request.seed, batch_size=batch_size, device=device, progress=request.progress)
    except ValueError as exc:  # unknown sampler, bad steps, cfg without a null class
        raise UsageError(one_line(exc)) from None
    captions = decode_captions(str(run.data.get("name")), labels) if captioned else None
    png = save_grid(samples, out, columns, meta, labels=None if captioned else labels,
                    class_names=class_names(run.data.get("name")), captions=captions)
    text = json.dumps(meta, sort_keys=True, default=str)
    npz = save_npz(samples, labels, out.with_suffix(".npz"), {"meta": np.asarray(text)})
    return png, npz


def draw_set(request: SampleRequest) -> SampleSetResult:
    """Draw (this rank's share of) an .npz sample set, one process or many under torchrun; rank 0 merges it."""
    from archbench.console.logs import setup_logging
    from archbench.sampling.shards import SampleSetSpec, write_sample_set
    from archbench.sampling.threads import settle_threads
    from archbench.training.distributed import barrier, broadcast_object, cleanup, init_distributed

    try:
        dist = init_distributed(request.device)
    except RuntimeError as exc:
        raise UsageError(f"device={request.device}: {one_line(exc)}") from None
    setup_logging(dist.rank)
    try:
        prepared = _load(request, dist.device)
        run, n, chosen = prepared.run, request.num_samples, prepared.chosen
        try:
            spec = SampleSetSpec(
                num_samples=n,
                shape=prepared.shape,
                labels=None if prepared.cycle is None else tuple(prepared.cycle),
                sampling=chosen.as_dict(),
                seed=request.seed,
                chunk_size=request.chunk_size,
                source={"checkpoint": str(run.path), "step": run.step},
                weights=prepared.weights,
            )
            default = f"samples_step{run.step:07d}_n{n}_seed{request.seed}.npz"
            out = Path(request.out) if request.out else run.run_dir / "samples" / default
            settle_threads(request.threads, run.net, prepared.shape, request.chunk_size, run.num_classes,
                           dist.device)
            intro = (f"drawing {n} samples from {run.path} (EMA, step {run.step}, {chosen.sampler}, cfg "
                     f"{chosen.cfg_scale:.2f}) into {out}, {dist.world_size} rank(s)")
            return write_sample_set(
                run.net,
                run.objective,
                spec,
                out,
                device=dist.device,
                rank=dist.rank,
                world_size=dist.world_size,
                broadcast=broadcast_object,
                barrier=barrier,
                keep_parts=request.keep_parts,
                progress=request.progress and dist.is_main,
                overwrite=request.overwrite,
                intro=intro,
                conditions=prepared.conditions,
            )
        except ValueError as exc:  # settings the sampler refuses, latents, a part that cannot be merged
            raise UsageError(one_line(exc)) from None
    finally:
        cleanup()
