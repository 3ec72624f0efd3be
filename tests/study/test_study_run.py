"""A tiny study end to end: local and submitit's local executor, re-runs, kill -9 and resume.

Every run is a real training run in a real spawned process (or a submitit subprocess); CPU runs are
deterministic, so results must agree to the last digit whatever happened in between.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from study_support import scores, study_env, tiny_study

from archbench.study import load_study, run_study
from archbench.study.results import COLUMNS, read_csv
from archbench.study.spec import StudyError

pytestmark = pytest.mark.slow
OUTPUTS = ("results.csv", "summary.md", "fd_vs_compute.png", "fd_vs_wallclock.png", "fd_vs_params.png",
           "fd_vs_gmacs.png", "samples.png")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The uninterrupted tiny study, two local workers."""
    tmp = tmp_path_factory.mktemp("study")
    path = tiny_study(tmp, launcher={"name": "local", "workers": 2})
    result = run_study(load_study(str(path)))
    return path, result


def test_outputs_exist_and_parse(finished):
    path, result = finished
    assert not result.failed and sorted(result.ran) == ["dis_t2-s0", "dis_t2-s1", "dit_t2-s0", "dit_t2-s1"]
    folder = result.study_dir
    for name in OUTPUTS:
        assert (folder / name).is_file(), name
    for name in OUTPUTS[2:]:
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.size[0] > 100
    with open(folder / "results.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header[: len(COLUMNS)]) == COLUMNS
    rows = read_csv(folder / "results.csv")
    # dit_t2 trains 6 steps (evaluated at 3, 6); dis_t2 the same FLOPs in round(6 * dit/dis GMACs) = 10 steps
    assert sorted((r["label"], r["seed"], r["step"]) for r in rows) == sorted(
        [("dit_t2", s, k) for s in (0, 1) for k in (3, 6)] + [("dis_t2", s, k) for s in (0, 1) for k in (5, 10)])
    for row in rows:
        assert row["fd"] > 0 and row["wall_s"] > 0 and row["peak_mem_mb"] > 50 and row["params"] > 0
        assert row["load_1m"] >= 0  # the machine's load, logged by the run while it trained
        assert row["train_gflops"] == pytest.approx(6 * row["gmacs"] * 16 * row["step"])
    dit, dis = (next(r for r in rows if r["label"] == n and r["step"] == r["steps"]) for n in ("dit_t2", "dis_t2"))
    assert dit["train_gflops"] == pytest.approx(dis["train_gflops"], rel=0.06)  # matched compute
    summary = (folder / "summary.md").read_text()
    assert "| dis_t2 | 267,592 |" in summary
    assert "Nothing is ranked: no arm has learned yet" in summary  # a few steps: not above chance
    assert "Student-t" in summary
    grid = json.loads((folder / "samples.json").read_text())
    assert sorted(grid["rows"]) == ["dis_t2", "dit_t2"]
    for job in result.jobs:  # ordinary training runs, pruned to their evaluated checkpoints
        run = Path(job.run_dir)
        assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step_{s:07d}.pt" for s in job.eval_steps]


def test_rerun_of_a_finished_study_does_no_work(finished):
    path, result = finished
    folder = result.study_dir
    stamps = {p: p.stat().st_mtime_ns for p in (folder / "runs").rglob("*") if p.is_file()}
    again = run_study(load_study(str(path)))
    assert again.ran == [] and not again.failed
    assert {p: p.stat().st_mtime_ns for p in (folder / "runs").rglob("*") if p.is_file()} == stamps
    assert scores(read_csv(folder / "results.csv")) == scores(result.rows)


@pytest.mark.parametrize(("edit", "expected"), [
    (["arms=[{backbone: dit_t2, overrides: [train.lr=0.005]}, {backbone: dis_t2}]"], r"train.lr: 0.001 -> 0.005"),
    (["recipe=digits", "eval.features=fashion_mnist_cnn"], r"data.name: 'fashion_mnist' -> 'digits'"),
])
def test_an_edited_study_never_reuses_runs_trained_otherwise(finished, edit, expected):
    """Issue 23.1: the old runs' scores must not be passed off as the edited experiment's; refused in one line
    naming the arm, the key, old and new value, and what to do; nothing is trained or rewritten."""
    path, result = finished
    folder = result.study_dir
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(StudyError, match=r"arm dit_t2: run .*dit_t2-s0 was trained with other settings") as info:
        run_study(load_study(str(path), edit))
    message = str(info.value)
    assert re.search(expected, message) and "fresh study_dir=" in message and "\n" not in message
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != ".lock"} == {
        p: t for p, t in stamps.items() if p.name != ".lock"}


def test_a_lowered_budget_is_refused_before_anything_is_rewritten(finished):
    """Issue 23.5: the new evaluation points sit on pruned checkpoints: one line, results.csv kept whole."""
    path, result = finished
    table = (result.study_dir / "results.csv").read_text()
    with pytest.raises(StudyError, match=r"is trained to step 6 and the study now scores it at step\(s\) 2, 4, "
                                         r"whose checkpoints were not kept"):
        run_study(load_study(str(path), ["budget.steps=4", "eval.every=2"]))
    assert (result.study_dir / "results.csv").read_text() == table


def test_changed_eval_settings_reevaluate_without_training(finished, tmp_path):
    path, result = finished
    spec = load_study(str(path), ["eval.num_samples=30", "seeds=[0]"])
    before = {j.run_dir: (Path(j.run_dir) / "metrics.jsonl").read_text() for j in result.jobs}
    again = run_study(spec)
    assert sorted(again.ran) == ["dis_t2-s0", "dit_t2-s0"]
    assert {r["num_samples"] for r in again.rows} == {30}
    assert {j.run_dir: (Path(j.run_dir) / "metrics.jsonl").read_text() for j in result.jobs} == before


def test_submitit_local_executor_gives_the_same_results(finished, tmp_path):
    pytest.importorskip("submitit")
    path, result = finished
    spec = load_study(str(path), ["launcher=submitit", "launcher.cluster=local", f"study_dir={tmp_path / 'sub'}"])
    sub = run_study(spec)
    assert not sub.failed and len(sub.ran) == 4
    assert list((tmp_path / "sub" / "submitit").glob("*_result.pkl"))  # submitit really ran the jobs
    assert scores(sub.rows) == {k: v for k, v in scores(result.rows).items()}


def _processes_in_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.parametrize("kill_group", [False, True], ids=["study-process", "whole-group"])
def test_kill_9_then_rerun_ends_with_the_same_results(finished, tmp_path, kill_group):
    path, result = finished
    folder = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "archbench.study", str(path), f"study_dir={folder}"],
        env=study_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    first = folder / "runs" / "dit_t2-s0" / "checkpoints"
    while time.monotonic() < deadline and proc.poll() is None and not (first.is_dir() and any(first.iterdir())):
        time.sleep(0.2)
    assert proc.poll() is None, "the study finished before it could be killed"
    if kill_group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)  # the workers notice (SIGTERM from the kernel), save and stop
    proc.wait(timeout=60)
    deadline = time.monotonic() + 120
    while _processes_in_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_in_group(proc.pid), "a worker outlived the study process"
    assert not (folder / "results.csv").exists() or len(read_csv(folder / "results.csv")) < 8
    resumed = run_study(load_study(str(path), [f"study_dir={folder}"]))
    assert not resumed.failed
    assert scores(resumed.rows) == scores(result.rows)
