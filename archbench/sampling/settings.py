"""Which sampler settings a command uses: what the user asked for, else what the run saved, else the defaults."""

from __future__ import annotations

from typing import Any

from archbench.diffusion import Objective

SAMPLING_KEYS = ("sampler", "steps", "cfg_scale", "guide_channels")


def sampling_settings(
    requested: dict[str, Any], saved: dict[str, Any], objective: Objective
) -> dict[str, Any]:
    """``sampler``, ``steps``, ``cfg_scale`` and ``guide_channels``: each from ``requested`` when it is not None,
    else from the run's ``sample`` section, else the objective's default; an unknown sampler raises ValueError."""
    chosen = {key: requested.get(key) if requested.get(key) is not None else saved.get(key) for key in SAMPLING_KEYS}
    chosen["sampler"] = objective.check_sampler(chosen["sampler"])
    chosen["cfg_scale"] = float(1.0 if chosen["cfg_scale"] is None else chosen["cfg_scale"])
    if chosen["guide_channels"] is not None:
        chosen["guide_channels"] = int(chosen["guide_channels"])
    return chosen
