"""Training on captions: recipe=captions trains a captioned backbone on fashion_pairs (y = the caption's word
indices), draws its grid from the training captions and scores it compositionally; a backbone without captions
is refused in one line before any data loads."""

from __future__ import annotations

import pytest
import torch
import yaml
from train_support import needs_fashion_mnist, one_thread  # noqa: F401

from archbench.train import main

pytestmark = needs_fashion_mnist
QUICK = ["recipe=captions", "train.steps=2", "train.batch_size=4", "train.progress=false", "train.logger=none",
         "sample.num_samples=4", "sample.steps=2"]


@pytest.mark.parametrize("backbone", ["dit_t4", "dis_t4"])
def test_a_captioned_run_trains_samples_and_scores_its_grid(backbone, tmp_path, capsys):
    assert main([*QUICK, f"backbone={backbone}", f"run_dir={tmp_path}"]) == 0
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["backbone"]["caption_vocab"] == 17 and config["backbone"]["caption_tokens"] == 9
    assert config["backbone"]["num_classes"] == 0
    assert (tmp_path / "samples" / "step_0000002.png").is_file()
    assert "of 4 canvases hold every named garment in its place" in capsys.readouterr().err


@pytest.fixture(scope="module")
def captioned_run(tmp_path_factory):
    """One short captioned DiT run, shared by the eval and sample tests (they only read it)."""
    run_dir = tmp_path_factory.mktemp("captioned-run")
    assert main([*QUICK, "backbone=dit_t4", f"run_dir={run_dir}"]) == 0
    return run_dir


def test_eval_of_a_captioned_run_draws_with_heldout_captions_and_scores_composition(captioned_run, tmp_path):
    import json

    from archbench.eval import main as eval_main

    assert eval_main([f"run_dir={captioned_run}", "num_samples=12", "features=fashion_mnist_cnn",
                      "ref_split=heldout", "steps=2", "batch_size=12", "progress=false",
                      f"out={tmp_path / 'eval.json'}"]) == 0
    record = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= record["composition"] <= 1.0 and record["score"] > 0 and record["cond_accuracy"] is None


def test_sample_draws_a_captioned_run_with_a_split_s_captions_or_given_ones(captioned_run, tmp_path):
    import numpy as np

    from archbench.data import build_dataset
    from archbench.data.captions import first_captions
    from archbench.data.fashion_pairs import tokenize
    from archbench.sample import main as sample_main

    quick = [f"run_dir={captioned_run}", "steps=2", "progress=false", "threads=1"]
    assert sample_main([*quick, "num_samples=5", "caption_split=heldout", f"out={tmp_path / 'grid.png'}"]) == 0
    tokens = np.load(tmp_path / "grid.npz")["arr_1"]
    expected = first_captions(build_dataset("fashion_pairs", split="heldout"), 5).numpy()
    assert tokens.shape == (5, 9) and np.array_equal(tokens, expected)

    two = "a bag top left and a boot bottom right; a coat top right"
    assert sample_main([*quick, "num_samples=6", "chunk_size=4", f"caption={two}", f"out={tmp_path / 'set.npz'}"]) == 0
    rows = np.load(tmp_path / "set.npz")["arr_1"]
    first, second = tokenize("a bag top left and a boot bottom right"), tokenize("a coat top right")
    assert np.array_equal(rows, np.stack([first, second] * 3))


