"""The hourglass skeleton: merge/split layout, levels at the token counts they claim, per-level options, the lerp
skip, its degeneration to DiT at one level, FLOPs of merges and splits, and the one-line refusals."""

from __future__ import annotations

import pytest
import torch

import archbench
from archbench.measure.flops import count_flops, example_inputs
from backbones.layers import Attention, LinearAttention
from backbones.layers.mamba import BiMamba
from backbones.layers.mamba2 import BiMamba2
from backbones.layers.token_merge import TokenMerge, TokenSplit, merge_layout, split_layout


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """adaLN-Zero starts every block and the head at zero; random weights make every path visible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()


def test_merge_puts_each_2x2_block_of_neighbours_in_one_token_and_split_undoes_it():
    h, w = 4, 6
    index = torch.arange(h * w, dtype=torch.float32).view(1, h * w, 1)
    merged = merge_layout(index, (h, w))
    assert merged.shape == (1, 6, 4)
    # token (row r, col c) of the merged 2x3 grid holds tokens (2r, 2c), (2r, 2c+1), (2r+1, 2c), (2r+1, 2c+1)
    for r in range(2):
        for c in range(3):
            top_left = 2 * r * w + 2 * c
            assert merged[0, r * 3 + c].tolist() == [top_left, top_left + 1, top_left + w, top_left + w + 1]
    features = torch.randn(2, h * w, 5)
    assert torch.equal(split_layout(merge_layout(features, (h, w)), (h, w)), features)


def test_merge_and_split_are_the_linears_they_claim_and_the_skip_interpolates():
    merge, split = TokenMerge(3, 7), TokenSplit(7, 3)
    tokens = torch.randn(2, 16, 3)
    merged = merge(tokens, (4, 4))
    assert torch.allclose(merged, merge_layout(tokens, (4, 4)) @ merge.proj.weight.T)
    skip = torch.randn(2, 16, 3)
    assert split.skip_weight.item() == 0.5
    projected = split_layout(merged @ split.proj.weight.T, (4, 4))
    assert torch.allclose(split(merged, skip, (4, 4)), 0.5 * skip + 0.5 * projected, atol=1e-6)
    with torch.no_grad():
        split.skip_weight.fill_(0.0)
    assert torch.equal(split(merged, skip, (4, 4)), skip)


def test_each_level_runs_at_its_token_count_and_width():
    model = archbench.build("hourglass_t2", image_size=32, widths=[16, 24, 32], depths=[1, 1, 2])
    seen: dict[str, tuple[int, ...]] = {}
    def record(name: str):
        def hook(module, args, output) -> None:
            seen[name] = tuple(args[0].shape)
        return hook

    for name, module in model.named_modules():
        if name.endswith(".attn"):
            module.register_forward_hook(record(name))
    model(*example_inputs(model, batch=2))
    # 16x16 patches at level 0, 8x8 at level 1, 4x4 in the middle; and back up
    assert seen["down.0.0.attn"] == (2, 256, 16) and seen["up.0.0.attn"] == (2, 256, 16)
    assert seen["down.1.0.attn"] == (2, 64, 24) and seen["up.1.0.attn"] == (2, 64, 24)
    assert seen["middle.0.attn"] == seen["middle.1.attn"] == (2, 16, 32)


def test_per_level_mixers_scan_orders_and_state_sizes_are_built_as_asked():
    model = archbench.build(
        "hourglass_t2", image_size=16, widths=[16, 16, 32], depths=[1, 1, 1],
        mixer=["bimamba", "mamba2", "attention"], state_size=[4, 32, None], scan_order=["zigzag", "bidirectional",
                                                                                       "bidirectional"],
    )
    outer, inner, middle = model.down[0][0].attn, model.down[1][0].attn, model.middle[0].attn
    assert isinstance(outer, BiMamba) and isinstance(inner, BiMamba2) and isinstance(middle, Attention)
    assert outer.d_state == 4 and inner.d_state == 32 and getattr(middle, "d_state", None) is None
    assert outer.directions.kinds == ["perm"]  # ZigMa's one snake per layer, on level 0's 8x8 grid
    assert outer.directions.order0.numel() == 64
    linear = archbench.build("hourglass_t2", mixer="linear_attention")
    assert all(isinstance(b.attn, LinearAttention) for b in [*linear.down[0], *linear.middle, *linear.up[0]])


def test_the_skip_and_every_level_reach_the_output():
    model = randomise(archbench.build("hourglass_t2", image_size=16, in_channels=1))
    inputs = example_inputs(model, batch=2)
    base = model(*inputs)
    for parameter in (model.splits[0].skip_weight, model.middle[0].attn.qkv.weight, model.merges[0].proj.weight):
        with torch.no_grad():
            parameter.add_(0.5)
        assert not torch.allclose(model(*inputs), base)
        with torch.no_grad():
            parameter.sub_(0.5)


def test_one_level_is_dit_exactly():
    """With a single level there is nothing to merge: the skeleton is DiT's, weight for weight."""
    dit = randomise(archbench.build("dit_t2", image_size=16, in_channels=1, depth=3, width=48, num_heads=3))
    hourglass = archbench.build("hourglass_t2", image_size=16, in_channels=1, widths=[48], depths=[3], num_heads=3)
    state = {key.replace("blocks.", "middle.", 1): value for key, value in dit.state_dict().items()}
    hourglass.load_state_dict(state)
    inputs = example_inputs(dit, batch=3)
    assert torch.equal(hourglass.eval()(*inputs), dit(*inputs))


def test_flop_counter_counts_merges_and_splits_as_linears():
    model = archbench.build("hourglass_t2", image_size=32).eval()  # 16x16 patches, 48 wide -> 8x8, 96 wide
    report = count_flops(model, example_inputs(model))
    assert sum(report.by_module["merges.0"].values()) == 64 * (4 * 48) * 96
    assert sum(report.by_module["splits.0"].values()) == 64 * 96 * (4 * 48)
    assert report.unsupported == {}  # the skip's lerp is elementwise, priced at zero on purpose


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(image_size=16, patch_size=4, widths=[8, 8, 8, 8], depths=[1, 1, 1, 1]), "4x4 patch grid 3 times"),
    (dict(widths=[16, 32], depths=[1]), "one entry per level"),
    (dict(mixer=["bimamba"]), "one value per level"),
    (dict(widths=[16, 0]), "positive integers"),
    (dict(attention_every=2), "attention_every puts attention between blocks of another mixer"),
    (dict(mixer=["attention", "gru"]), "unknown mixer 'gru'"),
])
def test_bad_options_are_refused_in_one_line(overrides, message):
    with pytest.raises(ValueError, match=message):
        archbench.build("hourglass_t2", **overrides)
