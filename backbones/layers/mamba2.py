"""Bidirectional Mamba-2 mixer: the SSD layer (Dao & Gu, 2024) in DiS's multi-direction form.

One shared input projection gives the gate z, the scan input x, the state projections B and C and the
step dt, all from the token itself (Mamba-2's "parallel" projection: no x_proj between conv and scan).
Each scan direction has its own depthwise causal conv over (x, B, C), its own scalar decay A per head,
dt bias and D skip, and runs ``backbones.ssm.ssd_scan`` in its token order (see ``ScanDirections``).
The directions' outputs are summed, gated and normalised together (Mamba-2's gated RMSNorm:
``norm(y * silu(z))``), then projected out, as BiMamba sums its directions before ``out_proj``.  With
``groups`` > 1 B/C groups the norm works per group of the inner width (``d_inner / groups`` channels
each), as the official ``Mamba2`` builds its ``RMSNormGated`` with ``group_size = d_ssm // ngroups``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.layers.directions import ScanDirections, check_merge
from backbones.ssm import ssd_scan


def default_head_dim(d_inner: int) -> int:
    """Mamba-2's 64-wide heads where the inner width allows, else the widest of 32, 16, 8 that divides it."""
    for head_dim in (64, 32, 16, 8):
        if d_inner % head_dim == 0:
            return head_dim
    raise ValueError(f"Mamba-2 needs an inner width divisible by 8 (2 x width), got {d_inner}")


class GroupRMSNorm(nn.RMSNorm):
    """RMSNorm over each of ``groups`` equal slices of the last dimension, with one weight over all of it.

    Mamba-2's gated norm with several B/C groups: each group of channels is normalised by its own RMS,
    so one group's scale does not leak into another's.  With one group it is ``nn.RMSNorm`` exactly.
    """

    def __init__(self, width: int, groups: int = 1, eps: float = 1e-5):
        if groups < 1 or width % groups:
            raise ValueError(f"cannot split width {width} into {groups} norm groups")
        super().__init__(width, eps=eps)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return super().forward(x)
        size = x.shape[-1] // self.groups
        normed = F.rms_norm(x.unflatten(-1, (self.groups, size)), (size,), eps=self.eps).flatten(-2)
        return normed * self.weight


class BiMamba2(nn.Module):
    """(B, L, D) -> (B, L, D) sequence mixer with Mamba-2 SSD scans, linear in L."""

    def __init__(
        self,
        dim: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        head_dim: int | None = None,
        groups: int = 1,
        chunk_size: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        a_init_range: tuple[float, float] = (1.0, 16.0),
        scan: str = "auto",
        directions: list[torch.Tensor] | None = None,
        merge: str = "sum",
        padding: nn.Module | None = None,
    ):
        """``directions`` and ``merge`` as :class:`~backbones.layers.mamba.BiMamba`; ``padding``: DiM's pads
        (:class:`~backbones.layers.directions.PadTokens`) around the scans, or None."""
        super().__init__()
        check_merge(merge)
        self.merge = merge
        self.dim, self.d_state, self.groups, self.chunk_size = dim, d_state, groups, chunk_size
        self.d_inner = expand * dim
        self.head_dim = head_dim or default_head_dim(self.d_inner)
        if self.d_inner % self.head_dim:
            raise ValueError(f"inner width {self.d_inner} is not divisible by head_dim {self.head_dim}")
        self.heads = self.d_inner // self.head_dim
        if self.heads % groups:
            raise ValueError(f"{self.heads} heads cannot be split into {groups} B/C groups")
        self.scan = scan
        self.dt_range = (dt_min, dt_max, dt_init_floor)
        self.a_init_range = a_init_range
        self.conv_dim = self.d_inner + 2 * groups * d_state
        self.in_proj = nn.Linear(dim, self.d_inner + self.conv_dim + self.heads, bias=False)
        self.padding = padding
        self.directions = ScanDirections(directions)
        self.suffixes = self.directions.suffixes
        for suffix in self.suffixes:
            conv = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1)
            self.add_module(f"conv1d{suffix}", conv)
            self.register_parameter(f"dt_bias{suffix}", nn.Parameter(torch.empty(self.heads)))
            self.register_parameter(f"A{suffix}_log", nn.Parameter(torch.empty(self.heads)))
            self.register_parameter(f"D{suffix}", nn.Parameter(torch.empty(self.heads)))
        self.norm = GroupRMSNorm(self.d_inner, groups=groups, eps=1e-5)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba-2's initialisation: dt log-uniform in [dt_min, dt_max] (stored as its inverse softplus),
        A uniform in ``a_init_range`` (stored as log), D = 1."""
        dt_min, dt_max, floor = self.dt_range
        low, high = self.a_init_range
        for suffix in self.suffixes:
            log_dt = torch.rand(self.heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = log_dt.exp().clamp(min=floor)
            getattr(self, f"dt_bias{suffix}").copy_(dt + torch.log(-torch.expm1(-dt)))
            getattr(self, f"A{suffix}_log").copy_(torch.empty(self.heads).uniform_(low, high).log())
            getattr(self, f"D{suffix}").fill_(1.0)

    def scan_direction(self, xbc: torch.Tensor, dt: torch.Tensor, suffix: str) -> torch.Tensor:
        """One direction on (B, L, conv_dim) / (B, L, heads) inputs in its scan order; returns (B, L, d_inner)."""
        batch, length, _ = xbc.shape
        conv = getattr(self, f"conv1d{suffix}")
        xbc = F.silu(conv(xbc.transpose(1, 2))[..., :length]).transpose(1, 2)
        x, b, c = xbc.split([self.d_inner, self.groups * self.d_state, self.groups * self.d_state], dim=-1)
        y = ssd_scan(
            x.reshape(batch, length, self.heads, self.head_dim),
            dt,
            -torch.exp(getattr(self, f"A{suffix}_log").float()),
            b.reshape(batch, length, self.groups, self.d_state),
            c.reshape(batch, length, self.groups, self.d_state),
            D=getattr(self, f"D{suffix}").float(),
            dt_bias=getattr(self, f"dt_bias{suffix}").float(),
            dt_softplus=True,
            chunk_size=self.chunk_size,
            impl=self.scan,
        )
        return y.reshape(batch, length, self.d_inner)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.padding is not None:
            hidden = self.padding.insert(hidden)
        z, xbc, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.heads], dim=-1)
        total = None
        for index, suffix in enumerate(self.suffixes):
            ordered = self.directions.reorder
            out = self.scan_direction(ordered(xbc, index, dim=1), ordered(dt, index, dim=1), suffix)
            out = ordered(out, index, dim=1, undo=True)
            total = out if total is None else total + out
        if self.merge == "mean":
            total = total / len(self.suffixes)
        gated = total * F.silu(z)
        if self.padding is not None:
            gated = self.padding.remove(gated)
        return self.out_proj(self.norm(gated.to(self.norm.weight.dtype)))
