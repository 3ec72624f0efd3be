"""The dataset catalogue: names, static facts, and ``build_dataset`` that turns a name into a Dataset."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torch.utils.data import Dataset

from archbench.data.arrays import RESIZE_MODES, ResizeMode
from archbench.data.cifar10 import CLASSES as CIFAR10_CLASSES
from archbench.data.cifar10 import build_cifar10
from archbench.data.crops import celeba_crop, center_crop_arr
from archbench.data.digits import build_digits
from archbench.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from archbench.data.fashion_mnist import build_fashion_mnist, files_present
from archbench.data.fashion_pairs import CAPTION_TOKENS as PAIRS_CAPTION_TOKENS
from archbench.data.fashion_pairs import VOCAB as PAIRS_VOCAB
from archbench.data.fashion_pairs import FashionPairs
from archbench.data.folders import ImageFolderDataset, split_folder
from archbench.data.latents import HINT as LATENTS_HINT
from archbench.data.latents import LatentShardDataset

log = logging.getLogger("archbench.data")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts a recipe needs before loading anything (model channels, resolution, label count).

    ``image_size`` is the native (default) resolution; for latents it is the latent side.
    ``num_classes`` 0 means unlabelled: every ``y`` is 0. ``class_names[y]`` names label ``y`` where the
    catalogue knows the names (None otherwise: unlabelled, or names that live in the data folder).
    """

    name: str
    channels: int
    image_size: int
    num_classes: int
    description: str
    class_names: tuple[str, ...] | None = None
    caption_vocab: int = 0  # a captioned dataset's y is (caption_tokens,) word indices into this many words
    caption_tokens: int = 0

    def __post_init__(self) -> None:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("digits", 1, 8, 10, "scikit-learn 8x8 digits (1797, bundled, always offline); last 20% = test",
                    tuple(str(d) for d in range(10))),
        DatasetInfo("fashion_mnist", 1, 28, 10, "Fashion-MNIST 28x28 (60k/10k) from Debian dataset-fashion-mnist",
                    FASHION_MNIST_CLASSES),
        DatasetInfo("fashion_pairs", 1, 32, 0, "two Fashion-MNIST garments on a 32x32 canvas with a caption "
                    "(60k/10k, plus 10k 'heldout' canvases of unseen garment-place pairings)",
                    caption_vocab=len(PAIRS_VOCAB), caption_tokens=PAIRS_CAPTION_TOKENS),
        DatasetInfo("cifar10", 3, 32, 10, "CIFAR-10 32x32 (50k/10k) via torchvision", CIFAR10_CLASSES),
        DatasetInfo("celeba64", 3, 64, 0, "image folder (CelebA) with U-ViT's 128px face crop, resized to 64"),
        DatasetInfo("imagenet_folder", 3, 256, 1000, "class-per-subfolder images, ADM/DiT centre crop to 256"),
        DatasetInfo("imagenet256_latents", 4, 32, 1000, "ImageNet-256 pre-encoded to SD-VAE latents (4x32x32)"),
    )
}

CELEBA_HINT = "Point data.root=/path at a folder of CelebA images (e.g. img_align_celeba/), searched recursively."
IMAGENET_HINT = "Point data.root=/path at an ImageNet-style tree, one sub-folder of images per class (n01440764/...)."


