"""Parameter-count parity with the official implementations.

The published counts pin the flagship configurations; for every other size a
closed-form count, written from the architecture description layer by layer,
must agree with the built model.  Large models are built on the meta device.
"""

import math

import pytest
import torch

import archbench
from backbones.layers.mixers import is_attention_block
from backbones.layers.scan_order import num_directions


def count(name: str, **overrides) -> int:
    with torch.device("meta"):
        model = archbench.build(name, **overrides)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        ("dit_xl2", dict(image_size=32, in_channels=4, num_classes=1000, learn_sigma=True), 675_129_632),
        ("dit_s2", dict(image_size=32, in_channels=4, num_classes=1000, learn_sigma=True), 32_963_360),
        ("dis_s2", dict(image_size=32, in_channels=3, num_classes=0, learn_sigma=True), 28_488_008),
        ("uvit_s2", dict(image_size=32, in_channels=3, num_classes=0, learn_sigma=False), 44_255_328),
        ("unet_ddpm", dict(image_size=32, in_channels=3), 35_746_307),
    ],
)
def test_published_counts(name, overrides, expected):
    assert count(name, **overrides) == expected


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def dit_formula(cfg) -> int:
    d, p, c = cfg["width"], cfg["patch_size"], cfg["in_channels"]
    out = 2 * c if cfg["learn_sigma"] else c
    tokens = (cfg["image_size"] // p) ** 2
    total = c * p * p * d + d + tokens * d + linear(256, d) + linear(d, d)
    if cfg["num_classes"]:
        total += (cfg["num_classes"] + (cfg["class_dropout_prob"] > 0)) * d
    hidden = int(d * cfg["mlp_ratio"])
    blocks = sum(mixer_formula(cfg, i, qkv_bias=True) + linear(d, hidden) + linear(hidden, d) + linear(d, 6 * d)
                 for i in range(cfg["depth"]))
    return total + blocks + linear(d, 2 * d) + linear(d, p * p * out)


def bimamba_formula(d: int, n: int = 16, k: int = 4, directions: int = 2) -> int:
    inner, rank = 2 * d, math.ceil(d / 16)
    direction = inner * k + inner + linear(inner, rank + 2 * n, False) + linear(rank, inner) + inner * n + inner
    return linear(d, 2 * inner, False) + directions * direction + linear(inner, d, False)


def mamba2_formula(d: int, n: int = 64, k: int = 4, directions: int = 2) -> int:
    inner = 2 * d
    head_dim = next(h for h in (64, 32, 16, 8) if inner % h == 0)
    heads, conv_dim = inner // head_dim, inner + 2 * n
    direction = conv_dim * k + conv_dim + 3 * heads  # depthwise conv, dt_bias, A_log, D
    return linear(d, inner + conv_dim + heads, False) + directions * direction + inner + linear(inner, d, False)


def mixer_formula(cfg, layer: int, qkv_bias: bool) -> int:
    """Block ``layer``'s mixer: attention (qkv + proj) or a Mamba mixer with one set per scan direction."""
    d, mixer = cfg["width"], cfg.get("mixer", "bimamba")
    if is_attention_block(mixer, layer, cfg.get("attention_every", 0)):
        return linear(d, 3 * d, qkv_bias) + linear(d, d)
    directions = num_directions(cfg.get("scan_order", "bidirectional"))
    return (mamba2_formula if mixer == "mamba2" else bimamba_formula)(d, directions=directions)


def token_stem(cfg, time_mlp_hidden) -> int:
    d, p, c = cfg["width"], cfg["patch_size"], cfg["in_channels"]
    extras = 2 if cfg["num_classes"] else 1
    total = c * p * p * d + d + (extras + (cfg["image_size"] // p) ** 2) * d
    if time_mlp_hidden:
        total += linear(d, time_mlp_hidden) + linear(time_mlp_hidden, d)
    if cfg["num_classes"]:
        total += (cfg["num_classes"] + (cfg["class_dropout_prob"] > 0)) * d
    return total


def dis_formula(cfg) -> int:
    d, p, c, depth = cfg["width"], cfg["patch_size"], cfg["in_channels"], cfg["depth"]
    out = 2 * c if cfg["learn_sigma"] else c
    blocks = sum(mixer_formula(cfg, i, qkv_bias=True) + d for i in range(2 * (depth // 2) + 1))
    blocks += (depth // 2) * linear(2 * d, d)
    head = d + linear(d, p * p * out) + (linear(d, 2 * d) if cfg["num_classes"] else 0)
    return token_stem(cfg, 4 * d) + blocks + head


def uvit_formula(cfg) -> int:
    d, p, c, depth = cfg["width"], cfg["patch_size"], cfg["in_channels"], cfg["depth"]
    out = 2 * c if cfg["learn_sigma"] else c
    hidden = int(d * cfg["mlp_ratio"])
    blocks = sum(4 * d + mixer_formula(cfg, i, cfg["qkv_bias"]) + linear(d, hidden) + linear(hidden, d)
                 for i in range(2 * (depth // 2) + 1))
    blocks += (depth // 2) * linear(2 * d, d)
    head = 2 * d + linear(d, p * p * out) + (out * out * 9 + out if cfg["final_conv"] else 0)
    return token_stem(cfg, 4 * d if cfg["mlp_time_embed"] else 0) + blocks + head


FORMULAS = {"dit": dit_formula, "dis": dis_formula, "uvit": uvit_formula}
SETTINGS = [
    dict(image_size=32, in_channels=4, num_classes=1000, learn_sigma=True),
    dict(image_size=16, in_channels=3, num_classes=0, learn_sigma=False),
    dict(image_size=64, in_channels=4, num_classes=10, learn_sigma=True, class_dropout_prob=0.0),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["latent-cond", "pixel-uncond", "no-null-class"])
@pytest.mark.parametrize("name", archbench.list_backbones(["dit_*", "dis_*", "uvit_*"]))
def test_counts_match_closed_form(name, settings):
    cfg = archbench.backbone_config(name, **settings)
    assert count(name, **settings) == FORMULAS[cfg["family"]](cfg)


@pytest.mark.parametrize("options", [dict(scan_order="cross"), dict(scan_order="raster"), dict(attention_every=3),
                                     dict(scan_order="zigzag", attention_every=2), dict(mixer="mamba2"),
                                     dict(mixer="mamba2", scan_order="cross", attention_every=2)])
@pytest.mark.parametrize("name", ["dis_t2", "uvit_bimamba_t2", "dit_bimamba_t2"])
def test_every_axis_counts_as_its_closed_form(name, options):
    cfg = archbench.backbone_config(name, **options)
    assert count(name, **options) == FORMULAS[cfg["family"]](cfg)
