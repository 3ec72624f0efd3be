"""The plain per-timestep selective-scan recurrence: slow, obviously correct, the yardstick for the rest."""

from __future__ import annotations

import torch
from torch import Tensor


def reference_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """Literal per-timestep recurrence; autograd provides the gradients.  Returns y and the last state.

    ``u, delta: (batch, d_inner, L)``, ``A: (d_inner, N)``, ``B, C: (batch, groups, N, L)``; channel ``d``
    reads group ``d // (d_inner // groups)``.
    """
    batch, d_inner, L = u.shape
    groups, N = B.shape[1], A.shape[1]
    per_group = (batch, groups, d_inner // groups)
    A_g = A.view(groups, d_inner // groups, N)
    h = u.new_zeros(*per_group, N)
    ys = []
    for t in range(L):
        decay = torch.exp(delta[:, :, t].view(per_group)[..., None] * A_g)
        inject = (delta[:, :, t] * u[:, :, t]).view(per_group)[..., None] * B[:, :, None, :, t]
        h = decay * h + inject
        ys.append((h * C[:, :, None, :, t]).sum(-1).reshape(batch, d_inner))
    return torch.stack(ys, dim=-1), h.reshape(batch, d_inner, N)
