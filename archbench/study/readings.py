"""Readings of the arms' evaluation curves: each seed's score at a budget every arm reached, and whether an arm's
conditional accuracy is above chance yet.

Final scores compare arms at whatever budget each was trained to; reading every seed's curve at one common
training-FLOPs (or wall-clock) value compares like with like.  A seed's score at ``x`` is interpolated linearly
in ``x`` between its two neighbouring evaluations and never extrapolated: a seed whose first evaluation comes
after ``x`` is not read.  An arm whose samples a classifier cannot tell from chance has not learned its
conditioning yet, so ranking it by FD would rank noise; :func:`learning` says which arms those are.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from archbench.study.stats import binomial_interval

INTERPOLATION = (
    "each seed's score is interpolated linearly in x between its two neighbouring evaluations (never "
    "extrapolated: a seed whose first evaluation comes after the budget is not read)"
)
DEFAULT_CLASSES = 10  # the catalogue's labelled image datasets (digits, Fashion-MNIST, CIFAR-10)
SIZE_TOLERANCE = 0.02  # arms within 2% of each other's parameter count count as size-matched


def number(value: Any) -> float | None:
    """A finite float, or None for an empty or NaN cell."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def sweep_point(row: dict[str, Any]) -> str:
    """The sweep point a row belongs to, as ``key=value, ...`` ("" without a sweep)."""
    return ", ".join(f"{k[len('sweep.'):]}={v}" for k, v in row.items() if k.startswith("sweep."))


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """The value at ``x`` of the curve through ``points`` (x ascending), linear in x between the two neighbours;
    None when ``x`` lies before the first point or after the last (not extrapolated)."""
    if not points or x < points[0][0] or x > points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1:
            if x1 == x0:
                return y1
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]  # x equals the only point


def seed_curves(rows: Iterable[dict[str, Any]], x_key: str) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """label -> seed -> that seed's rows with a recorded ``x_key``, in step order."""
    out: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if number(row.get(x_key)) is not None:
            out[row["label"]][row["seed"]].append(row)
    for by_seed in out.values():
        for seed_rows in by_seed.values():
            seed_rows.sort(key=lambda r: r["step"])
    return out


def common_budget(curves: dict[str, dict[int, list[dict[str, Any]]]], x_key: str) -> float | None:
    """The smallest final ``x_key`` over every arm's seeds: the largest budget that every seed reached."""
    finals = [float(seed_rows[-1][x_key]) for by_seed in curves.values() for seed_rows in by_seed.values() if seed_rows]
    return min(finals) if finals else None


@dataclass
class BudgetReading:
    """Every arm's per-seed readings at one budget; ``unread`` holds, per arm, the seeds whose headline could not
    be read there, each with its first evaluation's x (None: no headline or no x recorded)."""

    x_key: str
    budget: float | None
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # label -> column -> per-seed
    unread: dict[str, dict[int, float | None]] = field(default_factory=dict)  # label -> seed -> first x


def read_at_budget(rows: list[dict[str, Any]], x_key: str, columns: Sequence[str],
                   budget: float | None = None) -> BudgetReading:
    """Each arm's seeds read at ``budget`` (default: :func:`common_budget`) for each of ``columns``; the first
    column is the headline: a seed without it at the budget is listed in ``unread``."""
    curves = seed_curves(rows, x_key)
    if budget is None:
        budget = common_budget(curves, x_key)
    reading = BudgetReading(x_key, budget)
    for label in sorted({row["label"] for row in rows}):
        reading.values[label] = {column: [] for column in columns}
        reading.unread[label] = {}
        for seed in sorted({row["seed"] for row in rows if row["label"] == label}):
            seed_rows = curves.get(label, {}).get(seed, [])
            for i, column in enumerate(columns):
                points = [(float(r[x_key]), v) for r in seed_rows if (v := number(r.get(column))) is not None]
                value = None if budget is None else interpolate(points, budget)
                if value is not None:
                    reading.values[label][column].append(value)
                elif i == 0:
                    reading.unread[label][seed] = points[0][0] if points else None
    return reading


def chance_level(rows: Iterable[dict[str, Any]], chance: float | None = None) -> float:
    """1 / classes of the rows' dataset (from the data catalogue), ``DEFAULT_CLASSES`` when the catalogue does
    not know it; ``chance`` overrides both."""
    if chance is not None:
        return float(chance)
    from archbench.data import DATASETS

    classes = {DATASETS[d].num_classes for d in {row.get("dataset") for row in rows} if d in DATASETS}
    classes.discard(0)
    return 1.0 / (classes.pop() if len(classes) == 1 else DEFAULT_CLASSES)


@dataclass(frozen=True)
class Learning:
    """An arm's conditional accuracy at its final step, pooled over seeds, with its 95% Clopper-Pearson interval."""

    label: str
    successes: int
    trials: int
    low: float
    high: float
    chance: float

    @property
    def accuracy(self) -> float:
        return self.successes / self.trials

    @property
    def learned(self) -> bool:
        """Only an interval wholly above chance counts: one that includes chance (or lies below it) does not."""
        return self.low > self.chance

    def describe(self) -> str:
        return (f"cond. accuracy {self.accuracy:.3f} of {self.trials} samples, 95% Clopper-Pearson interval "
                f"[{self.low:.3f}, {self.high:.3f}] {'above' if self.learned else 'not above'} chance "
                f"{self.chance:.3f}")


def learning(final: list[dict[str, Any]], chance: float) -> Learning | None:
    """Whether one arm (its final rows, one per seed) has learned its conditioning: successes = sum(acc_i * n_i)
    and trials = sum(n_i) over the seeds with a conditional accuracy; None when none has one (no classifier)."""
    pairs = [(acc, int(n)) for r in final
             if (acc := number(r.get("cond_accuracy"))) is not None and (n := number(r.get("num_samples")))]
    if not pairs:
        return None
    trials = sum(n for _, n in pairs)
    successes = min(trials, max(0, round(sum(acc * n for acc, n in pairs))))
    low, high = binomial_interval(successes, trials)
    return Learning(final[0]["label"], successes, trials, low, high, chance)


def size_matched(params: Sequence[float]) -> bool:
    """True when every parameter count is within ``SIZE_TOLERANCE`` of the smallest."""
    return bool(params) and max(params) <= min(params) * (1 + SIZE_TOLERANCE)
