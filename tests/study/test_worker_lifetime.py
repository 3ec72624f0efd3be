"""kill -9 of the study process, at the three moments that used to leave a local worker running (parent PID 1,
still training or evaluating and holding its run's lock): in a worker's first moments, at the boundary
between two jobs, and right after a run's last training step.

Real study processes, real spawned workers, a real SIGKILL; every process the study started carries a marker in
its environment, so the test finds them in /proc whoever their parent is by then.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from study_support import study_env, tiny_study

from archbench.training import checkpoint as ckpt

pytestmark = pytest.mark.slow
MARKER = "ARCHBENCH_TEST_STUDY_MARKER"
STEPS = 6
GONE_WITHIN = 30.0  # seconds for every worker to end after the kill (0.1-2 s measured on a loaded 2-core machine)


def _processes(marker: str) -> dict[int, str]:
    """Live processes (not zombies) whose environment holds ``marker``: the study and all it started."""
    tag = f"{MARKER}={marker}".encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                if tag not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                found[int(name)] = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[1])
    except OSError:
        return None


def _workers(marker: str, study: int) -> set[int]:
    """The study's pool workers (not what they start: between fork and exec a child shows its parent's command)."""
    return {pid for pid, cmdline in _processes(marker).items() if "spawn_main" in cmdline and _parent(pid) == study}


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 300.0, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert proc.poll() is None, f"the study ended (exit code {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return value


def _last_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # the line being written
            pass
    return max((row["step"] for row in rows), default=0)


def _lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _loading_torch(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps", "rb") as handle:
            return b"libtorch" in handle.read()
    except OSError:
        return False


def _first_worker(marker, folder, proc):
    """Kill in the first worker's first second: while it imports torch (before any work; before the fix, also
    before the parent-death signal was set)."""
    _wait_for(lambda: any(_loading_torch(pid) for pid in _workers(marker, proc.pid)), "a worker loading torch",
              proc)


def _between_jobs(marker, folder, proc):
    """Kill when the second job's worker is starting (loading torch): the first job is done (trained and scored),
    the next one is queued for that worker."""
    first = _wait_for(lambda: _workers(marker, proc.pid), "the first worker", proc)
    _wait_for(lambda: any(_loading_torch(pid) for pid in _workers(marker, proc.pid) - first),
              "the second job's worker", proc)
    assert (folder / "runs" / "dit_t2-s0" / "evals" / f"step_{STEPS:07d}.json").is_file()


def _after_last_step(marker, folder, proc):
    """Kill when the first run's last metrics row is written: its last step is done, its checkpoint and its
    evaluations are next."""
    run = folder / "runs" / "dit_t2-s0"
    _wait_for(lambda: _last_step(run) >= STEPS, "the last training step", proc, every=0.01)


@pytest.mark.parametrize("moment", [_first_worker, _between_jobs, _after_last_step],
                         ids=["first-second", "between-jobs", "after-last-step"])
def test_kill_9_of_the_study_ends_every_worker_and_frees_every_lock(tmp_path, moment):
    path = tiny_study(tmp_path, arms=[{"backbone": "dit_t2"}], budget={"match": "train_flops", "steps": STEPS,
                      "reference": "dit_t2"}, launcher={"name": "local", "workers": 1},
                      eval={"every": 0, "num_samples": 20, "steps": 4, "batch_size": 20})  # one job, then the next
    folder = tmp_path / "tiny"
    marker = uuid.uuid4().hex
    env = {**study_env(), MARKER: marker, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "study.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "archbench.study", str(path)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        moment(marker, folder, proc)
        os.kill(proc.pid, signal.SIGKILL)
        killed, killed_at = time.monotonic(), time.time()
        proc.wait(timeout=60)
        while (left := _processes(marker)) and time.monotonic() - killed < GONE_WITHIN:
            time.sleep(0.05)
        took = time.monotonic() - killed
        assert not left, f"still running {took:.0f} s after kill -9 of the study: {left}"
        print(f"{moment.__name__}: every worker gone {took:.1f} s after the kill")
        locks = [folder / ".lock", *folder.glob("runs/*/.lock")]
        assert [lock for lock in locks if not _lock_is_free(lock)] == []
        # Nothing was scored after the kill: no worker went on to evaluate for a study that no longer exists.
        assert [p for p in folder.glob("runs/*/evals/*.json") if p.stat().st_mtime > killed_at] == []
        if moment is _after_last_step:  # it stopped before scoring, and left whole checkpoints only
            run = folder / "runs" / "dit_t2-s0"
            assert not list((run / "evals").glob("*.json"))
            assert not list(ckpt.checkpoint_dir(run).glob(".*.tmp-*"))
            for path in ckpt.list_checkpoints(run):
                ckpt.load_checkpoint(path)
        if moment is _between_jobs:  # the second job's worker did nothing
            assert not list((folder / "runs" / "dit_t2-s1").glob("evals/*.json"))
    finally:
        for pid in _processes(marker):  # a failed test leaves nothing behind
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
