"""The one interface every feature network implements, and the image conversions they share."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma: how RGB samples are shown to a network trained on grayscale data.
_LUMA = (0.299, 0.587, 0.114)


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps images in [-1, 1] (B, C, H, W) to (B, dim) float features; converts channels and size itself.

    ``name`` names the score ("FD-<name>"), ``checksum`` identifies the weights in cache keys, and ``score_name``
    is what reports call the Fréchet distance on these features.
    """

    name: str
    dim: int
    checksum: str
    score_name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def extractor_outputs(extractor: FeatureExtractor, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``features`` plus whatever else the network gives in the same pass: ``isc_logits`` (Inception's, for the
    Inception Score) or ``class_logits`` (a dataset classifier's, for conditional accuracy)."""
    outputs = getattr(extractor, "outputs", None)
    return outputs(images) if callable(outputs) else {"features": extractor(images)}


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert (B, C, H, W) between grayscale and RGB (luma for RGB -> gray, repetition for gray -> RGB)."""
    c = images.shape[1]
    if c == channels:
        return images
    if channels == 1 and c == 3:
        w = images.new_tensor(_LUMA).view(1, 3, 1, 1)
        return (images * w).sum(dim=1, keepdim=True)
    if channels == 3 and c == 1:
        return images.expand(-1, 3, -1, -1)
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to ``size`` x ``size`` (antialiased when shrinking, so downsampling does not alias)."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = images.shape[-1] > size or images.shape[-2] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def check_images(images: torch.Tensor) -> None:
    """Reject what would silently give a wrong score: non-4D input or values far outside [-1, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images as a (B, C, H, W) tensor in [-1, 1], got {shape}")
    if images.numel() and (images.min() < -1.5 or images.max() > 1.5):
        raise ValueError(
            f"images must be in [-1, 1], got range [{images.min():.3g}, {images.max():.3g}] (pass x * 2 - 1 for [0, 1])"
        )
