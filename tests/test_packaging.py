"""A non-editable install (the built wheel, in a fresh virtual environment) has its recipes, baselines and the CPU
kernel's sources, and can train: nothing depends on running from the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def share_dependencies(python: Path) -> None:
    """Let the venv of ``python`` import this environment's packages (torch and friends), wherever the project was
    installed: a ``.pth`` file lists the *running* interpreter's site directories. (``--system-site-packages`` would
    give the base interpreter's, which hold the dependencies only when the project went into the system Python.)
    Paths a ``.pth`` adds come after the venv's own site-packages, and their own ``.pth`` files (an editable
    install's finder among them) are not run, so ``archbench`` itself still comes from the wheel. The running
    interpreter's ``sys.path`` site directories cover a plain venv, a ``--system-site-packages`` one and the
    system Python alike."""
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (Path(own) / "archbench-test-deps.pth").write_text("\n".join(ours) + "\n")


@pytest.mark.slow
def test_the_wheel_installs_and_trains_outside_the_checkout(tmp_path):
    pytest.importorskip("setuptools")
    wheels, source = tmp_path / "wheels", tmp_path / "source"
    # Built from a copy without the checkout's egg-info: setuptools adds every file an old SOURCES.txt lists, which
    # hid a kernel header the package data did not name until a fresh clone's wheel lacked it.
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "*.egg-info", "build", "dist", "runs", "__pycache__", ".*_cache", ".benchmarks", ".venv", "venv"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), source],
        capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("archbench-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    share_dependencies(python)
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)

    where = run("-c", "import archbench, archbench.training.config as c; print(archbench.__file__, c.recipes_dir())")
    assert where.returncode == 0, where.stderr
    package_file, recipes = where.stdout.split()
    assert package_file.startswith(str(venv)) and recipes.startswith(str(venv)), where.stdout
    assert (Path(recipes) / "ci_fid.yaml").is_file() and (Path(recipes) / "baselines" / "dis_t4.json").is_file()
    kernel = run("-c", "from backbones.ssm import cpu_kernel as k; print(*(p.is_file() for p in (k.SOURCE, "
                 "k.CONV_SOURCE, k.HEADER)), k.SOURCE)")
    assert kernel.stdout.split()[:3] == ["True"] * 3, kernel.stdout + kernel.stderr  # all it builds from
    assert kernel.stdout.split()[3].startswith(str(venv)), kernel.stdout
    weights = run("-c", "from archbench.study.regression import feature_weights as w; print(w().is_file())")
    assert weights.stdout.strip() == "True", weights.stderr
    trained = run("-m", "archbench.train", "recipe=digits", "backbone=dit_t2", "data.image_size=8", "train.steps=2",
                  "train.batch_size=8", "train.logger=none", "train.progress=false", "sample.num_samples=2",
                  "sample.steps=2", f"run_dir={work / 'run'}")
    assert trained.returncode == 0, trained.stderr
    assert (work / "run" / "checkpoints" / "step_0000002.pt").is_file()
