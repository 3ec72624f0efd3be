"""threads=auto: the choice from timed units, re-measuring when work slows, the environment's pin, bad values,
and a real training on a machine loaded by busy processes this test starts."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
import torch

from archbench.console.threads import (
    AUTO,
    ThreadTuner,
    candidate_counts,
    choose_threads,
    parse_threads,
    threads_for_timing,
)


@pytest.fixture
def unpinned(monkeypatch):
    """The tests' conftest pins one thread through OMP_NUM_THREADS; these tests need auto to measure."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def drive(tuner: ThreadTuner, seconds_at: dict[int, float], units: int) -> list[int]:
    """Feed ``units`` units whose time depends on the count the tuner set; returns the counts used."""
    used = []
    for _ in range(units):
        tuner.before()
        count = torch.get_num_threads()
        used.append(count)
        tuner.after(seconds_at[count])
    return used


@pytest.mark.parametrize(("value", "expected"), [("auto", AUTO), ("AUTO", AUTO), (1, 1), ("3", 3), (2.0, 2)])
def test_parse_threads_accepts_auto_and_positive_integers(value, expected):
    assert parse_threads(value) == expected


@pytest.mark.parametrize("value", ["x", 0, -1, 2.5, True, None, "1.5"])
def test_parse_threads_refuses_the_rest_in_one_line(value):
    with pytest.raises(ValueError, match=r"threads must be 'auto' or a positive integer, got") as info:
        parse_threads(value)
    assert "\n" not in str(info.value)


def test_candidates_are_powers_of_two_up_to_the_cores_and_the_cores():
    assert candidate_counts(1) == [1]
    assert candidate_counts(4) == [1, 2, 4]
    assert candidate_counts(6) == [1, 2, 4, 6]


def test_auto_warms_up_at_one_thread_measures_each_count_twice_and_keeps_the_fastest(unpinned):
    said = []
    tuner = ThreadTuner(AUTO, candidates=[1, 2, 4], announce=said.append)
    used = drive(tuner, {1: 0.30, 2: 0.10, 4: 0.20}, units=10)
    assert used[:7] == [1, 1, 2, 4, 1, 2, 4] and used[7:] == [2, 2, 2]
    assert tuner.chosen == 2 and not tuner.measuring
    assert len(said) == 1 and "threads=auto: 2 of 4" in said[0] and "1: 300 ms, 2: 100 ms, 4: 200 ms" in said[0]


def test_auto_measures_again_when_steps_get_much_slower(unpinned):
    said = []
    tuner = ThreadTuner(AUTO, candidates=[1, 2], patience=3, cooldown=0, announce=said.append)
    drive(tuner, {1: 0.3, 2: 0.1}, units=5)
    assert tuner.chosen == 2
    # the machine gets busy: two threads now spin (1.0 s), one thread is unaffected (0.3 s)
    used = drive(tuner, {1: 0.3, 2: 1.0}, units=3 + 4 + 2)
    assert tuner.chosen == 1 and used[-2:] == [1, 1]
    assert "measuring again" in said[1] and "threads=auto: 1 of 2" in said[2]


def test_a_count_far_slower_than_the_fastest_is_not_measured_again_nor_are_larger_ones(unpinned):
    """Beside busy processes a step at two threads costs 25x one at one thread: one unit of it is enough."""
    said = []
    tuner = ThreadTuner(AUTO, candidates=[1, 2, 4], announce=said.append)
    used = drive(tuner, {1: 0.08, 2: 2.0, 4: 3.0}, units=6)
    assert used == [1, 1, 2, 1, 1, 1]  # warm-up, 1, 2 (25x: abandoned with 4), 1's second round, chosen
    assert tuner.chosen == 1 and "2: 2000 ms" in said[0] and "4:" not in said[0]


