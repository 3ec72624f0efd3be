"""scikit-learn's bundled 8x8 handwritten digits: the dataset that is always there, even offline."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from archbench.data.arrays import ArrayImageDataset, ResizeMode

MAX_VALUE = 16
"""Pixels are counts of set pixels in 4x4 blocks of the original 32x32 bitmaps: 0..16."""

SPLITS = ("train", "test")


def split_bounds(total: int, split: str) -> slice:
    """Deterministic split in file order: the last 20% (``total // 5`` images, 359 of 1797) are ``test``.

    The file is ordered by writer block, not by label, so a tail split keeps every class in both halves
    without needing a seed.
    """
    n_test = total // 5
    if split == "train":
        return slice(0, total - n_test)
    if split == "test":
        return slice(total - n_test, total)
    raise ValueError(f"digits: unknown split {split!r}; valid: {', '.join(SPLITS)}")


@lru_cache(maxsize=1)
def _load_all() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    pixels = torch.from_numpy(bunch.images.astype("uint8"))[:, None]  # (N, 1, 8, 8)
    labels = torch.from_numpy(bunch.target.astype("int64"))
    return pixels, labels


def build_digits(
    *, split: str = "train", image_size: int | None = None, resize_mode: ResizeMode = "resize"
) -> ArrayImageDataset:
    """The 1797 8x8 digits as (1, H, W) images in [-1, 1] with labels 0..9."""
    pixels, labels = _load_all()
    part = split_bounds(len(pixels), split)
    return ArrayImageDataset(
        pixels[part], labels[part], max_value=MAX_VALUE, image_size=image_size, resize_mode=resize_mode
    )
