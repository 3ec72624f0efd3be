"""Truncated-normal initialisation by the inverse CDF, the draw timm's ``trunc_normal_`` (and so U-ViT) makes.

``torch.nn.init.trunc_normal_`` now samples by rejection, which draws different numbers from the same seed, so
a seeded U-ViT would no longer start from the official code's weights; this keeps timm's draw without importing
timm (see :mod:`backbones.layers.mlp` for why not).
"""

from __future__ import annotations

import math

import torch


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0
                  ) -> torch.Tensor:
    """Fill ``tensor`` in place from N(mean, std^2) cut to [a, b]: uniform draws between the bounds' CDF values,
    mapped through the normal's inverse CDF (``erfinv``), clamped against rounding at the edges."""
    low, high = _normal_cdf((a - mean) / std), _normal_cdf((b - mean) / std)
    tensor.uniform_(2.0 * low - 1.0, 2.0 * high - 1.0).erfinv_()
    return tensor.mul_(std * math.sqrt(2.0)).add_(mean).clamp_(min=a, max=b)
