"""A training run's record read back: the newest checkpoint's EMA network, rebuilt from the config stored in it.

Everything that consumes a trained run (the sample command, evaluation, the CI regression, the study) loads it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from archbench.training import checkpoint as ckpt
from archbench.training.ema import EMA
from archbench.training.setup import build_model, build_objective


def load_ema_model(run_dir: str | Path | None, checkpoint: str | Path | None, device: torch.device) -> dict[str, Any]:
    """EMA network (eval mode, on ``device``), objective, config, step and path of the newest checkpoint in
    ``run_dir`` (or of ``checkpoint``): everything needed to sample from a finished or running training run."""
    path = Path(checkpoint) if checkpoint else ckpt.latest_checkpoint(run_dir) if run_dir else None
    if path is None:
        raise ckpt.CheckpointError(f"no checkpoints under {ckpt.checkpoint_dir(run_dir or '.')}")
    state = ckpt.load_checkpoint(path)
    config = ckpt.checkpoint_config(state)
    ema = EMA(build_model(config), decay=1.0)
    try:
        ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError) as exc:
        raise ckpt.CheckpointError(f"checkpoint {path}: EMA weights do not fit the stored config ({exc})") from None
    return {
        "net": ema.model.to(device).eval(),
        "objective": build_objective(config),
        "config": config,
        "step": int(state["step"]),
        "path": path,
    }
