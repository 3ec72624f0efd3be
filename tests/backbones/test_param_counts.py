"""Parameter-count parity with the official implementations.

The published counts pin the flagship configurations; for every other size a
closed-form count, written from the architecture description layer by layer,
must agree with the built model.  Large models are built on the meta device.
The closed-form test runs over every backbone the project registers (as timm's tests run over its
registry), so a new family or name without a closed form fails instead of going unchecked.
"""

import math

import pytest
import torch
import torch.nn as nn

import archbench
from backbones import registry
from backbones.layers.mixers import is_attention_block
from backbones.layers.scan_order import DIM_PAD_TOKENS, num_directions


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
    mlp_and_ada = linear(d, hidden) + linear(hidden, d) + linear(d, 6 * d)
    blocks = sum(mixer_formula(cfg, i, qkv_bias=True, extras=0) + mlp_and_ada for i in range(cfg["depth"]))
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


def mixer_formula(cfg, layer: int, qkv_bias: bool, extras: int = 1) -> int:
    """Block ``layer``'s mixer: attention or linear attention (qkv + proj) or a Mamba mixer with one set per scan
    direction, plus, for ``dim_pad``, DiM's pad tokens (``pad`` lateral ones, and ``pad`` split ones behind extras)."""
    d, mixer = cfg["width"], cfg.get("mixer", "bimamba")
    if is_attention_block(mixer, layer, cfg.get("attention_every", 0)) or mixer == "linear_attention":
        return linear(d, 3 * d, qkv_bias) + linear(d, d)
    order = cfg.get("scan_order", "bidirectional")
    pads = DIM_PAD_TOKENS * d * (1 + (extras > 0)) if order == "dim_pad" else 0
    state = {} if cfg.get("state_size") is None else {"n": cfg["state_size"]}
    formula = mamba2_formula if mixer == "mamba2" else bimamba_formula
    return formula(d, directions=num_directions(order), **state) + pads


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


