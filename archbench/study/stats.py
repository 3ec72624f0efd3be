"""Seed-to-seed statistics: Student-t intervals for a mean and for a difference of means (Welch), and the
Clopper-Pearson interval of a proportion (is an arm's conditional accuracy above chance?).

Written out (regularised incomplete beta by a continued fraction) so the study needs no SciPy at run time;
the tests check every number against ``scipy.stats``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), for x < (a+1)/(a+b+2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    tail = 0.5 * incomplete_beta(dof / 2, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom (bisection on the CDF)."""
    if not 0.0 < p < 1.0 or dof <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and dof > 0, got p={p}, dof={dof}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, dof) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval over seeds; half-width NaN for a single seed."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean(b) - mean(a), low, high): Welch's t-interval for the difference; NaN bounds with fewer than 2 seeds."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    diff = mb - ma
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va = sum((v - ma) ** 2 for v in a) / (len(a) - 1) / len(a)
    vb = sum((v - mb) ** 2 for v in b) / (len(b) - 1) / len(b)
    if va + vb == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(0.5 + level / 2, dof) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def beta_quantile(p: float, a: float, b: float) -> float:
    """The ``p`` quantile of the Beta(a, b) distribution (bisection on :func:`incomplete_beta`)."""
    if not 0.0 <= p <= 1.0 or a <= 0 or b <= 0:
        raise ValueError(f"beta_quantile needs 0 <= p <= 1 and a, b > 0, got p={p}, a={a}, b={b}")
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if incomplete_beta(a, b, mid) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return (lo + hi) / 2


def binomial_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """(low, high): the Clopper-Pearson ("exact") interval of a proportion, ``successes`` of ``trials``.

    Exact rather than Wilson because it never covers less than ``level`` at any sample size, so an arm called
    better than chance is so at the stated level (the same as ``scipy.stats.binomtest(k, n).proportion_ci()``).
    """
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"binomial_interval needs 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    alpha = 1.0 - level
    low = 0.0 if successes == 0 else beta_quantile(alpha / 2, successes, trials - successes + 1)
    high = 1.0 if successes == trials else beta_quantile(1.0 - alpha / 2, successes + 1, trials - successes)
    return low, high
