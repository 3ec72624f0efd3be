"""One sample grid per study: a row per arm, every row drawn from the same noise and labels (for captioned runs,
the same captions: those of the evaluation's reference split, written above their columns).

The same seed and the same class per column make the rows differ only by the backbone (and what it
learned), so a reader sees the difference the table reports.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from archbench.console.files import write_text_atomic
from archbench.study.job import trained_step
from archbench.study.plan import Job
from archbench.study.schema import EvalSpec, GridSpec, StudySpec

PICTURE = "labelled/2"  # how samples.png is drawn: a new value redraws the grids of finished studies once


def grid_sources(jobs: list[Job]) -> dict[str, str]:
    """label -> final checkpoint of its first seed's run (only finished runs)."""
    from archbench.training.checkpoint import checkpoint_path

    out: dict[str, str] = {}
    for job in jobs:
        if job.label in out or trained_step(job.run_dir) < job.steps:
            continue
        out[job.label] = str(checkpoint_path(job.run_dir, job.steps))
    return out


@dataclass(frozen=True)
class Row:
    """One arm's images [columns, C, H, W] in [-1, 1], their labels (None: unconditional), the names of its
    dataset's classes (None where the catalogue does not know them) and, for captions, their texts."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: tuple[str, ...] | None
    captions: tuple[str, ...] | None = None


def _row(checkpoint: str, grid: GridSpec, eval_spec: EvalSpec) -> Row:
    from archbench.data.catalog import class_names
    from archbench.sampling.grid import displayable, generate
    from archbench.training.runs import load_ema_model

    device = torch.device("cpu")
    run = load_ema_model(None, checkpoint, device)
    data, num_classes = run.data, run.num_classes
    columns = grid.columns
    labels = conditions = torch.arange(columns) % num_classes if num_classes else None
    captions = None
    if getattr(run.net, "captioned", False):  # the first captions of the split the samples are scored against
        labels, conditions, captions = _captions(data, eval_spec.ref_split, columns)
    cfg_scale = grid.cfg_scale
    if cfg_scale != 1.0 and getattr(run.net, "null_class", None) is None:
        cfg_scale = 1.0
    samples = generate(
        run.net, run.objective, num_samples=columns,
        shape=(int(data["channels"]), int(data["image_size"]), int(data["image_size"])),
        labels=conditions, sampler=eval_spec.sampler, steps=eval_spec.steps, cfg_scale=cfg_scale,
        seed=grid.seed, batch_size=columns, device=device,
    )
    return Row(displayable(samples).clamp(-1, 1), labels, class_names(data.get("name")), captions)


def _captions(data: dict[str, Any], split: str, n: int) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Caption tokens of ``split``'s first ``n`` examples, what the model takes for them, and their texts."""
    from archbench.data.captions import decode_captions, split_captions

    tokens, conditions = split_captions(data, split, n)
    return tokens, conditions, tuple(decode_captions(str(data["name"]), tokens))


def _common_shape(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rows of one shape: grey rows as RGB when some arm draws colour, smaller images enlarged by the largest
    integer factor that fits (nearest neighbour) and centred on white where arms draw at different sizes."""
    channels = max(row.shape[1] for row in rows)
    height, width = max(row.shape[2] for row in rows), max(row.shape[3] for row in rows)
    out = []
    for row in rows:
        row = row.expand(-1, channels, -1, -1) if row.shape[1] != channels else row
        factor = max(1, min(height // row.shape[2], width // row.shape[3]))
        row = row.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
        top, left = (height - row.shape[2]) // 2, (width - row.shape[3]) // 2
        pad = (left, width - row.shape[3] - left, top, height - row.shape[2] - top)
        out.append(torch.nn.functional.pad(row, pad, value=1.0) if any(pad) else row)
    return out


def draw(rows: dict[str, Row], path: str | Path, title: str | None = None,
         meta: dict[str, Any] | None = None) -> Path:
    """The comparison picture: a row of images per arm, the arm's name at its left and, when every row holds the
    same class in each column, the class names above the columns (images enlarged by an integer factor)."""
    from archbench.sampling.grid import save_grid
    from archbench.sampling.picture import CAPTION_TILE, tile_scale

    first = next(iter(rows.values()))
    columns = first.images.shape[0]
    if any(row.images.shape[0] != columns for row in rows.values()):
        raise ValueError("the arms' sample rows differ in length: "
                         + ", ".join(f"{name} {row.images.shape[0]}" for name, row in rows.items()))
    images = _common_shape([row.images for row in rows.values()])
    same_labels = all(row.labels is not None and first.labels is not None and torch.equal(row.labels, first.labels)
                      for row in rows.values())
    if first.captions is not None and same_labels:  # the captions above their columns, on readable tiles
        width = images[0].shape[-1]
        return save_grid(torch.cat(images), path, columns, meta, column_names=list(first.captions),
                         row_names=list(rows), title=title, scale=max(tile_scale(width), -(-CAPTION_TILE // width)))
    labels = first.labels.repeat(len(rows)) if same_labels and first.labels is not None else None
    return save_grid(torch.cat(images), path, columns, meta, labels=labels,
                     class_names=first.class_names, row_names=list(rows), title=title)


def write_grid(jobs: list[Job], spec: StudySpec, folder: str | Path) -> Path | None:
    """``samples.png`` (and ``samples.json``: which checkpoint drew each row); skipped when nothing changed."""
    folder = Path(folder)
    sources = grid_sources(jobs)
    if not sources:
        return None
    path, meta_path = folder / "samples.png", folder / "samples.json"
    meta = {"rows": sources, "grid": asdict(spec.grid), "sampler": spec.eval.sampler, "steps": spec.eval.steps,
            "picture": PICTURE}
    if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return path
    rows = {label: _row(ckpt, spec.grid, spec.eval) for label, ckpt in sources.items()}
    title = f"{spec.name}: same noise and labels per column (cfg {spec.grid.cfg_scale})"
    tmp = folder / f".samples.tmp-{os.getpid()}.png"
    draw(rows, tmp, title, meta)
    os.replace(tmp, path)
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    return path
