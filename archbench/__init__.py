"""archbench: compare diffusion backbones like-for-like (DiS, DiT, U-ViT, U-Net)."""

from backbones.registry import (
    backbone_config,
    build,
    list_backbones,
    load_entry_points,
    register_backbone,
)

__all__ = ["backbone_config", "build", "list_backbones", "load_entry_points", "register_backbone"]
__version__ = "0.1.0"
