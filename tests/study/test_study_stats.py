"""The seed intervals against SciPy."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archbench.study.stats import incomplete_beta, mean_interval, t_quantile, welch_interval

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
