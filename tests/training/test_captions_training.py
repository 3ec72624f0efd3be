"""Training on captions: recipe=captions trains a captioned backbone on fashion_pairs (y = the caption's word
indices), draws its grid from the training captions and scores it compositionally; a backbone without captions
is refused in one line before any data loads."""

from __future__ import annotations

import pytest
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


def test_eval_of_a_captioned_run_draws_with_heldout_captions_and_scores_composition(tmp_path):
    import json

    from archbench.eval import main as eval_main

    assert main([*QUICK, "backbone=dit_t4", f"run_dir={tmp_path}"]) == 0
    assert eval_main([f"run_dir={tmp_path}", "num_samples=12", "features=fashion_mnist_cnn", "ref_split=heldout",
                      "steps=2", "batch_size=12", "progress=false", f"out={tmp_path / 'eval.json'}"]) == 0
    record = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= record["composition"] <= 1.0 and record["score"] > 0 and record["cond_accuracy"] is None


def test_a_backbone_without_captions_is_refused(tmp_path, capsys):
    assert main([*QUICK, "backbone=unet_t", f"run_dir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["archbench.train: error: data fashion_pairs is captioned and backbone unet_t takes no captions; "
                   "choose a token backbone (dis_*, dit_*, uvit_*, hourglass_*) or data.class_cond=false"]
    assert not (tmp_path / "run" / "checkpoints").exists()
