"""Fashion-MNIST read straight from IDX files, by default those of the Debian package ``dataset-fashion-mnist``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from archbench.data.arrays import ArrayImageDataset, ResizeMode
from archbench.data.errors import DatasetNotFoundError
from archbench.data.idx import read_idx
from archbench.data.paths import FASHION_MNIST_DIR

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
HINT = (
    f"Install the Debian package (`apt-get install dataset-fashion-mnist`, files go to {FASHION_MNIST_DIR}) "
    "or point data.root=/path at a folder holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]."
)


def _find(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DatasetNotFoundError("fashion_mnist", directory, HINT, detail=f"missing {stem}.gz")


def files_present(root: str | Path | None = None) -> bool:
    """Whether all four IDX files are there (cheap: no decoding)."""
    directory = Path(root) if root is not None else FASHION_MNIST_DIR
    try:
        for stems in FILES.values():
            for stem in stems:
                _find(directory, stem)
    except DatasetNotFoundError:
        return False
    return True


@lru_cache(maxsize=4)
def _load_split(directory: str, split: str) -> tuple[Tensor, Tensor]:
    # Cached per process: decoding 60k gzipped images costs ~0.5 s, and recipes build train and eval sets repeatedly.
    images_stem, labels_stem = FILES[split]
    images = read_idx(_find(Path(directory), images_stem))
    labels = read_idx(_find(Path(directory), labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"fashion_mnist: inconsistent files in {directory}: {images.shape} vs {labels.shape}")
    return torch.from_numpy(images)[:, None], torch.from_numpy(labels.astype("int64"))


def build_fashion_mnist(
    *,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    resize_mode: ResizeMode = "resize",
) -> ArrayImageDataset:
    """60k train / 10k test 28x28 grey images in [-1, 1], labels 0..9 (see ``CLASSES``)."""
    if split not in FILES:
        raise ValueError(f"fashion_mnist: unknown split {split!r}; valid: {', '.join(FILES)}")
    directory = Path(root).expanduser() if root is not None else FASHION_MNIST_DIR
    pixels, labels = _load_split(str(directory.resolve()), split)
    return ArrayImageDataset(pixels, labels, max_value=255, image_size=image_size, resize_mode=resize_mode)
