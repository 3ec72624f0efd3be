"""Scan orders are bijections with exact inverses; zigzags are continuous; swapping one axis changes only it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import archbench
from backbones.layers.directions import ScanDirections
from backbones.layers.mamba import BiMamba
from backbones.layers.mamba2 import BiMamba2
from backbones.layers.mixers import build_mixer, check_mixer_options, is_attention_block
from backbones.layers.scan_order import (
    SCAN_ORDERS,
    ZIGZAG_VARIANTS,
    inverse_permutation,
    num_directions,
    patch_paths,
    sequence_permutation,
    snake_path,
)

grids = st.tuples(st.integers(1, 7), st.integers(1, 7))


@given(grids, st.sampled_from(SCAN_ORDERS), st.integers(0, 20), st.integers(0, 2))
def test_every_direction_is_a_bijection_with_an_exact_inverse(grid, order, layer, extras):
    height, width = grid
    n = extras + height * width
    tokens = torch.randn(3, n, 5)
    for path, reverse in patch_paths(order, height, width, layer):
        assert sorted(path.tolist()) == list(range(height * width))
        perm = sequence_permutation(path, extras, reverse)
        assert sorted(perm.tolist()) == list(range(n))
        restored = tokens[:, perm][:, inverse_permutation(perm)]
        assert torch.equal(restored, tokens)
        if not reverse:  # time/label tokens keep their place in front, as in DiS
            assert perm[:extras].tolist() == list(range(extras))
        else:
            assert perm[n - extras:].tolist() == list(range(extras))[::-1]


@given(grids)
def test_the_eight_zigzags_are_continuous_and_distinct(grid):
    height, width = grid
    seen = set()
    for variant in range(ZIGZAG_VARIANTS):
        path = snake_path(height, width, variant).tolist()
        rows, cols = [p // width for p in path], [p % width for p in path]
        for i in range(len(path) - 1):
            assert abs(rows[i] - rows[i + 1]) + abs(cols[i] - cols[i + 1]) == 1, (variant, path)
        seen.add(tuple(path))
    if height > 1 and width > 1:
        assert len(seen) == ZIGZAG_VARIANTS


def test_orders_have_the_documented_directions():
    assert [num_directions(o) for o in SCAN_ORDERS] == [1, 2, 1, 4, 2]
    zigzag = [patch_paths("zigzag", 4, 4, layer)[0][0].tolist() for layer in range(9)]
    assert zigzag[0] == zigzag[8] and len({tuple(p) for p in zigzag[:8]}) == 8  # cycled over layers
    even, odd = patch_paths("alternate", 2, 3, 0), patch_paths("alternate", 2, 3, 1)
    assert even[0][0].tolist() == [0, 1, 2, 3, 4, 5] and odd[0][0].tolist() == [0, 3, 1, 4, 2, 5]
    cross = patch_paths("cross", 2, 3, 0)
    assert [r for _, r in cross] == [False, False, True, True]


def _perturbed(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


@pytest.mark.parametrize("mixer_cls", [BiMamba, BiMamba2])
def test_a_permuted_direction_is_the_plain_mixer_on_permuted_tokens(mixer_cls):
    torch.manual_seed(0)
    perm = sequence_permutation(snake_path(3, 4, 5), 2, False)
    permuted = _perturbed(mixer_cls(16, scan="reference", directions=[perm]))
    plain = mixer_cls(16, scan="reference", directions=[torch.arange(perm.numel())])
    plain.load_state_dict(permuted.state_dict())
    h = torch.randn(2, perm.numel(), 16)
    with torch.no_grad():
        expected = plain(h[:, perm])[:, inverse_permutation(perm)]
        assert torch.allclose(permuted(h), expected, atol=1e-6)


def test_raster_with_one_direction_is_one_mamba_direction_on_the_raster_sequence():
    torch.manual_seed(0)
    mixer = _perturbed(BiMamba(16, scan="reference", directions=[torch.arange(7)]))
    assert mixer.suffixes == ("",) and not hasattr(mixer, "A_b_log")
    h = torch.randn(2, 7, 16)
    with torch.no_grad():
        x, z = mixer.in_proj(h).transpose(1, 2).chunk(2, dim=1)
        single = mixer.out_proj(mixer.scan_direction(x, z).transpose(1, 2))
        assert torch.equal(mixer(h), single)


def test_the_bidirectional_order_is_today_s_dis_bit_for_bit():
    torch.manual_seed(0)
    default = archbench.build("dis_t2").eval()
    torch.manual_seed(0)
    explicit = archbench.build("dis_t2", scan_order="bidirectional", mixer="bimamba").eval()
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 900]), torch.tensor([1, 2])
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values(),
                                                strict=True))
    with torch.no_grad():
        assert torch.equal(default(x, t, y), explicit(x, t, y))


def test_changing_the_scan_order_changes_only_the_order():
    """Same parameter names and shapes for orders with the same direction count; different outputs."""
    torch.manual_seed(0)
    bidirectional = _perturbed(archbench.build("dis_t2")).eval()
    alternate = archbench.build("dis_t2", scan_order="alternate").eval()
    assert {k: v.shape for k, v in bidirectional.state_dict().items()} == {
        k: v.shape for k, v in alternate.state_dict().items()}
    alternate.load_state_dict(bidirectional.state_dict())
    h = torch.randn(1, 2 + 256, 64)
    with torch.no_grad():  # layer 0 of "alternate" scans row-major both ways, as DiS; layer 1 column-major
        assert torch.equal(bidirectional.in_blocks[0].mixer(h), alternate.in_blocks[0].mixer(h))
        assert not torch.allclose(bidirectional.in_blocks[1].mixer(h), alternate.in_blocks[1].mixer(h), atol=1e-3)
        x, t, y = torch.randn(1, 3, 32, 32), torch.tensor([5]), torch.tensor([1])
        assert not torch.allclose(bidirectional(x, t, y), alternate(x, t, y), atol=1e-3)


def test_hybrids_put_attention_in_every_kth_block():
    assert [is_attention_block("bimamba", i, 2) for i in range(5)] == [False, True, False, True, False]
    dis = archbench.build("dis_hybrid_t2")
    blocks = [*dis.in_blocks, dis.mid_block, *dis.out_blocks]
    assert [type(b.mixer).__name__ for b in blocks] == ["BiMamba", "Attention", "BiMamba", "Attention", "BiMamba"]
    uvit = archbench.build("uvit_t2", mixer="mamba2", attention_every=3)
    blocks = [*uvit.in_blocks, uvit.mid_block, *uvit.out_blocks]
    assert [type(b.mixer).__name__ for b in blocks] == ["BiMamba2", "BiMamba2", "Attention", "BiMamba2", "BiMamba2"]
    dit = archbench.build("dit_bimamba_t2", attention_every=2)
    assert [type(b.attn).__name__ for b in dit.blocks] == ["BiMamba", "Attention", "BiMamba", "Attention"]


def test_skeleton_swap_keeps_the_skeleton():
    dit = archbench.build("dit_t2", mixer="bimamba", scan_order="zigzag")
    assert type(dit.blocks[0].attn).__name__ == "BiMamba" and hasattr(dit.blocks[0], "adaLN_modulation")
    uvit = archbench.build("uvit_s2", mixer="mamba2", scan_order="zigzag", image_size=16)
    assert type(uvit.mid_block.mixer).__name__ == "BiMamba2" and uvit.mid_block.mixer.suffixes == ("",)
    default = archbench.build("dit_t2")
    assert type(default.blocks[0].attn).__name__ == "Attention"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (dict(mixer="conv"), "valid mixers are attention, bimamba, mamba2"),
        (dict(scan_order="spiral"), "valid scan orders: raster, bidirectional, zigzag, cross, alternate"),
        (dict(attention_every=-1), "attention_every must be 0"),
        (dict(mixer="attention", attention_every=2), "use it with mixer=bimamba or mamba2"),
    ],
)
def test_bad_axis_options_are_named(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_mixer_options(options.get("mixer", "bimamba"), options.get("scan_order", "bidirectional"),
                            options.get("attention_every", 0))
    with pytest.raises(ValueError, match=fragment.split(":")[0].split("(")[0]):
        archbench.build("uvit_t2", **{"mixer": "bimamba", **options})


def test_dis_refuses_an_attention_only_mixer():
    with pytest.raises(ValueError, match="DiS's blocks take an SSM mixer"):
        archbench.build("dis_t2", mixer="attention")


def test_directions_limit():
    with pytest.raises(ValueError, match="1 to 4 scan directions"):
        ScanDirections([torch.arange(3)] * 5)
    mixer = build_mixer("mamba2", 16, layer=0, grid=(2, 2), extras=1, num_heads=2, scan_order="cross")
    assert mixer.suffixes == ("", "_b", "_c", "_d") and "order1" not in mixer.state_dict()
