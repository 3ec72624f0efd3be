"""train.init_from: a new run from trained weights (a run, a checkpoint, a save_pretrained folder, an official
checkpoint), at the same or another resolution, recorded with its checksum; bad sources refused in one line."""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from train_support import losses, one_thread, run_train  # noqa: F401

from archbench.training.checkpoint import latest_checkpoint, load_checkpoint
from archbench.training.init_from import read_source, start_from

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> Path:
    """A dit_t2 run on the digits at 8x8 whose EMA is its live weights (ema_decay 0): the weights it ended on."""
    run_dir = tmp_path_factory.mktemp("source") / "run"
    assert run_train(run_dir, "train.steps=30", "train.lr=3e-3", "train.ema_decay=0") == 0
    return run_dir


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_run_started_from_its_own_weights_continues_at_the_loss_it_reached(pretrained_run, tmp_path):
    """Same data order and noise draws as the source's first step, so the first loss compares the weights: the
    fine-tune starts where the source ended (near its last losses), far below where the source started."""
    run_dir = tmp_path / "tuned"
    assert run_train(run_dir, "train.steps=3", "train.lr=1e-12", f"train.init_from={pretrained_run}") == 0
    source, tuned = losses(pretrained_run), losses(run_dir)
    ended = statistics.mean(source[-5:])
    assert tuned[0] < 0.6 * source[0] and 0.5 * ended < tuned[0] < 2.0 * ended
    weights = load_checkpoint(latest_checkpoint(run_dir))["model"]
    ema = load_checkpoint(latest_checkpoint(pretrained_run))["ema"]["model"]
    assert all(torch.allclose(weights[k], ema[k], atol=1e-8) for k in ema)  # lr 1e-12: the weights it loaded
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["init_from"] == str(pretrained_run)
    assert config["train"]["init_from_sha256"] == sha256(latest_checkpoint(pretrained_run))
    record = json.loads((run_dir / "init_from.json").read_text())
    assert record["kind"] == "run" and record["reshaped"] == [] and record["source_backbone"] == "dit_t2"


def test_a_fine_tune_resumes_from_its_own_checkpoint(pretrained_run, tmp_path):
    run_dir = tmp_path / "tuned"
    assert run_train(run_dir, "train.steps=2", "train.ckpt_every=2", f"train.init_from={pretrained_run}") == 0
    assert run_train(run_dir, "train.steps=4", "train.ckpt_every=2", f"train.init_from={pretrained_run}") == 0
    assert len(losses(run_dir)) == 4
    entry = json.loads((run_dir / "config_history.jsonl").read_text().splitlines()[-1])
    assert entry["resumed_at_step"] == 2 and entry["changed"] == {"train.steps": [2, 4]}


def test_another_resolution_resizes_the_learned_position_table(tmp_path):
    """U-ViT learns its position table: 8x8 -> 16x16 resizes it; the run records what it did."""
    source = tmp_path / "small"
    assert run_train(source, "backbone=uvit_t2", "train.steps=2") == 0
    tuned = tmp_path / "large"
    assert run_train(tuned, "backbone=uvit_t2", "data.image_size=16", "train.steps=2",
                     f"train.init_from={source}") == 0
    record = json.loads((tuned / "init_from.json").read_text())
    assert [(r["name"], r["old"], r["new"]) for r in record["reshaped"]] == [
        ("pos_embed", [1, 18, 96], [1, 66, 96])
    ]


def test_a_save_pretrained_folder_and_an_official_checkpoint_are_sources(tmp_path):
    import archbench

    model = archbench.build("dis_s2", image_size=8, in_channels=3, width=32, depth=4, num_classes=10)
    model.save_pretrained(str(tmp_path / "folder"))
    weights = read_source(str(tmp_path / "folder"), "dis")
    assert weights.kind == "pretrained" and weights.backbone == "dis_s2"
    official = read_source(str(FIXTURES / "dis_tiny_cond.pth"), "dis")
    assert official.kind == "official" and official.sha256 == sha256(FIXTURES / "dis_tiny_cond.pth")
    larger = archbench.build("dis_s2", image_size=16, in_channels=3, width=32, depth=4, num_classes=10)
    done = start_from(larger, official)
    assert [item["name"] for item in done.record["reshaped"]] == ["pos_embed"]
    assert "pos_embed: [1, 18, 32] -> [1, 66, 32]" in done.table


@pytest.mark.parametrize(("source", "message"), [
    ("{tmp}/nowhere", "no such file or folder"),
    ("{tmp}/empty", "holds neither checkpoints"),
    ("{run}", "tensor(s) missing from run"),  # a dit_t2 run into a dis_t2 model
])
def test_bad_sources_are_one_line(source, message, pretrained_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    extra = ["backbone=dis_t2"] if "{run}" in source else []
    source = source.format(tmp=tmp_path, run=pretrained_run)
    assert run_train(tmp_path / "new", *extra, "train.steps=1", f"train.init_from={source}") == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert "Traceback" not in err and len(errors) == 1
    assert message in errors[0] and f"train.init_from={source}" in errors[0]
    assert not (tmp_path / "new" / "checkpoints").exists()
