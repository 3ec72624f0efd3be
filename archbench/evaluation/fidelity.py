"""Inception Score and Kernel Inception Distance, computed by torch-fidelity's own metric code.

torch-fidelity is what the FID network already comes from; its IS and KID functions take features we have
extracted ourselves (one Inception pass serves FID, IS and KID), so nothing is recomputed and nothing is ever
downloaded. Its defaults are kept: IS over 10 splits of the bias-free logits, KID with a cubic polynomial
kernel over 100 subsets of 1000, both with torch-fidelity's fixed RNG seed; smaller sets get fewer IS splits
(at least 2 samples each) and smaller KID subsets (the smaller set's size).
"""

from __future__ import annotations

import importlib

import torch

ISC_SPLITS = 10
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def _metric_module(name: str):
    try:
        return importlib.import_module(f"torch_fidelity.{name}")
    except ImportError as e:
        raise ImportError("IS and KID need torch-fidelity: pip install torch-fidelity (or archbench[fid])") from e


def isc_splits(num_samples: int, splits: int = ISC_SPLITS) -> int:
    """``splits``, fewer when a split would hold under 2 samples (a 1-sample split scores exactly 1)."""
    return max(1, min(splits, num_samples // 2))


def inception_score(logits: torch.Tensor, splits: int = ISC_SPLITS) -> tuple[float, float]:
    """Mean and standard deviation over :func:`isc_splits` splits of exp(E KL(p(y|x) || p(y))), from (N, 1008)
    logits (torch-fidelity's ``logits_unbiased``)."""
    if logits.ndim != 2 or logits.shape[0] < 2:
        raise ValueError(f"the Inception Score needs (N >= 2, classes) logits, got shape {tuple(logits.shape)}")
    isc = _metric_module("metric_isc")
    out = isc.isc_features_to_metric(logits.cpu(), splits=isc_splits(len(logits), splits), shuffle=True, rng_seed=2020)
    return out[isc.KEY_METRIC_ISC_MEAN], out[isc.KEY_METRIC_ISC_STD]


def kernel_inception_distance(
    features: torch.Tensor,
    reference: torch.Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
) -> tuple[float, float, int]:
    """Mean and standard deviation of the unbiased MMD^2 over ``subsets`` random subsets, and the subset size
    used (``subset_size``, or the smaller set's size when that is less)."""
    size = min(subset_size, len(features), len(reference))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features on each side, got {len(features)} and {len(reference)}")
    kid = _metric_module("metric_kid")
    out = kid.kid_features_to_metric(
        torch.as_tensor(features, dtype=torch.float32),
        torch.as_tensor(reference, dtype=torch.float32),
        kid_subsets=subsets,
        kid_subset_size=size,
        verbose=False,
    )
    return out[kid.KEY_METRIC_KID_MEAN], out[kid.KEY_METRIC_KID_STD], size
