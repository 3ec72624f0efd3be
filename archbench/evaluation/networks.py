"""Feature networks by name: ``inception`` (FID) or ``<dataset>_cnn`` (FD on a network trained by archbench)."""

from __future__ import annotations

import os

import torch

from archbench.evaluation.dataset_cnn import CNN_DATASETS, DatasetCNNFeatures, FeatureWeightsMissing, default_cnn_path
from archbench.evaluation.extractor import FeatureExtractor
from archbench.evaluation.inception import InceptionFeatures

FEATURE_NETWORKS = ("inception", *(f"{d}_cnn" for d in CNN_DATASETS))


def get_feature_extractor(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    train_if_missing: bool = False,
    cache: str | os.PathLike[str] | None = None,
) -> FeatureExtractor:
    """Build feature network ``name`` from local weights; never downloads.

    ``weights`` overrides where the file is read. A missing dataset CNN is trained on first use only with
    ``train_if_missing=True``; otherwise the error names the command that trains it.
    """
    if name == "inception":
        return InceptionFeatures.from_weights(weights, device=device)
    if name not in FEATURE_NETWORKS:
        raise ValueError(f"unknown feature network {name!r}; valid: {', '.join(FEATURE_NETWORKS)}")
    dataset = name.removesuffix("_cnn")
    path = weights if weights is not None else default_cnn_path(dataset, cache)
    try:
        return DatasetCNNFeatures.from_file(path, device=device)
    except FeatureWeightsMissing as e:
        if not train_if_missing:
            raise FeatureWeightsMissing(
                f"{e}. Train it once (about a minute on CPU) with: "
                f"python -m archbench.eval train-features dataset={dataset}"
                + (f" out={path}" if weights is not None or cache is not None else "")
            ) from None
    from archbench.evaluation.train_cnn import train_dataset_cnn

    train_dataset_cnn(dataset, out=path)
    return DatasetCNNFeatures.from_file(path, device=device)
