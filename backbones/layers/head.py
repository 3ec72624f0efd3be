"""Output heads: tokens back to images."""

from __future__ import annotations

import torch
import torch.nn as nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: per-sample affine of normalised tokens, ``x * (1 + scale) + shift``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def unpatchify(tokens: torch.Tensor, channels: int, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, p*p*C) -> (B, C, h*p, w*p); each token is laid out (p, p, C), row-major."""
    b = tokens.shape[0]
    h, w = grid
    p = patch_size
    x = tokens.reshape(b, h, w, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, h * p, w * p)


class FinalLayer(nn.Module):
    """Norm -> (optional adaLN from the conditioning vector) -> Linear(D, p*p*C_out).

    DiT and conditional DiS modulate a non-affine LayerNorm with shift/scale from c;
    U-ViT uses an affine LayerNorm and no modulation.
    """

    def __init__(self, dim: int, out_dim: int, *, adaptive: bool, affine: bool = False, eps: float = 1e-6):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=affine, eps=eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim)) if adaptive else None
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm_final(x)
        if self.adaLN_modulation is not None:
            if c is None:
                raise ValueError("this head is adaptive and needs the conditioning vector c")
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return self.linear(x)
