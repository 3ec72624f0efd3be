"""The tuning stage: the choice on hand-made scores, its checks, and a real tuned study (killed, re-run)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from study_support import scores, study_env, tiny_study

from archbench.evaluation.metrics import column_metrics
from archbench.study import load_study, run_study
from archbench.study.results import read_csv
from archbench.study.schema import StudySpec, TuneSpec
from archbench.study.spec import StudyError
from archbench.study.tune import DIVERGED, choices, choose

SPEC = StudySpec(name="t", tune=TuneSpec(key="train.lr", values=[1e-3, 3e-3, 1e-2], metric="fd"))


def _row(point: str, order: int, score: float, status: str = "scored") -> dict:
    return {"tunes": point, "order": order, "value": SPEC.tune.values[order], "score": score, "status": status}


@pytest.mark.parametrize(("metric", "expected"), [("fd", 3e-3), ("cond_accuracy", 1e-2)])
def test_the_best_value_by_the_metric_wins(metric, expected):
    rows = [_row("a", 0, 0.40), _row("a", 1, 0.20), _row("a", 2, 0.60)]
    assert choose(rows, column_metrics()[metric])["value"] == expected


def test_ties_go_to_the_value_listed_first_and_diverged_or_nan_never_win():
    fd = column_metrics()["fd"]
    assert choose([_row("a", 0, 5.0), _row("a", 1, 5.0)], fd)["value"] == 1e-3
    rows = [_row("a", 0, math.nan), _row("a", 1, math.nan, DIVERGED), _row("a", 2, 9.0)]
    assert choose(rows, fd)["value"] == 1e-2


def test_a_point_whose_every_candidate_diverged_is_one_clear_error():
    rows = [_row("a", 0, 1.0), _row("b", 0, math.nan, DIVERGED), _row("b", 1, math.nan, DIVERGED)]
    assert choices(SPEC, rows, require_all=False) == {"a": 1e-3}
    with pytest.raises(StudyError, match=r"tuning train.lr for b: no candidate finished .* add smaller values"):
        choices(SPEC, rows)


@pytest.mark.parametrize(("tune", "message"), [
    ({"key": "train.steps", "values": [1, 2]}, r"sets train.steps itself"),
    ({"key": "train.lr", "values": []}, r"tune.values must be a non-empty list"),
    ({"key": "train.lr", "values": [1e-3], "metric": "fid_score"}, r"tune.metric='fid_score'; valid: fd, "),
    ({"key": "train.lr", "values": [1e-3], "budget": 1.5}, r"tune.budget .* in \(0, 1\]"),
    ({"values": [1e-3]}, r"without tune.key"),
    ({"key": "train.lr", "values": [1e-3, 1e-3]}, r"repeats a value"),
])
def test_bad_tune_sections_are_refused_in_one_line(tmp_path, tune, message):
    with pytest.raises(StudyError, match=message):
        load_study(str(tiny_study(tmp_path, tune=tune)))


def test_an_arm_override_of_the_tuned_key_is_refused(tmp_path):
    arms = [{"backbone": "dit_t2", "overrides": ["train.lr=1e-3"]}]
    with pytest.raises(StudyError, match=r"arms dit_t2 sets train.lr=1e-3 but tune.key=train.lr is tuned"):
        load_study(str(tiny_study(tmp_path, arms=arms, tune={"key": "train.lr", "values": [1e-3]})))


TUNE = {"key": "train.lr", "values": [1.0e-4, 3.0e-3], "budget": 0.5, "metric": "fd"}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tuned")
    path = tiny_study(tmp, tune=TUNE, launcher={"name": "local", "workers": 2})
    return path, run_study(load_study(str(path)))


@pytest.mark.slow
def test_a_tuned_study_trains_each_arm_with_its_best_value(tuned):
    path, result = tuned
    assert not result.failed
    folder = result.study_dir
    tune_rows = read_csv(folder / "tune.csv")
    assert {(r["tunes"], r["value"]) for r in tune_rows} == {(a, v) for a in ("dit_t2", "dis_t2")
                                                             for v in ("0.0001", "0.003")}
    for arm in ("dit_t2", "dis_t2"):
        rows = [r for r in tune_rows if r["tunes"] == arm]
        best = min(rows, key=lambda r: r["fd"])
        assert [r["chosen"] for r in rows] == [str(r is best) for r in rows]
        assert all(r["step"] == round(0.5 * result.jobs[[j.label for j in result.jobs].index(arm)].steps)
                   for r in rows)
        for seed in (0, 1):
            config = yaml.safe_load((folder / "runs" / f"{arm}-s{seed}" / "config.yaml").read_text())
            assert config["train"]["lr"] == float(best["value"])
    summary = (folder / "summary.md").read_text()
    assert "## Tuning" in summary and "Tuning compute, not counted" in summary
    plan = (folder / "plan.json").read_text()
    assert "tune/dit_t2-lr0.0001-s0" in plan
    again = run_study(load_study(str(path)))
    assert again.ran == [] and read_csv(folder / "tune.csv") == tune_rows


@pytest.mark.slow
def test_a_tuned_study_killed_while_tuning_ends_with_the_same_files(tuned, tmp_path):
    path, result = tuned
    folder = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "archbench.study", str(path), f"study_dir={folder}"],
        env=study_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    first = folder / "tune" / "dit_t2-lr0.0001-s0" / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None and not first.is_file():
        time.sleep(0.2)
    assert proc.poll() is None, "the study finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    resumed = run_study(load_study(str(path), [f"study_dir={folder}"]))
    assert not resumed.failed
    assert scores(resumed.rows) == scores(result.rows)
    keep = ("tunes", "value", "fd", "chosen", "step")
    assert ([{k: r[k] for k in keep} for r in read_csv(folder / "tune.csv")]
            == [{k: r[k] for k in keep} for r in read_csv(result.study_dir / "tune.csv")])


def test_the_plan_lists_the_tuning_runs_first(tmp_path):
    path = tiny_study(tmp_path, tune=TUNE)
    proc = subprocess.run([sys.executable, "-m", "archbench.study", str(path), "--plan"], capture_output=True,
                          text=True, env=study_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    tuning, main = proc.stdout.split("Main runs:")
    assert "dis_t2-lr0.003-s0" in tuning and "dit_t2-lr0.0001-s0" in tuning and "dit_t2-s1" in main
    assert proc.stderr.count("data.name=auto") <= 1  # announced once, not once per composed arm
