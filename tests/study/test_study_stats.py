"""The seed intervals and the binomial interval against SciPy."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archbench.study.stats import (
    beta_quantile,
    binomial_interval,
    incomplete_beta,
    mean_interval,
    t_quantile,
    welch_interval,
)

scipy_stats = pytest.importorskip("scipy.stats")
values = st.lists(st.floats(min_value=0.1, max_value=200, allow_nan=False), min_size=2, max_size=8)


@given(st.floats(min_value=0.001, max_value=0.999), st.floats(min_value=0.5, max_value=200))
def test_t_quantile_matches_scipy(p, dof):
    assert t_quantile(p, dof) == pytest.approx(scipy_stats.t.ppf(p, dof), rel=1e-7, abs=1e-9)


@given(st.floats(min_value=0.1, max_value=50), st.floats(min_value=0.1, max_value=50), st.floats(0, 1))
def test_incomplete_beta_matches_scipy(a, b, x):
    from scipy.special import betainc

    assert incomplete_beta(a, b, x) == pytest.approx(betainc(a, b, x), abs=1e-9)


@given(values)
def test_mean_interval_matches_scipy(xs):
    mean, half = mean_interval(xs)
    sem = scipy_stats.sem(xs)
    if sem == 0:
        assert half == 0
        return
    low, high = scipy_stats.t.interval(0.95, len(xs) - 1, loc=sum(xs) / len(xs), scale=sem)
    assert mean - half == pytest.approx(low, rel=1e-7, abs=1e-9)
    assert mean + half == pytest.approx(high, rel=1e-7, abs=1e-9)


@given(values, values)
def test_welch_interval_matches_scipy(a, b):
    diff, low, high = welch_interval(a, b)
    result = scipy_stats.ttest_ind(b, a, equal_var=False)
    if math.isnan(result.statistic):
        return
    ci = result.confidence_interval(0.95)
    assert low == pytest.approx(ci.low, rel=1e-6, abs=1e-7)
    assert high == pytest.approx(ci.high, rel=1e-6, abs=1e-7)


def test_one_seed_has_no_interval():
    assert math.isnan(mean_interval([3.0])[1])
    assert math.isnan(welch_interval([1.0], [2.0, 3.0])[1])


@given(st.integers(min_value=1, max_value=5000), st.floats(min_value=0, max_value=1),
       st.sampled_from([0.9, 0.95, 0.99]))
def test_binomial_interval_matches_scipy(trials, fraction, level):
    successes = round(fraction * trials)
    low, high = binomial_interval(successes, trials, level)
    ci = scipy_stats.binomtest(successes, trials).proportion_ci(level, method="exact")
    assert low == pytest.approx(ci.low, abs=1e-9)
    assert high == pytest.approx(ci.high, abs=1e-9)


@given(st.floats(min_value=0.001, max_value=0.999), st.floats(min_value=0.5, max_value=500),
       st.floats(min_value=0.5, max_value=500))
def test_beta_quantile_matches_scipy(p, a, b):
    assert beta_quantile(p, a, b) == pytest.approx(scipy_stats.beta.ppf(p, a, b), abs=1e-9)


def test_binomial_interval_hand_numbers_and_errors():
    # 50 of 500 (chance for ten classes): Beta(50, 451).ppf(0.025), Beta(51, 450).ppf(0.975)
    assert binomial_interval(50, 500) == pytest.approx((0.0751358150664, 0.1297090856622), abs=1e-9)
    assert binomial_interval(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))
    assert binomial_interval(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))
    with pytest.raises(ValueError):
        binomial_interval(3, 2)
    with pytest.raises(ValueError):
        binomial_interval(0, 0)
