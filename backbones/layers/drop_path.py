"""Stochastic depth (Huang et al., 2016): drop a residual branch for whole samples while training.

Written here rather than imported from timm for the reason in :mod:`backbones.layers.mlp`; the random draw
(one Bernoulli per sample from ``x.new_empty``, kept branches scaled by ``1 / keep``) is timm's, so a seeded run
drops the same samples as the official DiS code does.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class DropPath(nn.Module):
    """Zero the branch for a random ``rate`` of the samples in training and scale the rest by ``1 / (1 - rate)``."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"
