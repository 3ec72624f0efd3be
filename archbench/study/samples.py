"""One sample grid per study: a row per arm, every row drawn from the same noise and labels.

The same seed and the same class per column make the rows differ only by the backbone (and what it
learned), so a reader sees the difference the table reports.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from archbench.console.files import write_text_atomic
from archbench.study.job import trained_step
from archbench.study.plan import Job


def grid_sources(jobs: list[Job]) -> dict[str, str]:
    """label -> final checkpoint of its first seed's run (only finished runs)."""
    from archbench.training.checkpoint import checkpoint_path

    out: dict[str, str] = {}
    for job in jobs:
        if job.label in out or trained_step(job.run_dir) < job.steps:
            continue
        out[job.label] = str(checkpoint_path(job.run_dir, job.steps))
    return out


def _row(checkpoint: str, grid: dict[str, Any], eval_spec: dict[str, Any]) -> torch.Tensor:
    from archbench.sampling.grid import displayable, generate
    from archbench.training.runs import load_ema_model

    device = torch.device("cpu")
    run = load_ema_model(None, checkpoint, device)
    data, num_classes = run.data, run.num_classes
    columns = int(grid["columns"])
    labels = torch.arange(columns) % num_classes if num_classes else None
    cfg_scale = float(grid["cfg_scale"])
    if cfg_scale != 1.0 and getattr(run.net, "null_class", None) is None:
        cfg_scale = 1.0
    samples = generate(
        run.net, run.objective, num_samples=columns,
        shape=(int(data["channels"]), int(data["image_size"]), int(data["image_size"])),
        labels=labels, sampler=eval_spec["sampler"], steps=int(eval_spec["steps"]), cfg_scale=cfg_scale,
        seed=int(grid["seed"]), batch_size=columns, device=device,
    )
    return (displayable(samples).clamp(-1, 1) + 1) / 2


def write_grid(jobs: list[Job], spec: dict[str, Any], folder: str | Path) -> Path | None:
    """``samples.png`` (and ``samples.json``: which checkpoint drew each row); skipped when nothing changed."""
    folder = Path(folder)
    sources = grid_sources(jobs)
    if not sources:
        return None
    path, meta_path = folder / "samples.png", folder / "samples.json"
    meta = {"rows": sources, "grid": spec["grid"], "sampler": spec["eval"]["sampler"], "steps": spec["eval"]["steps"]}
    if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    rows = {label: _row(ckpt, spec["grid"], spec["eval"]) for label, ckpt in sources.items()}
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.0 * int(spec["grid"]["columns"]) + 1.5, 1.1 * len(rows) + 0.4),
                             squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows.items(), strict=True):
        strip = make_grid(images, nrow=images.shape[0], padding=1, pad_value=1.0)
        ax.imshow(strip.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if strip.shape[0] == 1 else None,
                  vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"{spec['name']}: same noise and labels per column (cfg {spec['grid']['cfg_scale']})", fontsize=9)
    fig.tight_layout()
    tmp = folder / f".samples.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    return path
