"""Image sets on disk in ADM's / DiT's ``.npz`` layout: sample files to score, and ADM reference batches.

``arr_0`` holds uint8 images [N, H, W, C] (C = 1 or 3) and ``arr_1``, when present, the int labels (-1:
unconditional), as ``python -m archbench.sample out=PATH.npz`` and the official ``sample_ddp.py`` scripts write
them. The images are read block by block, never all at once: a 50k set of 256x256 images is 10 GB.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archbench.sampling.grid import from_uint8
from archbench.sampling.npz import iter_npz_rows, npz_array_info, npz_keys
from archbench.sampling.shards import read_set_meta

LAYOUT = "uint8 images arr_0 (N, H, W, C) with C = 1 or 3, as ADM's and DiT's sample_ddp.py write them"


class SampleFileError(ValueError):
    """A file that is not an image set in the ADM layout (the message names the file and what is wrong)."""


@dataclass(frozen=True)
class SampleFile:
    """An image set in an ``.npz``: its path, image count and shape (H, W, C), labels and archbench ``meta``."""

    path: Path
    num_images: int
    image_shape: tuple[int, int, int]
    labels: np.ndarray | None
    meta: dict[str, Any] | None

    @classmethod
    def open(cls, path: str | Path, what: str = "samples") -> SampleFile:
        """Check the layout from the headers (the images stay on disk); ``what`` names the key in errors."""
        path = Path(path)
        if not path.is_file():
            raise SampleFileError(f"{what}={path}: no such file")
        try:
            keys = npz_keys(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SampleFileError(f"{what}={path} is not a readable .npz ({exc}); expected {LAYOUT}") from None
        if "arr_0" not in keys:
            hint = "; it holds latents, which need the VAE decoder first" if "latents" in keys else ""
            raise SampleFileError(f"{what}={path} has no arr_0 (keys: {', '.join(keys) or 'none'}){hint}; "
                                  f"expected {LAYOUT}")
        shape, dtype = npz_array_info(path, "arr_0")
        if dtype != np.uint8 or len(shape) != 4 or shape[3] not in (1, 3) or shape[0] < 1:
            raise SampleFileError(f"{what}={path}: arr_0 is {dtype} of shape {shape}; expected {LAYOUT}")
        labels = None
        if "arr_1" in keys:
            with np.load(path, allow_pickle=False) as z:
                labels = z["arr_1"]
            if labels.shape != (shape[0],) or labels.dtype.kind not in "iu":
                raise SampleFileError(f"{what}={path}: arr_1 must hold one integer label per image ({shape[0]}), "
                                      f"got {labels.dtype} of shape {labels.shape}")
            labels = labels.astype(np.int64)
        return cls(path, int(shape[0]), (int(shape[1]), int(shape[2]), int(shape[3])), labels, read_set_meta(path))

    @property
    def conditional_labels(self) -> np.ndarray | None:
        """The labels when every image has one (a class-conditional set), else None."""
        if self.labels is None or (self.labels < 0).any():
            return None
        return self.labels

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        """The first ``limit`` images as float32 [B, C, H, W] in [-1, 1], ``batch_size`` at a time."""
        for block in iter_npz_rows(self.path, "arr_0", batch_size, limit):
            yield from_uint8(block)
