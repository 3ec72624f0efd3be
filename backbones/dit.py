"""DiT: Diffusion Transformer with adaLN-Zero conditioning (Peebles & Xie, 2023).

Tokens are image patches only; time and class are summed into one conditioning
vector ``c`` that every block reads through adaptive LayerNorm.  All modulation
outputs and the final projection start at zero, so the untrained network outputs 0.
``mixer="bimamba"`` / ``"mamba2"`` puts a state-space mixer (in any ``scan_order``) where the attention
was, ``mixer="linear_attention"`` Sana's ReLU linear attention, keeping the isotropic adaLN-Zero skeleton
(:mod:`backbones.layers.mixers`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from backbones.layers import (
    DiffusionBackbone,
    FinalLayer,
    LabelEmbedder,
    TimestepEmbedder,
    TokenBackbone,
    modulate,
    sincos_pos_embed_2d,
)
from backbones.layers.caption import CrossAttention
from backbones.layers.mixers import build_mixer, check_mixer_options, reset_ssm_mixers
from backbones.layers.mlp import Mlp
from backbones.registry import register_backbone


def tanh_gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


class DiTBlock(nn.Module):
    """Mixer (attention by default) + MLP, each behind a non-affine LayerNorm modulated (shift, scale) and
    gated by c (of ``cond_width``, the block's width unless a skeleton's levels differ in width).  The mixer
    keeps the official name ``attn`` whatever it is, so DiT's weights load."""

    def __init__(self, width: int, mlp_ratio: float, make_mixer, cond_width: int | None = None,
                 cross_heads: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = make_mixer()
        # Captions: cross-attention to the condition tokens between the mixer and the MLP (PixArt-alpha's place),
        # a plain residual branch; its output projection starts at zero (adaln_zero_init).
        self.norm_cross = nn.LayerNorm(width, eps=1e-6) if cross_heads else None
        self.cross = CrossAttention(width, cond_width or width, cross_heads) if cross_heads else None
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio), act_layer=tanh_gelu, drop=0)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_width or width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), context)
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


def condition(model: DiffusionBackbone, t: torch.Tensor, y: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The adaLN condition c (time, plus the label or the mean caption token) and the caption's tokens for
    cross-attention (None without captions): what every adaLN skeleton's blocks read."""
    c = model.time_embed(t)
    if model.label_embed is not None:
        c = c + model.label_embed(y)
    if model.caption_embed is None:
        return c, None
    context = model.caption_embed(y).to(c.dtype)
    return c + context.mean(dim=1), context


def adaln_zero_init(model: DiffusionBackbone) -> None:
    """DiT's initialisation of any skeleton of adaLN blocks: xavier linears, N(0, 0.02) embeddings, adaLN-Zero
    (every block's modulation and the head start at zero, so the untrained network outputs 0)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    proj = model.patch_embed.proj
    nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    nn.init.zeros_(proj.bias)
    if model.label_embed is not None:
        nn.init.normal_(model.label_embed.embedding_table.weight, std=0.02)
    nn.init.normal_(model.time_embed.mlp[0].weight, std=0.02)
    nn.init.normal_(model.time_embed.mlp[2].weight, std=0.02)
    zero_init = [block.adaLN_modulation[-1] for block in model.modules() if isinstance(block, DiTBlock)]
    zero_init += [block.cross.proj for block in model.modules() if isinstance(block, DiTBlock) and block.cross]
    zero_init += [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]
    for linear in zero_init:
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
    reset_ssm_mixers(model)  # an SSM mixer keeps Mamba's dt/A/D initialisation under the xavier sweep


class DiT(TokenBackbone):
    """Diffusion Transformer; defaults are DiT-XL/2 on 256x256 ImageNet latents."""

    family = "dit"

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        class_dropout_prob: float = 0.1,
        patch_size: int = 2,
        width: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mixer: str = "attention",
        scan_order: str = "bidirectional",
        attention_every: int = 0,
        scan: str = "auto",
        bimamba_merge: str = "sum",
        caption_vocab: int = 0,
        caption_tokens: int = 0,
        caption_dim: int = 0,
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
        self.time_embed = TimestepEmbedder(width, frequency_dim=256, hidden_dim=width)
        self.label_embed = LabelEmbedder(num_classes, width, class_dropout_prob) if num_classes > 0 else None
        self.build_captions(caption_vocab, caption_tokens, width, dim=caption_dim)  # read through cross-attention
        # Fixed table, kept as a frozen parameter as the official code does (it counts in the params).
        table = torch.from_numpy(sincos_pos_embed_2d(width, self.grid_size)).float().unsqueeze(0)
        self.pos_embed = nn.Parameter(table, requires_grad=False)
        self.mixer_kind, self.scan_order, self.attention_every = mixer, scan_order, attention_every

        def make_mixer(index: int):
            return lambda: build_mixer(
                mixer, width, layer=index, grid=(self.grid_size, self.grid_size), extras=0, num_heads=num_heads,
                scan_order=scan_order, attention_every=attention_every, qkv_bias=True, scan=scan,
                merge=bimamba_merge, layers=depth,
            )

        cross = num_heads if self.captioned else 0
        self.blocks = nn.ModuleList(DiTBlock(width, mlp_ratio, make_mixer(i), cross_heads=cross) for i in range(depth))
        self.final_layer = FinalLayer(width, self.patch_out_dim, adaptive=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        adaln_zero_init(self)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t, y = self.check_inputs(x, t, y)
        tokens = self.patch_embed(x) + self.pos_embed
        c, context = condition(self, t, y)
        for block in self.blocks:
            tokens = self.run_block(block, tokens, c, context)
        return self.tokens_to_image(self.final_layer(tokens, c))


DIT_SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}

for _size, (_depth, _width, _heads) in DIT_SIZES.items():
    for _patch in (2, 4, 8):
        register_backbone(
            f"dit_{_size}{_patch}",
            DiT,
            family="dit",
            description=f"DiT-{_size.upper()}/{_patch}",
            depth=_depth,
            width=_width,
            num_heads=_heads,
            patch_size=_patch,
        )

register_backbone(
    "dit_t2", DiT, family="dit", description="tiny DiT for tests and CI", tags=("tiny",),
    depth=4, width=96, num_heads=3, patch_size=2, image_size=32, in_channels=3, num_classes=10,
)
register_backbone(
    "dit_t4", DiT, family="dit", description="tiny DiT/4: 16 tokens at 16x16, the CPU studies' DiT",
    tags=("tiny_variant", "cpu_study"),
    depth=4, width=96, num_heads=3, patch_size=4, image_size=32, in_channels=3, num_classes=10,
)
# DiT's isotropic adaLN-Zero skeleton with DiS's bidirectional Mamba in place of attention.
register_backbone(
    "dit_bimamba_s2", DiT, family="dit", description="DiT-S/2 skeleton with a bidirectional Mamba mixer",
    depth=12, width=384, num_heads=6, patch_size=2, mixer="bimamba",
)
register_backbone(
    "dit_bimamba_t2", DiT, family="dit", description="tiny DiT skeleton with a bidirectional Mamba mixer",
    tags=("tiny_variant",),
    depth=4, width=96, num_heads=3, patch_size=2, image_size=32, in_channels=3, num_classes=10, mixer="bimamba",
)
