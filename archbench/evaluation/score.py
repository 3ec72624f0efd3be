"""Score a set of generated images against cached real statistics: Fréchet distance plus k-NN precision/recall."""

from __future__ import annotations

import logging
from typing import Any

import torch

from archbench.evaluation.extractor import FeatureExtractor
from archbench.evaluation.features import feature_stats
from archbench.evaluation.precision_recall import DEFAULT_K, precision_recall
from archbench.evaluation.reference import REFERENCE_KEEP
from archbench.evaluation.stats import FeatureStats

log = logging.getLogger("archbench.eval")


def score_samples(
    samples: torch.Tensor,
    extractor: FeatureExtractor,
    reference: FeatureStats,
    *,
    batch_size: int = 250,
    k: int = DEFAULT_K,
    pr_items: int = REFERENCE_KEEP,
) -> dict[str, Any]:
    """FD between ``samples`` (images in [-1, 1]) and ``reference``, and precision/recall on equal-size sets.

    Precision/recall use the first ``min(len(samples), kept reference rows, pr_items)`` points of each side:
    the k-NN estimate is biased by set size, so both manifolds are built from the same number of points.
    """
    stats = feature_stats(extractor, samples, batch_size=batch_size, keep=pr_items)
    if stats.n <= extractor.dim:
        log.warning(
            "%s from %d samples of %d-dim features: the sample covariance is singular (rank < dim), so the score "
            "is dominated by estimation bias; use well over %d samples (FID is conventionally 50,000)",
            extractor.score_name, stats.n, extractor.dim, extractor.dim,
        )
    result: dict[str, Any] = {
        "score_name": extractor.score_name,
        "score": stats.frechet_distance(reference),
        "num_samples": stats.n,
        "reference_items": reference.n,
    }
    m = min(stats.n, pr_items, 0 if reference.features is None else len(reference.features))
    if m > k:
        pr = precision_recall(reference.features[:m], stats.features[:m], k=k)
        result.update(precision=pr.precision, recall=pr.recall, pr_k=k, pr_items=m)
    else:
        result.update(precision=None, recall=None, pr_k=k, pr_items=0)
    return result
