"""summary.md's rankings at equal training FLOPs and wall-clock, the equal-parameter line, the not-learned flag, and
the conditional-accuracy plots, on hand-made results rows."""

from __future__ import annotations

from PIL import Image

from archbench.study.plots import _curves, write_plots
from archbench.study.schema import ArmSpec, BudgetSpec, EvalSpec, StudySpec
from archbench.study.summary import render, write_summary


def _spec(match="steps", seeds=(0, 1, 2)):
    return StudySpec(name="s", recipe="default", seeds=list(seeds), arms=[ArmSpec("a", "a"), ArmSpec("b", "b")],
                     budget=BudgetSpec(match=match, steps=10), eval=EvalSpec(num_samples=500, steps=25))


def _row(label, seed, step, gflops, wall, fd, acc=0.5, params=1000, **extra):
    return {"arm": label, "label": label, "backbone": "dit_t2", "seed": seed, "step": step, "steps": 10,
            "train_gflops": gflops, "wall_s": wall, "params": params, "gmacs": 0.01, "score_name": "FD",
            "dataset": "fashion_mnist", "fd": fd, "cond_accuracy": acc, "num_samples": None if acc is None else 500,
            **extra}


def _crossing(acc_a=0.5, acc_b=0.5, params_b=1015):
    """a ends worse than b, but at b's-and-a's common 0.2 PFLOPs a is better; a's seeds 1 and 2 start late in
    wall-clock. FDs: a 40+s -> 30+s over 1e5..2e5 GFLOPs; b 50+s -> 20+s over 1.5e5..3e5 GFLOPs."""
    rows = []
    for s in range(3):
        rows += [_row("a", s, 5, 1e5, 10.0 + 0.5 * s, 40.0 + s, acc_a), _row("a", s, 10, 2e5, 20.0, 30.0 + s, acc_a)]
        rows += [_row("b", s, 5, 1.5e5, 5.0, 50.0 + s, acc_b, params_b),
                 _row("b", s, 10, 3e5, 10.0, 20.0 + s, acc_b, params_b)]
    return rows


