"""Checkpoints: atomic and safe files, exact resume, SIGTERM saves, clear errors for bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_support import QUICK, REPO, cli_env, losses, one_thread, run_train  # noqa: F401

from archbench.training import checkpoint as ckpt
from archbench.training.log import read_metrics
from archbench.training.signals import StopRequest

# 128 examples per step over 1438 digits = 11 steps per epoch: the runs below cross an epoch boundary.
# A fixed thread count: the exactness guarantee (threads=auto may choose another count after a resume).
EXACT = ("train.batch_size=128", "train.grad_accum=2", "train.warmup_steps=3", "threads=1")


def metrics_by_step(run_dir):
    return {row["step"]: row["loss"] for row in read_metrics(run_dir)}


def test_save_is_atomic_and_loads_weights_only(tmp_path):
    path = ckpt.checkpoint_path(tmp_path, 3)
    state = {"step": 3, "model": {"w": torch.arange(4.0)}, "config": "{}"}
    ckpt.save_checkpoint(state, path)
    assert path.name == "step_0000003.pt" and [p.name for p in path.parent.iterdir()] == [path.name]
    loaded = torch.load(path, weights_only=True)  # no code execution needed to read it
    assert loaded["format"] == ckpt.FORMAT and torch.equal(loaded["model"]["w"], torch.arange(4.0))


def test_keep_last_and_newest(tmp_path):
    for step in (5, 10, 15, 20):
        ckpt.save_checkpoint({"step": step}, ckpt.checkpoint_path(tmp_path, step))
    (ckpt.checkpoint_dir(tmp_path) / ".step_0000025.pt.tmp-1").write_bytes(b"partial")  # a crashed write
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000020.pt"
    ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000015.pt", "step_0000020.pt"]


def test_unreadable_files_give_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ckpt.CheckpointError, match="is not a checkpoint: it is not a file written by torch.save"):
        ckpt.load_checkpoint(garbage)
    real = ckpt.save_checkpoint({"step": 1, "model": {"w": torch.randn(1000)}}, tmp_path / "real.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    with pytest.raises(ckpt.CheckpointError, match="not a readable archbench checkpoint"):
        ckpt.load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="not an archbench training checkpoint"):
        ckpt.load_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": ckpt.FORMAT, "obj": StopRequest()}, pickled)  # arbitrary objects are refused
    with pytest.raises(ckpt.CheckpointError, match="not a readable archbench checkpoint") as refused:
        ckpt.load_checkpoint(pickled)
    assert "weights_only" not in str(refused.value) and "delete" not in str(refused.value)


@pytest.mark.parametrize("log_every", [1, 4])
def test_resume_continues_exactly(tmp_path, log_every):
    """Interrupted at step 7 (mid-epoch, mid-log-interval when log_every=4) and resumed == uninterrupted."""
    every = f"train.log_every={log_every}"
    assert run_train(tmp_path / "full", *EXACT, every, "train.steps=14") == 0
    assert run_train(tmp_path / "split", *EXACT, every, "train.steps=7") == 0
    assert run_train(tmp_path / "split", *EXACT, every, "train.steps=14", "train.resume=auto") == 0
    full, split = metrics_by_step(tmp_path / "full"), metrics_by_step(tmp_path / "split")
    assert len(full) == -(-14 // log_every)
    assert set(full) <= set(split)  # split also logged its last step, 7, when log_every=4
    assert [split[s] for s in full] == pytest.approx([full[s] for s in full], rel=0, abs=1e-7)
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "full"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "split"))
    for key in a["ema"]["model"]:
        torch.testing.assert_close(a["ema"]["model"][key], b["ema"]["model"][key], rtol=0, atol=1e-7)


def test_resume_from_explicit_path(tmp_path):
    assert run_train(tmp_path / "a", "train.steps=4", "train.ckpt_every=2") == 0
    source = ckpt.checkpoint_path(tmp_path / "a", 2)
    assert run_train(tmp_path / "b", "train.steps=4", f"train.resume={source}") == 0
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a")[2:], abs=1e-7)


def test_sigterm_saves_a_checkpoint_and_resume_is_exact(tmp_path):
    run_dir = tmp_path / "killed"
    args = [*QUICK, *EXACT, f"run_dir={run_dir}", "train.steps=100000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "archbench.train", *args],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    newest = ckpt.latest_checkpoint(run_dir)
    assert newest is not None, err
    stopped_at = ckpt.load_checkpoint(newest)["step"]
    assert stopped_at >= 3 and len(losses(run_dir)) == stopped_at
    # Continue to stopped_at + 3 and compare with a run that was never interrupted.
    target = f"train.steps={stopped_at + 3}"
    assert run_train(run_dir, *EXACT, target, "train.resume=auto") == 0
    assert run_train(tmp_path / "full", *EXACT, target) == 0
    assert losses(run_dir) == pytest.approx(losses(tmp_path / "full"), rel=0, abs=1e-7)


def test_stop_request_catches_sigint_once():
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under nohup / a background job
    with StopRequest() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop and stop.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before  # restored as it was


def test_wrong_backbone_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_train(run_dir, "train.steps=2") == 0
    capsys.readouterr()
    assert run_train(run_dir, "train.steps=4", "backbone=uvit_t2") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds backbone 'dit_t2', but this run builds 'uvit_t2'" in err[0]
    assert run_train(run_dir, "train.steps=4", "backbone.depth=2") == 1
    assert "depth=4 (now 2)" in capsys.readouterr().err


def test_a_checkpoint_from_before_a_new_build_option_resumes_at_its_default():
    """Older code did not record options added since (captions added caption_vocab, caption_tokens, caption_dim):
    missing from the checkpoint means the default, so the run resumes unless it asks for another value."""
    import json

    from backbones.registry import backbone_config

    options = {k: v for k, v in backbone_config("dis_t2").items() if k not in ("name", "family")}
    old = {k: v for k, v in options.items() if not k.startswith("caption_")}
    state = {"config": json.dumps({"backbone": {"name": "dis_t2", **old}})}
    ckpt.check_backbone(state, "dis_t2", options)
    with pytest.raises(ckpt.CheckpointError, match=r"caption_vocab=0 \(now 17\)"):
        ckpt.check_backbone(state, "dis_t2", {**options, "caption_vocab": 17})


def test_corrupt_checkpoint_stops_resume_with_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_train(run_dir, "train.steps=2") == 0
    newest = ckpt.latest_checkpoint(run_dir)
    newest.write_bytes(newest.read_bytes()[:1000])
    capsys.readouterr()
    assert run_train(run_dir, "train.steps=4") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no readable checkpoint" in err[0] and newest.name in err[0]
