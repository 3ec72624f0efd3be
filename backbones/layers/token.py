"""The skeleton shared by the token backbones (DiS, DiT, U-ViT): patchify in, unpatchify out."""

from __future__ import annotations

import torch

from backbones.layers.contract import DiffusionBackbone
from backbones.layers.embed import PatchEmbed
from backbones.layers.head import unpatchify


class TokenBackbone(DiffusionBackbone):
    """A backbone that turns the image into ``(image_size / patch_size)^2`` tokens of width D."""

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        num_classes: int,
        learn_sigma: bool,
        class_dropout_prob: float,
        patch_size: int,
        width: int,
    ):
        super().__init__(image_size, in_channels, num_classes, learn_sigma, class_dropout_prob)
        if patch_size <= 0 or image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a positive multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.spatial_multiple = patch_size
        self.width = width
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.patch_embed = PatchEmbed(patch_size, in_channels, width)

    @property
    def patch_out_dim(self) -> int:
        return self.patch_size**2 * self.out_channels

    def tokens_to_image(self, tokens: torch.Tensor) -> torch.Tensor:
        return unpatchify(tokens, self.out_channels, self.patch_size, (self.grid_size, self.grid_size))
