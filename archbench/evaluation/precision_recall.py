"""Improved precision and recall (Kynkäänniemi et al., 2019): k-NN estimates of each feature manifold.

Each set's manifold is the union of balls around its points with radius = distance to the point's k-th nearest
neighbour within the set. Precision is the share of generated points inside the real manifold (fidelity);
recall is the share of real points inside the generated manifold (coverage). Distances are float64, in row
chunks, so the N x M matrix never has to exist at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

DEFAULT_K = 3


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    k: int


def _as_tensor(x: ArrayLike | torch.Tensor) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"features must be (N, dim), got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # |a|^2 + |b|^2 - 2ab in float64 loses precision relative to |a|^2, so callers centre the points first
    # (distances do not change under a common shift): a large common offset would otherwise swamp the radii.
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None] - 2.0 * (a @ b.T)
    return d2.clamp_min_(0.0).sqrt_()


def knn_radii(x: ArrayLike | torch.Tensor, k: int = DEFAULT_K, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row (the point itself is not a neighbour)."""
    x = _as_tensor(x)
    x = x - x.mean(0)
    if not 1 <= k < len(x):
        raise ValueError(f"need 1 <= k < number of points, got k={k} with {len(x)} points")
    radii = [torch.kthvalue(_distances(x[i : i + chunk], x), k + 1, dim=1).values for i in range(0, len(x), chunk)]
    return torch.cat(radii)


def manifold_coverage(
    points: ArrayLike | torch.Tensor, support: ArrayLike | torch.Tensor, k: int = DEFAULT_K, chunk: int = 1024
) -> float:
    """Share of ``points`` lying within the k-NN ball of at least one ``support`` point."""
    p, s = _as_tensor(points), _as_tensor(support)
    if p.shape[1] != s.shape[1]:
        raise ValueError(f"feature dims differ: {p.shape[1]} vs {s.shape[1]}")
    centre = s.mean(0)
    p, s = p - centre, s - centre
    radii = knn_radii(s, k, chunk)
    inside = [(_distances(p[i : i + chunk], s) <= radii[None]).any(dim=1) for i in range(0, len(p), chunk)]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: ArrayLike | torch.Tensor, fake: ArrayLike | torch.Tensor, k: int = DEFAULT_K, chunk: int = 1024
) -> PrecisionRecall:
    """Precision (fake inside the real manifold) and recall (real inside the fake manifold) with k-NN radii."""
    return PrecisionRecall(
        precision=manifold_coverage(fake, real, k, chunk), recall=manifold_coverage(real, fake, k, chunk), k=k
    )
