"""A small classifier CNN trained on the dataset itself, whose penultimate layer gives features for offline FD.

Inception weights cannot be fetched here, and Inception features of 28x28 grayscale clothes are a poor probe
anyway; a network that learned the dataset's classes gives a distance that is cheap, reproducible and meaningful.
Weights are stored as safetensors (byte-stable for equal weights, no pickles) with a JSON sidecar holding their
SHA-256, which is verified on every load and goes into reference-statistics cache keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archbench.evaluation.cache import cache_dir, sha256_file
from archbench.evaluation.extractor import check_images, resize, to_channels

CNN_DATASETS = ("fashion_mnist", "digits")
SIDECAR_SUFFIX = ".json"


class ChecksumMismatchError(ValueError):
    """The weights file is not the one its sidecar describes (corrupted, replaced or half-written)."""


class FeatureWeightsMissing(FileNotFoundError):
    """No trained feature network at the expected place (and training on first use was not allowed)."""


@dataclass(frozen=True)
class CNNConfig:
    """Architecture facts needed to rebuild the network from its weights."""

    in_channels: int = 1
    input_size: int = 28
    num_classes: int = 10
    widths: tuple[int, int, int] = (16, 32, 64)
    embed_dim: int = 128

    @property
    def feature_dim(self) -> int:
        return 2 * self.widths[-1]


class DatasetCNN(nn.Module):
    """conv-BN-ReLU x3 (two 2x average poolings) -> flatten -> linear -> ReLU -> linear classifier.

    Features: the last conv block's maps, globally average- and max-pooled (``2 * widths[-1]`` dims), as FID
    reads Inception's pool3 rather than its classifier layers. Measured on Fashion-MNIST, the 128-d embedding
    before the classifier maps pure noise onto a class region (FD(noise) below FD(trousers only)), while the
    pooled maps keep the texture statistics that set noise, blur and real images apart. Average pooling in
    the trunk because CPU max-pooling took a third of each training step.
    """

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        c1, c2, c3 = config.widths
        side = config.input_size // 4

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.trunk = nn.Sequential(
            *block(config.in_channels, c1), nn.AvgPool2d(2), *block(c1, c2), nn.AvgPool2d(2), *block(c2, c3)
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c3 * side * side, config.embed_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(config.embed_dim, config.num_classes),
        )

    @staticmethod
    def pool(maps: torch.Tensor) -> torch.Tensor:
        """The feature vector of the last conv block's maps: global average and max pooling side by side."""
        return torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def default_cnn_path(dataset: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """Where ``train-features`` puts the network for ``dataset`` by default: ``<cache>/features/<dataset>_cnn``."""
    return cache_dir(cache) / "features" / f"{dataset}_cnn.safetensors"


def sidecar_path(weights: str | os.PathLike[str]) -> Path:
    return Path(weights).with_suffix(SIDECAR_SUFFIX)


def save_cnn(model: DatasetCNN, path: str | os.PathLike[str], info: dict[str, Any]) -> dict[str, Any]:
    """Write weights (safetensors) and the JSON sidecar (config, checksum, ``info``); returns the sidecar dict."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # private to this process: parallel runs may race
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    config = asdict(model.config)
    meta = {**info, "config": config, "feature_dim": model.config.feature_dim, "sha256": sha256_file(path)}
    meta["weights"] = path.name
    sidecar_path(path).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def load_cnn(path: str | os.PathLike[str]) -> tuple[DatasetCNN, dict[str, Any]]:
    """Rebuild the network from ``path`` after checking the file's SHA-256 against its sidecar."""
    from safetensors.torch import load_file

    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        missing = path if not path.is_file() else side
        raise FeatureWeightsMissing(f"feature network file missing: {missing}")
    meta = json.loads(side.read_text())
    actual = sha256_file(path)
    if actual != meta.get("sha256"):
        raise ChecksumMismatchError(
            f"checksum mismatch for {path}: sidecar {side.name} says sha256={meta.get('sha256')}, file has {actual}. "
            "The weights were changed or corrupted; retrain them with "
            f"`python -m archbench.eval train-features dataset={meta.get('dataset', '<name>')} out={path}`."
        )
    cfg = dict(meta["config"])
    cfg["widths"] = tuple(cfg["widths"])
    model = DatasetCNN(CNNConfig(**cfg))
    model.load_state_dict(load_file(str(path)))
    return model.eval(), meta


class DatasetCNNFeatures:
    """Penultimate-layer features of a :class:`DatasetCNN`; the score on them is called ``FD-<dataset>_cnn``."""

    def __init__(self, model: DatasetCNN, meta: dict[str, Any], device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.name = f"{meta['dataset']}_cnn"
        self.dim = model.config.feature_dim
        self.checksum = meta["sha256"]
        self.score_name = f"FD-{self.name}"

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> DatasetCNNFeatures:
        model, meta = load_cnn(path)
        return cls(model, meta, device)

    @property
    def dataset(self) -> str:
        """The dataset whose classes the classifier head predicts (conditional accuracy needs the same labels)."""
        return str(self.meta["dataset"])

    @torch.no_grad()
    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled ``features`` and the classifier's ``class_logits`` from one pass through the trunk."""
        check_images(images)
        cfg = self.model.config
        x = to_channels(images.to(self.device, torch.float32), cfg.in_channels)
        maps = self.model.trunk(resize(x, cfg.input_size).clamp(-1, 1))
        return {"features": self.model.pool(maps).float(), "class_logits": self.model.head(maps).float()}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.outputs(images)["features"]
