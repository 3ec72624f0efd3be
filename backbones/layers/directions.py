"""The scan directions of a multi-direction state-space mixer: reorder the tokens, scan, restore the order.

Shared by the Mamba-1 (``BiMamba``) and Mamba-2 (``BiMamba2``) mixers, so a scan order means the same in
both.  The permutations are non-persistent buffers: a function of the build options, not weights.
:class:`PadTokens` adds DiM's learnable padding tokens around a mixer's scans (``scan_order="dim_pad"``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from backbones.layers.scan_order import pad_layout, split_pads

# Parameter-name suffix of each direction: the official names for DiS's two, then further letters.
DIRECTION_SUFFIXES = ("", "_b", "_c", "_d")
IDENTITY, FLIP, PERMUTE = "identity", "flip", "perm"
# How a mixer combines its directions' outputs: DiS sums them (the default); Vision Mamba averages them,
# which users adopted after bf16 runs of the sum produced NaNs.
MERGES = ("sum", "mean")


def check_merge(merge: str) -> None:
    if merge not in MERGES:
        raise ValueError(f"unknown bimamba_merge {merge!r}; valid choices: {', '.join(MERGES)}")


class ScanDirections(nn.Module):
    """One token permutation per direction; ``None`` is DiS's pair (the sequence as it is, and flipped)."""

    def __init__(self, perms: list[torch.Tensor] | None = None):
        super().__init__()
        perms_or_kinds: list[str | torch.Tensor] = [IDENTITY, FLIP] if perms is None else list(perms)
        if not 1 <= len(perms_or_kinds) <= len(DIRECTION_SUFFIXES):
            raise ValueError(f"a mixer takes 1 to {len(DIRECTION_SUFFIXES)} scan directions, got {len(perms_or_kinds)}")
        self.kinds: list[str] = []
        for index, perm in enumerate(perms_or_kinds):
            kind = perm if isinstance(perm, str) else self._kind(perm)
            self.kinds.append(kind)
            if kind == PERMUTE:
                perm = perm.cpu()
                self.register_buffer(f"order{index}", perm, persistent=False)
                self.register_buffer(f"restore{index}", torch.argsort(perm), persistent=False)

    @staticmethod
    def _kind(perm: torch.Tensor) -> str:
        """Plain orders take the cheap paths (no copy, or ``flip``), which keeps DiS bit-identical."""
        perm = perm.cpu()
        order = torch.arange(perm.numel(), device="cpu")
        return IDENTITY if torch.equal(perm, order) else FLIP if torch.equal(perm, order.flip(0)) else PERMUTE

    @property
    def suffixes(self) -> tuple[str, ...]:
        return DIRECTION_SUFFIXES[: len(self.kinds)]

    def __len__(self) -> int:
        return len(self.kinds)

    def reversed(self, index: int) -> bool:
        """Whether direction ``index`` is the sequence read backwards, which a scan can do in place of a flip."""
        return self.kinds[index] == FLIP

    def reorder(self, tensor: torch.Tensor, index: int, dim: int = -1, undo: bool = False) -> torch.Tensor:
        """``tensor`` along ``dim`` in direction ``index``'s scan order (``undo``: back to token order)."""
        kind = self.kinds[index]
        if kind == IDENTITY:
            return tensor
        if kind == FLIP:
            return tensor.flip(dim)
        return tensor.index_select(dim, getattr(self, f"{'restore' if undo else 'order'}{index}"))


class PadTokens(nn.Module):
    """DiM's learnable padding tokens (its ``use_pad_token``), inserted before a mixer's scans, dropped after.

    ``insert`` turns the ``extras + h*w`` tokens into the padded sequence of
    :func:`backbones.layers.scan_order.pad_layout` (pads at the end of every row, ``pad`` rows of pads
    below the grid, ``pad`` split tokens after the time/label tokens); ``remove`` keeps the original
    tokens' positions.  DiM inserts its pads once, before the first block, and carries them through the
    stack; here each mixer has its own (so the skeleton and the forward contract stay as they are): every
    layer's scan still turns over learned tokens at the end of each row and column.  The projections,
    conv and scan of the mixer run on the padded length, which the FLOP counter therefore prices.
    """

    def __init__(self, width: int, grid: tuple[int, int], extras: int, pad: int):
        super().__init__()
        if pad < 1:
            raise ValueError(f"PadTokens needs at least one padding token, got {pad}")
        self.tokens = extras + grid[0] * grid[1]
        # Init as DiM: N(0, 0.02).
        self.lateral = nn.Parameter(0.02 * torch.randn(pad, width))
        self.split = nn.Parameter(0.02 * torch.randn(split_pads(extras, pad), width)) if extras else None
        source, keep = pad_layout(*grid, extras, pad)
        self.register_buffer("source", source, persistent=False)
        self.register_buffer("keep", keep, persistent=False)

    def insert(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, extras + h*w, D) -> (B, padded length, D)."""
        if tokens.shape[1] != self.tokens:
            raise ValueError(f"PadTokens was built for {self.tokens} tokens, got {tokens.shape[1]}")
        pads = self.lateral if self.split is None else torch.cat([self.split, self.lateral])
        pool = torch.cat([tokens, pads.to(tokens.dtype).expand(tokens.shape[0], -1, -1)], dim=1)
        return pool.index_select(1, self.source)

    def remove(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, padded length, ...) -> (B, extras + h*w, ...): the original tokens, in their order."""
        return padded.index_select(1, self.keep)
