"""Non-causal linear attention with ReLU features, the self-attention of Sana's blocks ("LiteLA").

Per head, with phi = ReLU on queries and keys,

    out_i = sum_j (phi(q_i) . phi(k_j)) v_j / (sum_j phi(q_i) . phi(k_j) + eps)
          = phi(q_i)^T S / (phi(q_i)^T z + eps),   S = sum_j phi(k_j) v_j^T,  z = sum_j phi(k_j),

so the N x N kernel matrix is never formed: ``phi(k)^T [v, 1]`` is a (d, d+1) matrix per head (S with z as
its last column, Sana's ones-padded values) and ``phi(q) @ (phi(k)^T [v, 1])`` gives numerator and
normaliser in one product.  The cost is linear in the number of tokens (``2 N d (d + 1)`` multiply-adds per
head); there is no softmax, no 1/sqrt(d) scale and no order, so a scan order means nothing here.

As in Sana, the qkv projection is one linear (Sana: no bias; here the skeleton's ``qkv_bias``, so that only
the mixing differs from its softmax attention), the output projection a linear with bias, the two products
and the division run in float32 with autocast off (Sana's default ``fp32_attention``), and ``eps`` is added
to the normaliser only.  Sana's blocks use eps 1e-8 and 32-dim heads; here the head count is the skeleton's.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from backbones.layers.attention import Attention


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(..., N, d)`` queries/keys and ``(..., N, dv)`` values -> ``(..., N, dv)`` in float32, in O(N d dv)."""
    q, k = F.relu(q.float()), F.relu(k.float())
    v = F.pad(v.float(), (0, 1), value=1.0)  # the ones column: its output is the normaliser phi(q_i)^T z
    state = torch.matmul(k.transpose(-2, -1), v)  # (..., d, dv + 1): S and z
    out = torch.matmul(q, state)  # (..., N, dv + 1)
    return out[..., :-1] / (out[..., -1:] + eps)


class LinearAttention(Attention):
    """(B, N, D) -> (B, N, D) multi-head ReLU linear attention (Sana's LiteLA), linear in N: softmax
    attention's projections (:class:`Attention`), only the mixing differs."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, eps: float = 1e-8):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias)
        if not eps > 0:
            raise ValueError(f"linear attention needs a positive eps for its normaliser, got {eps!r}")
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.heads(x)  # (B, heads, N, head_dim) each
        kind = x.device.type
        # Autocast would run the products in bf16/fp16 again; the sums over N need float32.
        off = torch.autocast(kind, enabled=False) if torch.is_autocast_enabled(kind) else contextlib.nullcontext()
        with off:
            out = relu_linear_attention(q, k, v, self.eps)
        return self.proj(out.to(q.dtype).transpose(1, 2).reshape(b, n, d))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, eps={self.eps:g}, kernel=relu"
