"""Real (short) training runs on digits: every family learns, outputs are written, failures are clean."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from train_support import losses, one_thread, run_train  # noqa: F401

from archbench.diffusion import OBJECTIVES
from archbench.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

# Each family's tiny member at digits' native 8x8 (the U-Net's attention moves to the 8x8 level).
# Steps are sized so each run stays well under 30 s on a 2-core CPU; DiS's sequential scan is the slowest.
FAMILIES = [
    ("dit_t2", 150, []),
    ("uvit_t2", 150, []),
    ("unet_t", 150, ["backbone.attention_resolutions=[8]"]),
    ("dis_t2", 100, []),
]


@pytest.mark.parametrize(("backbone", "steps", "extra"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_each_family_learns_on_digits(tmp_path, backbone, steps, extra):
    run_dir = tmp_path / backbone
    code = run_train(
        run_dir,
        f"backbone={backbone}",
        f"train.steps={steps}",
        "train.batch_size=32",
        "train.warmup_steps=20",
        f"train.ckpt_every={steps}",
        f"train.sample_every={steps}",
        *extra,
    )
    assert code == 0
    curve = losses(run_dir)
    assert len(curve) == steps and all(math.isfinite(v) for v in curve)
    first, last = sum(curve[:50]) / 50, sum(curve[-50:]) / 50
    assert last < 0.8 * first, (first, last)
    assert (run_dir / "samples" / f"step_{steps:07d}.png").is_file()
    assert latest_checkpoint(run_dir).name == f"step_{steps:07d}.pt"


def test_run_outputs(tmp_path):
    run_dir = tmp_path / "run"
    code = run_train(run_dir, "train.steps=6", "train.log_every=2", "train.ckpt_every=2", "train.keep_last=2",
                     "train.sample_every=3")
    assert code == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["backbone"]["name"] == "dit_t2" and config["train"]["steps"] == 6
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    for row in rows:
        assert {"step", "loss", "lr", "img_per_s", "it_per_s", "grad_norm"} <= set(row)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000004.pt", "step_0000006.pt"]  # keep_last=2
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == ["step_0000003.png", "step_0000006.png"]
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert state["step"] == 6 and {"model", "ema", "optimizer", "scheduler", "ranks", "data", "config"} <= set(state)
    assert {"torch", "numpy", "python", "cuda"} <= set(state["ranks"][0]["rng"])
    assert not list((run_dir / "checkpoints").glob(".*"))  # no temporary files left behind


def test_warmup_schedule_is_logged(tmp_path):
    run_dir = tmp_path / "run"
    assert run_train(run_dir, "train.steps=4", "train.lr=1e-3", "train.warmup_steps=4") == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """Per-example seeds make accumulation only a different cut of the same global batch."""
    common = ("train.steps=4", "train.batch_size=16", "backbone.class_dropout_prob=0")
    assert run_train(tmp_path / "a", *common) == 0
    assert run_train(tmp_path / "b", *common, "train.grad_accum=4") == 0
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-5, abs=1e-6)


def test_grad_checkpoint_trains_to_the_same_losses(tmp_path):
    """train.grad_checkpoint recomputes every block in the backward pass: the run itself is unchanged."""
    common = ("train.steps=4", "train.batch_size=16", "train.log_every=1")
    assert run_train(tmp_path / "plain", *common) == 0
    assert run_train(tmp_path / "ckpt", *common, "train.grad_checkpoint=true") == 0
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "plain"), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("objective", [name for name in OBJECTIVES if name != "ddpm"])
def test_every_other_objective_trains_and_samples(tmp_path, objective):
    """Each registered objective runs through the Trainer's one loss path and its default sampler."""
    assert run_train(tmp_path / objective, f"diffusion={objective}", "train.steps=3", "train.sample_every=3") == 0
    assert all(math.isfinite(v) for v in losses(tmp_path / objective))
    assert (tmp_path / objective / "samples" / "step_0000003.png").is_file()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "nan"
    code = run_train(run_dir, "train.steps=20", "train.lr=1e30", "train.grad_clip=null", "train.ckpt_every=1")
    assert code != 0
    err = capsys.readouterr().err
    assert "non-finite" in err and "last good checkpoint" in err
    good = latest_checkpoint(run_dir)
    assert good is not None
    state = load_checkpoint(good)
    assert state["step"] < 20
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in rows)  # the bad step was never logged


def test_unwritable_run_dir_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert run_train(blocker / "run") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not writable" in err[0]


def test_missing_data_is_reported(tmp_path, capsys):
    code = run_train(tmp_path / "run", "data.name=cifar10", "data.root=" + str(tmp_path / "nowhere"),
                     "data.download=false", "data.image_size=null")
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cifar10" in err[0] and "nowhere" in err[0] and "data.download=true" in err[0]


def test_fresh_run_refuses_to_mix_with_old_checkpoints(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_train(run_dir, "train.steps=2") == 0
    assert run_train(run_dir, "train.steps=2", "train.resume=null") == 1
    assert "already holds checkpoints" in capsys.readouterr().err
