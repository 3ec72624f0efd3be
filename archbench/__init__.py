"""archbench: compare diffusion backbones like-for-like (DiS, DiT, U-ViT, U-Net).

The public names are loaded on first use, so ``python -m archbench.X`` starts its command (and its one-line
error handling, Ctrl-C included) before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "backbone_config": "backbones.registry",
    "build": "backbones.registry",
    "list_backbones": "backbones.registry",
    "load_entry_points": "backbones.registry",
    "register_backbone": "backbones.registry",
    "from_pretrained": "backbones.hub",
    "push_to_hub": "backbones.hub",
    "save_pretrained": "backbones.hub",
    "load_official": "backbones.official",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'archbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
