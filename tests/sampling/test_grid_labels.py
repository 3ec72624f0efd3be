"""Sample grids at a readable size: tiles enlarged by an integer nearest-neighbour factor with exact pixels, the
class of each column above it, the arm of each study row at its left, the ``meta`` chunk kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from train_support import one_thread, run_train  # noqa: F401

from archbench.data import DATASETS, DatasetInfo, class_names, dataset_info
from archbench.sampling.grid import from_uint8, grid_labels, save_grid, save_npz
from archbench.sampling.outputs import read_meta
from archbench.sampling.picture import BACKGROUND, GAP, column_classes, render, tile_scale


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _quantised(n: int, c: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose values are exact uint8 levels k / 127.5 - 1, and those levels k [N, C, H, W]."""
    levels = torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed))
    return levels.float() / 127.5 - 1, levels.to(torch.uint8)


def _tile(pixels: np.ndarray, layout: dict, index: int, ncol: int) -> np.ndarray:
    r, c = divmod(index, ncol)
    (x0, y0), (sx, sy), (tw, th) = layout["origin"], layout["step"], layout["tile"]
    return pixels[y0 + r * sy: y0 + r * sy + th, x0 + c * sx: x0 + c * sx + tw]


@pytest.mark.parametrize(("size", "factor"), [(8, 8), (16, 4), (28, 3), (32, 2), (64, 1), (256, 1)])
def test_scale_rule(size, factor):
    assert tile_scale(size) == factor and size * factor >= min(size, 64)


@pytest.mark.parametrize("channels", [1, 3])
def test_16px_tiles_are_enlarged_4x_with_exact_pixels(tmp_path, channels):
    images, levels = _quantised(8, channels, 16)
    path = save_grid(images, tmp_path / "grid.png", nrow=4)
    pixels = _pixels(path)
    assert pixels.shape[0] >= 2 * 16 * 4 and pixels.shape[1] >= 4 * 16 * 4  # 2 rows x 4 columns, each >= 64 px
    _, layout = render(images, 4)
    assert layout["scale"] == 4 and layout["tile"] == (64, 64)
    for i in range(8):
        expected = levels[i].repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)  # [C, 64, 64]
        expected = expected.expand(3, -1, -1).permute(1, 2, 0).numpy()
        assert np.array_equal(_tile(pixels, layout, i, 4), expected), i


def test_a_caption_is_written_under_each_image_and_keeps_its_pixels_exact(tmp_path):
    images, levels = _quantised(6, 1, 32)
    captions = [f"a bag top left and a boot bottom right {i}" for i in range(6)]
    pixels = _pixels(save_grid(images, tmp_path / "captioned.png", nrow=3, captions=captions))
    _, layout = render(images, 3, captions=captions)
    assert layout["scale"] == 4 and layout["step"][1] > layout["tile"][1] + GAP  # a caption strip under each row
    assert np.array_equal(pixels, render(images, 3, captions=captions)[0])
    (x0, y0), (sx, sy), (tw, th) = layout["origin"], layout["step"], layout["tile"]
    for i in range(6):
        r, c = divmod(i, 3)
        expected = levels[i].repeat_interleave(4, dim=1).repeat_interleave(4, dim=2).expand(3, -1, -1)
        assert np.array_equal(_tile(pixels, layout, i, 3), expected.permute(1, 2, 0).numpy()), i
        strip = pixels[y0 + r * sy + th: y0 + r * sy + sy - GAP, x0 + c * sx: x0 + c * sx + tw]
        assert (strip < BACKGROUND).any(), f"no caption under image {i}"
    other = render(images, 3, captions=[*captions[:5], "a coat top right"])[0]
    assert not np.array_equal(pixels, other)  # the words drawn are the caption's
    with pytest.raises(ValueError, match="got 2 captions for 6 images"):
        render(images, 3, captions=captions[:2])


