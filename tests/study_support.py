"""A tiny study (two arms x two seeds x a few steps) and helpers to run it, for the study tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TIMING_COLUMNS = ("wall_s", "s_per_step", "peak_mem_mb", "load_1m")  # what the machine, not the study, decides


def tiny_study(tmp_path: Path, name: str = "tiny", **changes: Any) -> Path:
    """Write a tiny study file; ``changes`` replace top-level keys."""
    study = {
        "name": name,
        "recipe": "ci_fid",
        "overrides": ["train.batch_size=16", "train.warmup_steps=2", "sample.num_samples=10"],
        "arms": [{"backbone": "dit_t2"}, {"backbone": "dis_t2"}],
        "seeds": [0, 1],
        "budget": {"match": "train_flops", "steps": 6, "reference": "dit_t2"},
        "eval": {"every": 3, "num_samples": 20, "steps": 4, "batch_size": 20},
        "grid": {"columns": 5},
        "threads": 1,
        "device": "cpu",
        "progress_every": 1,
        "study_dir": str(tmp_path / name),
        **changes,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def study_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_study_cli(*args: str, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archbench.study", *args], capture_output=True, text=True,
                          timeout=timeout, env=study_env(), cwd=kwargs.pop("cwd", REPO), **kwargs)


def scores(rows: list[dict[str, Any]]) -> dict[tuple, tuple]:
    """Everything but the timing columns, keyed by (label, seed, step)."""
    return {(r["label"], r["seed"], r["step"]): tuple((k, v) for k, v in sorted(r.items()) if k not in TIMING_COLUMNS)
            for r in rows}
