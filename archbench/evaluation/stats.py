"""Gaussian feature statistics (mean, covariance, count), accumulated batch by batch and saved as ``.npz``.

Batches are merged with Chan et al.'s pairwise update of (mean, centred sum of squares) in float64: a running
``sum(x x^T) - n mu mu^T`` loses most of its digits when feature means are large compared with their spread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from archbench.evaluation.frechet import frechet_distance


def _as_2d_float64(batch: ArrayLike | torch.Tensor) -> np.ndarray:
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(batch, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, dim), got shape {x.shape}")
    return x


class StatsAccumulator:
    """Streaming mean/covariance of feature rows; optionally keeps the first ``keep`` rows for k-NN metrics."""

    def __init__(self, keep: int = 0):
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None  # sum of outer products of deviations from the running mean
        self.keep = keep
        self._kept: list[np.ndarray] = []
        self._n_kept = 0

    def update(self, batch: ArrayLike | torch.Tensor) -> None:
        """Merge one (B, dim) batch of features."""
        x = _as_2d_float64(batch)
        nb = x.shape[0]
        if nb == 0:
            return
        if self.mean is not None and x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"feature dim changed from {self.mean.shape[0]} to {x.shape[1]}")
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mean_b, m2_b
        else:
            n = self.n + nb
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (nb / n)
            self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (self.n * nb / n)
            self.n = n
        if self._n_kept < self.keep:
            take = x[: self.keep - self._n_kept].astype(np.float32)
            self._kept.append(take)
            self._n_kept += take.shape[0]

    @property
    def kept(self) -> np.ndarray | None:
        """The first ``keep`` rows seen (float32), or None when none were kept."""
        return np.concatenate(self._kept) if self._kept else None

    def result(self, meta: dict[str, Any] | None = None) -> FeatureStats:
        """The statistics so far (covariance with the unbiased 1/(n-1) normalisation, as ``np.cov``)."""
        if self.mean is None or self.m2 is None or self.n < 2:
            raise ValueError(f"need at least 2 feature rows for a covariance, got {self.n}")
        return FeatureStats(self.mean.copy(), self.m2 / (self.n - 1), self.n, self.kept, dict(meta or {}))


@dataclass
class FeatureStats:
    """Mean ``mu`` (dim,), covariance ``sigma`` (dim, dim) and count ``n`` of a feature set, plus provenance.

    ``features`` optionally holds some raw rows (float32) for k-NN precision/recall, which needs points, not moments.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @classmethod
    def from_features(cls, features: ArrayLike | torch.Tensor, keep: int = 0) -> FeatureStats:
        """One-shot statistics of an (N, dim) array."""
        acc = StatsAccumulator(keep=keep)
        acc.update(features)
        return acc.result()

    @classmethod
    def from_batches(cls, batches: Iterable[ArrayLike | torch.Tensor], keep: int = 0) -> FeatureStats:
        """Streaming statistics over an iterable of (B, dim) batches."""
        acc = StatsAccumulator(keep=keep)
        for b in batches:
            acc.update(b)
        return acc.result()

    def frechet_distance(self, other: FeatureStats) -> float:
        """Fréchet distance to another set of statistics over the same features."""
        if self.dim != other.dim:
            raise ValueError(f"feature dims differ: {self.dim} vs {other.dim}")
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to ``path`` (``.npz``, uncompressed so loading is fast); returns the path written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "mu": self.mu,
            "sigma": self.sigma,
            "n": np.asarray(self.n, dtype=np.int64),
            "meta": np.asarray(json.dumps(self.meta, sort_keys=True)),
        }
        if self.features is not None:
            arrays["features"] = self.features
        # Atomic, and private to this process: a crash never leaves a half-written cache entry, and two runs
        # filling the same cache entry at once (a study's parallel jobs) never rename each other's file.
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureStats:
        """Read statistics written by :meth:`save` (no pickles are loaded)."""
        with np.load(path, allow_pickle=False) as z:
            features = z["features"] if "features" in z.files else None
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            return cls(z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z["n"]), features, meta)