def test_header_names_each_column_only_with_labels(tmp_path):
    images, _ = _quantised(20, 1, 28)
    labels = grid_labels(20, 10)
    names = class_names("fashion_mnist")
    plain = _pixels(save_grid(images, tmp_path / "plain.png", nrow=10))
    named = _pixels(save_grid(images, tmp_path / "named.png", nrow=10, labels=labels, class_names=names))
    _, layout = render(images, 10, columns=list(names))
    top, bottom = layout["header"]
    x0, y0 = layout["origin"]
    assert layout["scale"] == 3 and bottom > top == 0 and y0 == bottom + GAP
    assert named.shape[0] == plain.shape[0] + bottom and named.shape[1] == plain.shape[1]
    assert np.array_equal(named[y0:], plain[GAP:])  # the same tiles, moved down under the header
    assert (plain[:GAP] == BACKGROUND).all()  # no labels: no header
    sx, tw = layout["step"][0], layout["tile"][0]
    for c in range(10):  # every column's name is inked above that column
        strip = named[top:bottom, x0 + c * sx: x0 + c * sx + tw]
        assert (strip != BACKGROUND).any(), names[c]
    # the header is the one these names draw ("Ankle boot" above the last column ...), not "class 9"
    assert np.array_equal(named, render(images, 10, columns=list(names))[0])
    assert not np.array_equal(named[:bottom], render(images, 10, columns=[f"class {c}" for c in range(10)])[0][:bottom])


def test_no_header_when_columns_mix_classes_or_are_unconditional(tmp_path):
    images, _ = _quantised(6, 3, 32)
    plain = _pixels(save_grid(images, tmp_path / "a.png", nrow=3))
    mixed = _pixels(save_grid(images, tmp_path / "b.png", nrow=3, labels=[0, 1, 2, 1, 1, 2],
                              class_names=class_names("cifar10")))
    unconditional = _pixels(save_grid(images, tmp_path / "c.png", nrow=3, labels=[-1] * 6))
    assert np.array_equal(plain, mixed) and np.array_equal(plain, unconditional)
    assert column_classes([0, 1, 2, 0, 1, 2], 3, 6) == [0, 1, 2]
    assert column_classes([0, 1, 2, 1, 1, 2], 3, 6) is None
    assert column_classes(None, 3, 6) is None
    with pytest.raises(ValueError, match="5 labels for 6 samples"):
        save_grid(images, tmp_path / "d.png", nrow=3, labels=[0] * 5)


def test_labels_without_names_say_class_n(tmp_path):
    images, _ = _quantised(4, 1, 16)
    got = _pixels(save_grid(images, tmp_path / "g.png", nrow=4, labels=[3, 4, 5, 6]))
    assert np.array_equal(got, render(images, 4, columns=["class 3", "class 4", "class 5", "class 6"])[0])


def test_unconditional_grid_and_a_ragged_last_row(tmp_path):
    images, levels = _quantised(5, 1, 28)
    path = save_grid(images, tmp_path / "u.png", nrow=3)
    pixels = _pixels(path)
    _, layout = render(images, 3)
    assert pixels.shape[:2] == (2 * 84 + 3 * GAP, 3 * 84 + 4 * GAP)
    expected = levels[4, 0].repeat_interleave(3, 0).repeat_interleave(3, 1).numpy()
    assert np.array_equal(_tile(pixels, layout, 4, 3)[..., 0], expected)
    assert (_tile(pixels, layout, 5, 3) == BACKGROUND).all()  # the empty sixth place


def test_meta_chunk_round_trips(tmp_path):
    meta = {"format": "archbench-grid/1", "num_samples": 4, "labels": [0, 1], "weights": "ab" * 32}
    images, _ = _quantised(4, 1, 8)
    path = save_grid(images, tmp_path / "m.png", 2, meta, labels=[0, 1, 0, 1], class_names=class_names("digits"))
    assert read_meta(path) == meta
    assert read_meta(save_grid(images, tmp_path / "n.png", 2)) is None


