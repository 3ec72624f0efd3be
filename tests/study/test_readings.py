"""Readings of the evaluation curves at a common budget, the chance level and the not-learned flag, on hand-made
rows with hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from archbench.study.readings import (
    chance_level,
    common_budget,
    interpolate,
    learning,
    read_at_budget,
    seed_curves,
    size_matched,
    sweep_point,
)


def _row(label, seed, step, gflops, wall, fd, acc=None, n=500, dataset="fashion_mnist", **extra):
    return {"label": label, "arm": label, "seed": seed, "step": step, "train_gflops": gflops, "wall_s": wall,
            "fd": fd, "cond_accuracy": acc, "num_samples": n, "dataset": dataset, **extra}


def test_interpolation_is_linear_in_x_and_never_extrapolates():
    points = [(100.0, 40.0), (300.0, 20.0), (400.0, 30.0)]
    assert interpolate(points, 150.0) == pytest.approx(35.0)  # 40 + (20 - 40) * 50 / 200
    assert interpolate(points, 350.0) == pytest.approx(25.0)
    assert interpolate(points, 100.0) == 40.0 and interpolate(points, 300.0) == 20.0
    assert interpolate(points, 400.0) == 30.0
    assert interpolate(points, 99.9) is None and interpolate(points, 400.1) is None
    assert interpolate([(5.0, 1.0)], 5.0) == 1.0 and interpolate([], 1.0) is None


def test_budget_is_the_smallest_final_x_and_readings_match_hand_numbers():
    rows = [
        # a: evaluated at 100 and 200 GFLOPs; b: at 150 and 300 (seed 1 first at 250, after the budget)
        _row("a", 0, 5, 100.0, 10.0, 40.0, 0.20), _row("a", 0, 10, 200.0, 20.0, 30.0, 0.30),
        _row("a", 1, 5, 100.0, 11.0, 44.0, 0.22), _row("a", 1, 10, 200.0, 21.0, 34.0, 0.32),
        _row("b", 0, 5, 150.0, 5.0, 50.0, 0.40), _row("b", 0, 10, 300.0, 9.0, 20.0, 0.10),
        _row("b", 1, 5, 250.0, 6.0, 60.0, 0.50), _row("b", 1, 10, 300.0, 12.0, 30.0, 0.20),
    ]
    assert common_budget(seed_curves(rows, "train_gflops"), "train_gflops") == 200.0
    flops = read_at_budget(rows, "train_gflops", ["fd", "cond_accuracy"])
    assert flops.budget == 200.0
    assert flops.values["a"]["fd"] == [30.0, 34.0] and flops.values["a"]["cond_accuracy"] == [0.30, 0.32]
    # b seed 0 at 200: 50 + (20 - 50) * (200 - 150) / (300 - 150) = 40; accuracy 0.4 - 0.3 / 3 = 0.3
    assert flops.values["b"]["fd"] == pytest.approx([40.0])
    assert flops.values["b"]["cond_accuracy"] == pytest.approx([0.3])
    assert flops.unread == {"a": {}, "b": {1: 250.0}}
    # wall-clock: the smallest final over every seed is b seed 0's 9 s; a's first evaluations (10, 11 s) are later
    wall = read_at_budget(rows, "wall_s", ["fd"])
    assert wall.budget == 9.0
    assert wall.values["a"]["fd"] == [] and wall.unread["a"] == {0: 10.0, 1: 11.0}
    # b seed 1 at 9 s: 60 + (30 - 60) * (9 - 6) / (12 - 6) = 45
    assert wall.values["b"]["fd"] == pytest.approx([20.0, 45.0])
    assert read_at_budget(rows, "train_gflops", ["fd"], budget=250.0).values["a"]["fd"] == []


def test_a_seed_without_the_x_is_not_read():
    rows = [_row("a", 0, 5, 1.0, math.nan, 3.0), _row("a", 1, 5, 1.0, 2.0, 4.0)]
    wall = read_at_budget(rows, "wall_s", ["fd"])
    assert wall.budget == 2.0 and wall.values["a"]["fd"] == [4.0] and wall.unread["a"] == {0: None}
    assert read_at_budget([_row("a", 0, 5, 1.0, None, 3.0)], "wall_s", ["fd"]).budget is None


def test_chance_comes_from_the_dataset_catalogue():
    assert chance_level([_row("a", 0, 1, 1.0, 1.0, 1.0)]) == pytest.approx(0.1)
    assert chance_level([_row("a", 0, 1, 1.0, 1.0, 1.0, dataset="imagenet_folder")]) == pytest.approx(0.001)
    assert chance_level([_row("a", 0, 1, 1.0, 1.0, 1.0, dataset="somewhere_else")]) == pytest.approx(0.1)
    assert chance_level([_row("a", 0, 1, 1.0, 1.0, 1.0)], chance=0.25) == 0.25


def test_an_arm_at_chance_is_not_learned_and_one_well_above_is():
    at_chance = learning([_row("a", 0, 10, 1.0, 1.0, 5.0, acc=0.10, n=500)], 0.1)
    assert (at_chance.successes, at_chance.trials) == (50, 500) and not at_chance.learned
    assert (at_chance.low, at_chance.high) == pytest.approx((0.0751358, 0.1297091), abs=1e-6)  # Clopper-Pearson
    above = learning([_row("b", 0, 10, 1.0, 1.0, 5.0, acc=0.30, n=500)], 0.1)
    assert above.learned and above.low == pytest.approx(0.2601176, abs=1e-6)
    below = learning([_row("c", 0, 10, 1.0, 1.0, 5.0, acc=0.0, n=500)], 0.1)
    assert not below.learned  # an interval below chance is no evidence of learning either


def test_the_seeds_samples_are_pooled():
    one = learning([_row("a", 0, 10, 1.0, 1.0, 5.0, acc=0.12, n=500)], 0.1)
    assert not one.learned  # 60 of 500: [0.0928, 0.1518] includes 0.1
    three = learning([_row("a", s, 10, 1.0, 1.0, 5.0, acc=0.12, n=500) for s in range(3)], 0.1)
    assert (three.successes, three.trials) == (180, 1500) and three.learned  # [0.1040, 0.1375]
    mixed = learning([_row("a", 0, 10, 1.0, 1.0, 5.0, acc=0.1, n=100), _row("a", 1, 10, 1.0, 1.0, 5.0, acc=0.3, n=300)],
                     0.1)
    assert (mixed.successes, mixed.trials) == (100, 400) and mixed.accuracy == 0.25


def test_nothing_is_flagged_without_a_classifier():
    assert learning([_row("a", 0, 10, 1.0, 1.0, 5.0, acc=None)], 0.1) is None
    assert learning([_row("a", 0, 10, 1.0, 1.0, 5.0, acc=0.1, n=None)], 0.1) is None


def test_size_matching_and_sweep_points():
    assert size_matched([1000, 1020]) and not size_matched([1000, 1021]) and not size_matched([])
    assert sweep_point({"label": "a", "sweep.backbone.depth": 4, "sweep.width": 8}) == "backbone.depth=4, width=8"
    assert sweep_point({"label": "a"}) == ""
