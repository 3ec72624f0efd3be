"""Statistics of real data, computed once per (dataset, split, resolution, feature network + checksum) and cached.

The key includes the network's weight checksum, so retraining the dataset CNN (or swapping Inception weights)
can never silently pair new sample features with stale reference statistics.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from archbench.evaluation.cache import cache_dir
from archbench.evaluation.extractor import FeatureExtractor
from archbench.evaluation.features import feature_stats
from archbench.evaluation.stats import FeatureStats

REFERENCE_KEEP = 10_000
"""Raw reference features kept alongside the moments, for k-NN precision/recall."""


def reference_key(
    dataset: str,
    split: str,
    image_size: int,
    extractor: FeatureExtractor,
    max_items: int | None = None,
    resize_mode: str = "resize",
) -> str:
    """File-name-safe cache key; ``image_size`` must be the actual resolution (not None)."""
    items = "all" if max_items is None else str(max_items)
    mode = "" if resize_mode == "resize" else f"-{resize_mode}"
    return f"{dataset}-{split}-{image_size}px{mode}-{extractor.name}-{extractor.checksum[:16]}-{items}"


def reference_stats(
    dataset: str,
    split: str,
    image_size: int | None,
    extractor: FeatureExtractor,
    max_items: int | None = None,
    *,
    resize_mode: str = "resize",
    root: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    batch_size: int = 250,
    keep: int = REFERENCE_KEEP,
    log: Callable[[str], None] | None = None,
) -> FeatureStats:
    """Feature statistics of the real ``dataset`` (first ``max_items`` of ``split`` at ``image_size``), cached.

    ``image_size=None`` means the dataset's native resolution. The first ``keep`` raw features are stored too.
    """
    from archbench.data import build_dataset, dataset_info

    size = image_size if image_size is not None else dataset_info(dataset).image_size
    key = reference_key(dataset, split, size, extractor, max_items, resize_mode)
    path = Path(cache_dir(cache)) / "reference" / f"{key}.npz"
    if path.is_file():
        stats = FeatureStats.load(path)
        kept = 0 if stats.features is None else len(stats.features)
        if stats.meta.get("key") == key and kept >= min(keep, stats.n):
            return stats
    data = build_dataset(dataset, root=root, split=split, image_size=size, resize_mode=resize_mode)
    meta = {
        "key": key,
        "dataset": dataset,
        "split": split,
        "image_size": size,
        "resize_mode": resize_mode,
        "feature_network": extractor.name,
        "feature_checksum": extractor.checksum,
        "max_items": max_items,
    }
    if log is not None:
        log(f"computing reference statistics {key} -> {path}")
    stats = feature_stats(extractor, data, batch_size=batch_size, max_items=max_items, keep=keep, meta=meta)
    stats.save(path)
    return stats
