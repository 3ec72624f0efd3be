"""Convolutional U-Net backbones: DDPM (Ho et al., 2020) and ADM-style (Dhariwal & Nichol, 2021).

One configurable ``UNet`` covers both.  The layout follows the official code so that
parameter counts match: a stem conv, ``len(channel_mult)`` levels of residual blocks
(with self-attention at chosen feature-map sizes) separated by 2x resampling, a
res-attn-res middle, and an up path that concatenates one skip per down-path block.
Every output-side projection (each res block's second conv, each attention's output
projection, the final conv) starts at zero, so a fresh network predicts exactly zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.layers.contract import DiffusionBackbone
from backbones.layers.embed import LabelEmbedder, TimestepEmbedder
from backbones.registry import register_backbone


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: residual branches start as the identity, the output head at zero."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3x3 conv (DDPM, ADM default) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour repeat, then optionally a 3x3 conv to smooth the blocks."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock(nn.Module):
    """Pre-activation residual block conditioned on the time (+ class) embedding.

    The embedding enters after the first conv: added as a per-channel bias (DDPM), or,
    with ``scale_shift_norm``, as ``norm(h) * (1 + scale) + shift`` before the second
    conv (ADM), which lets the condition rescale features instead of only shifting them.
    ``resample`` ("up"/"down") makes this the block that changes resolution (ADM's
    ``resblock_updown``): both branches are resampled without a conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float,
        scale_shift_norm: bool,
        norm_groups: int,
        norm_eps: float,
        resample: str | None = None,
    ):
        super().__init__()
        self.scale_shift_norm = scale_shift_norm
        self.norm1 = nn.GroupNorm(norm_groups, in_channels, eps=norm_eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if scale_shift_norm else out_channels)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        if resample == "up":
            self.resample = Upsample(in_channels, use_conv=False)
        elif resample == "down":
            self.resample = Downsample(in_channels, use_conv=False)
        elif resample is None:
            self.resample = nn.Identity()
        else:
            raise ValueError(f"resample must be 'up', 'down' or None, got {resample!r}")
        # DDPM's "NIN" shortcut: a 1x1 conv only where the channel count changes.
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.resample(F.silu(self.norm1(x))))
        x = self.resample(x)
        e = self.emb_proj(F.silu(emb))[:, :, None, None].to(h.dtype)
        if self.scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Residual self-attention over all H*W positions, with GroupNorm in front.

    The fused 1x1 qkv projection is laid out head-major (each head's q, k, v channels
    contiguous), which is ADM's default layout and, with one head, DDPM's separate
    q/k/v projections stacked; both official checkpoints map onto it without shuffling.
    """

    def __init__(self, channels: int, num_heads: int, norm_groups: int, norm_eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels, eps=norm_eps)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))
        qkv = qkv.reshape(b, self.num_heads, 3, c // self.num_heads, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(2)  # each (B, heads, HW, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h * w)
        return x + self.proj_out(out).reshape(b, c, h, w)


class EmbedSequential(nn.Sequential):
    """A sequence of layers where the residual blocks also receive the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(DiffusionBackbone):
    """DDPM / ADM U-Net behind the common forward contract.

    ``attention_resolutions`` are feature-map sizes at ``image_size`` (16 = the level
    whose maps are 16x16 for the built size).  The net is fully convolutional: other
    inputs whose sides divide by ``2**(len(channel_mult) - 1)`` run too, with attention
    at the same levels.
    """

    family = "unet"
    fixed_size = False

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 0,
        learn_sigma: bool = False,
        class_dropout_prob: float = 0.1,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        num_heads: int = 1,
        num_head_channels: int = -1,
        dropout: float = 0.1,
        scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        conv_resample: bool = True,
        norm_groups: int = 32,
        norm_eps: float = 1e-5,
    ):
        super().__init__(image_size, in_channels, num_classes, learn_sigma, class_dropout_prob)
        self.base_channels = base_channels
        self.channel_mult = list(channel_mult)
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = list(attention_resolutions)
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.norm_groups = norm_groups
        self._validate()
        levels = len(self.channel_mult)
        self.spatial_multiple = 2 ** (levels - 1)
        attn_levels = {lvl for lvl in range(levels) if image_size >> lvl in self.attention_resolutions}
        emb_dim = 4 * base_channels

        def res_block(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, scale_shift_norm, norm_groups, norm_eps, resample)

        def attention(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, self._heads_for(channels), norm_groups, norm_eps)

        def downsample(channels: int) -> nn.Module:
            return res_block(channels, channels, "down") if resblock_updown else Downsample(channels, conv_resample)

        def upsample(channels: int) -> nn.Module:
            return res_block(channels, channels, "up") if resblock_updown else Upsample(channels, conv_resample)

        # Time: sinusoidal features of width base_channels -> MLP to 4 * base_channels.
        self.time_embed = TimestepEmbedder(emb_dim, frequency_dim=base_channels, hidden_dim=emb_dim)
        self.label_embed = LabelEmbedder(num_classes, emb_dim, class_dropout_prob) if self.conditional else None

        # Down path: every entry of input_blocks pushes one skip, so the up path knows its widths.
        ch = base_channels
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, base_channels * mult)]
                ch = base_channels * mult
                if level in attn_levels:
                    layers.append(attention(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != levels - 1:
                self.input_blocks.append(EmbedSequential(downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = EmbedSequential(res_block(ch, ch), attention(ch), res_block(ch, ch))

        # Up path: num_res_blocks + 1 blocks per level, each eating one skip by concatenation.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), base_channels * mult)]
                ch = base_channels * mult
                if level in attn_levels:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(upsample(ch))
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(norm_groups, ch, eps=norm_eps),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, self.out_channels, 3, padding=1)),
        )

    def _validate(self) -> None:
        """Reject configurations that would otherwise fail deep inside a layer, or silently differ."""
        mults, groups = self.channel_mult, self.norm_groups
        if not mults or any(int(m) != m or m <= 0 for m in mults):
            raise ValueError(f"channel_mult must be a non-empty sequence of positive integers, got {mults}")
        if self.base_channels <= 0 or self.num_res_blocks <= 0:
            raise ValueError(
                f"base_channels and num_res_blocks must be positive, got {self.base_channels}, {self.num_res_blocks}"
            )
        if groups <= 0 or self.base_channels % groups:
            raise ValueError(
                f"base_channels={self.base_channels} must be divisible by norm_groups={groups} "
                "(GroupNorm splits every feature map, all multiples of base_channels, into that many groups)"
            )
        multiple = 2 ** (len(mults) - 1)
        if self.image_size % multiple:
            raise ValueError(
                f"image_size={self.image_size} must be divisible by {multiple} = 2**(levels-1) "
                f"for {len(mults)} levels (channel_mult={mults})"
            )
        sizes = [self.image_size >> lvl for lvl in range(len(mults))]
        missing = [r for r in self.attention_resolutions if r not in sizes]
        if missing:
            raise ValueError(
                f"attention_resolutions {missing} are not feature-map sizes of this net; "
                f"at image_size={self.image_size} the levels are {sizes}"
            )
        if self.num_head_channels == -1:
            if self.num_heads <= 0:
                raise ValueError(f"num_heads must be positive, got {self.num_heads}")
        elif self.num_head_channels <= 0:
            raise ValueError(f"num_head_channels must be positive or -1 (use num_heads), got {self.num_head_channels}")
        for lvl in [lvl for lvl, s in enumerate(sizes) if s in self.attention_resolutions] + [len(mults) - 1]:
            self._heads_for(self.base_channels * mults[lvl])

    def _heads_for(self, channels: int) -> int:
        """Head count for an attention block of this width (ADM: fixed count or fixed head width)."""
        if self.num_head_channels == -1:
            if channels % self.num_heads:
                raise ValueError(f"attention width {channels} is not divisible by num_heads={self.num_heads}")
            return self.num_heads
        if channels % self.num_head_channels:
            raise ValueError(
                f"attention width {channels} is not divisible by num_head_channels={self.num_head_channels}"
            )
        return channels // self.num_head_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t, y = self.check_inputs(x, t, y)
        emb = self.time_embed(t)
        if self.label_embed is not None:
            emb = emb + self.label_embed(y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = self.run_block(block, h, emb)
            skips.append(h)
        h = self.run_block(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self.run_block(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


register_backbone(
    "unet_ddpm",
    UNet,
    family="unet",
    description="DDPM CIFAR-10 U-Net (Ho et al., 2020): 35.7M params at 32x32x3",
    image_size=32,
    base_channels=128,
    channel_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attention_resolutions=(16,),
    num_heads=1,
    dropout=0.1,
    norm_eps=1e-6,
)
register_backbone(
    "unet_adm",
    UNet,
    family="unet",
    description="ADM-style U-Net (Dhariwal & Nichol, 2021): scale-shift norm, multi-head attention, classes, sigma",
    image_size=64,
    num_classes=1000,
    learn_sigma=True,
    base_channels=128,
    channel_mult=(1, 2, 3, 4),
    num_res_blocks=3,
    attention_resolutions=(32, 16, 8),
    num_head_channels=64,
    dropout=0.1,
    scale_shift_norm=True,
    resblock_updown=True,
)
register_backbone(
    "unet_t",
    UNet,
    family="unet",
    description="Tiny U-Net for tests and CI",
    tags=("tiny", "cpu_study"),
    image_size=32,
    num_classes=10,
    base_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(16,),
    num_heads=1,
    dropout=0.1,
)
