"""Statistics of real data, computed once per (dataset, split, resolution, feature network + checksum) and cached,
or read from an ADM reference batch.

The key includes the network's weight checksum, so retraining the dataset CNN (or swapping Inception weights)
can never silently pair new sample features with stale reference statistics.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from archbench.console.progress import progress as progress_bar
from archbench.console.progress import tracked
from archbench.evaluation.cache import cache_dir, sha256_file
from archbench.evaluation.extractor import FeatureExtractor
from archbench.evaluation.features import feature_stats
from archbench.evaluation.sample_files import SampleFile, SampleFileError
from archbench.evaluation.stats import FeatureStats, StatsAccumulator
from archbench.sampling.npz import npz_keys

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
    progress: bool = False,
) -> FeatureStats:
    """Feature statistics of the real ``dataset`` (first ``max_items`` of ``split`` at ``image_size``), cached.

    ``image_size=None`` means the dataset's native resolution. The first ``keep`` raw features are stored too.
    ``progress``: one bar over the images while statistics are computed (nothing when they come from the cache).
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
    n = len(data) if max_items is None else min(max_items, len(data))
    with progress_bar(n, f"reference statistics: {dataset} {split} {n} images", progress, unit="img") as bar:
        stats = feature_stats(extractor, data, batch_size=batch_size, max_items=max_items, keep=keep, meta=meta,
                              advance=bar.update)
    stats.save(path)
    return stats


class ReferenceBatchError(ValueError):
    """An ``ref_npz`` file that is not an ADM reference batch for the chosen feature network."""


def _moments(path: Path, extractor: FeatureExtractor) -> tuple[np.ndarray, np.ndarray, list[str]]:
    dim = extractor.dim
    expected = f"an ADM reference batch for features={extractor.name} holds mu ({dim},) and sigma ({dim}, {dim})"
    if not path.is_file():
        raise ReferenceBatchError(f"ref_npz={path}: no such file")
    try:
        keys = npz_keys(path)
        with np.load(path, allow_pickle=False) as z:
            moments = {key: z[key] for key in ("mu", "sigma") if key in keys}
    except Exception as exc:  # not a zip, object arrays, bad CRC
        raise ReferenceBatchError(f"ref_npz={path} cannot be read ({type(exc).__name__}: {exc}); {expected}") from None
    missing = [key for key in ("mu", "sigma") if key not in moments]
    if missing:
        raise ReferenceBatchError(
            f"ref_npz={path} has no {' and no '.join(missing)} array (keys: {', '.join(keys) or 'none'}); {expected}"
        )
    mu, sigma = moments["mu"], moments["sigma"]
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ReferenceBatchError(f"ref_npz={path}: mu has shape {mu.shape} and sigma {sigma.shape}; {expected}")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ReferenceBatchError(f"ref_npz={path}: mu or sigma holds non-finite values")
    return mu, sigma, keys


def adm_reference(
    path: str | os.PathLike[str],
    extractor: FeatureExtractor,
    *,
    cache: str | os.PathLike[str] | None = None,
    batch_size: int = 250,
    keep: int = REFERENCE_KEEP,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> FeatureStats:
    """Reference statistics from an ADM reference batch (``.npz`` with ``mu``, ``sigma``, usually ``arr_0``).

    ``mu`` and ``sigma`` are used exactly as stored: they are what the published FIDs were computed against.
    When the file carries its images (``arr_0``), the first ``keep`` go through ``extractor`` so that
    precision/recall and KID have reference points; those features are cached under the file's SHA-256.
    Without images, only the Fréchet distance can be computed (``features`` is None, ``n`` 0). ``progress``: one
    bar over those images while their features are computed.
    """
    path = Path(path)
    mu, sigma, keys = _moments(path, extractor)
    digest = sha256_file(path)
    meta = {
        "source": "ref_npz",
        "path": str(path),
        "sha256": digest,
        "feature_network": extractor.name,
        "feature_checksum": extractor.checksum,
    }
    if "arr_0" not in keys:
        return FeatureStats(mu, sigma, 0, None, {**meta, "images": 0})
    try:
        images = SampleFile.open(path, what="ref_npz")
    except SampleFileError as exc:
        raise ReferenceBatchError(str(exc)) from None
    key = f"refnpz-{digest[:16]}-{extractor.name}-{extractor.checksum[:16]}-{keep}"
    cached = Path(cache_dir(cache)) / "reference" / f"{key}.npz"
    meta.update(key=key, images=images.num_images)
    if cached.is_file():
        stats = FeatureStats.load(cached)
        if stats.meta.get("key") == key:
            return stats
    count = min(keep, images.num_images)
    if log is not None:
        log(f"computing features of the first {count} images of {path} -> {cached}")
    acc = StatsAccumulator(keep=keep)
    bar = progress_bar(count, f"reference features: {count} images of {path.name}", progress, unit="img")
    for batch in tracked(images.batches(batch_size, limit=keep), bar):
        acc.update(extractor(batch))
    stats = FeatureStats(mu, sigma, images.num_images, acc.kept, meta)
    stats.save(cached)
    return stats
