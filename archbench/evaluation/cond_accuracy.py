"""Conditional accuracy of samples by the committed dataset classifier: does a class-conditional sample look
like its class?  (The committed Fashion-MNIST CNN scores 80% on real 16x16 test images; chance is 10%.)"""

from __future__ import annotations

from pathlib import Path

import torch


def committed_classifier(dataset: str, features: str = "auto") -> Path | None:
    """The dataset CNN committed under ``recipes/baselines`` (the CI baselines' network), if there is one."""
    from archbench.training.config import recipes_dir

    name = f"{dataset}_cnn" if features == "auto" else features
    path = recipes_dir() / "baselines" / f"{name}.safetensors"
    return path if path.is_file() else None


def classifier_accuracy(samples: torch.Tensor, labels: torch.Tensor, dataset: str) -> float | None:
    """Fraction of ``samples`` (images in [-1, 1]) the committed ``dataset`` CNN assigns to ``labels``; None
    when no classifier is committed for ``dataset``."""
    from archbench.evaluation.dataset_cnn import DatasetCNNFeatures

    path = committed_classifier(dataset)
    if path is None:
        return None
    network = DatasetCNNFeatures.from_file(path)
    predicted = network.outputs(samples.clamp(-1, 1))["class_logits"]  # clamped, as the saved grid shows them
    predicted = predicted.argmax(dim=1).cpu()
    return float((predicted == labels.to(torch.long).cpu()).float().mean())
