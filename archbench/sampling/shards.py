"""Sample sets at the literature's scale (FID-50k): fixed-size chunks, split over ranks, resumable, merged once.

Sample ``i`` lies in chunk ``i // chunk_size``. A chunk is drawn as one batch from its own generator,
``chunk_generator(seed, chunk)``, and sample ``i``'s label is ``labels[i % len(labels)]``, so every image is
fixed by (model, sampling settings, seed, chunk_size) alone: the merged ``.npz`` is the same file, byte for
byte, for any number of ranks, any order of chunks and any number of interruptions. Chunks are always drawn
whole (the last one is cut when merging), so a smaller set is a prefix of a larger one with the same settings.

Why chunks and not one generator per sample: the stochastic samplers (DDPM, DDIM with eta > 0) draw each
step's noise for the whole batch from one generator, so a sample's noise cannot be separated from its
batch's, and a network's output for one row may change in the last bits with the batch size. The chunk is
therefore both the unit of seeding and the forward batch.

Each finished chunk goes to ``<out>.parts/chunk_NNNNNN.npz`` (written to a temporary file, then renamed),
tagged with the set's fingerprint, the checksum of the weights it was drawn from and its index. A re-run keeps
every part that loads (zip's CRC catches a corrupt or truncated file), carries the fingerprint and index expected
and holds the expected labels, and redraws the others. Rank 0 checks the parts before the ranks split the missing
chunks between them, and merges them into ``out`` (atomically) after a barrier.

A set is identified by the SHA-256 of the weights it is drawn from (:func:`archbench.sampling.outputs.
weights_checksum`), part of its fingerprint, not by the checkpoint's path and step (recorded as ``source``). An
existing ``out`` that holds something else (other weights, other settings, more samples, another kind of file)
and parts drawn from other weights are refused in one line unless ``overwrite``: two models' samples never end
up in one set, and a retrained run never passes for the one a set was drawn from.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from archbench.console.errors import one_line
from archbench.console.progress import shared_progress
from archbench.diffusion import Objective
from archbench.sampling.grid import generate, save_npz
from archbench.sampling.npz import Streamed, write_npz
from archbench.sampling.outputs import SET_FORMAT, claim, fingerprint, short
from archbench.sampling.settings import SAMPLING_KEYS

log = logging.getLogger("archbench.sampling")

FORMAT = SET_FORMAT
PARTS_SUFFIX = ".parts"
REPORTED_PARTS = 5  # damaged parts named one by one; beyond that, counts per reason


class ShardError(ValueError):
    """A sample set that cannot be drawn or merged as asked."""


def labels_for(cycle: Sequence[int] | Sequence[Sequence[int]] | None, start: int, stop: int) -> torch.Tensor | None:
    """Labels of set indices ``start..stop-1``: ``cycle[i % len(cycle)]`` (a class, or a caption's token row), or
    None when unconditional."""
    if cycle is None:
        return None
    values = torch.as_tensor(list(cycle), dtype=torch.long)
    return values[torch.arange(start, stop) % len(values)]


@dataclass(frozen=True)
class SampleSetSpec:
    """Everything that decides the images of a sample set (and, with ``num_samples``, its length).

    ``shape`` is (C, H, W) with 1 or 3 channels; ``labels`` the label cycle (None: unconditional model);
    ``sampling`` the sampler, steps, cfg_scale and guide_channels; ``weights`` the SHA-256 of the weights
    drawn from (:func:`~archbench.sampling.outputs.weights_checksum`; None: not recorded), part of the
    fingerprint so parts of another model are never reused; ``source`` where the weights were read (checkpoint,
    step), recorded in the meta but not part of the fingerprint.
    """

    num_samples: int
    shape: tuple[int, int, int]
    labels: tuple[int, ...] | tuple[tuple[int, ...], ...] | None = None  # class labels, or caption token rows
    sampling: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    chunk_size: int = 64
    source: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.chunk_size < 1:
            raise ShardError(f"num_samples and chunk_size must be positive, got {self.num_samples}, {self.chunk_size}")
        if len(self.shape) != 3 or self.shape[0] not in (1, 3):
            raise ShardError(
                f"sample sets hold 1- or 3-channel images, got shape {tuple(self.shape)} "
                "(latents need the VAE decoder first)"
            )
        if self.labels is not None and not self.labels:
            raise ShardError("labels must be None (unconditional) or a non-empty cycle of class indices")
        unknown = set(self.sampling) - set(SAMPLING_KEYS)
        if unknown:
            raise ShardError(f"unknown sampling settings {sorted(unknown)}; valid: {', '.join(SAMPLING_KEYS)}")

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_samples / self.chunk_size)

    def _identity(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "shape": list(self.shape),
            "labels": None if self.labels is None else [list(v) if isinstance(v, tuple) else v for v in self.labels],
            "sampling": dict(self.sampling),
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "weights": self.weights,
        }

    @property
    def fingerprint(self) -> str:
        """Hash of everything but ``num_samples`` and ``source``: parts of a 10k set are reused by the 50k set."""
        return fingerprint(self._identity())

    def meta(self) -> dict[str, Any]:
        """What the merged file records about itself (its ``meta`` array, JSON)."""
        return {**self._identity(), "source": dict(self.source), "num_samples": self.num_samples,
                "fingerprint": self.fingerprint}

    def chunk_labels(self, chunk: int) -> torch.Tensor | None:
        start = chunk * self.chunk_size
        return labels_for(self.labels, start, start + self.chunk_size)

    def label_array(self, start: int, stop: int) -> np.ndarray:
        """int64 labels as stored in ``arr_1`` (-1 when unconditional)."""
        labels = labels_for(self.labels, start, stop)
        return np.full(stop - start, -1, dtype=np.int64) if labels is None else labels.numpy()


def parts_dir(out: str | Path) -> Path:
    """The folder next to ``out`` that holds its finished chunks: ``<out>.parts``."""
    out = Path(out)
    return out.with_name(out.name + PARTS_SUFFIX)


def part_path(parts: Path, chunk: int) -> Path:
    return parts / f"chunk_{chunk:06d}.npz"


def _load_part(path: Path, spec: SampleSetSpec, chunk: int) -> tuple[np.ndarray | None, str]:
    """The images of part ``chunk`` when the file is valid, else (None, why not)."""
    if not path.is_file():
        return None, "missing"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}  # reads every member: a bad CRC raises here
    except Exception as exc:  # truncated, not a zip, bad CRC, object arrays: all mean "draw it again"
        return None, f"unreadable ({type(exc).__name__}: {one_line(exc)})"
    if "fingerprint" not in arrays or str(arrays["fingerprint"]) != spec.fingerprint:
        return None, "drawn with other settings"
    if "chunk" not in arrays or int(arrays["chunk"]) != chunk:
        return None, "holds another chunk"
    images, labels = arrays.get("arr_0"), arrays.get("arr_1")
    c, h, w = spec.shape
    if images is None or images.dtype != np.uint8 or images.shape != (spec.chunk_size, h, w, c):
        return None, "images of the wrong shape or type"
    start = chunk * spec.chunk_size
    if labels is None or not np.array_equal(labels, spec.label_array(start, start + spec.chunk_size)):
        return None, "unexpected labels"
    return images, ""


def check_part(path: str | Path, spec: SampleSetSpec, chunk: int) -> str | None:
    """None when ``path`` is a valid part for ``chunk`` of ``spec``, else the reason it is not."""
    images, reason = _load_part(Path(path), spec, chunk)
    return None if images is not None else reason


def missing_chunks(spec: SampleSetSpec, parts: Path) -> list[int]:
    """The chunks without a valid part in ``parts`` (invalid ones are reported, then redrawn)."""
    for stale in parts.glob(".chunk_*.tmp-*"):  # left by a killed writer; never a finished part
        stale.unlink(missing_ok=True)
    missing, reasons = [], Counter()
    for chunk in range(spec.num_chunks):
        reason = check_part(part_path(parts, chunk), spec, chunk)
        if reason is None:
            continue
        missing.append(chunk)
        if reason != "missing":
            reasons[reason] += 1
            if sum(reasons.values()) <= REPORTED_PARTS:
                log.warning("redrawing %s: %s", part_path(parts, chunk), reason)
    if sum(reasons.values()) > REPORTED_PARTS:
        log.warning("redrawing %s", ", ".join(f"{n} parts {why}" for why, n in reasons.items()))
    kept = spec.num_chunks - len(missing)
    if kept or reasons:
        log.info("%s: %d of %d chunks already drawn, %d to draw", parts, kept, spec.num_chunks, len(missing))
    return missing


def read_set_meta(path: str | Path) -> dict[str, Any] | None:
    """The ``meta`` of a sample file written by :func:`merge_parts`, or None (another tool's file, unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"])) if "meta" in z.files else None
    except (OSError, ValueError, KeyError):
        return None


def foreign_parts(spec: SampleSetSpec, parts: Path) -> dict[str, list[Path]]:
    """The parts in ``parts`` tagged with weights other than ``spec.weights``, by their weights' checksum."""
    found: dict[str, list[Path]] = {}
    if spec.weights is None or not parts.is_dir():
        return found
    for path in sorted(parts.glob("chunk_*.npz")):
        try:
            with np.load(path, allow_pickle=False) as z:
                weights = str(z["weights"]) if "weights" in z.files else None
        except Exception:  # unreadable: redrawn as damaged, whatever it was drawn from
            continue
        if weights is not None and weights != spec.weights:
            found.setdefault(weights, []).append(path)
    return found


def _plan(spec: SampleSetSpec, out: Path, parts: Path, overwrite: bool) -> dict[str, Any]:
    """Rank 0's decision, broadcast to every rank: done, the chunks to draw, or an error message (a refusal)."""
    try:
        existing = claim([out], spec.meta(), overwrite, log)[0]
    except ValueError as exc:
        return {"error": str(exc)}
    if existing.state == "same":
        return {"done": True, "missing": []}
    if existing.state == "fewer":
        log.info("%s holds %s; extending it to %d samples", out, existing.held, spec.num_samples)
    foreign = foreign_parts(spec, parts)
    if foreign:
        count = sum(len(paths) for paths in foreign.values())
        what = (f"{parts} holds {count} chunk(s) drawn from other weights (sha256 "
                f"{', '.join(short(w) for w in foreign)}; these weights: {short(spec.weights)})")
        if not overwrite:
            return {"error": f"{what}: resuming would mix two models' samples in one set; give another out= or "
                             "overwrite=true to redraw them"}
        log.info("overwrite=true: redrawing the %d chunk(s) of %s drawn from other weights (sha256 %s)",
                 count, parts, ", ".join(short(w) for w in foreign))
        for paths in foreign.values():
            for path in paths:
                path.unlink(missing_ok=True)
    parts.mkdir(parents=True, exist_ok=True)
    return {"done": False, "missing": missing_chunks(spec, parts)}


def merge_parts(spec: SampleSetSpec, parts: Path, out: str | Path) -> Path:
    """Stream every part, in chunk order, into ``out`` (atomically): ``arr_0``, ``arr_1`` and ``meta``."""
    c, h, w = spec.shape

    def blocks() -> Iterator[np.ndarray]:
        for chunk in range(spec.num_chunks):
            images, reason = _load_part(part_path(parts, chunk), spec, chunk)
            if images is None:
                part = part_path(parts, chunk)
                raise ShardError(f"cannot merge {out}: part {part}: {reason}; run again to redraw it")
            yield images[: spec.num_samples - chunk * spec.chunk_size]

    arrays = {
        "arr_0": Streamed((spec.num_samples, h, w, c), np.dtype(np.uint8), blocks()),
        "arr_1": spec.label_array(0, spec.num_samples),
        "meta": np.asarray(json.dumps(spec.meta(), sort_keys=True, default=str)),
    }
    return write_npz(out, arrays)


def draw_chunk(
    model: nn.Module,
    objective: Objective,
    spec: SampleSetSpec,
    chunk: int,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    conditions: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The ``chunk_size`` images of chunk ``chunk`` [C, ch, H, W] in [-1, 1], from its own generator.
    ``conditions`` maps the chunk's labels to what the model takes (caption tokens to precomputed features)."""
    sampling = {key: spec.sampling.get(key) for key in SAMPLING_KEYS}
    labels = spec.chunk_labels(chunk)
    if conditions is not None and labels is not None:
        labels = conditions(labels)
    return generate(
        model,
        objective,
        num_samples=spec.chunk_size,
        shape=tuple(spec.shape),
        labels=labels,
        sampler=sampling["sampler"],
        steps=sampling["steps"],
        cfg_scale=1.0 if sampling["cfg_scale"] is None else float(sampling["cfg_scale"]),
        guide_channels=sampling["guide_channels"],
        seed=spec.seed,
        batch_size=spec.chunk_size,
        device=device,
        progress=progress,
        per_chunk_seeds=True,
        first_index=chunk * spec.chunk_size,
    )


@dataclass(frozen=True)
class SampleSetResult:
    """What one rank did: the set's path, chunks it drew, chunks found already drawn, whether it merged."""

    rank: int
    path: Path
    drawn: int
    reused: int
    num_chunks: int
    merged: bool


def write_sample_set(
    model: nn.Module,
    objective: Objective,
    spec: SampleSetSpec,
    out: str | Path,
    *,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    broadcast: Callable[[Any], Any] | None = None,
    barrier: Callable[[], None] | None = None,
    keep_parts: bool = False,
    progress: bool = False,
    overwrite: bool = False,
    intro: str | None = None,
    conditions: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SampleSetResult:
    """Draw this rank's share of the missing chunks of ``spec`` and, on rank 0, merge the set into ``out``.

    Every rank calls it with the same arguments. With ``world_size > 1``, ``broadcast`` (rank 0's object on
    every rank) and ``barrier`` must be the process group's (``archbench.training.distributed`` has both);
    this module stays below the training stage, so it is handed them. The parts folder is removed after the
    merge unless ``keep_parts``. An ``out`` that holds something else (:func:`archbench.sampling.outputs.compare`)
    or parts drawn from other weights raise :class:`ShardError` on every rank, unless ``overwrite``. ``intro``,
    a line rank 0 logs once the set is found drawable (so that a refusal is the only line printed).
    """
    out = Path(out)
    if out.suffix != ".npz":
        raise ShardError(f"a sample set is written as .npz, got out={out}")
    if world_size > 1 and (broadcast is None or barrier is None):
        raise ShardError(f"world_size={world_size} needs the process group's broadcast and barrier")
    if not 0 <= rank < world_size:
        raise ShardError(f"rank {rank} outside world_size {world_size}")
    parts = parts_dir(out)
    plan: dict[str, Any] | None = None
    if rank == 0:
        plan = _plan(spec, out, parts, overwrite)
    plan = broadcast(plan) if broadcast is not None else plan
    assert plan is not None
    if "error" in plan:
        raise ShardError(plan["error"])
    if intro and rank == 0:
        log.info("%s", intro)
    if plan["done"]:
        log.info("%s already holds these %d samples; nothing to draw", out, spec.num_samples)
        return SampleSetResult(rank, out, 0, spec.num_chunks, spec.num_chunks, False)
    mine = plan["missing"][rank::world_size]
    with shared_progress(f"sampling {len(mine) * spec.chunk_size} images", len(mine), progress, loop_name="chunk"):
        for done, chunk in enumerate(mine, 1):
            images = draw_chunk(model, objective, spec, chunk, device=device, progress=progress,
                                conditions=conditions)
            extra = {"fingerprint": np.asarray(spec.fingerprint), "chunk": np.asarray(chunk, dtype=np.int64)}
            if spec.weights is not None:
                extra["weights"] = np.asarray(spec.weights)
            save_npz(images, spec.chunk_labels(chunk), part_path(parts, chunk), extra)
            log.info("rank %d: chunk %d drawn (%d of its %d)", rank, chunk, done, len(mine))
    if barrier is not None:
        barrier()
    merged = False
    if rank == 0:
        merge_parts(spec, parts, out)
        merged = True
        if not keep_parts:
            shutil.rmtree(parts, ignore_errors=True)
    reused = spec.num_chunks - len(plan["missing"])
    return SampleSetResult(rank, out, len(mine), reused, spec.num_chunks, merged)