def test_npz_keeps_full_resolution(tmp_path):
    images, levels = _quantised(3, 1, 16)
    save_npz(images, torch.tensor([0, 1, 2]), tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_0"].shape == (3, 16, 16, 1) and np.array_equal(z["arr_0"][..., 0], levels[:, 0].numpy())


def test_study_grid_has_arm_names_at_the_left(tmp_path):
    from archbench.study.samples import Row, draw

    images, _ = _quantised(4, 1, 8)
    labels = torch.arange(4) % 10
    names = class_names("digits")
    rows = {"dit_t2": Row(images, labels, names), "dis_t2": Row(images.flip(0), labels, names)}
    pixels = _pixels(draw(rows, tmp_path / "study.png"))
    both = torch.cat([images, images.flip(0)])
    bare, layout = render(both, 4, columns=list(names[:4]))
    left = pixels.shape[1] - bare.shape[1]
    assert left > 0 and pixels.shape[0] == bare.shape[0]
    assert np.array_equal(pixels[:, left:], bare)  # the same tiles and header, shifted right by the name column
    (_, y0), (_, sy), (_, th) = layout["origin"], layout["step"], layout["tile"]
    for r in range(2):  # each row's name beside that row
        assert (pixels[y0 + r * sy: y0 + r * sy + th, :left] != BACKGROUND).any()
    assert (pixels[: layout["header"][1], :left] == BACKGROUND).all()
    titled = _pixels(draw(rows, tmp_path / "titled.png", title="tiny: same noise"))
    assert titled.shape[0] > pixels.shape[0] and (titled[: titled.shape[0] - pixels.shape[0]] != BACKGROUND).any()


def test_study_grid_of_arms_at_different_sizes(tmp_path):
    from archbench.study.samples import Row, draw

    small, small_levels = _quantised(3, 1, 8)
    large, _ = _quantised(3, 3, 16, seed=1)
    rows = {"a8": Row(small, None, None), "b16": Row(large, None, None)}
    pixels = _pixels(draw(rows, tmp_path / "mixed.png"))
    _, layout = render(torch.cat([large, large]), 3, rows=["a8", "b16"])
    assert layout["scale"] == 4  # 16 px tiles; the 8 px arm is enlarged x2 first, so x8 in all
    tile = _tile(pixels, layout, 0, 3)
    expected = small_levels[0, 0].repeat_interleave(8, 0).repeat_interleave(8, 1).numpy()
    assert np.array_equal(tile[..., 0], expected) and np.array_equal(tile[..., 2], expected)


def test_catalogue_names_the_classes():
    assert class_names("fashion_mnist") == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                            "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert class_names("digits") == tuple("0123456789")
    assert class_names("cifar10")[1] == "automobile" and len(class_names("cifar10")) == 10
    assert class_names("celeba64") is None and class_names(None) is None and class_names("nope") is None
    for info in DATASETS.values():
        assert info.class_names is None or len(info.class_names) == info.num_classes
    assert dataset_info("fashion_mnist").class_names[9] == "Ankle boot"
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        DatasetInfo("x", 1, 8, 3, "", ("a", "b"))


def test_training_preview_and_sample_command_name_the_digits(tmp_path):
    from archbench.sample import main

    run_dir = tmp_path / "run"
    assert run_train(run_dir, "train.steps=2", "train.sample_every=2", "sample.num_samples=10") == 0
    digits = list(class_names("digits"))
    preview = _pixels(run_dir / "samples" / "step_0000002.png")
    _, layout = render(torch.zeros(10, 1, 8, 8), 10, columns=digits)
    header = layout["header"][1]
    assert preview.shape[1] >= 10 * 64 and (preview[:header] != BACKGROUND).any()
    out = tmp_path / "grid.png"
    assert main([f"run_dir={run_dir}", "num_samples=20", "steps=2", f"out={out}", "progress=false"]) == 0
    with np.load(out.with_suffix(".npz")) as z:
        images, stored = from_uint8(z["arr_0"]), z["arr_1"]
    assert images.shape == (20, 1, 8, 8) and stored.tolist() == list(range(10)) * 2
    grid = _pixels(out)
    expected, _ = render(images, 10, columns=digits)
    assert grid.shape == expected.shape and np.array_equal(grid[:header], expected[:header])
    assert read_meta(out)["num_samples"] == 20
