"""Fitting trained weights to a backbone at another resolution or class count (backbones/transfer.py): the position
table against a hand-computed bicubic resize, the label-table rule, every tiny backbone, and one-line refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backbones.registry import build, list_backbones
from backbones.transfer import (
    LABEL_KEY,
    POSITION_KEY,
    REBUILT,
    RESIZED,
    TransferError,
    fit_label_table,
    fit_state_dict,
    resize_position_table,
)


def cubic_weight(distance: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel with a = -0.75, the one PyTorch's bicubic mode uses."""
    d = abs(distance)
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    if d < 2:
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return 0.0


def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of a 1-D bicubic resize: pixel centres aligned (align_corners=False), the
    border replicated (indices clamped)."""
    matrix = np.zeros((size_out, size_in))
    scale = size_in / size_out
    for i in range(size_out):
        x = (i + 0.5) * scale - 0.5
        base = math.floor(x)
        for k in range(base - 1, base + 3):
            matrix[i, min(max(k, 0), size_in - 1)] += cubic_weight(x - k)
    return matrix


@pytest.mark.parametrize(("side", "grid"), [(4, 8), (8, 4), (3, 7)])
def test_position_table_is_resized_bicubically_over_the_patch_grid(side, grid):
    torch.manual_seed(0)
    extras, width = 2, 5
    table = torch.randn(1, extras + side * side, width, dtype=torch.float64)
    resized = resize_position_table(table, extras, grid)
    assert resized.shape == (1, extras + grid * grid, width)
    assert torch.equal(resized[:, :extras], table[:, :extras])  # time and label token rows untouched
    weights = bicubic_matrix(side, grid)
    patches = table[0, extras:].numpy().reshape(side, side, width)
    expected = np.einsum("ia,jb,abc->ijc", weights, weights, patches).reshape(grid * grid, width)
    np.testing.assert_allclose(resized[0, extras:].numpy(), expected, rtol=1e-10, atol=1e-10)


def test_trailing_caption_rows_stay_behind_the_resized_grid():
    torch.manual_seed(0)
    table = torch.randn(1, 2 + 16 + 3, 5, dtype=torch.float64)  # 2 leading, a 4x4 grid, 3 trailing
    resized = resize_position_table(table, extras=2, grid=6, extras_after=3)
    assert resized.shape == (1, 2 + 36 + 3, 5)
    assert torch.equal(resized[:, -3:], table[:, -3:]) and torch.equal(resized[:, :2], table[:, :2])
    torch.testing.assert_close(resized[:, 2:-3], resize_position_table(table[:, :-3], 2, 6)[:, 2:])


def test_a_table_that_is_not_a_square_grid_is_refused():
    with pytest.raises(TransferError, match="10 patch rows after 2 extra token"):
        resize_position_table(torch.zeros(1, 12, 4), extras=2, grid=4)


def test_label_rows_are_kept_per_class_and_the_null_row_stays_last():
    source = torch.arange(11.0).unsqueeze(1).expand(11, 3)  # 10 classes + null (row 10)
    fewer, fresh = fit_label_table(source, torch.full((6, 3), -1.0), source_null=True, target_null=True)
    assert fewer[:, 0].tolist() == [0, 1, 2, 3, 4, 10] and fresh == 0
    more, fresh = fit_label_table(source, torch.full((14, 3), -1.0), source_null=True, target_null=True)
    assert more[:, 0].tolist() == [*range(10), -1, -1, -1, 10] and fresh == 3
    no_null, _ = fit_label_table(source, torch.full((4, 3), -1.0), source_null=True, target_null=False)
    assert no_null[:, 0].tolist() == [0, 1, 2, 3]


TINY = list_backbones(tag="tiny")


@pytest.mark.parametrize("name", TINY)
def test_same_size_weights_load_unchanged(name):
    source = build(name, image_size=16, num_classes=10)
    target = build(name, image_size=16, num_classes=10)
    fitted = fit_state_dict(target, source.state_dict())
    assert not fitted.reshaped and len(fitted.loaded) == len(target.state_dict())
    target.load_state_dict(fitted.state, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(),
                                                 strict=True))


@pytest.mark.parametrize("name", [n for n in TINY if not n.startswith("unet")])
def test_a_token_backbone_moves_to_another_resolution_and_class_count(name):
    torch.manual_seed(0)
    source = build(name, image_size=16, num_classes=10)
    with torch.no_grad():
        source.pos_embed.add_(torch.randn_like(source.pos_embed)) if source.pos_embed.requires_grad else None
    target = build(name, image_size=32, num_classes=5)
    own_table = target.pos_embed.detach().clone()
    fitted = fit_state_dict(target, source.state_dict(), source_classes=10)
    target.load_state_dict(fitted.state, strict=True)
    rules = {item.name: item.rule for item in fitted.reshaped}
    assert set(rules) == {POSITION_KEY, LABEL_KEY}
    if source.pos_embed.requires_grad:  # learned (DiS, U-ViT): resized
        assert rules[POSITION_KEY] == RESIZED
        extras = target.extras
        assert torch.equal(target.pos_embed[:, :extras], source.pos_embed[:, :extras])
        expected = resize_position_table(source.pos_embed.detach(), extras, target.grid_size)
        assert torch.equal(target.pos_embed, expected)
    else:  # fixed sin-cos (DiT, hourglass): the new model's own table
        assert rules[POSITION_KEY] == REBUILT and torch.equal(target.pos_embed, own_table)
    labels = source.label_embed.embedding_table.weight
    fitted_labels = target.label_embed.embedding_table.weight
    assert torch.equal(fitted_labels[:5], labels[:5]) and torch.equal(fitted_labels[-1], labels[-1])
    x = torch.randn(2, target.in_channels, 32, 32)
    assert target(x, torch.tensor([1, 2]), torch.tensor([0, 4])).shape[-2:] == (32, 32)


def test_the_unet_at_another_size_is_refused_naming_the_tensors():
    """The U-Net's attention sits at absolute resolutions, so another size is another architecture."""
    source = build("unet_t", image_size=16)
    with pytest.raises(TransferError, match=r"tensor\(s\) (missing from|in) the source weights") as info:
        fit_state_dict(build("unet_t", image_size=32), source.state_dict())
    assert "\n" not in str(info.value)


def test_any_other_shape_change_is_refused_in_one_line():
    source = build("dit_t2", image_size=16, num_classes=10)
    with pytest.raises(TransferError) as info:
        fit_state_dict(build("dit_t2", image_size=16, num_classes=10, width=64, num_heads=4), source.state_dict(),
                       where="run r")
    message = str(info.value)
    assert "\n" not in message and "is [96, 3, 2, 2] in run r, the model needs [64, 3, 2, 2]" in message
