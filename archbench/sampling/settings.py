"""Which sampler settings a command uses: what the user asked for, else what the run saved, else the defaults."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from archbench.diffusion import Objective

SAMPLING_KEYS = ("sampler", "steps", "cfg_scale", "guide_channels")


@dataclass(frozen=True)
class SamplingSettings:
    """The settings a set of samples is drawn with (the keys of :data:`SAMPLING_KEYS`)."""

    sampler: str
    steps: int | str | None = None  # None: the sampler's default; a string is a respacing such as "ddim25"
    cfg_scale: float = 1.0
    guide_channels: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.cfg_scale):
            raise ValueError(f"cfg_scale must be a finite number, got {self.cfg_scale}")

    def as_dict(self) -> dict[str, Any]:
        """The plain form a sample set's ``meta`` and an ``eval.json`` record store."""
        return asdict(self)


def sampling_settings(requested: dict[str, Any], saved: dict[str, Any], objective: Objective) -> SamplingSettings:
    """Each of ``sampler``, ``steps``, ``cfg_scale`` and ``guide_channels`` from ``requested`` when it is not None,
    else from the run's ``sample`` section, else the objective's default; an unknown sampler raises ValueError."""
    chosen = {key: requested.get(key) if requested.get(key) is not None else saved.get(key) for key in SAMPLING_KEYS}
    return SamplingSettings(
        sampler=objective.check_sampler(chosen["sampler"]),
        steps=chosen["steps"],
        cfg_scale=float(1.0 if chosen["cfg_scale"] is None else chosen["cfg_scale"]),
        guide_channels=None if chosen["guide_channels"] is None else int(chosen["guide_channels"]),
    )
