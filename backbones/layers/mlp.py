"""The transformer feed-forward block: ``fc2(act(fc1(x)))``.

Kept here instead of importing timm's ``Mlp``: importing anything from timm imports all of timm (its models,
torchvision, torch._dynamo, sympy, wandb), which made every ``python -m archbench.X`` command start about 3 s
slower on a loaded 2-core machine for three linear-layer lines.  The submodule names (``fc1``, ``act``, ``drop1``,
``norm``, ``fc2``, ``drop2``) and the creation order are timm's, so state dicts and seeded initialisation match
the official DiT and U-ViT code, which use timm's (tests/backbones/test_layers.py pins both).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn


class Mlp(nn.Module):
    """Linear, activation, dropout, linear, dropout; ``hidden_features`` wide."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Callable[[], nn.Module] = nn.GELU, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))
