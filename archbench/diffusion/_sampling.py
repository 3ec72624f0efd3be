"""Small helpers shared by the samplers: reproducible noise and an optional progress bar."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import torch

from archbench.console.progress import steps

T = TypeVar("T")


def randn(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal drawn on the generator's device, then moved: a CPU generator gives the
    same numbers whatever device the model runs on."""
    draw_device = generator.device if generator is not None else device
    out = torch.randn(shape, generator=generator, device=draw_device, dtype=dtype)
    return out.to(device) if device is not None else out


def initial_noise(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None,
    noise: torch.Tensor | None,
    device: torch.device | str | None,
) -> torch.Tensor:
    """x_T: the given ``noise`` (shape-checked) or a fresh draw."""
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        return noise.to(device) if device is not None else noise
    return randn(tuple(shape), generator=generator, device=device)


def progress_bar(items: Sequence[T], enabled: bool) -> Iterable[T]:
    """A sampler's steps, shown when ``enabled``: they advance the caller's one bar over the whole draw when it
    opened one (:func:`archbench.console.progress.shared_progress`), else a bar of this call's own."""
    return steps(items, enabled)
