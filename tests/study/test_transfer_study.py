"""arms[].init_from and budget_share: a pre-training arm, a fine-tuning arm that starts from its runs (trained
second, the pre-training's FLOPs and wall-clock counted on its side) and a scratch arm, in a real tiny study."""

from __future__ import annotations

import json

import pytest
from study_support import tiny_study

from archbench.study import load_study, run_study
from archbench.study.budget import train_gflops
from archbench.study.schema import StudyError
from archbench.training.init_from import file_sha256

ARMS = [
    {"name": "scratch16", "backbone": "dis_t2"},
    {"name": "pre8", "backbone": "dis_t2", "overrides": ["data.image_size=8"], "budget_share": 0.5},
    {"name": "tuned16", "backbone": "dis_t2", "init_from": "pre8"},
]


@pytest.mark.slow
def test_a_fine_tuning_arm_starts_from_its_source_and_pays_for_it(tmp_path):
    path = tiny_study(tmp_path, arms=ARMS, seeds=[0], budget={"match": "train_flops", "steps": 8,
                                                               "reference": "scratch16"},
                      eval={"every": 0, "num_samples": 10, "steps": 2, "batch_size": 10})
    result = run_study(load_study(str(path)))
    assert not result.failed
    jobs = {job.arm: job for job in result.jobs}
    pre, tuned, scratch = jobs["pre8"], jobs["tuned16"], jobs["scratch16"]
    budget = train_gflops(scratch.gmacs, scratch.batch_size, scratch.steps)
    pre_cost = train_gflops(pre.gmacs, pre.batch_size, pre.steps)
    assert pre_cost == pytest.approx(budget / 2, rel=0.25)  # half the budget, rounded to whole steps
    assert tuned.init_from == pre.run_dir and tuned.pre_gflops == pytest.approx(pre_cost)
    assert train_gflops(tuned.gmacs, tuned.batch_size, tuned.steps) + pre_cost == pytest.approx(budget, rel=0.1)
    record = json.loads((tmp_path / "tiny" / "runs" / "tuned16-s0" / "init_from.json").read_text())
    assert record["file"].startswith(pre.run_dir) and record["sha256"] == file_sha256(record["file"])
    assert [r["name"] for r in record["reshaped"]] == ["pos_embed"]  # 8x8 -> 16x16: resized
    rows = {row["arm"]: row for row in result.rows if row["step"] == jobs[row["arm"]].steps}
    assert rows["tuned16"]["train_gflops"] == pytest.approx(budget, rel=0.1)
    pre_seconds = rows["pre8"]["wall_s"]
    assert rows["tuned16"]["wall_s"] > pre_seconds  # its own training plus the pre-training's
    summary = (tmp_path / "tiny" / "summary.md").read_text()
    table, rankings = summary.split("## Ranking", 1)
    assert "| pre8 |" in table and "Pre-training arms (pre8:" in table  # shown, but a stage of tuned16's training
    assert "pre8" not in rankings and "tuned16" in rankings and "scratch16" in rankings


@pytest.mark.parametrize(("arms", "message"), [
    ([{"backbone": "dit_t2", "init_from": "nope"}], "arms\\[0\\].init_from='nope' must name another arm"),
    ([{"backbone": "dit_t2", "init_from": "dit_t2"}], "must name another arm"),
    ([{"name": "a", "backbone": "dit_t2"}, {"name": "b", "backbone": "dit_t2", "init_from": "a"},
      {"name": "c", "backbone": "dit_t2", "init_from": "b"}], "an arm may start only from an arm trained from scratch"),
    ([{"backbone": "dit_t2", "budget_share": 0}], "budget_share must lie in \\(0, 1\\]"),
])
def test_bad_sources_and_shares_are_refused_in_one_line(tmp_path, arms, message):
    with pytest.raises(StudyError, match=message):
        load_study(str(tiny_study(tmp_path, arms=arms)))


def test_tuning_with_fine_tuning_arms_is_refused(tmp_path):
    path = tiny_study(tmp_path, arms=ARMS, tune={"key": "train.lr", "values": [1e-3, 3e-3]},
                      budget={"match": "train_flops", "steps": 8, "reference": "scratch16"})
    with pytest.raises(StudyError, match="tune the source arms in a study of their own"):
        load_study(str(path))
