"""Wall-clock budgets, a job trained through torchrun, the sweep plot and the ranking's wording."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from study_support import tiny_study

from archbench.study import load_study, run_study
from archbench.study.budget import matched_steps
from archbench.study.plots import write_plots


@pytest.mark.slow
def test_wall_clock_budget_times_each_arm_once(tmp_path):
    path = tiny_study(tmp_path, seeds=[0], budget={"match": "wall_clock", "steps": 4, "reference": "dit_t2",
                                                   "timing_steps": 3},
                      eval={"every": 0, "num_samples": 10, "steps": 2, "batch_size": 10})
    result = run_study(load_study(str(path)))
    assert not result.failed
    timing = json.loads((tmp_path / "tiny" / "timing.json").read_text())
    assert sorted(timing) == ["dis_t2", "dit_t2"] and all(v > 0 for v in timing.values())
    steps = {job.label: job.steps for job in result.jobs}
    assert steps["dit_t2"] == 4
    assert steps["dis_t2"] == matched_steps(4, timing["dit_t2"], timing["dis_t2"])
    again = run_study(load_study(str(path)))  # timing.json is reused: same budgets, nothing to do
    assert again.ran == [] and json.loads((tmp_path / "tiny" / "timing.json").read_text()) == timing


@pytest.mark.slow
def test_a_multi_rank_job_trains_through_torchrun(tmp_path):
    path = tiny_study(tmp_path, arms=[{"backbone": "dit_t2"}], seeds=[0],
                      launcher={"name": "local", "gpus_per_job": 2},  # on the CPU: two gloo ranks
                      eval={"every": 0, "num_samples": 10, "steps": 2, "batch_size": 10})
    result = run_study(load_study(str(path)))
    assert not result.failed and len(result.rows) == 1
    log = (tmp_path / "tiny" / "runs" / "dit_t2-s0" / "train.log").read_text()
    assert "global batch 16 = 2 rank(s)" in log


def _rows(depths, gap=0.0):
    rows = []
    for arm in ("dis", "dit"):
        for depth in depths:
            for seed in (0, 1, 2):
                for step in (5, 10):
                    rows.append({"arm": arm, "label": f"{arm}-depth{depth}", "backbone": f"{arm}_t2", "seed": seed,
                                 "step": step, "steps": 10, "train_gflops": 2.0 * step, "wall_s": 0.5 * step,
                                 "params": 1000 * depth, "gmacs": 0.01 * depth, "score_name": "FD",
                                 "fd": 50.0 / depth + seed + (10 - step) + (gap if arm == "dit" else 0.0),
                                 "sweep.backbone.depth": depth})
    return rows


def test_plots_include_the_sweep_axis(tmp_path):
    paths = write_plots(_rows([2, 4, 8]), tmp_path, "synthetic")
    names = sorted(p.name for p in paths)
    assert names == ["fd_vs_backbone_depth.png", "fd_vs_compute.png", "fd_vs_gmacs.png", "fd_vs_params.png",
                     "fd_vs_wallclock.png"]
    for p in paths:
        with Image.open(p) as image:
            assert image.format == "PNG"
    assert write_plots([], tmp_path / "none", "empty") == []


def test_summary_calls_noise_noise_and_a_gap_a_gap():
    from archbench.study.spec import compose_study
    from archbench.study.summary import render

    spec = compose_study({"name": "s", "arms": [{"backbone": "dis_t2"}, {"backbone": "dit_t2"}]})
    close = render(spec, _rows([4], gap=0.5), "test machine")
    assert "dis-depth4 and dit-depth4 are **within noise**" in close and "includes 0" in close
    far = render(spec, _rows([4], gap=20.0), "test machine")
    assert "dis-depth4 is better than dit-depth4" in far and "excludes 0" in far
    assert "| dis-depth4 | 4,000 |" in far and "13.50 +- 2.48" in far  # mean 13.5, sd 1, t(0.975, 2) = 4.303
