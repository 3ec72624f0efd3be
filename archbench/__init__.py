"""archbench: compare diffusion backbones like-for-like (DiS, DiT, U-ViT, U-Net)."""

from backbones.hub import from_pretrained, push_to_hub, save_pretrained
from backbones.official import load_official
from backbones.registry import (
    backbone_config,
    build,
    list_backbones,
    load_entry_points,
    register_backbone,
)

__all__ = [
    "backbone_config",
    "build",
    "from_pretrained",
    "list_backbones",
    "load_entry_points",
    "load_official",
    "push_to_hub",
    "register_backbone",
    "save_pretrained",
]
__version__ = "0.1.0"
