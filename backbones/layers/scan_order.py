"""Scan orders: in which order a sequence mixer visits the patch tokens of the 2-D grid.

A state-space mixer is causal along its sequence, so the order of the patches decides which patches each
one can see.  Every order here is, per layer, a list of *directions*; a direction is a permutation of the
whole token sequence (the time/label tokens first, as DiS lays them out, then the patches in path order),
applied before the mixer's scan and inverted after it.  A reversed direction of ``bidirectional`` and
``cross`` reverses the whole sequence, so the time/label tokens come last, exactly as DiS's backward scan
over the flipped sequence.

* ``raster``: one direction, row-major.
* ``bidirectional``: row-major and its reverse (DiS).
* ``zigzag``: one spatially continuous snake per layer, as ZigMa: its 8 snakes in ZigMa's order (start
  top-left along rows, top-left along columns, top-right rows, top-right columns, bottom-left rows,
  bottom-left columns, bottom-right rows, bottom-right columns), layer i taking snake i mod 8, so rows
  and columns alternate from one layer to the next.
* ``cross``: four directions per block, row-major, column-major and both reversed (VMamba's cross-scan).
  The mixer sums the directions' outputs, as DiS sums its two and VMamba's cross-merge sums its four.
* ``alternate``: two directions per layer, row-major and its reverse in even layers, column-major and its
  reverse in odd ones.  An archbench order (a bidirectional scan whose axis alternates); it is not DiM's.
* ``dim``: DiM's scheme, one direction per layer: row, row reversed, column, column reversed, cycled
  through the first half of the stack and mirrored in the second (layer l of n takes step
  ``min(l, n - 1 - l) mod 4``, so the first and the last layer scan rows).  As in DiM, the time/label
  tokens stay in front in every direction (only the patches are reversed), so every patch sees them.
* ``dim_pad``: ``dim`` with DiM's learnable padding tokens (its ``use_pad_token``): the mixer scans the
  grid padded to ``(h + p) x (w + p)`` (``p`` tokens at the end of every row, ``p`` rows below the grid,
  so a row or column scan "turns" over tokens that are not pixels), and ``p`` more tokens between the
  time/label tokens and the patches; see :func:`pad_layout`.
"""

from __future__ import annotations

import torch

SCAN_ORDERS = ("raster", "bidirectional", "zigzag", "cross", "alternate", "dim", "dim_pad")
ZIGZAG_VARIANTS = 8
# Orders whose direction depends on the layer's place in the whole stack (they need ``layers``).
DEPTH_AWARE_ORDERS = ("dim", "dim_pad")
# Orders that scan a padded grid (see pad_layout).
PADDED_ORDERS = ("dim_pad",)
# DiM's cycle of one-direction layers, in its order.
DIM_CYCLE = ("row", "row reversed", "column", "column reversed")
# Padding tokens per row / column for ``dim_pad``.  DiM defaults its pad_token_len to the mixer's conv
# width (mamba_d_conv, 3 in its configs); archbench's Mamba mixers use a conv of width 4.
DIM_PAD_TOKENS = 4


def raster_path(height: int, width: int) -> torch.Tensor:
    return torch.arange(height * width, device="cpu")


def column_path(height: int, width: int) -> torch.Tensor:
    """Column-major: down each column, left to right."""
    return torch.arange(height * width, device="cpu").reshape(height, width).t().reshape(-1)


def snake_path(height: int, width: int, variant: int) -> torch.Tensor:
    """Snake (boustrophedon) ``variant`` 0-7 in ZigMa's numbering: start corner ``variant // 2`` (top-left,
    top-right, bottom-left, bottom-right), along rows for even variants, along columns for odd ones.
    Consecutive entries are always grid neighbours."""
    if not 0 <= variant < ZIGZAG_VARIANTS:
        raise ValueError(f"zigzag variant must be 0-{ZIGZAG_VARIANTS - 1}, got {variant}")
    grid = torch.arange(height * width, device="cpu").reshape(height, width)
    corner, along_columns = divmod(variant, 2)
    if corner & 1:  # starts on the right
        grid = grid.flip(1)
    if corner & 2:  # starts at the bottom
        grid = grid.flip(0)
    if along_columns:
        grid = grid.t()
    lines = [line if i % 2 == 0 else line.flip(0) for i, line in enumerate(grid)]
    return torch.cat(lines)