def hourglass_formula(cfg) -> int:
    """Stem and head as DiT's at level 0's width; per level, DiT blocks (conditioned at level 0's width) before the
    merge and after the split (the innermost level once); a merge is 4*w_i x w_{i+1}, a split that back plus
    its skip weight."""
    widths, depths = list(cfg["widths"]), list(cfg["depths"])
    d0, p, c, levels = widths[0], cfg["patch_size"], cfg["in_channels"], len(widths)
    out = 2 * c if cfg["learn_sigma"] else c
    total = c * p * p * d0 + d0 + (cfg["image_size"] // p) ** 2 * d0 + linear(256, d0) + linear(d0, d0)
    if cfg["num_classes"]:
        total += (cfg["num_classes"] + (cfg["class_dropout_prob"] > 0)) * d0

    def option(key: str, level: int):
        value = cfg[key]
        return value[level] if isinstance(value, (list, tuple)) else value

    for level, (d, depth) in enumerate(zip(widths, depths, strict=True)):
        blocks = depth if level == levels - 1 else 2 * depth
        level_cfg = {**cfg, "width": d, **{k: option(k, level) for k in ("mixer", "scan_order", "state_size")}}
        hidden = int(d * cfg["mlp_ratio"])
        total += sum(mixer_formula(level_cfg, i, qkv_bias=True, extras=0) for i in range(blocks))
        total += blocks * (linear(d, hidden) + linear(hidden, d) + linear(d0, 6 * d))
        if level < levels - 1:
            total += 2 * 4 * d * widths[level + 1] + 1
    return total + linear(d0, 2 * d0) + linear(d0, p * p * out)


def conv(i: int, o: int, k: int = 3) -> int:
    return i * o * k * k + o


def unet_formula(cfg) -> int:
    """DDPM / ADM U-Net: stem, res(+attention) blocks per level, resampling, middle, up path with skips, head."""
    base, mults, blocks = cfg["base_channels"], list(cfg["channel_mult"]), cfg["num_res_blocks"]
    emb, c = 4 * base, cfg["in_channels"]
    out = 2 * c if cfg["learn_sigma"] else c
    attention_levels = {lvl for lvl in range(len(mults)) if cfg["image_size"] >> lvl in cfg["attention_resolutions"]}

    def res(cin: int, cout: int) -> int:  # norm1, conv1, embedding projection, norm2, conv2, 1x1 shortcut
        film = 2 * cout if cfg["scale_shift_norm"] else cout
        return 2 * cin + conv(cin, cout) + linear(emb, film) + 2 * cout + conv(cout, cout) + (
            conv(cin, cout, 1) if cin != cout else 0)

    def attention(ch: int) -> int:  # norm, fused qkv (1x1), output projection (1x1)
        return 2 * ch + linear(ch, 3 * ch) + linear(ch, ch)

    def resample(ch: int) -> int:  # ADM's resblock_updown, or a 3x3 conv (conv_resample), or parameter-free
        return res(ch, ch) if cfg["resblock_updown"] else conv(ch, ch) if cfg["conv_resample"] else 0

    total = linear(base, emb) + linear(emb, emb) + conv(c, base)
    if cfg["num_classes"]:
        total += (cfg["num_classes"] + (cfg["class_dropout_prob"] > 0)) * emb
    ch, skips = base, [base]
    for level, mult in enumerate(mults):
        for _ in range(blocks):
            total += res(ch, base * mult) + (attention(base * mult) if level in attention_levels else 0)
            ch = base * mult
            skips.append(ch)
        if level != len(mults) - 1:
            total += resample(ch)
            skips.append(ch)
    total += 2 * res(ch, ch) + attention(ch)
    for level, mult in reversed(list(enumerate(mults))):
        for i in range(blocks + 1):
            total += res(ch + skips.pop(), base * mult) + (attention(base * mult) if level in attention_levels else 0)
            ch = base * mult
            if level and i == blocks:
                total += resample(ch)
    return total + 2 * ch + conv(ch, out)


FORMULAS = {"dit": dit_formula, "dis": dis_formula, "uvit": uvit_formula, "unet": unet_formula,
            "hourglass": hourglass_formula}
SETTINGS = [
    dict(image_size=32, in_channels=4, num_classes=1000, learn_sigma=True),
    dict(image_size=16, in_channels=3, num_classes=0, learn_sigma=False),
    dict(image_size=64, in_channels=4, num_classes=10, learn_sigma=True, class_dropout_prob=0.0),
]


def built_in_backbones() -> list[str]:
    """Every name this project registers (third-party entry points excluded: their counts are theirs to test)."""
    names = archbench.list_backbones()
    return [n for n in names if registry.get_spec(n).constructor.__module__.startswith("backbones.")]


def settings_for(name: str, settings: dict) -> dict:
    """A U-Net's attention sits at feature-map sizes of its registered image size, so it keeps that size."""
    if registry.get_spec(name).family == "unet":
        return {k: v for k, v in settings.items() if k != "image_size"}
    return settings


def closed_form(name: str, **settings) -> int:
    """The closed-form count of ``name`` built with ``settings``; a family without a formula is a failure."""
    cfg = archbench.backbone_config(name, **settings)
    formula = FORMULAS.get(cfg["family"])
    assert formula is not None, (
        f"{name}: family {cfg['family']!r} has no closed-form parameter count; add one to FORMULAS")
    return formula(cfg)


@pytest.mark.parametrize("settings", SETTINGS, ids=["latent-cond", "pixel-uncond", "no-null-class"])
@pytest.mark.parametrize("name", built_in_backbones())
def test_counts_match_closed_form(name, settings):
    settings = settings_for(name, settings)
    assert count(name, **settings) == closed_form(name, **settings)


def test_the_closed_form_test_covers_every_family():
    names = built_in_backbones()
    assert {"dis", "dit", "uvit", "unet", "hourglass"} <= {registry.get_spec(n).family for n in names}
    assert {"unet_ddpm", "unet_adm", "unet_t", "dis_t4", "uvit_bimamba_t2"} <= set(names)


def test_a_family_without_a_closed_form_fails():
    """What a new family gets until someone writes its count: a failure, not a skip."""

    @archbench.register_backbone("test_formula_less_t", family="formula_less")
    class FormulaLess(nn.Module):
        def __init__(self, width: int = 4):
            super().__init__()
            self.proj = nn.Linear(width, width)

    try:
        with pytest.raises(AssertionError, match="'formula_less' has no closed-form parameter count"):
            closed_form("test_formula_less_t")
    finally:
        registry.unregister_backbone("test_formula_less_t")


@pytest.mark.parametrize("options", [dict(scan_order="cross"), dict(scan_order="raster"), dict(attention_every=3),
                                     dict(scan_order="zigzag", attention_every=2), dict(mixer="mamba2"),
                                     dict(mixer="mamba2", scan_order="cross", attention_every=2),
                                     dict(scan_order="dim"), dict(scan_order="dim_pad"),
                                     dict(mixer="mamba2", scan_order="dim_pad", attention_every=2),
                                     dict(mixer="linear_attention"), dict(mixer="linear_attention", attention_every=2)])
@pytest.mark.parametrize("name", ["dis_t2", "uvit_bimamba_t2", "dit_bimamba_t2"])
def test_every_axis_counts_as_its_closed_form(name, options):
    cfg = archbench.backbone_config(name, **options)
    assert count(name, **options) == FORMULAS[cfg["family"]](cfg)


@pytest.mark.parametrize("options", [
    dict(mixer="bimamba"), dict(mixer=["bimamba", "attention"], state_size=[8, None]),
    dict(mixer="mamba2", scan_order="zigzag", state_size=32),
    dict(widths=[32, 48, 64], depths=[1, 2, 1], mixer=["linear_attention", "bimamba", "attention"],
         scan_order=["bidirectional", "cross", "bidirectional"], attention_every=2),
    dict(widths=[64], depths=[3]),
])
def test_every_hourglass_level_option_counts_as_its_closed_form(options):
    cfg = archbench.backbone_config("hourglass_t2", **options)
    assert count("hourglass_t2", **options) == hourglass_formula(cfg)
