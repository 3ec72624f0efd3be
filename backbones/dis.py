"""DiS: diffusion with a state-space backbone (Fei et al., 2024).

U-ViT's token layout and long skips, with Mamba's "add -> norm -> mixer" blocks
around a bidirectional Mamba mixer.  The mixer (Mamba, Mamba-2 or ReLU linear attention), its scan order and
a hybrid rule (attention in every k-th block) are build options (:mod:`backbones.layers.mixers`); the
defaults are DiS's own.  The residual stream is carried beside the hidden states in fp32, and the head
modulates its norm with the time and label tokens when the model is class-conditional.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from backbones.layers import FinalLayer, LabelEmbedder, TimestepEmbedder, TokenBackbone
from backbones.layers.drop_path import DropPath
from backbones.layers.long_skip import build_long_skip, long_skip_blocks, run_long_skip
from backbones.layers.mixers import LINEAR_MIXERS, SSM_MIXERS, build_mixer, check_mixer_options, default_heads
from backbones.registry import register_backbone

Carry = tuple[torch.Tensor, torch.Tensor | None]


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0 else nn.Identity()


class DiSBlock(nn.Module):
    """residual += drop_path(hidden); hidden = mixer(RMSNorm(residual)).  Returns both."""

    def __init__(self, width: int, drop_path: float, has_skip: bool, make_mixer, norm_eps: float = 1e-5):
        super().__init__()
        self.skip_linear = nn.Linear(2 * width, width) if has_skip else None
        self.norm = nn.RMSNorm(width, eps=norm_eps)
        self.mixer = make_mixer()  # built here, after the norm, so the default init matches the official order
        self.drop_path = _drop_path(drop_path)

    def forward(self, carry: Carry, skip: torch.Tensor | None = None) -> Carry:
        hidden, residual = carry
        if self.skip_linear is not None:
            hidden = self.skip_linear(torch.cat([hidden, skip], dim=-1))
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        residual = residual.float()
        hidden = self.mixer(self.norm(residual.to(self.norm.weight.dtype)))
        return hidden, residual


class DiS(TokenBackbone):
    """Diffusion State-space model; defaults are DiS-H/2 on 256x256 ImageNet latents.

    Initialised as the official code initialises it; ``backward_dt_init="mamba"`` instead gives the backward
    scan direction Mamba's dt initialisation too (see :class:`backbones.layers.mamba.BiMamba`).
    """

    family = "dis"

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        class_dropout_prob: float = 0.1,
        patch_size: int = 2,
        width: int = 1536,
        depth: int = 48,
        drop_path: float = 0.1,
        scan: str = "auto",
        backward_dt_init: str = "official",
        mixer: str = "bimamba",
        scan_order: str = "bidirectional",
        attention_every: int = 0,
        num_heads: int | None = None,
        bimamba_merge: str = "sum",
        caption_vocab: int = 0,
        caption_tokens: int = 0,
        caption_dim: int = 0,
        caption_placement: str = "prepend",
    ):
        check_mixer_options(mixer, scan_order, attention_every)
        if mixer not in LINEAR_MIXERS:
            raise ValueError(f"DiS's blocks take an SSM mixer ({', '.join(SSM_MIXERS)}) or linear_attention; for "
                             f"softmax attention blocks in this skeleton use the uvit family, or attention_every=k "
                             f"for a hybrid")
        super().__init__(
            image_size=image_size,
            in_channels=in_channels,
            num_classes=num_classes,
            learn_sigma=learn_sigma,
            class_dropout_prob=class_dropout_prob,
            patch_size=patch_size,
            width=width,
        )
        self.depth = depth
        self.time_embed = TimestepEmbedder(width, hidden_dim=4 * width)
        self.label_embed = LabelEmbedder(num_classes, width, class_dropout_prob) if num_classes > 0 else None
        # captions: prepended before the time token (and appended too when placed at both ends)
        self.build_captions(caption_vocab, caption_tokens, width, caption_placement, scan_order, caption_dim)
        self.extras = 1 + (num_classes > 0) + (caption_tokens if self.captioned else 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + self.num_patches + self.extras_after, width))
        # Stochastic depth rises linearly over `depth` steps; block 0 has none (it starts the residual).
        rates = [0.0] + [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.mixer_kind, self.scan_order, self.attention_every = mixer, scan_order, attention_every
        heads = num_heads or default_heads(width)

        def make_block(index: int, has_skip: bool) -> DiSBlock:
            def make_mixer() -> nn.Module:
                return build_mixer(
                    mixer, width, layer=index, grid=(self.grid_size, self.grid_size), extras=self.extras,
                    num_heads=heads, scan_order=scan_order, attention_every=attention_every, scan=scan,
                    backward_dt_init=backward_dt_init, merge=bimamba_merge, layers=long_skip_blocks(depth),
                )

            return DiSBlock(width, rates[index], has_skip, make_mixer)

        self.in_blocks, self.mid_block, self.out_blocks = build_long_skip(depth, make_block)
        self.drop_path = _drop_path(drop_path)
        self.norm_f = nn.RMSNorm(width, eps=1e-5)
        self.final_layer = FinalLayer(width, self.patch_out_dim, adaptive=self.conditional)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba's initialisation: zero biases (but dt's), N(0, 0.02) embeddings, out_proj / sqrt(depth)."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                if not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if hasattr(module, "reset_ssm_parameters"):  # BiMamba, BiMamba2
                nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
                with torch.no_grad():
                    module.out_proj.weight /= math.sqrt(self.depth)
        nn.init.zeros_(self.pos_embed)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t, y = self.check_inputs(x, t, y)
        patches = self.patch_embed(x)
        time_token = self.time_embed(t).to(patches.dtype)
        extra = [time_token.unsqueeze(1)]
        c = None
        if self.label_embed is not None:
            label_token = self.label_embed(y)
            extra.insert(0, label_token.unsqueeze(1))
            c = time_token + label_token
        caption = None
        if self.caption_embed is not None:
            caption = self.caption_embed(y).to(patches.dtype)
            c = time_token + caption.mean(dim=1)
        tokens = self.join_tokens(extra, patches, caption) + self.pos_embed
        hidden, residual = run_long_skip(
            self.in_blocks, self.mid_block, self.out_blocks, (tokens, None), skip_of=lambda carry: carry[0],
            call=self.run_block,
        )
        residual = residual + self.drop_path(hidden)
        hidden = self.norm_f(residual.to(self.norm_f.weight.dtype))
        out = self.final_layer(hidden, c)
        return self.tokens_to_image(self.patch_rows(out))


DIS_SIZES = {"s": (368, 24), "b": (768, 24), "m": (768, 48), "l": (1024, 48), "h": (1536, 48)}

for _size, (_width, _depth) in DIS_SIZES.items():
    for _patch in (2, 4):
        register_backbone(
            f"dis_{_size}{_patch}", DiS, family="dis", description=f"DiS-{_size.upper()}/{_patch}",
            width=_width, depth=_depth, patch_size=_patch,
        )

register_backbone(
    "dis_t2", DiS, family="dis", description="tiny DiS for tests and CI", tags=("tiny",),
    width=64, depth=4, patch_size=2, image_size=32, in_channels=3, num_classes=10,
)
register_backbone(
    "dis_t4", DiS, family="dis", description="tiny DiS/4: the embedded default (16 tokens at 16x16)",
    tags=("tiny_variant", "cpu_study"),
    width=64, depth=4, patch_size=4, image_size=32, in_channels=3, num_classes=10,
)

# DiS's skeleton with one axis changed, named by what they contain (S/2 for studies, T/2 for tests and CI).
VARIANTS = {
    "zigzag": (dict(scan_order="zigzag"), "a zigzag (snake) scan, one of the 8 per layer"),
    "cross": (dict(scan_order="cross"), "a four-direction cross scan"),
    "alternate": (dict(scan_order="alternate"), "two-way scans, row-major in even layers, column-major in odd"),
    "dim": (dict(scan_order="dim"), "DiM's one-way scans, row/column cycle mirrored over the stack"),
    "hybrid": (dict(attention_every=4), "attention in every 4th block"),
    "mamba2": (dict(mixer="mamba2"), "a bidirectional Mamba-2 (SSD) mixer"),
    "linear_attention": (dict(mixer="linear_attention"), "Sana's ReLU linear attention as the mixer"),
}
for _variant, (_options, _what) in VARIANTS.items():
    register_backbone(
        f"dis_{_variant}_s2", DiS, family="dis", description=f"DiS-S/2 with {_what}",
        width=368, depth=24, patch_size=2, **_options,
    )
    _tiny = {**_options, "attention_every": 2} if "attention_every" in _options else _options
    register_backbone(
        f"dis_{_variant}_t2", DiS, family="dis", description=f"tiny DiS with {_what.replace('4th', '2nd')}",
        tags=("tiny_variant",),
        width=64, depth=4, patch_size=2, image_size=32, in_channels=3, num_classes=10, **_tiny,
    )
