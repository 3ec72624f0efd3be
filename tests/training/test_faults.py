"""Faults injected for real: two writers on one run_dir, kill -9, a half-written metrics line, partial
temporary files, a damaged newest checkpoint. Each ends in one line or a clean resume, never in lost data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_support import QUICK, REPO, cli_env, one_thread, run_train  # noqa: F401

from archbench.training import checkpoint as ckpt
from archbench.training.log import read_metrics


def _interruptible() -> None:
    """A run started from a background job inherits SIGINT ignored (POSIX shells ignore it for `cmd &`, and an
    ignored signal survives exec): give the child the disposition a terminal user's process has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "archbench.train", *QUICK, f"run_dir={run_dir}", *overrides]
    return subprocess.Popen(args, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_interruptible)


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.1)


def test_a_second_writer_is_refused_at_once_and_a_killed_one_blocks_nobody(tmp_path):
    run_dir = tmp_path / "run"
    first = _start(run_dir, "train.steps=100000", "train.ckpt_every=5")
    try:
        _wait_for(lambda: ckpt.latest_checkpoint(run_dir) is not None)
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "archbench.train", *QUICK, f"run_dir={run_dir}", "train.steps=100000"],
            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120,
        )
        assert second.returncode == 1 and time.monotonic() - started < 60
        err = second.stderr.strip().splitlines()[-1]
        assert err.startswith("archbench.train: error: run_dir ") and "Traceback" not in second.stderr
        assert f"PID {first.pid} on host {socket.gethostname()}" in err
        rows_before = read_metrics(run_dir)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    # The OS released the lock with the process: the next run resumes from the last checkpoint.
    resumed_from = ckpt.latest_checkpoint(run_dir)
    step = int(resumed_from.stem.split("_")[1])
    assert run_train(run_dir, f"train.steps={step + 3}", "train.ckpt_every=5") == 0
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, step + 4))  # no duplicated or lost rows
    assert len(rows_before) >= step


def test_a_half_written_metrics_line_is_dropped_and_the_file_rewritten(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_train(run_dir, "train.steps=4") == 0
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "loss": 0.4')  # a kill mid-write
    assert read_metrics(run_dir)[-1]["step"] == 4  # readers skip it too
    assert run_train(run_dir, "train.steps=6") == 0
    assert "dropped an incomplete last line" in capsys.readouterr().err
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert not list(run_dir.glob(".metrics.jsonl.tmp-*"))


def test_partial_temporary_checkpoints_are_removed_when_a_run_starts(tmp_path):
    run_dir = tmp_path / "run"
    assert run_train(run_dir, "train.steps=2") == 0
    leftover = ckpt.checkpoint_dir(run_dir) / ".step_0000003.pt.tmp-999999"
    leftover.write_bytes(b"half a checkpoint")
    assert run_train(run_dir, "train.steps=3") == 0
    assert not leftover.exists()
    assert [p.name for p in ckpt.list_checkpoints(run_dir)][-1] == "step_0000003.pt"


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_good_one(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_train(run_dir, "train.steps=4", "train.ckpt_every=2") == 0
    newest = ckpt.latest_checkpoint(run_dir)
    assert newest.name == "step_0000004.pt"
    newest.write_bytes(newest.read_bytes()[:2000])
    capsys.readouterr()
    assert run_train(run_dir, "train.steps=6", "train.ckpt_every=2") == 0
    err = capsys.readouterr().err
    assert "step_0000004.pt" in err and "resuming from" in err
    assert "resumed from" in err and "step_0000002.pt at step 2" in err
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))["step"] == 6
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_sigkill_in_a_loop_never_loses_or_repeats_a_row(tmp_path):
    """kill -9 at random moments (checkpoint writes included: one every 2 steps), then resume, six times."""
    import random

    rng = random.Random(0)
    run_dir = tmp_path / "run"
    target, killed = 2000, 0
    for _ in range(6):
        proc = _start(run_dir, f"train.steps={target}", "train.ckpt_every=2", "train.keep_last=2")
        _wait_for(lambda p=proc: (run_dir / "metrics.jsonl").is_file() or p.poll() is not None)
        time.sleep(rng.uniform(0.2, 2.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait(timeout=60)
    assert killed == 6
    target = int(ckpt.latest_checkpoint(run_dir).stem.split("_")[1]) + 4  # finish a little past the last kill
    assert run_train(run_dir, f"train.steps={target}", "train.ckpt_every=2", "train.keep_last=2") == 0
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, target + 1))
    assert not list(ckpt.checkpoint_dir(run_dir).glob(".*.tmp-*"))


def test_a_full_disk_ends_in_one_line_naming_the_last_good_checkpoint(tmp_path, capsys):
    """On a small tmpfs that holds one checkpoint but not two (skipped where tmpfs cannot be mounted)."""
    import pytest

    probe = tmp_path / "probe"
    assert run_train(probe, "train.steps=1") == 0
    size = ckpt.latest_checkpoint(probe).stat().st_size
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.5) + (1 << 20)}", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        run_dir = disk / "run"
        capsys.readouterr()
        assert run_train(run_dir, "train.steps=4", "train.ckpt_every=2", "train.keep_last=1") == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("archbench.train: error: could not write checkpoint")
        assert "the disk is full" in err[-1] and "the last good checkpoint is" in err[-1]
        assert str(ckpt.checkpoint_path(run_dir, 2)) in err[-1]
        assert not any("Traceback" in line for line in err)
        assert [p.name for p in ckpt.checkpoint_dir(run_dir).iterdir()] == ["step_0000002.pt"]  # no partial file
        assert ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir, 2))["step"] == 2
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], capture_output=True)  # train.log may still be open


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    proc = _start(tmp_path / "run", "train.steps=5")
    time.sleep(1.0)  # inside main, importing torch / composing the config / loading data
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    if proc.returncode == 0:  # the machine was fast enough to finish five steps first: nothing to test
        return
    # 130 = 128 + SIGINT as our exit code, -2 = the process reported as ended by SIGINT: both mean Ctrl-C.
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)
    assert lines[-1] == "archbench.train: interrupted (Ctrl-C)" or "stopped by signal" in err