def dim_step(layer: int, layers: int) -> int:
    """Index into :data:`DIM_CYCLE` of layer ``layer`` of a ``layers``-deep stack (DiM's schedule)."""
    if not 0 <= layer < layers:
        raise ValueError(f"layer {layer} is outside a stack of {layers} layers")
    return min(layer, layers - 1 - layer) % len(DIM_CYCLE)


def patch_paths(
    order: str, height: int, width: int, layer: int, layers: int | None = None
) -> list[tuple[torch.Tensor, bool]]:
    """(patch path, reversed) per direction of ``layer`` for an ``height x width`` grid of patches.

    ``layers`` (the stack's depth in mixer layers) is needed by the orders in :data:`DEPTH_AWARE_ORDERS`.
    For ``dim_pad`` the grid is the padded one (see :func:`padded_grid`).
    """
    if order not in SCAN_ORDERS:
        raise ValueError(f"unknown scan_order {order!r}; valid scan orders: {', '.join(SCAN_ORDERS)}")
    raster = raster_path(height, width)
    if order == "raster":
        return [(raster, False)]
    if order == "bidirectional":
        return [(raster, False), (raster, True)]
    if order == "zigzag":
        return [(snake_path(height, width, layer % ZIGZAG_VARIANTS), False)]
    column = column_path(height, width)
    if order == "cross":
        return [(raster, False), (column, False), (raster, True), (column, True)]
    if order in DEPTH_AWARE_ORDERS:
        if layers is None:
            raise ValueError(f"scan_order={order!r} mirrors its cycle over the stack: pass layers= (the depth)")
        # The patches alone are reversed (reverse=False): the time/label tokens stay in front, as in DiM.
        paths = (raster, raster.flip(0), column, column.flip(0))
        return [(paths[dim_step(layer, layers)], False)]
    path = raster if layer % 2 == 0 else column  # alternate
    return [(path, False), (path, True)]


def num_directions(order: str) -> int:
    return len(patch_paths(order, 1, 1, 0, layers=1))


def sequence_permutation(path: torch.Tensor, extras: int, reverse: bool) -> torch.Tensor:
    """The permutation of the full token sequence: ``extras`` leading tokens, then the patches along ``path``."""
    perm = torch.cat([torch.arange(extras, device="cpu"), path + extras])
    return perm.flip(0) if reverse else perm


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device="cpu")
    return inverse


def split_pads(extras: int, pad: int) -> int:
    """DiM's pads between the time/label tokens and the patches: ``pad`` of them, only when there are extras."""
    return pad if extras > 0 else 0


def padded_grid(height: int, width: int, pad: int) -> tuple[int, int]:
    return height + pad, width + pad


def padded_length(height: int, width: int, extras: int, pad: int) -> int:
    """Tokens a ``dim_pad`` mixer scans: extras, split pads, and the padded grid."""
    rows, cols = padded_grid(height, width, pad)
    return extras + split_pads(extras, pad) + rows * cols


def pad_layout(height: int, width: int, extras: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where DiM's padding tokens go: ``(source, keep)`` index tensors for one padded sequence.

    The padded sequence is ``extras`` time/label tokens, ``split`` learnable tokens (DiM's ``dec_split``
    pads, ``pad`` of them when there are extras), then the ``(height + pad) x (width + pad)`` grid
    row-major: patch (i, j) where ``i < height`` and ``j < width``; lateral pad token ``j - width`` at the
    end of each patch row; lateral pad token ``i - height`` filling each of the ``pad`` rows below (DiM's
    ``lateral_token_pad``).  ``source[k]`` indexes the pool ``cat(tokens, split pads, lateral pads)`` for
    padded position ``k``; ``keep[t]`` is the padded position of original token ``t``.
    """
    tokens = extras + height * width
    split = split_pads(extras, pad)
    lateral0 = tokens + split
    rows, cols = padded_grid(height, width, pad)
    i = torch.arange(rows, device="cpu")[:, None].expand(rows, cols)
    j = torch.arange(cols, device="cpu")[None, :].expand(rows, cols)
    grid = torch.where(
        i >= height, lateral0 + i - height, torch.where(j >= width, lateral0 + j - width, extras + i * width + j)
    )
    source = torch.cat([torch.arange(extras + split, device="cpu"), grid.reshape(-1)])
    if split:
        source[extras : extras + split] = torch.arange(tokens, tokens + split, device="cpu")
    is_token = (source < tokens).nonzero().squeeze(1)
    keep = is_token[torch.argsort(source[is_token])]
    return source, keep
