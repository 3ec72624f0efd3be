"""Score a set of generated images against real statistics: one pass of the feature network over the samples,
then every metric of :data:`archbench.evaluation.metrics.METRICS` whose needs that pass meets (Fréchet distance,
k-NN precision/recall; Inception Score and KID with Inception; conditional accuracy with a dataset classifier)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from archbench.evaluation.composition import caption_classes, quadrants_right
from archbench.evaluation.extractor import FeatureExtractor, extractor_outputs
from archbench.evaluation.features import image_batches
from archbench.evaluation.metrics import ScoringPass, compute_metrics, headline
from archbench.evaluation.precision_recall import DEFAULT_K
from archbench.evaluation.reference import REFERENCE_KEEP
from archbench.evaluation.stats import FeatureStats, StatsAccumulator

log = logging.getLogger("archbench.eval")


def score_samples(
    samples: torch.Tensor | Iterable[torch.Tensor],
    extractor: FeatureExtractor,
    reference: FeatureStats,
    *,
    labels: torch.Tensor | None = None,
    batch_size: int = 250,
    k: int = DEFAULT_K,
    pr_items: int = REFERENCE_KEEP,
) -> dict[str, Any]:
    """Every metric of the table for ``samples`` (images in [-1, 1]: one tensor, or batches such as a sample file
    read block by block) against ``reference``; metrics whose needs are not met are None.

    The feature network runs once: its features, and whatever else it gives in the same pass (Inception's
    logits, a dataset classifier's class logits), feed every metric. Precision/recall use the first
    ``min(len(samples), kept reference rows, pr_items)`` points of each side, KID the first ``pr_items``
    samples against the kept reference rows; ``labels`` are the samples' conditioning classes (for the
    conditional accuracy, when the network classifies those classes).
    """
    batches = image_batches(samples, batch_size) if isinstance(samples, torch.Tensor) else samples
    acc = StatsAccumulator(keep=pr_items)
    outputs: dict[str, list[torch.Tensor]] = {}
    seen = 0
    captions = labels is not None and labels.ndim == 2  # fashion_pairs: each sample's caption as word indices
    for images in batches:
        out = extractor_outputs(extractor, images)
        acc.update(out["features"])
        for name, value in out.items():
            if name != "features":
                outputs.setdefault(name, []).append(value.cpu())
        if captions:  # per quadrant: the named garment, or nothing, where the caption says
            expected = caption_classes(labels[seen : seen + len(images)])
            outputs.setdefault("quadrants_right", []).append(quadrants_right(images, expected, extractor))
        seen += len(images)
    if labels is not None and len(labels) != seen:
        raise ValueError(f"got {len(labels)} labels for {seen} samples")
    stats = acc.result()
    if stats.n <= extractor.dim:
        log.warning(
            "%s from %d samples of %d-dim features: the sample covariance is singular (rank < dim), so the score "
            "is dominated by estimation bias; use well over %d samples (FID is conventionally 50,000)",
            extractor.score_name, stats.n, extractor.dim, extractor.dim,
        )
    scored = ScoringPass(
        stats=stats,
        reference=reference,
        extractor=extractor,
        outputs={name: torch.cat(parts) for name, parts in outputs.items()},
        labels=labels,
        k=k,
        pr_items=pr_items,
    )
    metrics = compute_metrics(scored)
    lead = headline().key
    return {
        "score_name": extractor.score_name,
        lead: metrics.pop(lead),
        "num_samples": stats.n,
        "reference_items": reference.n or None,  # None: a reference batch with mu/sigma only
        **metrics,
    }
