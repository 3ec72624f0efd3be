"""A worker dies with the process that started it: the parent-death signal, and a parent already gone before
the worker could arm it (real processes, real kill -9)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_child_dies_when_its_parent_is_killed_9(tmp_path):
    """The parent starts a child tied to it (preexec: armed before the child runs any code), then is killed."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        from archbench.console.lifeline import child_dies_with_us
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 preexec_fn=child_dies_with_us())
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(120)
    """)], env=_env())
    try:
        deadline = time.monotonic() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert _alive(child)
        parent.kill()
        parent.wait()
        assert _wait_gone(child), "the child outlived its parent"
    finally:
        parent.kill()


def test_a_worker_whose_parent_died_before_it_armed_the_signal_exits_at_once(tmp_path):
    """The race the signal alone misses: the parent is gone before the worker's first line runs."""
    out = tmp_path / "child.out"
    parent = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, subprocess, sys
        code = ("import os, sys, time\\n"
                "while os.getppid() == int(sys.argv[1]): time.sleep(0.01)\\n"  # until the parent has exited
                "from archbench.console.lifeline import die_with_parent\\n"
                "die_with_parent(int(sys.argv[1]))\\n"
                "open(sys.argv[2], 'w').write('still running')\\n")
        subprocess.Popen([sys.executable, "-c", code, str(os.getpid()), {str(out)!r}], start_new_session=True)
        print(os.getpid())
    """)], env=_env(), capture_output=True, text=True, timeout=60)
    assert parent.returncode == 0, parent.stderr
    # The orphan is not our child (no wait()): it must end, without having written anything.
    deadline = time.monotonic() + 30
    while any(_orphans(parent.stdout.strip())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_orphans(parent.stdout.strip())), "the orphan is still running"
    assert not out.exists(), "the orphan went on working"


def _orphans(parent_pid: str):
    """Live processes started with the dead parent's PID as their first argument."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as handle:
                    args = handle.read().split(b"\0")
            except OSError:
                continue
            if len(args) > 3 and args[1] == b"-c" and args[3] == parent_pid.encode() and _alive(int(name)):
                yield int(name)