def test_abandoning_keeps_faster_larger_counts_and_ignores_tiny_units(unpinned):
    slow_one = ThreadTuner(AUTO, candidates=[1, 2, 4], rounds=3, announce=lambda _: None)
    used = drive(slow_one, {1: 0.5, 2: 0.2, 4: 0.1}, units=10)
    assert used == [1, 1, 2, 4, 1, 2, 4, 2, 4, 4]  # 1 is 5x the fastest (4): only its own third round goes
    assert slow_one.chosen == 4
    tiny = ThreadTuner(AUTO, candidates=[1, 2], announce=lambda _: None)
    assert drive(tiny, {1: 0.001, 2: 0.05}, units=6)[:5] == [1, 1, 2, 1, 2]  # 50x, but 50 ms decides nothing


def test_a_fixed_count_or_the_environment_pin_is_kept_and_nothing_is_measured(monkeypatch):
    fixed = ThreadTuner(2, candidates=[1, 2])
    assert drive(fixed, {1: 0.1, 2: 9.0}, units=6) == [2] * 6 and fixed.chosen == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    said = []
    pinned = ThreadTuner(AUTO, candidates=[1, 2], announce=said.append)
    assert drive(pinned, {1: 9.0, 2: 0.1}, units=4) == [1] * 4
    assert said == []  # the user's own setting: nothing was chosen, so nothing is announced


def test_choose_threads_probes_real_work_and_sets_the_count(unpinned):
    x = torch.randn(64, 64)
    chosen = choose_threads(AUTO, lambda: x @ x, announce=lambda _: None)
    assert chosen in candidate_counts() and torch.get_num_threads() == chosen
    assert choose_threads(1, lambda: pytest.fail("a fixed count runs no probe")) == 1


def test_benchmarks_time_at_one_thread_under_the_cpu_clock_and_measure_under_the_wall_clock(unpinned):
    """Process CPU time adds up every thread's time, so a CPU-clock benchmark times one thread; the wall clock
    measures every candidate (warm-up + two rounds); off the CPU nothing is measured."""
    calls = []
    torch.set_num_threads(2)
    assert threads_for_timing(AUTO, lambda: calls.append(1), timer="cpu") == 1 and torch.get_num_threads() == 1
    assert calls == []
    torch.set_num_threads(1)
    assert threads_for_timing(AUTO, lambda: calls.append(1), device="cuda") == 1 and calls == []
    x = torch.randn(64, 64)
    chosen = threads_for_timing(AUTO, lambda: calls.append(x @ x), timer="wall")
    assert chosen in candidate_counts() and len(calls) == 1 + 2 * len(candidate_counts())
    assert threads_for_timing(2, lambda: pytest.fail("a fixed count runs no probe"), timer="cpu") == 2


def _median_step_ms(run_dir, skip: int) -> float:
    """Median wall-clock per step after the first ``skip`` steps (metrics.jsonl has a row per step in QUICK)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return statistics.median(1e3 / r["it_per_s"] for r in rows if r["step"] > skip)


def test_auto_is_not_slower_than_one_thread_on_a_loaded_machine(tmp_path, unpinned):
    """Two busy processes (as many as this CI machine has cores) run beside a short real training at threads=auto
    and at threads=1, one after the other; after its measurement steps auto must step about as fast as one
    thread (a wrong choice of two spinning threads costs several times more)."""
    from train_support import QUICK

    from archbench.train import main

    spin = "import time\nend = time.time() + 120\nwhile time.time() < end: pass"  # bounded even if the test dies
    burners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    try:
        results = {}
        for setting in ("auto", "1"):
            run_dir = tmp_path / setting
            assert main([*QUICK, f"run_dir={run_dir}", "train.steps=30", f"threads={setting}"]) == 0
            results[setting] = _median_step_ms(run_dir, skip=10)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert results["auto"] <= 1.5 * results["1"] + 5, results


def test_measurement_units_is_what_a_timing_run_must_skip(unpinned, monkeypatch):
    from archbench.console.threads import measurement_units

    counts = candidate_counts()
    assert measurement_units(AUTO) == (0 if len(counts) == 1 else 1 + 2 * len(counts))
    tuner = ThreadTuner(AUTO)
    measured = 0
    while tuner.measuring:
        tuner.run(lambda: None)
        measured += 1
    assert measured == measurement_units(AUTO)  # units of no work: nothing is abandoned, the bound is met
    assert measurement_units(1) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert measurement_units(AUTO) == 0