@pytest.mark.parametrize(("args", "message"), [
    (["labels=1,2"], "this run is conditioned on captions: give caption='a ... and a ...', not labels=/class="),
    (["caption=a hat top left"], "words must come from fashion_pairs' vocabulary"),
    (["caption_split=validation"], "unknown split 'validation'"),
])
def test_bad_caption_requests_are_one_line(captioned_run, tmp_path, capsys, args, message):
    from archbench.sample import main as sample_main

    assert sample_main([f"run_dir={captioned_run}", "num_samples=2", "steps=2", f"out={tmp_path / 'g.png'}",
                        *args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_backbone_without_captions_is_refused(tmp_path, capsys):
    assert main([*QUICK, "backbone=unet_t", f"run_dir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["archbench.train: error: data fashion_pairs is captioned and backbone unet_t takes no captions; "
                   "choose a token backbone (dis_*, dit_*, uvit_*, hourglass_*) or data.class_cond=false"]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_on_precomputed_caption_features_trains_evaluates_and_samples(tmp_path, capsys):
    """data.caption_features=FILE: y is each caption's (T, D) row from the file, the backbone is built with
    caption_dim=D; the grid, eval's compositional score and sample still read the words."""
    import json

    import numpy as np

    from archbench.data.caption_features import write_caption_features
    from archbench.data.captions import language
    from archbench.eval import main as eval_main
    from archbench.sample import main as sample_main

    captions = language("fashion_pairs").all_captions()
    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(captions), 4, 12)).astype(np.float32)  # T=4 rows of D=12, no padding
    path = write_caption_features(tmp_path / "features.npz", captions, features)
    run_dir = tmp_path / "run"
    assert main([*QUICK, "backbone=dis_t4", f"data.caption_features={path}", f"run_dir={run_dir}"]) == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["backbone"]["caption_dim"] == 12 and config["backbone"]["caption_tokens"] == 4
    assert config["backbone"]["caption_vocab"] == 0 and config["data"]["caption_features"] == str(path)
    assert "of 4 canvases hold every named garment in its place" in capsys.readouterr().err

    assert eval_main([f"run_dir={run_dir}", "num_samples=6", "features=fashion_mnist_cnn", "ref_split=heldout",
                      "steps=2", "batch_size=6", "progress=false", f"out={tmp_path / 'eval.json'}"]) == 0
    assert 0.0 <= json.loads((tmp_path / "eval.json").read_text())["composition"] <= 1.0

    caption = "a bag top left and a boot bottom right"
    assert sample_main([f"run_dir={run_dir}", "num_samples=2", "steps=2", "progress=false", "threads=1",
                        f"caption={caption}", f"out={tmp_path / 'grid.png'}"]) == 0
    from archbench.data.fashion_pairs import tokenize

    assert np.array_equal(np.load(tmp_path / "grid.npz")["arr_1"], torch.stack([tokenize(caption)] * 2).numpy())
    assert sample_main([f"run_dir={run_dir}", "num_samples=3", "chunk_size=2", "steps=2", "progress=false",
                        "threads=1", f"caption={caption}", f"out={tmp_path / 'set.npz'}"]) == 0
    assert np.load(tmp_path / "set.npz")["arr_1"].shape == (3, 9)


def test_caption_features_on_a_dataset_without_captions_or_a_bad_file_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.npz").write_text("no")
    for extra, message in ((["data.name=fashion_mnist"], "fashion_mnist has no captions"),
                           ([], "is not a readable .npz")):
        assert main([*QUICK, "backbone=dit_t4", f"data.caption_features={tmp_path / 'bad.npz'}", *extra,
                     f"run_dir={tmp_path / 'run'}"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_a_study_grid_of_captioned_arms_draws_the_reference_split_s_captions(captioned_run, tmp_path):
    """The study's samples.png row of a captioned arm uses the eval's reference split's first captions (not the
    empty caption), the same for every row, and writes them above their columns."""
    import numpy as np
    from PIL import Image

    from archbench.data import build_dataset
    from archbench.data.captions import decode_captions, first_captions
    from archbench.sampling.picture import render
    from archbench.study.samples import _row, draw
    from archbench.study.schema import EvalSpec, GridSpec
    from archbench.training.checkpoint import latest_checkpoint

    row = _row(str(latest_checkpoint(captioned_run)), GridSpec(columns=3),
               EvalSpec(ref_split="heldout", sampler="ddim", steps=2))
    tokens = first_captions(build_dataset("fashion_pairs", split="heldout"), 3)
    assert torch.equal(row.labels, tokens) and row.captions == tuple(decode_captions("fashion_pairs", tokens))
    path = draw({"dit_a": row, "dit_b": row}, tmp_path / "study.png")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    _, layout = render(row.images.repeat(2, 1, 1, 1), 3, columns=list(row.captions), rows=["dit_a", "dit_b"],
                       scale=4)
    top, bottom = layout["header"]
    assert layout["tile"] == (128, 128) and bottom > top and (pixels[top:bottom] < 255).any()  # captions on top
