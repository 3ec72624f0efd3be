"""U-ViT: all inputs as tokens, with long skips between shallow and deep blocks (Bao et al., 2023).

Tokens are ``[label, time, patches]`` (the label only when conditional), a learned
position table is added, and a U-shaped stack of pre-norm transformer blocks runs
over them.  The block's sequence mixer is swappable: ``mixer="bimamba"`` (or ``"mamba2"``)
gives the same skeleton with a bidirectional state-space mixer in place of attention, in any
``scan_order``, ``mixer="linear_attention"`` with Sana's ReLU linear attention, and ``attention_every=k``
keeps attention in every k-th block: each isolates one axis of a comparison (:mod:`backbones.layers.mixers`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from backbones.layers import FinalLayer, LabelEmbedder, TimestepEmbedder, TokenBackbone
from backbones.layers.long_skip import build_long_skip, long_skip_blocks, run_long_skip
from backbones.layers.mixers import MIXERS, build_mixer, check_mixer_options, reset_ssm_mixers
from backbones.layers.mlp import Mlp
from backbones.layers.trunc_normal import trunc_normal_
from backbones.registry import register_backbone

__all__ = ["MIXERS", "UViT", "UViTBlock"]


class UViTBlock(nn.Module):
    """Pre-norm block: (fuse long skip) -> x + mixer(LN(x)) -> x + MLP(LN(x))."""

    def __init__(self, width: int, mixer: nn.Module, mlp_ratio: float, has_skip: bool):
        super().__init__()
        self.skip_linear = nn.Linear(2 * width, width) if has_skip else None
        self.norm1 = nn.LayerNorm(width)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(TokenBackbone):
    """U-ViT; defaults are U-ViT-S/2 on CIFAR-10 (unconditional, noise prediction)."""

    family = "uvit"

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 0,
        learn_sigma: bool = False,
        class_dropout_prob: float = 0.1,
        patch_size: int = 2,
        width: int = 512,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        mlp_time_embed: bool = False,
        final_conv: bool = True,
        mixer: str = "attention",
        scan: str = "auto",
        scan_order: str = "bidirectional",
        attention_every: int = 0,
        bimamba_merge: str = "sum",
        caption_vocab: int = 0,
        caption_tokens: int = 0,
        caption_dim: int = 0,
        caption_placement: str = "prepend",
    ):
        check_mixer_options(mixer, scan_order, attention_every)
        super().__init__(
            image_size=image_size,
            in_channels=in_channels,
            num_classes=num_classes,
            learn_sigma=learn_sigma,
            class_dropout_prob=class_dropout_prob,
            patch_size=patch_size,
            width=width,
        )
        self.mixer_kind, self.scan_order, self.attention_every = mixer, scan_order, attention_every
        self.time_embed = TimestepEmbedder(width, hidden_dim=4 * width if mlp_time_embed else None)
        self.label_embed = LabelEmbedder(num_classes, width, class_dropout_prob) if num_classes > 0 else None
        # captions: prepended before the time token (and appended too when placed at both ends)
        self.build_captions(caption_vocab, caption_tokens, width, caption_placement, scan_order, caption_dim)
        self.extras = 1 + (num_classes > 0) + (caption_tokens if self.captioned else 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + self.num_patches + self.extras_after, width))

        def make_mixer(index: int) -> nn.Module:
            return build_mixer(
                mixer, width, layer=index, grid=(self.grid_size, self.grid_size), extras=self.extras,
                num_heads=num_heads, scan_order=scan_order, attention_every=attention_every, qkv_bias=qkv_bias,
                upcast=True, scan=scan, merge=bimamba_merge, layers=long_skip_blocks(depth),
            )

        self.in_blocks, self.mid_block, self.out_blocks = build_long_skip(
            depth, lambda index, has_skip: UViTBlock(width, make_mixer(index), mlp_ratio, has_skip)
        )
        self.final_layer = FinalLayer(width, self.patch_out_dim, adaptive=False, affine=True, eps=1e-5)
        self.final_conv = nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1) if final_conv else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U-ViT's initialisation: trunc-normal(0.02) linears and positions, unit LayerNorms."""
        trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        reset_ssm_mixers(self)  # dt/A/D must keep Mamba's init to be stable

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t, y = self.check_inputs(x, t, y)
        patches = self.patch_embed(x)
        extra = [self.time_embed(t).to(patches.dtype).unsqueeze(1)]
        if self.label_embed is not None:
            extra.insert(0, self.label_embed(y).unsqueeze(1))
        caption = self.caption_embed(y).to(patches.dtype) if self.caption_embed is not None else None
        tokens = self.join_tokens(extra, patches, caption) + self.pos_embed
        tokens = run_long_skip(self.in_blocks, self.mid_block, self.out_blocks, tokens, call=self.run_block)
        image = self.tokens_to_image(self.patch_rows(self.final_layer(tokens)))
        return self.final_conv(image) if self.final_conv is not None else image


# S sizes default to CIFAR-10 pixels; M/L/H to the ImageNet-256 latent setting they were published on.
_LATENT_IMAGENET = dict(image_size=32, in_channels=4, num_classes=1000)
UVIT_SIZES = {
    "s": dict(depth=12, width=512, num_heads=8),
    "s_deep": dict(depth=16, width=512, num_heads=8),
    "m": dict(depth=16, width=768, num_heads=12, **_LATENT_IMAGENET),
    "l": dict(depth=20, width=1024, num_heads=16, **_LATENT_IMAGENET),
    "h": dict(depth=28, width=1152, num_heads=16, final_conv=False, **_LATENT_IMAGENET),
}

for _size, _arch in UVIT_SIZES.items():
    _label = _size.upper().replace("_DEEP", "-Deep")
    for _patch in (2, 4):
        register_backbone(
            f"uvit_{_size}{_patch}", UViT, family="uvit", description=f"U-ViT-{_label}/{_patch}",
            patch_size=_patch, **_arch,
        )

register_backbone(
    "uvit_t2", UViT, family="uvit", description="tiny U-ViT for tests and CI", tags=("tiny",),
    depth=4, width=96, num_heads=3, patch_size=2, image_size=32, in_channels=3, num_classes=10,
)
register_backbone(
    "uvit_t4", UViT, family="uvit", description="tiny U-ViT/4: 16 tokens at 16x16, the CPU studies' U-ViT",
    tags=("tiny_variant", "cpu_study"),
    depth=4, width=96, num_heads=3, patch_size=4, image_size=32, in_channels=3, num_classes=10,
)
register_backbone(
    "uvit_bimamba_t2", UViT, family="uvit", description="tiny U-ViT skeleton with DiS's bidirectional Mamba mixer",
    tags=("tiny_variant",),
    depth=4, width=96, num_heads=3, patch_size=2, image_size=32, in_channels=3, num_classes=10, mixer="bimamba",
)
