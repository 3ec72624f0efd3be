"""Per-example training randomness (timestep, noise, flip) drawn from per-example seeds.

Each example's draws come from its own generator seeded by ``(run seed, optimiser step, dataset index)``.
How the global batch is split across ranks or accumulation micro-batches, and whether the run was
resumed, therefore cannot change what noise an example gets: one process and N processes train on the
same (x_t, t) pairs, and a resumed run continues the uninterrupted one exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from archbench.diffusion import FlowObjective, GaussianObjective


def example_seed(seed: int, step: int, index: int) -> int:
    """A well-mixed 63-bit seed for one example at one step (numpy's SeedSequence hashing)."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFF, step, index]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@dataclass(frozen=True)
class Draws:
    """What the objective needs for one batch: timesteps [B] and noise [B, C, H, W], plus flip flags [B]."""

    t: torch.Tensor
    noise: torch.Tensor
    flip: torch.Tensor


def draw(
    objective: GaussianObjective | FlowObjective,
    indices: torch.Tensor,
    shape: tuple[int, ...],
    *,
    seed: int,
    step: int,
) -> Draws:
    """Draw t, noise and flip for the examples ``indices`` (on CPU; the caller moves them)."""
    ts, noises, flips = [], [], []
    for index in indices.tolist():
        generator = torch.Generator().manual_seed(example_seed(seed, step, int(index)))
        if isinstance(objective, GaussianObjective):
            ts.append(torch.randint(0, objective.num_timesteps, (1,), generator=generator))
        else:
            ts.append(torch.rand((1,), generator=generator))
        noises.append(torch.randn(shape, generator=generator))
        flips.append(torch.rand((1,), generator=generator) < 0.5)
    return Draws(t=torch.cat(ts), noise=torch.stack(noises), flip=torch.cat(flips))


def training_losses(
    objective: GaussianObjective | FlowObjective,
    model: torch.nn.Module,
    x0: torch.Tensor,
    draws: Draws,
    model_kwargs: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Per-example losses [B] of the objective at the pre-drawn ``t`` and ``noise``."""
    t = draws.t.to(x0.device)
    noise = draws.noise.to(device=x0.device, dtype=x0.dtype)
    if isinstance(objective, GaussianObjective):
        return objective.diffusion.training_losses(model, x0, t, noise, model_kwargs)
    return objective.flow.training_losses(model, x0, t, noise, model_kwargs)
