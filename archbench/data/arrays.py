"""In-memory image datasets: raw integer pixels kept once, scaled to [-1, 1] and resized per item.

Keeping the compact integer array (not a float copy) makes 60k-image datasets cheap to hold and to
rebuild with a different ``image_size``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

ResizeMode = Literal["resize", "pad"]
RESIZE_MODES: tuple[str, ...] = ("resize", "pad")


def to_signed_unit(pixels: Tensor, max_value: float) -> Tensor:
    """Map integer pixels in [0, max_value] to float32 in [-1, 1], the range diffusion models train on."""
    return pixels.to(torch.float32).mul_(2.0 / max_value).sub_(1.0)


def fit_size(x: Tensor, size: int, mode: ResizeMode = "resize") -> Tensor:
    """Bring a (C, H, W) image in [-1, 1] to (C, size, size).

    ``resize``: bilinear with antialiasing (a convex filter, so values stay in [-1, 1]).
    ``pad``: centre the image on a background of -1 (black), exact pixels kept; e.g. Fashion-MNIST
    28 -> 32 gets 2 px each side.  Odd margins put the extra pixel bottom/right.
    """
    height, width = x.shape[-2:]
    if height == size and width == size:
        return x
    if mode == "resize":
        out = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        return out.clamp_(-1.0, 1.0)
    if mode == "pad":
        if height > size or width > size:
            raise ValueError(f"cannot pad a {height}x{width} image down to {size}x{size}; use resize_mode='resize'")
        top, left = (size - height) // 2, (size - width) // 2
        return F.pad(x, (left, size - width - left, top, size - height - top), value=-1.0)
    raise ValueError(f"unknown resize_mode {mode!r}; valid: {', '.join(RESIZE_MODES)}")


class ArrayImageDataset(Dataset):
    """Items ``(x, y)``: x float32 (C, H, W) in [-1, 1], y an int label."""

    def __init__(
        self,
        pixels: Tensor,
        labels: Tensor,
        *,
        max_value: float,
        image_size: int | None = None,
        resize_mode: ResizeMode = "resize",
    ) -> None:
        if pixels.ndim != 4:
            raise ValueError(f"pixels must be (N, C, H, W), got shape {tuple(pixels.shape)}")
        if len(pixels) != len(labels):
            raise ValueError(f"{len(pixels)} images but {len(labels)} labels")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {resize_mode!r}; valid: {', '.join(RESIZE_MODES)}")
        self.pixels = pixels
        self.labels = labels
        self.max_value = float(max_value)
        self.image_size = int(pixels.shape[-1]) if image_size is None else int(image_size)
        self.resize_mode: ResizeMode = resize_mode
        if resize_mode == "pad" and self.image_size < max(pixels.shape[-2:]):
            raise ValueError(f"resize_mode='pad' needs image_size >= {max(pixels.shape[-2:])}, got {self.image_size}")

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = to_signed_unit(self.pixels[index], self.max_value)
        return fit_size(x, self.image_size, self.resize_mode), int(self.labels[index])