def dataset_info(name: str) -> DatasetInfo:
    """Facts about ``name``; unknown names raise ValueError listing the valid ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}") from None


def class_names(name: str | None) -> tuple[str, ...] | None:
    """The names of ``name``'s labels (``class_names[y]`` for label ``y``), or None: unlabelled, names the
    catalogue does not know (a folder's sub-folder names), or a dataset that is not in the catalogue."""
    info = DATASETS.get(name) if name else None
    return None if info is None else info.class_names


def _digits(*, split: str, image_size: int | None, resize_mode: ResizeMode, **_: object) -> Dataset:
    return build_digits(split=split, image_size=image_size, resize_mode=resize_mode)


def _fashion_mnist(
    *, root: str | Path | None, split: str, image_size: int | None, resize_mode: ResizeMode, **_: object
) -> Dataset:
    return build_fashion_mnist(root=root, split=split, image_size=image_size, resize_mode=resize_mode)


def _fashion_pairs(*, root: str | Path | None, split: str, image_size: int | None, **_: object) -> Dataset:
    if image_size not in (None, 32):
        raise ValueError(f"fashion_pairs canvases are 32x32 (two 16x16 garments per row), got image_size={image_size}")
    return FashionPairs(root=root, split=split)


def _celeba64(*, root: str | Path | None, split: str, image_size: int | None, **_: object) -> Dataset:
    folder = split_folder("celeba64", root, split, CELEBA_HINT)
    crop = partial(celeba_crop, size=image_size or 64)
    return ImageFolderDataset("celeba64", folder, crop=crop, labelled=False, hint=CELEBA_HINT)


def _imagenet_folder(*, root: str | Path | None, split: str, image_size: int | None, **_: object) -> Dataset:
    folder = split_folder("imagenet_folder", root, split, IMAGENET_HINT)
    crop = partial(center_crop_arr, size=image_size or 256)
    return ImageFolderDataset("imagenet_folder", folder, crop=crop, labelled=True, hint=IMAGENET_HINT)


def _imagenet256_latents(*, root: str | Path | None, split: str, image_size: int | None, **_: object) -> Dataset:
    folder = split_folder("imagenet256_latents", root, split, LATENTS_HINT)
    dataset = LatentShardDataset(folder, name="imagenet256_latents")
    if image_size is not None and image_size not in (dataset.manifest["image_size"], dataset.latent_shape[-1]):
        raise ValueError(
            f"imagenet256_latents: cache in {folder} holds {dataset.manifest['image_size']}px images "
            f"({dataset.latent_shape[-1]}px latents); latents cannot be resized to {image_size}"
        )
    return dataset


_BUILDERS: dict[str, Callable[..., Dataset]] = {
    "digits": _digits,
    "fashion_mnist": _fashion_mnist,
    "fashion_pairs": _fashion_pairs,
    "cifar10": build_cifar10,
    "celeba64": _celeba64,
    "imagenet_folder": _imagenet_folder,
    "imagenet256_latents": _imagenet256_latents,
}


def build_dataset(
    name: str,
    *,
    root: str | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    resize_mode: ResizeMode = "resize",
) -> Dataset:
    """A Dataset of ``(x, y)``: x float32 (C, H, W) in [-1, 1] (latents: already scaled), y an int label (a
    captioned dataset's y: its caption as word indices).

    ``image_size`` (when given and different from the native size) resizes bilinearly with antialiasing, or
    with ``resize_mode="pad"`` centres the image on a -1 background (Fashion-MNIST 28 -> 32: 2 px each side)
    so no pixel is resampled.  Folder datasets crop to ``image_size`` instead; latents cannot be resized.
    ``root`` overrides where the data is read (ignored by ``digits``); only ``cifar10`` can ``download``.
    Missing data raises ``DatasetNotFoundError`` saying where it looked and how to get the data.
    """
    dataset_info(name)
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize_mode {resize_mode!r}; valid: {', '.join(RESIZE_MODES)}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if resize_mode != "resize" and name in ("celeba64", "imagenet_folder", "imagenet256_latents"):
        raise ValueError(f"{name}: resize_mode={resize_mode!r} applies only to array datasets (they crop instead)")
    if root is not None and name == "digits":
        log.warning("data.root=%s is ignored: digits are bundled with scikit-learn and read from there", root)
    return _BUILDERS[name](root=root, split=split, image_size=image_size, download=download, resize_mode=resize_mode)


def default_dataset() -> str:
    """``fashion_mnist`` when its Debian files are installed, else the always-available ``digits``.

    Returns the name only; the caller logs which one it trains on.
    """
    return "fashion_mnist" if files_present() else "digits"
