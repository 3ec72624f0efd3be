"""Hourglass: a hierarchy of token levels, the third skeleton beside DiS/U-ViT's long skips and DiT's isotropy.

The DiS paper leaves hierarchy open; HDiT, U-Shape Mamba and LaMamba-Diff shorten the sequence between
levels.  Level 0 runs on the patch grid; each deeper level merges 2x2 tokens into one (a linear over the four,
:mod:`backbones.layers.token_merge`), the innermost level runs its blocks once, and the way back splits each
token into its 2x2 block and blends it with the level's skip by a learned interpolation (HDiT's lerp).  Every
block is DiT's adaLN-Zero block reading one conditioning vector (time + label, at level 0's width), so the
skeleton is the only thing that differs from DiT's.

Per level: width, depth (blocks before the merge and again after the split; the innermost level runs
``depth`` blocks once), mixer, scan order, attention heads and, for the SSM mixers, the state size (the
paper's "adaptive state dimensionality").  A single value applies to every level; a list gives one per level,
outermost first, e.g. ``mixer=["bimamba", "attention"]`` for a state-space outer level around attention on
the shortest sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from backbones.dit import DiTBlock, adaln_zero_init, condition
from backbones.layers import FinalLayer, LabelEmbedder, TimestepEmbedder, TokenBackbone, sincos_pos_embed_2d
from backbones.layers.mixers import build_mixer, check_mixer_options, default_heads
from backbones.layers.token_merge import TokenMerge, TokenSplit
from backbones.registry import register_backbone


def per_level(name: str, value: Any, levels: int) -> list[Any]:
    """One value per level: a scalar repeated, or a list of exactly ``levels`` values (outermost first)."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value] * levels
    values = list(value)
    if len(values) != levels:
        raise ValueError(f"hourglass: {name} needs one value per level ({levels}, as widths) or a single value, "
                         f"got {values!r}")
    return values


def _positive_ints(name: str, values: Any) -> list[int]:
    values = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else [values]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"hourglass: {name} must be a non-empty list of positive integers, got {values!r}")
    return values


