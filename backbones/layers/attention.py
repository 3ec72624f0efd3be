"""Multi-head self-attention on torch's fused scaled_dot_product_attention."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Self-attention with one fused qkv projection (DiT: bias on; U-ViT: bias off).

    ``upcast`` computes the attention product in fp32, as U-ViT does, which keeps
    bf16 training stable for wide heads.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, upcast: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.upcast = upcast
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, D) -> q, k, v, each (B, heads, N, head_dim): the projection every attention variant shares."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask``: boolean, broadcastable to (B, heads, N, N), True where a query may attend to a key."""
        b, n, d = x.shape
        q, k, v = self.heads(x)
        if self.upcast:
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(x.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))
