"""Per-example training randomness (timestep, noise, flip) drawn from per-example seeds.

Each example's draws come from its own generator seeded by ``(run seed, optimiser step, dataset index)``.
How the global batch is split across ranks or accumulation micro-batches, and whether the run was
resumed, therefore cannot change what noise an example gets: one process and N processes train on the
same (x_t, t) pairs, and a resumed run continues the uninterrupted one exactly. :func:`example_losses` is the
one training-loss path: the Trainer and ``bench step`` both call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from archbench.diffusion import Objective


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
    objective: Objective,
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
        ts.append(objective.draw_t(1, generator))
        noises.append(torch.randn(shape, generator=generator))
        flips.append(torch.rand((1,), generator=generator) < 0.5)
    return Draws(t=torch.cat(ts), noise=torch.stack(noises), flip=torch.cat(flips))


def example_losses(
    objective: Objective,
    model: torch.nn.Module,
    x0: torch.Tensor,
    indices: torch.Tensor,
    *,
    seed: int,
    step: int,
    random_flip: bool = False,
    model_kwargs: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Per-example losses [B] of examples ``indices`` (dataset positions) at optimiser step ``step``: draw their
    time, noise and flip (:func:`draw`), flip if asked, and evaluate the objective there."""
    draws = draw(objective, indices, tuple(x0.shape[1:]), seed=seed, step=step)
    if random_flip:
        x0 = torch.where(draws.flip.to(x0.device).view(-1, *([1] * (x0.ndim - 1))), x0.flip(-1), x0)
    t = draws.t.to(x0.device)
    noise = draws.noise.to(device=x0.device, dtype=x0.dtype)
    return objective.losses(model, x0, t, noise, model_kwargs)
