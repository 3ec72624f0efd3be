"""The FLOP counter: hand-computed handler cases, every tiny backbone fully priced, DiT paper numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import TINY_BACKBONES, TINY_VARIANTS

import archbench
from archbench.measure import flops
from archbench.measure.flops import backbone_flops, count_flops, sdpa_macs, suspicious_unsupported, thop_style_macs
from backbones.layers import Attention
from backbones.ssm import selective_scan

TINY = TINY_BACKBONES + TINY_VARIANTS
# Words that must never appear among the ops a count silently skipped.
MATMUL_WORDS = ("attention", "scan", "ssd", "matmul", "mm", "bmm", "linear", "addmm", "einsum", "conv")


@pytest.fixture(scope="module")
def tiny_rows() -> dict[str, dict]:
    return {name: backbone_flops(name) for name in TINY}


def test_linear_is_one_mac_per_multiply_add():
    layer = nn.Linear(16, 32)
    report = count_flops(layer, (torch.randn(1, 10, 16),))
    assert report.macs == 10 * 16 * 32
    assert report.gflops == pytest.approx(2 * report.gmacs)
    assert report.unsupported == {}


@pytest.mark.parametrize("upcast", [False, True])
def test_attention_layer_counts_projections_and_sdpa(upcast):
    batch, tokens, dim, heads = 2, 10, 32, 4
    layer = Attention(dim, heads, qkv_bias=True, upcast=upcast)
    report = count_flops(layer, (torch.randn(batch, tokens, dim),))
    qkv = batch * tokens * dim * 3 * dim
    scores_and_values = batch * heads * tokens * tokens * (dim // heads) * 2
    proj = batch * tokens * dim * dim
    assert report.by_operator == {"linear": qkv + proj, "scaled_dot_product_attention": scores_and_values}
    assert report.macs == qkv + scores_and_values + proj
    assert report.unsupported == {}


def test_sdpa_macs_with_different_value_width():
    assert sdpa_macs([2, 3, 5, 8], [2, 3, 7, 8], [2, 3, 7, 4]) == 2 * 3 * 5 * 7 * (8 + 4)


class _Scan(nn.Module):
    def forward(self, u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True, impl="fast")


def test_selective_scan_of_known_size():
    batch, d_inner, length, n = 2, 8, 12, 4
    inputs = (
        torch.randn(batch, d_inner, length),
        torch.randn(batch, d_inner, length),
        -torch.rand(d_inner, n),
        torch.randn(batch, n, length),
        torch.randn(batch, n, length),
        torch.ones(d_inner),
        torch.randn(batch, d_inner, length),
        torch.zeros(d_inner),
    )
    report = count_flops(_Scan(), inputs)
    # 4 MACs per state element (delta*A, (delta*u)*B, state update, C.h) + delta*u per channel and token;
    # the D skip and the silu(z) gate are elementwise and not counted.
    expected = batch * d_inner * length * (4 * n + 1)
    assert report.by_operator == {"selective_scan": expected}
    assert report.macs == expected
    assert report.unsupported == {}


def test_scan_functions_are_restored_after_counting():
    originals = {fn: fn.__dict__["forward"] for fn in flops._scan_functions()}
    assert originals, "no scan autograd Function found in backbones.ssm"
    backbone_flops("dis_t2")
    assert {fn: fn.__dict__["forward"] for fn in originals} == originals


@pytest.mark.parametrize("name", TINY)
def test_nothing_significant_is_skipped(tiny_rows, name):
    row = tiny_rows[name]
    skipped = [op for op in row["unsupported"] if any(word in op.lower() for word in MATMUL_WORDS)]
    assert skipped == []
    assert suspicious_unsupported(flops.FlopReport(0, {}, row["unsupported"])) == []
    if row["family"] == "dis" and "linear_attention" not in name:  # a DiS skeleton with an SSM mixer scans
        assert row["by_operator"].get("selective_scan", 0) + row["by_operator"].get("ssd_scan", 0) > 0
    if row["family"] in ("dit", "uvit") and "bimamba" not in name:
        assert row["by_operator"]["scaled_dot_product_attention"] > 0


@pytest.mark.parametrize("name", TINY)
def test_params_match_the_built_model(tiny_rows, name):
    model = archbench.build(name)
    assert tiny_rows[name]["params"] == sum(p.numel() for p in model.parameters())
    assert tiny_rows[name]["gflops"] == pytest.approx(2 * tiny_rows[name]["gmacs"])


@pytest.mark.parametrize("name", ["dit_t2", "dis_t2"])
def test_zero_weight_build_counts_like_a_real_build(tiny_rows, name):
    model = archbench.build(name).eval()
    real = count_flops(model, flops.example_inputs(model))
    assert real.macs == tiny_rows[name]["macs"]


def test_count_does_not_depend_on_scan_implementation(tiny_rows):
    assert backbone_flops("dis_t2", scan="reference")["macs"] == tiny_rows["dis_t2"]["macs"]


def test_overrides_change_the_count():
    small = backbone_flops("dit_t2", image_size=16)
    assert small["tokens"] == 64
    assert small["image_size"] == 16


def test_thop_style_misses_the_mamba_mixers(tiny_rows):
    dis = tiny_rows["dis_t2"]
    assert 0 < dis["thop_x2_gflops"] / 2 < dis["gmacs"] - dis["by_operator"]["selective_scan"] / 1e9
    dit = tiny_rows["dit_t2"]
    layers = dit["by_operator"]["linear"] + dit["by_operator"]["conv"]
    assert dit["thop_x2_gflops"] == pytest.approx(2 * layers / 1e9)
    model = nn.Linear(4, 4)
    assert thop_style_macs(model, count_flops(model, (torch.randn(3, 4),))) == 3 * 16


# DiT paper (32x32x4 latents, 1000 classes, learned sigma): GMACs (fvcore convention) and parameters.
PAPER_SETTING = {"image_size": 32, "in_channels": 4, "num_classes": 1000, "learn_sigma": True}
DIT_FAST = {"dit_s2": (6.06, 32_963_360), "dit_xl2": (118.64, 675_129_632)}
DIT_SLOW = {"dit_b2": 23.01, "dit_l2": 80.71, "dit_xl4": 29.05, "dit_xl8": 7.39}


@pytest.mark.parametrize("name", DIT_FAST)
def test_dit_paper_numbers(name):
    gmacs, params = DIT_FAST[name]
    row = backbone_flops(name, **PAPER_SETTING)
    assert row["gmacs"] == pytest.approx(gmacs, rel=0.005)
    assert row["params"] == params
    assert row["unsupported"] == {}


@pytest.mark.slow
@pytest.mark.parametrize("name", DIT_SLOW)
def test_dit_paper_numbers_other_sizes(name):
    assert backbone_flops(name, **PAPER_SETTING)["gmacs"] == pytest.approx(DIT_SLOW[name], rel=0.005)


def test_ssd_scan_is_counted_at_its_chunked_cost():
    from backbones.ssm import ssd_scan_macs

    row = backbone_flops("dis_mamba2_t2")
    # 5 blocks x 2 directions; 2 + 256 tokens; 128 inner channels = 2 heads of 64; state 64, one group
    assert row["by_operator"]["ssd_scan"] == 10 * ssd_scan_macs(1, 258, 2, 64, 64, 1, 64, has_z=False, has_D=False)
    assert "selective_scan" not in row["by_operator"]


def test_scan_order_permutations_cost_nothing():
    base = backbone_flops("dis_t2")
    alternate = backbone_flops("dis_t2", scan_order="alternate")  # same directions, permuted: same MACs
    assert alternate["macs"] == base["macs"]
    cross = backbone_flops("dis_cross_t2")  # twice the directions: twice the scans
    assert cross["by_operator"]["selective_scan"] == 2 * base["by_operator"]["selective_scan"]


def test_dim_padding_tokens_are_priced_at_the_padded_length():
    """DiM's pads lengthen what every SSM mixer projects, convolves and scans; out_proj sees only real tokens."""
    from backbones.layers.scan_order import DIM_PAD_TOKENS, padded_length
    from backbones.ssm import selective_scan_macs
    from backbones.ssm.causal_conv import causal_conv1d_macs

    plain, padded = backbone_flops("dis_t2", scan_order="dim"), backbone_flops("dis_t2", scan_order="dim_pad")
    length, long = 2 + 256, padded_length(16, 16, 2, DIM_PAD_TOKENS)
    assert (plain["tokens"], padded["tokens"]) == (length, long) == (258, 2 + 4 + 20 * 20)
    mixers, width, inner, state, rank = 5, 64, 128, 16, 4  # dis_t2: 5 blocks, one scan direction each
    assert padded["by_operator"]["selective_scan"] == mixers * selective_scan_macs(1, inner, long, state, False, False)
    per_token = width * 2 * inner + inner * (rank + 2 * state) + rank * inner  # in_proj, x_proj, dt_proj
    assert padded["by_operator"]["linear"] - plain["by_operator"]["linear"] == mixers * (long - length) * per_token
    conv = causal_conv1d_macs(1, long, inner, 4) - causal_conv1d_macs(1, length, inner, 4)
    assert padded["by_operator"]["conv"] - plain["by_operator"]["conv"] == mixers * conv
    assert padded["unsupported"] == {}
