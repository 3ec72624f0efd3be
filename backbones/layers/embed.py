"""Input embeddings shared by the token backbones: patches, timesteps, class labels, positions."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos, sin]`` of (possibly fractional) timesteps, shape (B, dim).

    The frequency ladder and the cos-first order are what DiT, U-ViT and DiS use, so
    official weights see the features they were trained on.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features, optionally followed by Linear -> SiLU -> Linear.

    DiT: 256 features -> D -> D.  DiS: D features -> 4D -> D.  U-ViT (published
    configs): D features, no MLP (``hidden_dim=None``).
    """

    def __init__(self, dim: int, frequency_dim: int | None = None, hidden_dim: int | None = None):
        super().__init__()
        self.frequency_dim = frequency_dim or dim
        if hidden_dim is None:
            if self.frequency_dim != dim:
                raise ValueError("a timestep embedder without MLP needs frequency_dim == dim")
            self.mlp = nn.Identity()
        else:
            self.mlp = nn.Sequential(nn.Linear(self.frequency_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_embedding(t, self.frequency_dim)
        first = next(iter(self.mlp.parameters()), None)
        if first is not None:
            features = features.to(first.dtype)
        return self.mlp(features)


class LabelEmbedder(nn.Module):
    """Class-label table with label dropout for classifier-free guidance.

    With ``dropout_prob > 0`` the table has one extra row, index ``num_classes``: the
    null class that training drops labels to and guided sampling conditions on.
    """

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    @property
    def has_null_class(self) -> bool:
        return self.dropout_prob > 0

    def drop_labels(self, labels: torch.Tensor, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop is None:
            force_drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        return torch.where(force_drop.bool(), torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        if (self.training and self.dropout_prob > 0) or force_drop is not None:
            labels = self.drop_labels(labels, force_drop)
        return self.embedding_table(labels)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens with a stride-p convolution: (B,C,H,W) -> (B,HW/p^2,D)."""

    def __init__(self, patch_size: int, in_channels: int, dim: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def sincos_pos_embed_2d(dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos position table (grid_size^2, dim), as in MAE and DiT.

    Half of the channels encode the row index, half the column; each half is
    ``[sin, cos]`` of the coordinate over a geometric frequency ladder.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position table needs a width divisible by 4, got {dim}")
    coords = np.arange(grid_size, dtype=np.float64)
    cols, rows = np.meshgrid(coords, coords)  # width varies fastest, as in DiT's table

    def encode(positions: np.ndarray, half_dim: int) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(half_dim // 2, dtype=np.float64) / (half_dim / 2.0))
        angles = np.outer(positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(cols, dim // 2), encode(rows, dim // 2)], axis=1)
