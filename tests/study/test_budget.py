"""Matched budgets against hand-computed step counts; parameter matching within 2%."""

from __future__ import annotations

import pytest

from archbench.study import budget
from archbench.study.plan import arm_steps, describe_arms, make_jobs
from archbench.study.spec import StudyError, compose_study


def test_matched_steps_by_hand():
    # DiT-T/2 0.0320256 GMACs for 240 steps; DiS-T/2 0.018649856 GMACs: 240 * 0.0320256 / 0.018649856 = 412.13
    assert budget.matched_steps(240, 0.0320256 * 32, 0.018649856 * 32) == 412
    assert budget.matched_steps(300, 2.0, 3.0) == 200
    assert budget.matched_steps(10, 1.0, 1e6) == 1  # never zero steps
    with pytest.raises(StudyError):
        budget.matched_steps(10, 1.0, 0.0)


def test_train_gflops_is_six_macs_per_image_step():
    assert budget.train_gflops(gmacs=0.5, batch_size=32, steps=10) == pytest.approx(2 * 3 * 0.5 * 32 * 10)


def test_eval_points_sit_at_the_same_compute_fractions():
    assert budget.eval_points(240, 240, 120) == ([120, 240], 120)
    assert budget.eval_points(412, 240, 120) == ([206, 412], 206)
    assert budget.eval_points(177, 240, 120) == ([88, 177], 88)  # no extra point just before the end
    assert budget.eval_points(300, 300, 0) == ([300], 300)
    assert budget.eval_points(100, 300, 100)[0] == [33, 66, 100]


def test_listed_eval_points_keep_their_compute_fractions_on_a_checkpoint_grid():
    assert budget.eval_points(2000, 2000, [125, 250, 500, 1000]) == ([125, 250, 500, 1000, 2000], 125)
    points, interval = budget.eval_points(1342, 2000, [125, 250, 500, 1000])
    assert interval == 84 and points == [84, 168, 336, 672, 1342]
    assert all(p % interval == 0 for p in points[:-1])
    assert budget.eval_points(500, 2000, [1000, 4000]) == ([250, 500], 250)  # beyond the budget: dropped
    assert budget.eval_points(300, 300, [300]) == ([300], 300)


def test_flops_matched_study_plan_uses_the_flop_counter():
    spec = compose_study({"name": "m", "recipe": "ci_fid", "arms": [{"backbone": "dit_t2"}, {"backbone": "dis_t2"}],
                      "budget": {"match": "train_flops", "steps": 240, "reference": "dit_t2"},
                      "overrides": ["train.batch_size=32"], "seeds": [0, 1], "eval": {"every": 120}})
    points = describe_arms(spec)
    steps = arm_steps(spec, points)
    ref, other = points
    assert steps["dit_t2"] == 240
    assert steps["dis_t2"] == round(240 * ref.gmacs / other.gmacs)
    jobs = make_jobs(spec, points, steps)
    assert [j.run_name for j in jobs] == ["dit_t2-s0", "dit_t2-s1", "dis_t2-s0", "dis_t2-s1"]
    assert jobs[2].eval_steps == [steps["dis_t2"] // 2, steps["dis_t2"]] and jobs[2].ckpt_every == steps["dis_t2"] // 2


def test_per_arm_batch_enters_the_compute():
    spec = compose_study({"name": "m", "recipe": "ci_fid", "budget": {"match": "train_flops", "steps": 100},
                      "arms": [{"backbone": "dit_t2"},
                               {"name": "dit_big_batch", "backbone": "dit_t2", "overrides": ["train.batch_size=64"]}]})
    assert arm_steps(spec, describe_arms(spec)) == {"dit_t2": 100, "dit_big_batch": 50}


def test_nearest_size_on_a_known_curve():
    def count(w):
        return w * w

    assert budget.nearest_size(10_000, count, 8, 64) == (96, 9216) or budget.nearest_size(10_000, count, 8, 64) == (
        104, 10816)
    assert budget.nearest_size(10_000, count, 10, 10) == (100, 10_000)


@pytest.mark.parametrize(("backbone", "target"), [("dit_t2", 4.2e5), ("dis_t2", 4.0e5), ("unet_t", 2.6e6)])
def test_match_params_lands_within_two_percent(backbone, target):
    spec = compose_study({"name": "p", "recipe": "ci_fid", "arms": [{"backbone": backbone, "match_params": target}]})
    (point,) = describe_arms(spec)
    assert abs(point.params - target) / target <= 0.02, point
    assert any(o.startswith("backbone.") for o in point.overrides[-1:])


def test_match_params_by_depth_and_impossible_targets():
    spec = compose_study({"name": "p", "recipe": "ci_fid",
                      "arms": [{"backbone": "dit_t2", "match_params": 5.6e5, "match_by": "depth"}]})
    (point,) = describe_arms(spec)
    assert point.overrides[-1] == "backbone.depth=3" and abs(point.params - 5.6e5) / 5.6e5 <= 0.02
    bad = compose_study({"name": "p", "recipe": "ci_fid",
                     "arms": [{"backbone": "dit_t2", "match_params": 6.0e5, "match_by": "depth"}]})
    with pytest.raises(StudyError, match="try match_by=width"):
        describe_arms(bad)


def test_widths_with_heads_stay_divisible_by_them():
    """Linear attention and attention hybrids have heads too: resizing them must keep whole head dimensions."""
    assert budget.size_step({"num_heads": 3, "mixer": "linear_attention"}, "width") == 12
    assert budget.size_step({"num_heads": 3, "mixer": "bimamba", "attention_every": 2}, "width") == 12
    assert budget.size_step({"num_heads": 3, "mixer": "bimamba", "attention_every": 0}, "width") == 2
    assert budget.size_step({"num_heads": 3, "mixer": "mamba2"}, "width") == 4