class Hourglass(TokenBackbone):
    """Hourglass diffusion backbone; defaults are hourglass-S/2 (two levels, 192 and 384 wide)."""

    family = "hourglass"

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        class_dropout_prob: float = 0.1,
        patch_size: int = 2,
        widths: Sequence[int] = (192, 384),
        depths: Sequence[int] = (2, 8),
        mlp_ratio: float = 4.0,
        num_heads: int | Sequence[int] | None = None,
        mixer: str | Sequence[str] = "attention",
        scan_order: str | Sequence[str] = "bidirectional",
        attention_every: int = 0,
        state_size: int | Sequence[int | None] | None = None,
        scan: str = "auto",
        bimamba_merge: str = "sum",
        caption_vocab: int = 0,
        caption_tokens: int = 0,
        caption_dim: int = 0,
    ):
        widths, depths = _positive_ints("widths", widths), _positive_ints("depths", depths)
        levels = len(widths)
        if len(depths) != levels:
            raise ValueError(f"hourglass: widths {widths} and depths {depths} need one entry per level each")
        mixers = per_level("mixer", mixer, levels)
        orders = per_level("scan_order", scan_order, levels)
        heads = [h or default_heads(w) for h, w in zip(per_level("num_heads", num_heads, levels), widths, strict=True)]
        states = per_level("state_size", state_size, levels)
        # attention_every puts attention into the levels of another mixer; an attention level has it anyway.
        every = [0 if level_mixer == "attention" else attention_every for level_mixer in mixers]
        if all(level_mixer == "attention" for level_mixer in mixers):
            check_mixer_options("attention", "bidirectional", attention_every)  # refuses attention_every > 0
        for level_mixer, order, level_every in zip(mixers, orders, every, strict=True):
            check_mixer_options(level_mixer, order, level_every)
        super().__init__(
            image_size=image_size,
            in_channels=in_channels,
            num_classes=num_classes,
            learn_sigma=learn_sigma,
            class_dropout_prob=class_dropout_prob,
            patch_size=patch_size,
            width=widths[0],
        )
        if self.grid_size % 2 ** (levels - 1):
            raise ValueError(
                f"hourglass: {levels} levels halve the {self.grid_size}x{self.grid_size} patch grid "
                f"{levels - 1} times, so it must be a multiple of {2 ** (levels - 1)}; change image_size, "
                f"patch_size or the number of levels"
            )
        self.spatial_multiple = patch_size * 2 ** (levels - 1)
        self.widths, self.depths = widths, depths
        self.mixer_kind, self.scan_order, self.attention_every = mixers, orders, attention_every
        self.grids = [(self.grid_size >> level,) * 2 for level in range(levels)]
        cond = widths[0]
        self.time_embed = TimestepEmbedder(cond, frequency_dim=256, hidden_dim=cond)
        self.label_embed = LabelEmbedder(num_classes, cond, class_dropout_prob) if num_classes > 0 else None
        self.build_captions(caption_vocab, caption_tokens, cond, dim=caption_dim)  # cross-attention at every level
        table = torch.from_numpy(sincos_pos_embed_2d(cond, self.grid_size)).float().unsqueeze(0)
        self.pos_embed = nn.Parameter(table, requires_grad=False)

        def blocks(level: int, first: int, count: int, layers: int) -> nn.ModuleList:
            """``count`` blocks of ``level``; their scan paths are those of layers ``first..`` of ``layers``."""

            def make_mixer(index: int):
                return lambda: build_mixer(
                    mixers[level], widths[level], layer=index, grid=self.grids[level], extras=0,
                    num_heads=heads[level], scan_order=orders[level], attention_every=every[level],
                    qkv_bias=True, scan=scan, merge=bimamba_merge, layers=layers, state_size=states[level],
                )

            cross = heads[level] if self.captioned else 0
            return nn.ModuleList(
                DiTBlock(widths[level], mlp_ratio, make_mixer(first + i), cond_width=cond, cross_heads=cross)
                for i in range(count)
            )

        outer = range(levels - 1)
        self.down = nn.ModuleList(blocks(i, 0, depths[i], 2 * depths[i]) for i in outer)
        self.merges = nn.ModuleList(TokenMerge(widths[i], widths[i + 1]) for i in outer)
        self.middle = blocks(levels - 1, 0, depths[-1], depths[-1])
        self.splits = nn.ModuleList(TokenSplit(widths[i + 1], widths[i]) for i in outer)
        self.up = nn.ModuleList(blocks(i, depths[i], depths[i], 2 * depths[i]) for i in outer)
        self.final_layer = FinalLayer(cond, self.patch_out_dim, adaptive=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT's initialisation (the merges and splits are xavier linears like every other); skips start at 0.5."""
        adaln_zero_init(self)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t, y = self.check_inputs(x, t, y)
        tokens = self.patch_embed(x) + self.pos_embed
        c, context = condition(self, t, y)
        skips = []
        for level, (level_blocks, merge) in enumerate(zip(self.down, self.merges, strict=True)):
            for block in level_blocks:
                tokens = self.run_block(block, tokens, c, context)
            skips.append(tokens)
            tokens = merge(tokens, self.grids[level])
        for block in self.middle:
            tokens = self.run_block(block, tokens, c, context)
        for level in reversed(range(len(self.splits))):
            tokens = self.splits[level](tokens, skips[level], self.grids[level])
            for block in self.up[level]:
                tokens = self.run_block(block, tokens, c, context)
        return self.tokens_to_image(self.final_layer(tokens, c))


# name: (widths, depths, what); per size a /2 member and, for tests and CI, the tiny one of the family.
HOURGLASS_SIZES = {"s": ((192, 384), (2, 8)), "b": ((384, 768), (2, 8))}
for _size, (_widths, _depths) in HOURGLASS_SIZES.items():
    register_backbone(
        f"hourglass_{_size}2", Hourglass, family="hourglass",
        description=f"hourglass-{_size.upper()}/2: two levels ({_widths[0]} and {_widths[1]} wide), attention",
        widths=_widths, depths=_depths, patch_size=2,
    )
register_backbone(
    "hourglass_mixed_s2", Hourglass, family="hourglass",
    description="hourglass-S/2 with bidirectional Mamba at the outer level, attention at the inner one",
    widths=(192, 384), depths=(2, 8), patch_size=2, mixer=("bimamba", "attention"),
)
_TINY = dict(widths=(48, 96), depths=(1, 2), patch_size=2, image_size=32, in_channels=3, num_classes=10)
register_backbone("hourglass_t2", Hourglass, family="hourglass", description="tiny hourglass for tests and CI",
                  tags=("tiny",), **_TINY)
register_backbone(
    "hourglass_mixed_t2", Hourglass, family="hourglass",
    description="tiny hourglass, bidirectional Mamba outside and attention inside", tags=("tiny_variant",),
    **{**_TINY, "mixer": ("bimamba", "attention")},
)
