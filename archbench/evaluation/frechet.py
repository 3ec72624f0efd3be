"""Fréchet distance between two Gaussians, in float64 with a symmetric (eigendecomposition) matrix square root.

``d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``. The trace term is computed as
``sum(sqrt(eig(S1^{1/2} S2 S1^{1/2})))``: that matrix is symmetric positive semi-definite with the same eigenvalues
as ``S1 S2``, so ``eigh`` gives real, well-conditioned eigenvalues even when S1 or S2 is singular (more features
than samples, dead units), where a general ``sqrtm`` of the non-symmetric product can return complex garbage.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

# Eigenvalues below -_NEG_TOL * (largest |eigenvalue|) mean the input was not a covariance matrix.
_NEG_TOL = 1e-6


def _as_cov(sigma: ArrayLike, dim: int, name: str) -> np.ndarray:
    s = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if s.shape != (dim, dim):
        raise ValueError(f"{name} must be ({dim}, {dim}), got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} has non-finite entries")
    return 0.5 * (s + s.T)  # accumulated covariances are symmetric only up to rounding


def _psd_eigvals(m: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    w, v = np.linalg.eigh(m)
    scale = max(float(np.abs(w).max(initial=0.0)), np.finfo(np.float64).tiny)
    if w.min(initial=0.0) < -_NEG_TOL * scale:
        raise ValueError(f"{name} is not positive semi-definite (min eigenvalue {w.min():.3g}, max {scale:.3g})")
    return np.clip(w, 0.0, None), v


def sqrt_psd(sigma: ArrayLike) -> np.ndarray:
    """Symmetric square root of a covariance matrix (tiny negative eigenvalues from rounding are clipped to 0)."""
    s = np.asarray(sigma, dtype=np.float64)
    w, v = _psd_eigvals(0.5 * (s + s.T), "sigma")
    return (v * np.sqrt(w)) @ v.T


def trace_sqrt_product(sigma1: ArrayLike, sigma2: ArrayLike) -> float:
    """``tr((S1 S2)^{1/2})`` for covariance matrices S1, S2, via the symmetric form ``S1^{1/2} S2 S1^{1/2}``."""
    s1 = np.asarray(sigma1, dtype=np.float64)
    root1 = sqrt_psd(s1)
    inner = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    w, _ = _psd_eigvals(0.5 * (inner + inner.T), "sigma1^1/2 sigma2 sigma1^1/2")
    return float(np.sqrt(w).sum())


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2); FID when fed Inception stats.

    Exact in float64 up to rounding, finite for singular covariances; never negative (clipped at 0, since rounding
    can push the difference of nearly equal traces a hair below zero).
    """
    m1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    m2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(f"mu1 and mu2 must be vectors of the same length, got {m1.shape} and {m2.shape}")
    if not (np.all(np.isfinite(m1)) and np.all(np.isfinite(m2))):
        raise ValueError("mu1/mu2 have non-finite entries")
    dim = m1.shape[0]
    s1 = _as_cov(sigma1, dim, "sigma1")
    s2 = _as_cov(sigma2, dim, "sigma2")
    diff = m1 - m2
    value = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * trace_sqrt_product(s1, s2)
    return max(value, 0.0)