def _section(text, title):
    start = text.index(title)
    end = text.find("\n### ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_equal_budget_readings_match_hand_numbers():
    text = render(_spec(), _crossing(), "test machine")
    assert "interpolated linearly in x between its two neighbouring evaluations" in text
    final = _section(text, "### At the end of training")
    assert "1. **b**: 21.00 +- 2.48" in final and "b is better than a" in final  # t(0.975, 2) = 4.303, sd 1
    flops = _section(text, "### At equal training FLOPs")
    assert "### At equal training FLOPs: 0.2 PFLOPs" in flops
    # b at 2e5: 50+s + (20 - 50) * (2e5 - 1.5e5) / 1.5e5 = 40+s
    assert "| a | 31.00 +- 2.48 | 0.500 | 3 of 3 |" in flops and "| b | 41.00 +- 2.48 | 0.500 | 3 of 3 |" in flops
    assert "1. **a**: 31.00 +- 2.48" in flops and "a is better than b" in flops and "excludes 0" in flops
    wall = _section(text, "### At equal wall-clock")
    assert "### At equal wall-clock: 10.0 s" in wall  # b's final wall-clock, the smallest
    assert "| a | 40.00 | 0.500 | 1 of 3 |" in wall and "| b | 21.00 +- 2.48 | 0.500 | 3 of 3 |" in wall
    assert ("a is not read at this budget (never extrapolated): seed 1: its first evaluation is later, at 10.5 s; "
            "seed 2: its first evaluation is later, at 11.0 s") in wall
    assert "b vs a: 19.00 apart, but with one seed there is no interval: not tested (add seeds)" in wall


def test_equal_parameters_line():
    matched = render(_spec(), _crossing(params_b=1015), "test machine")
    assert "so the final ranking is also the ranking at equal parameters" in matched
    differ = render(_spec(), _crossing(params_b=1030), "test machine")
    assert "Parameters differ (a 1,000, b 1,030; more than 2% apart): no equal-parameter reading is made." in differ


def test_flops_matched_budget_says_it_is_the_final_budget_again():
    text = render(_spec("train_flops"), _crossing(), "test machine")
    assert "With budget.match=train_flops the arms were already trained to (nearly) this budget" in text
    assert "budget.match=train_flops" not in render(_spec(), _crossing(), "test machine").split("## Ranking")[1]


def test_an_arm_at_chance_is_flagged_and_left_out_of_every_ranking():
    text = render(_spec(), _crossing(acc_a=0.10, acc_b=0.30), "test machine")
    # a: 150 of 1500 pooled, Clopper-Pearson [0.085, 0.116] includes 0.1; b: 450 of 1500, [0.277, 0.324]
    assert "| **not learned yet** [0.085, 0.116] |" in text.split("\n| a |")[1].split("\n")[0]
    assert "| yes [0.277, 0.324] |" in text.split("\n| b |")[1].split("\n")[0]
    # three FD rankings and the end of training's conditional-accuracy ranking
    assert text.count("- Left out (not learned yet: conditional accuracy not above chance): a") == 4
    for title in ("### At the end of training", "### At equal training FLOPs", "### At equal wall-clock"):
        section = _section(text, title)
        assert "1. **b**" in section and "**a**" not in section and "2. " not in section


def test_a_study_where_no_arm_has_learned_ranks_nothing():
    text = render(_spec(), _crossing(acc_a=0.10, acc_b=0.09), "test machine")
    assert text.count("Nothing is ranked: no arm has learned yet") == 4
    assert "1. **" not in text and "Welch" not in text


def test_the_end_of_training_is_ranked_by_conditional_accuracy_too():
    """FD can tie while the arms condition differently: a second ranking, higher accuracy first, with Welch's
    interval over seeds."""
    rows = []
    for s, (acc_a, acc_b) in enumerate([(0.80, 0.70), (0.82, 0.74), (0.84, 0.72)]):
        rows += [_row("a", s, 10, 2e5, 20.0, 30.0 + s, acc_a), _row("b", s, 10, 2e5, 20.0, 30.0 + s, acc_b)]
    final = _section(render(_spec(), rows, "test machine"), "### At the end of training")
    ranking = final.split("By cond. accuracy at the end of training (higher is better):")[1]
    # a 0.820 +- 4.303 * 0.02 / sqrt(3); b 0.720 +- 4.303 * 0.02 / sqrt(3); difference 0.100, Welch df 4:
    # 2.776 * sqrt(2 * 0.0004 / 3) = 0.045
    assert "1. **a**: 0.820 +- 0.050" in ranking and "2. **b**: 0.720 +- 0.050" in ranking
    assert "a is better than b: cond. accuracy difference 0.100, 95% Welch interval [0.055, 0.145]" in ranking
    assert "a and b are **within noise**: FD difference" in final  # the same FDs


def test_the_load_the_runs_trained_under_is_stated():
    rows = _crossing()
    for row, load in zip(rows, [0.5, 3.25, 1.0, 2.0] * 3, strict=True):
        row["load_1m"] = load
    # the final rows (step 10) carry a: 3.25, b: 2.0 for every seed
    assert "While the runs trained, the load average was 2.0-3.2 (each run's mean 1-minute load" in render(
        _spec(), rows, "test machine")
    assert "While the runs trained" not in render(_spec(), _crossing(), "test machine")  # runs that did not log it


def test_chance_can_be_given():
    text = render(_spec(), _crossing(acc_a=0.27, acc_b=0.5), "test machine", chance=0.25)
    assert "- Left out (not learned yet: conditional accuracy not above chance): a" in text  # [0.248, 0.293]
    assert "Left out" not in render(_spec(), _crossing(acc_a=0.27, acc_b=0.5), "test machine")  # chance 0.1


def test_without_a_classifier_nothing_is_flagged(tmp_path):
    path = write_summary(_spec(), _crossing(acc_a=None, acc_b=None), tmp_path / "summary.md", "test machine")
    text = path.read_text()
    assert "learned" not in text and "Left out" not in text and "cond. acc. |" not in text.split("### ")[2]
    assert "1. **a**: 31.00 +- 2.48" in _section(text, "### At equal training FLOPs")


def test_one_seed_is_not_tested():
    rows = [r for r in _crossing() if r["seed"] == 0]
    text = render(_spec(seeds=[0]), rows, "test machine")
    assert text.count("with one seed there is no interval: not tested (add seeds)") == 4  # FD x 3, accuracy


def test_accuracy_curves_and_plots(tmp_path):
    rows = _crossing(acc_a=0.1, acc_b=0.3)
    rows[0]["cond_accuracy"] = 0.16  # a seed 0 at step 5
    xs, means, lows, highs = _curves(rows, "train_gflops", "cond_accuracy")["a"]
    assert xs == [1e5, 2e5] and means[0] == 0.12 and (lows[0], highs[0]) == (0.1, 0.16)
    assert _curves(rows, "wall_s", "fd")["a"][0] == [10.5, 20.0]
    paths = write_plots(rows, tmp_path, "flags")
    names = sorted(p.name for p in paths)
    assert names == ["cond_acc_vs_compute.png", "cond_acc_vs_wallclock.png", "fd_vs_compute.png", "fd_vs_gmacs.png",
                     "fd_vs_params.png", "fd_vs_wallclock.png"]
    for p in paths:
        with Image.open(p) as image:
            assert image.format == "PNG" and image.size[0] > 100
    (tmp_path / "none").mkdir()
    without = write_plots(_crossing(acc_a=None, acc_b=None), tmp_path / "none", "flags")
    assert not [p for p in without if p.name.startswith("cond_acc")]


def test_a_runs_load_is_the_mean_of_what_it_logged_up_to_the_evaluation():
    from archbench.study.results import _metrics_upto

    logged = [{"step": 1, "it_per_s": 2.0, "train_s": 1.0, "load_1m": 1.0},
              {"step": 2, "it_per_s": 2.0, "train_s": 2.0, "load_1m": 3.0},
              {"step": 3, "it_per_s": 2.0, "train_s": 3.0, "load_1m": 8.0}]
    assert _metrics_upto(logged, 2)["load_1m"] == 2.0
    assert _metrics_upto(logged, 3)["load_1m"] == 4.0
    older = [{k: v for k, v in row.items() if k != "load_1m"} for row in logged]  # a run from before it was logged
    assert _metrics_upto(older, 3)["load_1m"] != _metrics_upto(older, 3)["load_1m"]  # NaN
