"""Datasets for the training recipes: images in [-1, 1] (or cached VAE latents) with int labels.

``build_dataset(name, ...)`` is the entry point; ``DATASETS`` lists the names.  See ``catalog`` for the
resizing rules and ``latents`` for the on-disk latent cache.
"""

from archbench.data.catalog import (
    DATASETS,
    DatasetInfo,
    build_dataset,
    class_names,
    dataset_info,
    default_dataset,
)
from archbench.data.errors import DatasetNotFoundError
from archbench.data.latents import LatentShardDataset, encode_to_shards

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "LatentShardDataset",
    "build_dataset",
    "class_names",
    "dataset_info",
    "default_dataset",
    "encode_to_shards",
]
