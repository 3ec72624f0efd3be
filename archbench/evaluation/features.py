"""Run a feature extractor over images (a tensor or a Dataset) batch by batch, and summarise the features."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from archbench.evaluation.extractor import FeatureExtractor
from archbench.evaluation.stats import FeatureStats, StatsAccumulator

ImageSource = torch.Tensor | Dataset


def image_batches(source: ImageSource, batch_size: int, max_items: int | None = None) -> Iterator[torch.Tensor]:
    """The first ``max_items`` images of ``source`` in order, ``batch_size`` at a time (labels dropped)."""
    if isinstance(source, torch.Tensor):
        n = len(source) if max_items is None else min(max_items, len(source))
        for i in range(0, n, batch_size):
            yield source[i : min(i + batch_size, n)]
        return
    n = len(source) if max_items is None else min(max_items, len(source))  # type: ignore[arg-type]
    loader = DataLoader(Subset(source, range(n)), batch_size=batch_size, shuffle=False, num_workers=0)
    for item in loader:
        yield item[0] if isinstance(item, (list, tuple)) else item  # (x, y) datasets: keep x


def iter_features(
    extractor: FeatureExtractor, source: ImageSource, batch_size: int = 250, max_items: int | None = None
) -> Iterator[torch.Tensor]:
    """Yield (B, dim) features of the first ``max_items`` images of ``source`` (images in [-1, 1]), in order."""
    for images in image_batches(source, batch_size, max_items):
        yield extractor(images)


def extract_features(
    extractor: FeatureExtractor, source: ImageSource, batch_size: int = 250, max_items: int | None = None
) -> torch.Tensor:
    """All features as one (N, dim) float32 tensor (for point-set metrics such as precision/recall)."""
    return torch.cat(list(iter_features(extractor, source, batch_size, max_items)))


def feature_stats(
    extractor: FeatureExtractor,
    source: ImageSource,
    *,
    batch_size: int = 250,
    max_items: int | None = None,
    keep: int = 0,
    meta: dict[str, Any] | None = None,
    advance: Callable[[int], Any] | None = None,
) -> FeatureStats:
    """Streaming mean/covariance of the features of ``source``; the first ``keep`` feature rows are kept too.
    ``advance(n)`` is called after each batch of ``n`` images (a progress bar's ``update``)."""
    acc = StatsAccumulator(keep=keep)
    for batch in iter_features(extractor, source, batch_size, max_items):
        acc.update(batch)
        if advance is not None:
            advance(len(batch))
    return acc.result(meta)
