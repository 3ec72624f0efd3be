"""Image-folder datasets: CelebA-style flat folders (no labels) and ImageNet-style class-per-subfolder trees."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from archbench.data.arrays import to_signed_unit
from archbench.data.errors import DatasetNotFoundError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})


def list_images(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursively, following links), sorted so item order is reproducible."""
    found = []
    for folder, _, files in os.walk(root, followlinks=True):
        found.extend(Path(folder) / name for name in files if Path(name).suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(found)


def split_folder(dataset: str, root: str | Path | None, split: str, hint: str) -> Path:
    """``root/split`` when that folder exists, else ``root`` itself for ``train``: folders hold one split each."""
    if root is None:
        raise DatasetNotFoundError(dataset, None, hint, detail="no root given")
    base = Path(root).expanduser()
    if (base / split).is_dir():
        return base / split
    if not base.is_dir():
        raise DatasetNotFoundError(dataset, base, hint, detail="folder does not exist")
    if split != "train":
        raise DatasetNotFoundError(dataset, base / split, hint, detail=f"no {split!r} sub-folder")
    return base


class ImageFolderDataset(Dataset):
    """Items ``(x, y)``: x float32 (3, S, S) in [-1, 1] after ``crop``; y the class index, or 0 when unlabelled.

    Labelled: each immediate sub-folder of ``root`` is a class (sorted names -> 0, 1, ...), images found
    recursively inside it, as torchvision's ``ImageFolder``.  Unlabelled: every image under ``root``.
    """

    def __init__(
        self,
        dataset: str,
        root: Path,
        *,
        crop: Callable[[Image.Image], Image.Image],
        labelled: bool,
        hint: str,
    ) -> None:
        self.root = root
        self.crop = crop
        if labelled:
            self.classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
            self.samples = [
                (path, label) for label, name in enumerate(self.classes) for path in list_images(root / name)
            ]
        else:
            self.classes = []
            self.samples = [(path, 0) for path in list_images(root)]
        if not self.samples:
            layout = "one sub-folder of images per class" if labelled else "image files"
            raise DatasetNotFoundError(dataset, root, hint, detail=f"no {layout} found")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            pixels = np.array(self.crop(image.convert("RGB")), dtype=np.uint8)
        return to_signed_unit(torch.from_numpy(pixels).permute(2, 0, 1), 255), label
