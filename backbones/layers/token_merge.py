"""Changing the token count between the levels of an hourglass: 2x2 merge down, split up, lerp skip.

A level's tokens lie row-major on an ``(h, w)`` grid.  Merging concatenates each 2x2 block of neighbours
(in the order top-left, top-right, bottom-left, bottom-right) and projects the ``4 * width`` features to the
next level's width; splitting projects back to ``4 * width`` and lays the four parts out in the same order,
so a split exactly undoes the layout of a merge.  Both are plain linears (no bias, as HDiT), so the FLOP
counter counts them as the linears they are.  The split blends its output with the level's skip through a
learned scalar, ``lerp(skip, split(x), weight)`` starting at 0.5 (HDiT's interpolation skip).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _check_grid(tokens: torch.Tensor, grid: tuple[int, int], what: str) -> None:
    h, w = grid
    if h % 2 or w % 2 or tokens.shape[1] != h * w:
        raise ValueError(f"{what}: expected {h}x{w} = {h * w} tokens on an even grid, got {tokens.shape[1]}")


def merge_layout(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) on an ``(h, w)`` grid -> (B, h/2 * w/2, 4C): each 2x2 block's tokens side by side."""
    b, _, c = tokens.shape
    h, w = grid
    blocks = tokens.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5)
    return blocks.reshape(b, (h // 2) * (w // 2), 4 * c)


def split_layout(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`merge_layout`: (B, h/2 * w/2, 4C) -> (B, h*w, C) on the ``(h, w)`` grid."""
    b, _, c4 = tokens.shape
    h, w = grid
    blocks = tokens.reshape(b, h // 2, w // 2, 2, 2, c4 // 4).permute(0, 1, 3, 2, 4, 5)
    return blocks.reshape(b, h * w, c4 // 4)


class TokenMerge(nn.Module):
    """2x2 neighbouring tokens -> one token of the next level's width."""

    def __init__(self, width: int, next_width: int):
        super().__init__()
        self.proj = nn.Linear(4 * width, next_width, bias=False)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        _check_grid(tokens, grid, "TokenMerge")
        return self.proj(merge_layout(tokens, grid))


class TokenSplit(nn.Module):
    """One token -> its 2x2 block at the outer level's width, blended with the outer level's skip."""

    def __init__(self, width: int, outer_width: int, skip_weight: float = 0.5):
        super().__init__()
        self.proj = nn.Linear(width, 4 * outer_width, bias=False)
        self.skip_weight = nn.Parameter(torch.tensor(float(skip_weight)))

    def forward(self, tokens: torch.Tensor, skip: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        _check_grid(skip, grid, "TokenSplit")
        split = split_layout(self.proj(tokens), grid).to(skip.dtype)  # autocast may hand back another dtype
        return torch.lerp(skip, split, self.skip_weight.to(skip.dtype))
