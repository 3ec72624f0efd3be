"""Scan orders are bijections with exact inverses; zigzags are continuous; swapping one axis changes only it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import archbench
from backbones.layers.directions import PadTokens, ScanDirections
from backbones.layers.mamba import BiMamba
from backbones.layers.mamba2 import BiMamba2
from backbones.layers.mixers import build_mixer, check_mixer_options, is_attention_block
from backbones.layers.scan_order import (
    DIM_PAD_TOKENS,
    SCAN_ORDERS,
    ZIGZAG_VARIANTS,
    column_path,
    dim_step,
    inverse_permutation,
    num_directions,
    pad_layout,
    padded_length,
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
    for path, reverse in patch_paths(order, height, width, layer, layers=21):
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
    assert [num_directions(o) for o in SCAN_ORDERS] == [1, 2, 1, 4, 2, 1, 1]
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
        (dict(scan_order="spiral"), "valid scan orders: raster, bidirectional, zigzag, cross, alternate, dim, dim_pad"),
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


# --- fidelity to the official scan orders (issue 20) -------------------------------------------------------

# ZigMa's 8 snakes on a 4x4 grid, written out by hand from their description (grid indices row-major):
# top-left rows, top-left columns, top-right rows, top-right columns, bottom-left rows, bottom-left columns,
# bottom-right rows, bottom-right columns.
ZIGMA_4X4 = [
    [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11, 15, 14, 13, 12],
    [0, 4, 8, 12, 13, 9, 5, 1, 2, 6, 10, 14, 15, 11, 7, 3],
    [3, 2, 1, 0, 4, 5, 6, 7, 11, 10, 9, 8, 12, 13, 14, 15],
    [3, 7, 11, 15, 14, 10, 6, 2, 1, 5, 9, 13, 12, 8, 4, 0],
    [12, 13, 14, 15, 11, 10, 9, 8, 4, 5, 6, 7, 3, 2, 1, 0],
    [12, 8, 4, 0, 1, 5, 9, 13, 14, 10, 6, 2, 3, 7, 11, 15],
    [15, 14, 13, 12, 8, 9, 10, 11, 7, 6, 5, 4, 0, 1, 2, 3],
    [15, 11, 7, 3, 2, 6, 10, 14, 13, 9, 5, 1, 0, 4, 8, 12],
]


def test_zigzag_layers_take_zigmas_snakes_in_zigmas_order():
    """Layer i scans ZigMa's snake i mod 8, so rows and columns alternate from layer to layer.

    Checked against CompVis/zigma: ``utils/utils_zigzag.py::zigzag_path`` builds, for the corners
    (top-left, top-right, bottom-left, bottom-right) in that order, the row snake (``zigzag_path_lr``) then
    the column snake (``zigzag_path_tb``); ``model_zigma.py`` repeats that list ``depth`` times and
    ``dis_mamba/mamba_ssm/modules/mamba_simple.py`` indexes it with ``self.layer_idx``.
    """
    for layer in range(20):
        path = patch_paths("zigzag", 4, 4, layer)
        assert len(path) == 1 and not path[0][1]
        assert path[0][0].tolist() == ZIGMA_4X4[layer % 8], layer
    # a model of depth 4 now scans columns (in layers 1 and 3), not only rows
    first_four = [patch_paths("zigzag", 4, 4, layer)[0][0].tolist() for layer in range(4)]
    assert [abs(p[1] - p[0]) == 4 for p in first_four] == [False, True, False, True]  # first step down/up


def test_dim_cycles_one_direction_per_layer_and_mirrors_it():
    """DiM: row, row reversed, column, column reversed through the first half, mirrored in the second.

    Checked against tyshiwo1/DiM-DiffusionMamba, ``mamba_attn_diff/models/adapter_attn4mamba.py``:
    ``_init_patterns`` lists the four patterns (ids 0, -2, 1, -1: row, row reversed, column, column
    reversed), ``SequenceIndexSet._init_scan_patterns`` steps forward through them up to the middle layer
    and back down after it (first layer and last layer pattern 0, ``encoder_start_blk_id=1`` in every
    config), and ``forward_fast`` / ``concat_template`` transform only the patch tokens, keeping the
    time/label tokens in front.
    """
    row, column = list(range(6)), [0, 3, 1, 4, 2, 5]  # a 2 x 3 grid
    cycle = {0: row, 1: row[::-1], 2: column, 3: column[::-1]}
    schedules = {
        9: [0, 1, 2, 3, 0, 3, 2, 1, 0],
        5: [0, 1, 2, 1, 0],  # dis_t2: 5 blocks
        4: [0, 1, 1, 0],  # an even stack: the middle step is repeated
        1: [0],
        25: [0, 1, 2, 3] * 3 + [0] + [3, 2, 1, 0] * 3,
    }
    for layers, steps in schedules.items():
        assert [dim_step(layer, layers) for layer in range(layers)] == steps
        for layer, step in enumerate(steps):
            directions = patch_paths("dim", 2, 3, layer, layers=layers)
            assert [(p.tolist(), r) for p, r in directions] == [(cycle[step], False)]
    # reversed patches, time/label tokens still in front
    (path, reverse), = patch_paths("dim", 2, 3, 1, layers=9)
    assert sequence_permutation(path, 2, reverse).tolist() == [0, 1, 7, 6, 5, 4, 3, 2]
    with pytest.raises(ValueError, match="pass layers="):
        patch_paths("dim", 2, 3, 0)


def test_dim_pad_tokens_end_every_row_and_column():
    """DiM's ``use_pad_token``: pads after every row, pad rows below the grid, split pads after the extras.

    Checked against ``adapter_attn4mamba.py``: ``lateral_token_pad`` appends the ``pad`` tokens to every row
    and then ``pad`` rows, row ``k`` filled with pad token ``k``; ``concat_template`` puts the
    ``pad_token_dec_split`` tokens between the time/label tokens and the patches.
    """
    pads = PadTokens(1, (2, 2), extras=1, pad=2)
    with torch.no_grad():
        pads.split.copy_(torch.tensor([[100.0], [101.0]]))
        pads.lateral.copy_(torch.tensor([[200.0], [201.0]]))
    tokens = torch.arange(5.0).view(1, 5, 1)  # one time token (0), then patches 1-4 of a 2 x 2 grid
    padded = pads.insert(tokens)
    grid = [1, 2, 200, 201,
            3, 4, 200, 201,
            200, 200, 200, 200,
            201, 201, 201, 201]
    assert padded.view(-1).tolist() == [0, 100, 101, *grid]
    assert padded.shape[1] == padded_length(2, 2, 1, 2)
    assert torch.equal(pads.remove(padded), tokens)
    # a column scan of the padded grid ends every column with the pad rows
    columns = padded[0, 3:, 0][column_path(4, 4)].view(4, 4)  # row c: column c, top to bottom
    assert columns[:, 2:].tolist() == [[200, 201]] * 4
    source, keep = pad_layout(2, 2, 0, 1)  # no extras: no split pads
    assert source.tolist() == [0, 1, 4, 2, 3, 4, 4, 4, 4] and keep.tolist() == [0, 1, 3, 4]


@pytest.mark.parametrize("mixer_cls", [BiMamba, BiMamba2])
def test_a_padded_mixer_is_the_plain_mixer_on_the_padded_sequence(mixer_cls):
    torch.manual_seed(0)
    pads = PadTokens(16, (2, 3), extras=2, pad=2)
    length = padded_length(2, 3, 2, 2)
    perm = sequence_permutation(patch_paths("dim", 4, 5, 2, layers=5)[0][0], 4, False)  # a column scan
    padded_mixer = _perturbed(mixer_cls(16, scan="reference", directions=[perm], padding=pads))
    plain = mixer_cls(16, scan="reference", directions=[torch.arange(length)])
    plain.load_state_dict({k: v for k, v in padded_mixer.state_dict().items() if not k.startswith("padding.")})
    h = torch.randn(2, 2 + 6, 16)
    with torch.no_grad():
        sequence = pads.insert(h)
        expected = pads.remove(plain(sequence[:, perm])[:, inverse_permutation(perm)])
        assert torch.allclose(padded_mixer(h), expected, atol=1e-6)


def test_dim_models_scan_one_direction_per_layer():
    dis = archbench.build("dis_t2", scan_order="dim")
    mixers = [b.mixer for b in (*dis.in_blocks, dis.mid_block, *dis.out_blocks)]
    raster = torch.arange(256)
    expected = [raster, raster.flip(0), column_path(16, 16), raster.flip(0), raster]
    for mixer, path in zip(mixers, expected, strict=True):
        assert mixer.suffixes == ("",)
        perm = sequence_permutation(path, 2, False)
        got = mixer.directions.reorder(torch.arange(258), 0)
        assert torch.equal(got, perm)
    padded = archbench.build("dis_t2", scan_order="dim_pad", mixer="mamba2")
    assert padded.mid_block.mixer.padding.source.numel() == padded_length(16, 16, 2, DIM_PAD_TOKENS)
    dit = archbench.build("dit_t2", mixer="bimamba", scan_order="dim")  # isotropic: 4 layers, 0 1 1 0
    kinds = [block.attn.directions.kinds[0] for block in dit.blocks]
    assert kinds == ["identity", "flip", "flip", "identity"]
    with pytest.raises(ValueError, match="pass layers="):
        build_mixer("bimamba", 16, layer=0, grid=(2, 2), extras=1, num_heads=2, scan_order="dim")


def test_alternate_is_two_directions_whose_axis_alternates():
    for layer in range(4):
        (path, r0), (same, r1) = patch_paths("alternate", 2, 3, layer)
        assert torch.equal(path, same) and (r0, r1) == (False, True)
        assert path.tolist() == ([0, 1, 2, 3, 4, 5] if layer % 2 == 0 else [0, 3, 1, 4, 2, 5])
