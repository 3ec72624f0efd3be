"""The objectives by name: ``create_diffusion(name, **settings)`` and the settings each name accepts.

Each objective's ``Settings`` dataclass is the one place its keys live: the training configuration builds the
``diffusion=<name>`` group from :func:`objective_settings`, and ``create_diffusion`` validates through it. A key
that belongs to another objective is checked by that objective's ``Settings`` and then ignored, so one recipe
may set, say, ``diffusion.loss_weighting`` and still run under ``diffusion=flow``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .ddpm import GaussianObjective
from .edm import EDMObjective
from .flow import FlowObjective
from .gaussian import check_choice
from .objective import Objective

# name -> objective class; the first is the default. A new objective is one more entry.
OBJECTIVE_CLASSES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (GaussianObjective, FlowObjective, EDMObjective)
}
OBJECTIVES = tuple(OBJECTIVE_CLASSES)


def objective_class(name: str) -> type[Objective]:
    """The class registered as ``name``; ValueError listing the valid names otherwise."""
    return OBJECTIVE_CLASSES[check_choice("objective", name, OBJECTIVES)]


def objective_settings(name: str) -> dict[str, Any]:
    """The keys of ``diffusion=<name>`` with their defaults (what the config group holds)."""
    return dataclasses.asdict(objective_class(name).Settings())


def samplers(name: str) -> tuple[str, ...]:
    """The samplers objective ``name`` offers (its default first)."""
    cls = objective_class(name)
    return (cls.default_sampler, *(s for s in cls.samplers if s != cls.default_sampler))


def _owner(key: str, skip: str) -> type[Objective] | None:
    for name, cls in OBJECTIVE_CLASSES.items():
        if name != skip and key in {f.name for f in dataclasses.fields(cls.Settings)}:
            return cls
    return None


def create_diffusion(objective: str = "ddpm", **settings: Any) -> Objective:
    """Build a training/sampling objective by name from its settings (see each ``<Objective>.Settings``).

    Unknown names, keys or values raise ValueError listing the valid ones. A key of another objective is
    validated by that objective's settings and ignored here (one recipe can serve every objective).
    """
    cls = objective_class(objective)
    own_keys = {f.name for f in dataclasses.fields(cls.Settings)}
    own = {key: value for key, value in settings.items() if key in own_keys}
    for key, value in settings.items():
        if key in own_keys:
            continue
        owner = _owner(key, objective)
        if owner is None:
            raise ValueError(f"unknown setting {key!r} for diffusion={objective}; valid: {', '.join(sorted(own_keys))}")
        owner.Settings(**{key: value})
    return cls.from_settings(cls.Settings(**own))
