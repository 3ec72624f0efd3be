"""Helpers shared by the training, checkpoint, sample and DDP tests (this module holds no tests itself).

Every run trains on scikit-learn's bundled digits, so the tests need no network and no optional data.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _fashion_mnist_skip() -> pytest.MarkDecorator:
    from archbench.data import fashion_mnist

    return pytest.mark.skipif(
        not fashion_mnist.files_present(),
        reason=f"Fashion-MNIST not installed in {fashion_mnist.FASHION_MNIST_DIR} "
               "(apt-get install dataset-fashion-mnist)",
    )


needs_fashion_mnist = _fashion_mnist_skip()

# A few-second run: dit_t2 at the digits' native 8x8, class dropout included (it draws from the global RNG,
# so resume tests also check the RNG states round-trip).
QUICK = [
    "recipe=digits",
    "backbone=dit_t2",
    "data.image_size=8",
    "train.batch_size=16",
    "train.log_every=1",
    "train.sample_every=0",
    "train.ckpt_every=0",
    "train.progress=false",
    "train.logger=none",
    "sample.num_samples=4",
    "sample.steps=2",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain little from intra-op threads, and on a busy machine two spinning threads per process
    make steps 10x slower; test modules import this fixture to run single-threaded."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_train(run_dir: Path, *overrides: str) -> int:
    """``python -m archbench.train`` in-process; returns its exit code."""
    from archbench.train import main

    return main([*QUICK, f"run_dir={run_dir}", *overrides])


def losses(run_dir: Path) -> list[float]:
    """The ``loss`` column of ``run_dir/metrics.jsonl``, in step order."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    return [r["loss"] for r in rows]


def cli_env() -> dict[str, str]:
    """Environment for subprocess runs: the repo importable, one thread per process, no colour/bar noise."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a module of archbench as a real process (``python -m ...``) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=cli_env(), cwd=REPO
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
