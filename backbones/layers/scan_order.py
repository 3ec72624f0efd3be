"""Scan orders: in which order a sequence mixer visits the patch tokens of the 2-D grid.

A state-space mixer is causal along its sequence, so the order of the patches decides which patches each
one can see.  Every order here is, per layer, a list of *directions*; a direction is a permutation of the
whole token sequence (the time/label tokens first, as DiS lays them out, then the patches in path order),
applied before the mixer's scan and inverted after it.  A reversed direction reverses the whole sequence,
so the time/label tokens come last, exactly as DiS's backward scan over the flipped sequence.

* ``raster``: one direction, row-major.
* ``bidirectional``: row-major and its reverse (DiS).
* ``zigzag``: one spatially continuous snake per layer, cycling over the 8 variants (start corner x
  along rows or along columns), as ZigMa does.
* ``cross``: four directions per block, row-major, column-major and both reversed (VMamba's cross-scan).
  The mixer sums the directions' outputs, as DiS sums its two and VMamba's cross-merge sums its four.
* ``alternate``: row-major and its reverse in even layers, column-major and its reverse in odd ones (DiM).
"""

from __future__ import annotations

import torch

SCAN_ORDERS = ("raster", "bidirectional", "zigzag", "cross", "alternate")
ZIGZAG_VARIANTS = 8


def raster_path(height: int, width: int) -> torch.Tensor:
    return torch.arange(height * width, device="cpu")


def column_path(height: int, width: int) -> torch.Tensor:
    """Column-major: down each column, left to right."""
    return torch.arange(height * width, device="cpu").reshape(height, width).t().reshape(-1)


def snake_path(height: int, width: int, variant: int) -> torch.Tensor:
    """Variant 0-7 of the boustrophedon: bit 0 flips left-right, bit 1 flips top-bottom, bit 2 goes along
    columns instead of rows.  Consecutive entries are always grid neighbours."""
    grid = torch.arange(height * width, device="cpu").reshape(height, width)
    if variant & 1:
        grid = grid.flip(1)
    if variant & 2:
        grid = grid.flip(0)
    if variant & 4:
        grid = grid.t()
    rows = [row if i % 2 == 0 else row.flip(0) for i, row in enumerate(grid)]
    return torch.cat(rows)


def patch_paths(order: str, height: int, width: int, layer: int) -> list[tuple[torch.Tensor, bool]]:
    """(patch path, reversed) per direction of ``layer`` for an ``height x width`` grid of patches."""
    if order not in SCAN_ORDERS:
        raise ValueError(f"unknown scan_order {order!r}; valid scan orders: {', '.join(SCAN_ORDERS)}")
    raster = raster_path(height, width)
    if order == "raster":
        return [(raster, False)]
    if order == "bidirectional":
        return [(raster, False), (raster, True)]
    if order == "zigzag":
        return [(snake_path(height, width, layer % ZIGZAG_VARIANTS), False)]
    column = column_path(height, width)
    if order == "cross":
        return [(raster, False), (column, False), (raster, True), (column, True)]
    path = raster if layer % 2 == 0 else column
    return [(path, False), (path, True)]


def num_directions(order: str) -> int:
    return len(patch_paths(order, 1, 1, 0))


def sequence_permutation(path: torch.Tensor, extras: int, reverse: bool) -> torch.Tensor:
    """The permutation of the full token sequence: ``extras`` leading tokens, then the patches along ``path``."""
    perm = torch.cat([torch.arange(extras, device="cpu"), path + extras])
    return perm.flip(0) if reverse else perm


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device="cpu")
    return inverse
