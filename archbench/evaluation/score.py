"""Score a set of generated images against real statistics: Fréchet distance, k-NN precision/recall, and what
else the feature network's single pass allows: Inception Score and KID (Inception), conditional accuracy (a
dataset classifier)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from archbench.evaluation.extractor import FeatureExtractor, extractor_outputs
from archbench.evaluation.features import image_batches
from archbench.evaluation.fidelity import inception_score, isc_splits, kernel_inception_distance
from archbench.evaluation.precision_recall import DEFAULT_K, precision_recall
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
    """FD between ``samples`` (images in [-1, 1]: one tensor, or batches such as a sample file read block by
    block) and ``reference``, precision/recall on equal-size sets, IS/KID and conditional accuracy.

    Precision/recall use the first ``min(len(samples), kept reference rows, pr_items)`` points of each side:
    the k-NN estimate is biased by set size, so both manifolds are built from the same number of points.
    IS (all samples) and KID (the first ``pr_items`` samples against the kept reference rows) are computed
    when the network is Inception-v3; ``cond_accuracy`` is the fraction of samples the network's classifier
    assigns to ``labels`` (their conditioning classes), when both exist. Metrics not computed are None.
    """
    batches = image_batches(samples, batch_size) if isinstance(samples, torch.Tensor) else samples
    acc = StatsAccumulator(keep=pr_items)
    isc_logits: list[torch.Tensor] = []
    correct = seen = 0
    classified = False
    for images in batches:
        out = extractor_outputs(extractor, images)
        acc.update(out["features"])
        if "isc_logits" in out:
            isc_logits.append(out["isc_logits"].cpu())
        if labels is not None and "class_logits" in out:
            wanted = labels[seen : seen + len(images)].to(torch.long).cpu()
            correct += int((out["class_logits"].argmax(dim=1).cpu() == wanted).sum())
            classified = True
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
    result: dict[str, Any] = {
        "score_name": extractor.score_name,
        "score": stats.frechet_distance(reference),
        "num_samples": stats.n,
        "reference_items": reference.n or None,  # None: a reference batch with mu/sigma only
    }
    m = min(stats.n, pr_items, 0 if reference.features is None else len(reference.features))
    if m > k:
        pr = precision_recall(reference.features[:m], stats.features[:m], k=k)
        result.update(precision=pr.precision, recall=pr.recall, pr_k=k, pr_items=m)
    else:
        result.update(precision=None, recall=None, pr_k=k, pr_items=0)
    result.update(_inception_metrics(isc_logits, stats, reference, extractor))
    result["cond_accuracy"] = correct / seen if classified else None
    return result


def _inception_metrics(
    isc_logits: list[torch.Tensor], stats: FeatureStats, reference: FeatureStats, extractor: FeatureExtractor
) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(("inception_score", "inception_score_std", "kid", "kid_std"))
    out["isc_splits"] = out["kid_subset_size"] = None
    if not isc_logits:
        log.info("IS and KID not computed: they are Inception-v3 metrics and features=%s", extractor.name)
        return out
    logits = torch.cat(isc_logits)
    if len(logits) >= 2:
        out["inception_score"], out["inception_score_std"] = inception_score(logits)
        out["isc_splits"] = isc_splits(len(logits))
    if reference.features is None or stats.features is None or min(len(reference.features), len(stats.features)) < 2:
        log.info("KID not computed: it needs reference features, and this reference holds only mu/sigma")
        return out
    out["kid"], out["kid_std"], out["kid_subset_size"] = kernel_inception_distance(
        torch.from_numpy(stats.features), torch.from_numpy(reference.features)
    )
    return out
