"""CIFAR-10 through torchvision, whose loader keeps all 60k images in memory as uint8 anyway."""

from __future__ import annotations

from pathlib import Path

import torch

from archbench.data.arrays import ArrayImageDataset, ResizeMode
from archbench.data.errors import DatasetNotFoundError
from archbench.data.paths import default_data_root

SPLITS = ("train", "test")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FOLDER_HINT = (
    "point data.root=/path at a folder that holds cifar-10-batches-py/ (the python version from "
    "https://www.cs.toronto.edu/~kriz/cifar.html)"
)
HINT = f"Set data.download=true where online (torchvision fetches ~170 MB), or {FOLDER_HINT}."
OFFLINE_HINT = f"The download (data.download=true) needs a network: run once where online, or {FOLDER_HINT}."


def build_cifar10(
    *,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    resize_mode: ResizeMode = "resize",
) -> ArrayImageDataset:
    """50k/10k 32x32 RGB images in [-1, 1], labels 0..9; root defaults to ``default_data_root()/cifar10``."""
    if split not in SPLITS:
        raise ValueError(f"cifar10: unknown split {split!r}; valid: {', '.join(SPLITS)}")
    from torchvision.datasets import CIFAR10

    directory = Path(root).expanduser() if root is not None else default_data_root() / "cifar10"
    try:
        source = CIFAR10(str(directory), train=split == "train", download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DatasetNotFoundError("cifar10", directory, OFFLINE_HINT if download else HINT, detail=str(exc)) from None
    except OSError as exc:  # download attempted offline (URLError is an OSError)
        raise DatasetNotFoundError("cifar10", directory, OFFLINE_HINT, detail=f"download failed ({exc})") from None
    pixels = torch.from_numpy(source.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    labels = torch.tensor(source.targets, dtype=torch.int64)
    return ArrayImageDataset(pixels, labels, max_value=255, image_size=image_size, resize_mode=resize_mode)
