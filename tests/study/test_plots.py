"""The study's curves: one pair of pictures per metric column that holds a number, on hand-made results rows."""

from __future__ import annotations

import math

from archbench.study.plots import _curves, log_tick_label, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CURVES = ["fd_vs_compute.png", "fd_vs_wallclock.png", "cond_acc_vs_compute.png", "cond_acc_vs_wallclock.png",
          "composition_vs_compute.png", "composition_vs_wallclock.png"]
FINALS = ["fd_vs_params.png", "fd_vs_gmacs.png"]

# (arm, seed, step) -> composition: a's seeds 0.25 / 0.75 at step 5, 0.5 / 1.0 at 10; b's 0.0 / 0.5, 0.25 / 0.25
COMPOSITION = {("a", 0, 5): 0.25, ("a", 1, 5): 0.75, ("a", 0, 10): 0.5, ("a", 1, 10): 1.0,
               ("b", 0, 5): 0.0, ("b", 1, 5): 0.5, ("b", 0, 10): 0.25, ("b", 1, 10): 0.25}


def _rows(**extra):
    """2 arms x 2 seeds x 2 steps of a captions study; seed 1 ran 10% more GFLOPs and 2 s longer than seed 0."""
    rows = []
    for (arm, seed, step), composition in COMPOSITION.items():
        rows.append({"arm": arm, "label": arm, "backbone": f"{arm}_t2", "seed": seed, "step": step, "steps": 10,
                     "train_gflops": 100.0 * step * (1 + 0.1 * seed), "wall_s": 2.0 * step + 2.0 * seed,
                     "params": 1000 if arm == "a" else 1010, "gmacs": 0.01, "score_name": "FD",
                     "dataset": "fashion_mnist", "fd": 40.0 - step + seed, "cond_accuracy": 0.3 + 0.01 * step,
                     "composition": composition, "num_samples": 100, **extra})
    return rows


def _assert_pngs(paths):
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, path


def test_a_captions_study_gets_composition_curves(tmp_path):
    paths = write_plots(_rows(), tmp_path, "captions")
    assert [p.name for p in paths] == CURVES + FINALS
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CURVES + FINALS)  # nothing else written
    _assert_pngs(paths)


def test_empty_metric_columns_get_no_picture(tmp_path):
    paths = write_plots(_rows(precision=None, recall=math.nan, kid=None), tmp_path, "captions")
    assert [p.name for p in paths] == CURVES + FINALS
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("precision", "recall", "kid"))]


def test_every_metric_with_a_number_is_drawn_in_table_order(tmp_path):
    rows = _rows(precision=0.6, kid=None)
    rows[3]["kid"] = 0.002  # one number is enough
    paths = write_plots(rows, tmp_path, "captions")
    assert [p.name for p in paths] == [
        "fd_vs_compute.png", "fd_vs_wallclock.png", "precision_vs_compute.png", "precision_vs_wallclock.png",
        *CURVES[2:], "kid_vs_compute.png", "kid_vs_wallclock.png", *FINALS]
    _assert_pngs(paths)


def test_composition_curve_is_the_mean_and_range_over_seeds():
    rows = _rows()
    compute = _curves(rows, "train_gflops", "composition")
    # x: the seeds' mean GFLOPs, 500 and 550 at step 5, 1000 and 1100 at step 10
    assert compute["a"] == ([525.0, 1050.0], [0.5, 0.75], [0.25, 0.5], [0.75, 1.0])
    assert compute["b"] == ([525.0, 1050.0], [0.25, 0.25], [0.0, 0.25], [0.5, 0.25])
    wall = _curves(rows, "wall_s", "composition")
    assert wall["a"][0] == [11.0, 21.0] and wall["a"][1:] == compute["a"][1:]
    rows[0]["composition"] = None  # a seed without a score is left out of its step's mean, min and max
    assert _curves(rows, "train_gflops", "composition")["a"] == ([550.0, 1050.0], [0.75, 0.75], [0.75, 0.5],
                                                                   [0.75, 1.0])


def test_log_axes_label_plain_numbers_at_1_2_and_5_and_only_powers_over_wide_ranges():
    labels = {v: log_tick_label(v, decades=1.3) for v in (20, 30, 40, 50, 100, 200, 300, 1000, 5000, 0.02)}
    assert labels == {20: "20", 30: "", 40: "", 50: "50", 100: "100", 200: "200", 300: "", 1000: "1000",
                      5000: "5000", 0.02: "0.02"}
    assert [log_tick_label(v, decades=4) for v in (10, 20, 50, 1e5)] == ["10", "", "", "100k"]
    assert [log_tick_label(v, decades=0.5) for v in (3e5, 4e5, 5e5, 1e6, 2e7, 5e9)] == ["300k", "", "500k", "1M",
                                                                                       "20M", "5G"]
    assert [log_tick_label(v, decades=0.1) for v in (6.02e5, 6.04e5, 0.034)] == ["602k", "604k", "0.034"]
    assert log_tick_label(0.0, decades=1) == ""
