"""The plain per-timestep selective-scan recurrence: slow, obviously correct, the yardstick for the rest."""

from __future__ import annotations

import torch
from torch import Tensor


def reference_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Literal per-timestep recurrence; autograd provides the gradients."""
    batch, d_inner, L = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for t in range(L):
        decay = torch.exp(delta[:, :, t, None] * A)
        inject = (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        h = decay * h + inject
        ys.append((h * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=-1)
