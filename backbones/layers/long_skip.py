"""The U-shaped token stack of U-ViT and DiS: in-blocks, a mid block, out-blocks with long skips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn


def long_skip_blocks(depth: int) -> int:
    """Blocks in the stack :func:`build_long_skip` builds for ``depth`` (what a depth-aware scan order needs)."""
    return 2 * (depth // 2) + 1


def build_long_skip(depth: int, make_block: Callable[[int, bool], nn.Module]):
    """``depth // 2`` in-blocks, one mid block and ``depth // 2`` out-blocks (``depth + 1`` in all
    for even depth).  ``make_block(index, has_skip)`` builds block ``index``; out-blocks get
    ``has_skip=True`` and fuse the matching in-block's output."""
    half = depth // 2
    in_blocks = nn.ModuleList(make_block(i, False) for i in range(half))
    mid_block = make_block(half, False)
    out_blocks = nn.ModuleList(make_block(half + 1 + i, True) for i in range(half))
    return in_blocks, mid_block, out_blocks


def run_long_skip(
    in_blocks: nn.ModuleList,
    mid_block: nn.Module,
    out_blocks: nn.ModuleList,
    carry: Any,
    skip_of: Callable[[Any], Any] = lambda carry: carry,
    call: Callable[..., Any] = lambda block, *args: block(*args),
) -> Any:
    """Run the stack; ``carry`` is what flows between blocks (a tensor, or DiS's
    (hidden, residual) pair) and ``skip_of(carry)`` is what an in-block hands to its out-block.
    ``call(block, *args)`` runs one block (the backbone's ``run_block``: checkpointed or not)."""
    skips = []
    for block in in_blocks:
        carry = call(block, carry)
        skips.append(skip_of(carry))
    carry = call(mid_block, carry)
    for block in out_blocks:
        carry = call(block, carry, skips.pop())
    return carry
