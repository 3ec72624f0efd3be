"""Captions as condition tokens: a small word-level text transformer trained with the backbone.

``y`` of a captioned backbone is ``(B, T)`` word indices with 0 as padding (``fashion_pairs`` tokenises that
way), or, built with ``caption_dim=D``, ``(B, T, D)`` precomputed features (CLIP or T5 token features computed
elsewhere) with all-zero rows as padding, which enter through a linear projection instead of the word table.
The embedder turns them into ``T`` condition tokens of the backbone's width through that first stage, a
position embedding and a few pre-norm transformer blocks that ignore the padding; a DiS or U-ViT skeleton
prepends them to its sequence (as it prepends the label token), a DiT or hourglass skeleton reads them through
cross-attention.

The null condition of classifier-free guidance is the empty caption, all padding (so the guidance code's "null
label" is the padding index 0, ``full_like(y, 0)``, all zeros for features too): it maps to a learned sequence of
``T`` null tokens, and in training a caption is replaced by it with probability ``dropout_prob``, as a class
label is by the null class.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.layers.attention import Attention
from backbones.layers.mlp import Mlp

PAD = 0  # the padding word index, and so the null caption's every token


class CaptionBlock(nn.Module):
    """Pre-norm self-attention over the caption's words (padding masked out) and an MLP."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, 4 * width, act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=keep[:, None, None, :])
        return x + self.mlp(self.norm2(x))


class CaptionEmbedder(nn.Module):
    """(B, T) word indices, or (B, T, feature_dim) features -> (B, T, width) condition tokens; all-padding rows are
    the learned null caption."""

    def __init__(self, vocab_size: int, max_tokens: int, width: int, dropout_prob: float, depth: int = 2,
                 num_heads: int = 4, feature_dim: int = 0):
        super().__init__()
        if max_tokens < 1 or (feature_dim < 1 and vocab_size < 2):
            raise ValueError(f"captions need a vocabulary of at least 2 words (0 = padding) or a feature width, and "
                             f"at least one token; got caption_vocab={vocab_size}, caption_dim={feature_dim}, "
                             f"caption_tokens={max_tokens}")
        if width % num_heads:
            num_heads = next(h for h in range(min(num_heads, width), 0, -1) if width % h == 0)
        self.vocab_size, self.max_tokens, self.dropout_prob = vocab_size, max_tokens, dropout_prob
        self.feature_dim = feature_dim
        self.words = nn.Linear(feature_dim, width) if feature_dim else nn.Embedding(vocab_size, width)
        self.positions = nn.Parameter(torch.zeros(1, max_tokens, width))
        self.blocks = nn.ModuleList(CaptionBlock(width, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.null = nn.Parameter(torch.zeros(1, max_tokens, width))
        nn.init.normal_(self.positions, std=0.02)
        nn.init.normal_(self.null, std=0.02)

    @property
    def has_null_class(self) -> bool:
        return self.dropout_prob > 0

    def drop(self, tokens: torch.Tensor, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        """Replace dropped captions by the empty one (all padding)."""
        if force_drop is None:
            force_drop = torch.rand(tokens.shape[0], device=tokens.device) < self.dropout_prob
        drop = force_drop.bool().reshape(-1, *([1] * (tokens.ndim - 1)))
        return torch.where(drop, torch.full_like(tokens, PAD), tokens)

    def padding(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) True where a token is padding: index 0, or an all-zero feature row."""
        return tokens.eq(PAD).all(dim=-1) if self.feature_dim else tokens.eq(PAD)

    def forward(self, tokens: torch.Tensor, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        if (self.training and self.dropout_prob > 0) or force_drop is not None:
            tokens = self.drop(tokens, force_drop)
        keep = ~self.padding(tokens)
        empty = ~keep.any(dim=1)
        keep = keep | empty[:, None]  # an empty caption attends to its padding: no row without keys
        x = self.words(tokens.to(self.words.weight.dtype) if self.feature_dim else tokens)
        x = x + self.positions[:, : tokens.shape[1]]
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        return torch.where(empty[:, None, None], self.null[:, : tokens.shape[1]].to(x.dtype), x)


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to condition tokens (keys and values): DiT's way to read a caption."""

    def __init__(self, width: int, context_width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, self.num_heads, d // self.num_heads).permute(
            2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))
