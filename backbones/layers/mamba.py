"""Bidirectional Mamba mixer (the "v2" bidirectional design DiS uses), for any scan order.

One shared input projection gives x and the gate z; each direction has its own
depthwise causal conv, input-dependent (dt, B, C) projection, A and D, and runs a
selective scan.  The backward direction scans the sequence from its last token to its first
(the conv and the scan read backwards in place: the result of flipping, scanning and flipping back, without
the copies); both are gated by silu(z), summed and projected out.  Parameter names follow
the official code (``A_b_log``, ``conv1d_b``, ...) so released weights load as they are.

Other scan orders (:mod:`backbones.layers.scan_order`) give one to four directions, each a
permutation of the tokens applied before its scan and undone after it; their outputs are summed.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from backbones.layers.directions import ScanDirections, check_merge
from backbones.ssm import selective_scan
from backbones.ssm.causal_conv import causal_conv1d

# How the backward direction's dt projection starts: as the official DiS code leaves it, or like the forward one.
BACKWARD_DT_INITS = ("official", "mamba")
class BiMamba(nn.Module):
    """(B, L, D) -> (B, L, D) sequence mixer, linear in L."""

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan: str = "auto",
        backward_dt_init: str = "official",
        directions: list[torch.Tensor] | None = None,
        merge: str = "sum",
        padding: nn.Module | None = None,
    ):
        """``directions``: one token permutation per scan direction (see ``scan_order.sequence_permutation``);
        None is DiS's pair, the sequence as it is and flipped.  ``merge``: sum (DiS) or mean of the directions.
        ``padding``: a :class:`~backbones.layers.directions.PadTokens` (DiM's pads) around the scans, or None."""
        super().__init__()
        check_merge(merge)
        self.merge = merge
        if backward_dt_init not in BACKWARD_DT_INITS:
            raise ValueError(
                f"unknown backward_dt_init {backward_dt_init!r}; valid choices: {', '.join(BACKWARD_DT_INITS)}"
            )
        self.backward_dt_init = backward_dt_init
        self.dim = dim
        self.d_state = d_state
        self.d_inner = expand * dim
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.dt_range = (dt_min, dt_max, dt_init_floor)
        self.scan = scan
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False)
        self.padding = padding
        self.directions = ScanDirections(directions)
        self.suffixes = self.directions.suffixes
        for suffix in self.suffixes:
            self.add_module(f"conv1d{suffix}", self._depthwise_conv(d_conv))
            self.add_module(f"x_proj{suffix}", nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            self.add_module(f"dt_proj{suffix}", nn.Linear(self.dt_rank, self.d_inner))
            self.register_parameter(f"A{suffix}_log", nn.Parameter(torch.empty(self.d_inner, d_state)))
            self.register_parameter(f"D{suffix}", nn.Parameter(torch.empty(self.d_inner)))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        self.reset_ssm_parameters()

    def _depthwise_conv(self, kernel: int) -> nn.Conv1d:
        return nn.Conv1d(self.d_inner, self.d_inner, kernel, groups=self.d_inner, padding=kernel - 1)

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's SSM initialisation: S4D-real A, D = 1, dt spread log-uniformly.

        With ``backward_dt_init="official"`` (default) the backward ``dt_proj_b`` is initialised as in the
        official DiS code: that code gives only the forward ``dt_proj`` Mamba's dt initialisation (and marks
        its bias ``_no_reinit``); ``dt_proj_b`` keeps PyTorch's default Linear weights and the model-wide
        bias reset zeroes its bias, so the backward step starts at softplus(0) = 0.69. ``"mamba"`` gives
        both directions Mamba's dt initialisation (bias mean about -4.6).
        """
        dt_min, dt_max, floor = self.dt_range
        for suffix in self.suffixes:
            dt_proj = getattr(self, f"dt_proj{suffix}")
            if suffix == "_b" and self.backward_dt_init == "official":
                dt_proj.reset_parameters()  # PyTorch's default: weight U(+-1/sqrt(dt_rank)), as officially
                nn.init.zeros_(dt_proj.bias)
                dt_proj.bias._no_reinit = False
            else:
                bound = self.dt_rank**-0.5
                nn.init.uniform_(dt_proj.weight, -bound, bound)
                log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
                dt = log_dt.exp().clamp(min=floor)
                dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
                dt_proj.bias._no_reinit = True
            a = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
            getattr(self, f"A{suffix}_log").copy_(a.log())
            getattr(self, f"D{suffix}").fill_(1.0)

    def direction_params(self, backward: bool | str) -> tuple:
        suffix = backward if isinstance(backward, str) else "_b" if backward else ""
        return tuple(getattr(self, f"{n}{suffix}") for n in ("conv1d", "x_proj", "dt_proj")) + (
            getattr(self, f"A{suffix}_log"),
            getattr(self, f"D{suffix}"),
        )

    def scan_direction(self, x: torch.Tensor, z: torch.Tensor, backward: bool | str = False,
                       reverse: bool = False) -> torch.Tensor:
        """One direction on (B, d_inner, L) inputs, in the given order (``reverse``: read from the last token
        to the first); returns the gated scan output, in the inputs' token order.

        Works best on ``transpose(1, 2)`` views of token-layout tensors (what :meth:`forward` passes): the
        scan then runs without a transpose, and its output is such a view too.
        """
        conv, x_proj, dt_proj, a_log, d_skip = self.direction_params(backward)
        # The conv in token layout (B, L, d_inner): no transposes, and much faster than nn.Conv1d on CPU.
        x = causal_conv1d(x.transpose(1, 2), conv.weight[:, 0], conv.bias, silu=True, reverse=reverse)
        dt, b, c = x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj's weight goes to the scan with its low-rank input: the compiled CPU kernel forms each step
        # itself (no (B, L, d_inner) step tensor), every other path runs the same matmul first.
        return selective_scan(
            x.transpose(1, 2),
            dt.transpose(1, 2),
            -torch.exp(a_log.float()),
            b.transpose(1, 2),
            c.transpose(1, 2),
            d_skip.float(),
            z=z,
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
            impl=self.scan,
            reverse=reverse,
            delta_proj=dt_proj.weight,
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.padding is not None:
            hidden = self.padding.insert(hidden)
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # token layout (B, L, d_inner) each
        total = None
        for index, suffix in enumerate(self.suffixes):
            reverse = self.directions.reversed(index)  # the scan reads it backwards in place: no flipped copies
            x_dir, z_dir = (t if reverse else self.directions.reorder(t, index, dim=1) for t in (x, z))
            out = self.scan_direction(x_dir.transpose(1, 2), z_dir.transpose(1, 2), suffix, reverse=reverse)
            out = out.transpose(1, 2)
            out = out if reverse else self.directions.reorder(out, index, dim=1, undo=True)
            total = out if total is None else total + out
        if self.merge == "mean":
            total = total / len(self.suffixes)
        if self.padding is not None:
            total = self.padding.remove(total)
        return self.out_proj(total)