def test_ctrl_c_twice_during_the_first_checkpoint_write_keeps_it_and_exits_130(tmp_path):
    """Two SIGINTs while step 1's checkpoint is being written (a 32M-parameter model: ~0.5 GB, a write of a
    second or more): the write finishes, the run stops with exit code 130 and one line naming the checkpoint
    it kept, which loads; no temporary file and no disk message."""
    import torch

    run_dir = tmp_path / "run"
    proc = _start(run_dir, "backbone=dit_s2", "train.steps=50", "train.ckpt_every=1")
    folder = ckpt.checkpoint_dir(run_dir)
    try:
        # The temporary file exists from the first byte written until os.replace: poll for it closely.
        _wait_for(lambda: proc.poll() is not None or (folder.is_dir() and any(folder.glob(".step_*.tmp-*"))),
                  timeout=300)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        # Two SIGINTs pending at once merge into one (signals are not queued), so the child must run between
        # them: 50 ms was too little on a machine with more busy processes than cores; the write takes seconds.
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        in_write = any(folder.glob(".step_*.tmp-*"))  # both signals landed before the write finished
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = err.strip().splitlines()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and "bytes free" not in err and "unexpected pos" not in err, err
    kept = ckpt.checkpoint_path(run_dir, 1)
    assert lines[-1] == f"archbench.train: interrupted (Ctrl-C); stopped at step 1; the last checkpoint kept is {kept}"
    assert in_write, "the write finished before the signals arrived: nothing was tested"
    assert [p.name for p in folder.iterdir()] == [kept.name]  # the complete file, no temporary one
    state = torch.load(kept, map_location="cpu", weights_only=True)
    assert state["step"] == 1 and ckpt.load_checkpoint(kept)["step"] == 1


def test_signals_wait_for_a_deferred_write_then_reach_the_handlers_in_order():
    """In process: two SIGINTs inside ``signals_deferred`` change nothing until it ends; then the first is the
    stop request and the second the "stop now" KeyboardInterrupt, as if they had come just after the write."""
    import pytest

    from archbench.training.signals import StopRequest, signals_deferred

    inherited = signal.getsignal(signal.SIGINT)
    if inherited == signal.SIG_IGN:  # pytest run as a background job: Ctrl-C's disposition, as at a terminal
        signal.signal(signal.SIGINT, signal.default_int_handler)
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                assert stop.signum is None  # held back: the body runs to its end
                finished = True
        assert finished and stop.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, inherited)


def test_two_signals_during_one_long_c_call_both_count():
    """Python runs a handler once for a signal that came twice while one C call (torch.save's writes, fsync) held
    the interpreter; ``signals_deferred`` counts deliveries on the wakeup fd, so the second Ctrl-C still stops the
    run at once.  Here a thread sends both while the main thread is inside one long hashing call."""
    import hashlib
    import threading

    import pytest

    from archbench.training.signals import StopRequest, signals_deferred

    inherited = signal.getsignal(signal.SIGINT)
    if inherited == signal.SIG_IGN:  # pytest run as a background job: Ctrl-C's disposition, as at a terminal
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def two_ctrl_c() -> None:
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    try:
        with StopRequest() as stop:
            with pytest.raises(KeyboardInterrupt):
                with signals_deferred():
                    sender = threading.Thread(target=two_ctrl_c)
                    sender.start()
                    started = time.perf_counter()
                    hashlib.pbkdf2_hmac("sha256", b"archbench", b"salt", 2_000_000)  # one C call, GIL released
                    inside = time.perf_counter() - started
                    sender.join()
            assert stop.signum == signal.SIGINT
        assert inside > 0.15, f"the C call took {inside:.2f} s, too short to hold both signals: nothing was tested"
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_an_error_that_a_ctrl_c_caused_is_reported_as_the_interruption(capsys):
    """Ctrl-C inside an import can surface as another error (numpy's lazy attributes recursed until RecursionError
    when CI's Ctrl-C landed in sklearn's import): after a real SIGINT, that error is the interruption, in one line.
    Without a SIGINT the same error is not hidden."""
    from archbench.console.errors import EXIT_INTERRUPTED, interruptible

    @interruptible("archbench.demo")
    def broken_by_ctrl_c(send: bool) -> int:
        try:
            if send:
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(2)
        except KeyboardInterrupt:
            pass
        raise RecursionError("maximum recursion depth exceeded")

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a command's process (xdist workers differ)
    try:
        assert broken_by_ctrl_c(True) == EXIT_INTERRUPTED
        assert capsys.readouterr().err.strip().splitlines() == ["archbench.demo: interrupted (Ctrl-C)"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back afterwards
        with pytest.raises(RecursionError):
            broken_by_ctrl_c(False)
    finally:
        signal.signal(signal.SIGINT, previous)
