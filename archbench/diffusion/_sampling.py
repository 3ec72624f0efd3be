"""Small helpers shared by the samplers: reproducible noise and an optional progress bar."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

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


def progress_bar(items: Iterable[T], enabled: bool) -> Iterable[T] | Iterator[T]:
    """Wrap in tqdm when asked and installed; tqdm is not a hard dependency."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - depends on the environment
        return items
    return tqdm(items)
