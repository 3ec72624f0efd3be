"""The study's pictures, drawn from ``results.csv`` and written beside it.

Every metric of the metrics table (:data:`archbench.evaluation.metrics.METRICS`) that has a ``results.csv`` column
holding at least one number is drawn against training compute (log x) and against wall-clock: one line per arm,
the mean over seeds, the band spanning the seeds' min..max, the y axis named by the metric's label (FD by the
rows' ``score_name``, FD or FID).  The files are ``<column>_vs_compute.png`` and ``<column>_vs_wallclock.png``
(``fd_vs_*`` first, then the table's order), except conditional accuracy's, ``cond_acc_vs_*``, which also draw
chance dashed, since an FD gap between arms that sample at chance says nothing about conditioning.  Final FD
against params and against GMACs, with 95% intervals.  For a sweep, final FD against each swept value, one line
per arm (the DiS paper's depth / width / token figures).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from archbench.evaluation.metrics import HEADLINE, METRICS, Metric
from archbench.study.readings import chance_level, number
from archbench.study.summary import arm_summary, final_rows


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


Curve = tuple[list[float], list[float], list[float], list[float]]


def _curves(rows: list[dict[str, Any]], x_key: str, metric: str = "fd") -> dict[str, Curve]:
    """label -> (x, mean, min, max of ``metric``) over the evaluation points that have it (x averaged over seeds)."""
    points: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        points[row["label"]][row["step"]].append(row)
    out = {}
    for label, by_step in sorted(points.items()):
        xs, means, lows, highs = [], [], [], []
        for step in sorted(by_step):
            group = [r for r in by_step[step] if number(r.get(metric)) is not None]
            x = [v for r in group if (v := number(r.get(x_key))) is not None]
            if not x:
                continue
            values = [float(r[metric]) for r in group]
            xs.append(sum(x) / len(x))
            means.append(sum(values) / len(values))
            lows.append(min(values))
            highs.append(max(values))
        out[label] = (xs, means, lows, highs)
    return out


def log_tick_label(value: float, decades: float) -> str:
    """The text of a log axis's tick at ``value`` when the axis spans ``decades``: short plain numbers (``300``,
    ``20k``, ``1.5M``; not ``3x10^2`` nor ``1e+06``) at 1, 2 and 5 times a power of ten (also 3 within one decade,
    only the powers beyond three), nothing between: matplotlib's own minor labels ran into one another on a
    study's wall-clock axis (``3x10^1 4x10^1``).  Within half a decade every tick is labelled, as matplotlib then
    places its ticks between those multiples (``602k 604k ...`` for arms of nearly equal size)."""
    if value <= 0:
        return ""
    mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9), 6)
    shown = (1,) if decades > 3 else (1, 2, 5) if decades > 1 else (1, 2, 3, 5)
    if decades >= 0.5 and mantissa not in shown:
        return ""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if value >= scale:
            return f"{value / (1e3 if suffix == 'k' else scale):.4g}{suffix}"
    return f"{value:.4g}"


def _log_x(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    low, high = ax.get_xlim()
    decades = math.log10(high / low) if low > 0 and high > low else 1.0
    label = FuncFormatter(lambda value, _: log_tick_label(value, decades))
    ax.xaxis.set_major_formatter(label)
    ax.xaxis.set_minor_formatter(label)


def _finish(plt: Any, fig: Any, ax: Any, rows: list[dict[str, Any]], xlabel: str, title: str, legend: str,
            path: Path, log_x: bool = True, ylabel: str | None = None) -> Path:
    """The axes, labels, grid and legend every study plot shares; saves and closes the figure."""
    if log_x:
        _log_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or (rows[0]["score_name"] if rows else "FD"))
    ax.set_title(title)
    ax.grid(True, which="both" if log_x else "major", alpha=0.3)
    ax.legend(fontsize=8, title=legend, title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _curve_plot(rows: list[dict[str, Any]], x_key: str, xlabel: str, path: Path, title: str, metric: str = "fd",
                ylabel: str | None = None, chance: float | None = None) -> Path:
    """``metric`` against ``x_key``, a line per arm (mean over seeds, band min..max); ``chance`` dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, (xs, means, lows, highs) in _curves(rows, x_key, metric).items():
        (line,) = ax.plot(xs, means, marker="o", label=label)
        ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
    if chance is not None:
        ax.axhline(chance, linestyle="--", color="grey", linewidth=1, label=f"chance ({chance:.3g})")
    return _finish(plt, fig, ax, rows, xlabel, title, "mean over seeds; band: min..max", path, ylabel=ylabel)


def _final_plot(rows: list[dict[str, Any]], x_key: str, xlabel: str, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, group in sorted(final_rows(rows).items()):
        s = arm_summary(group)
        err = None if math.isnan(s["fd_half"]) else s["fd_half"]
        ax.errorbar([float(group[0][x_key])], [s["fd_mean"]], yerr=err, marker="o", capsize=4, label=label)
    return _finish(plt, fig, ax, rows, xlabel, title, "final FD, 95% interval over seeds", path)


def _sweep_plot(rows: list[dict[str, Any]], key: str, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    by_arm: dict[str, list[tuple[Any, dict[str, Any]]]] = defaultdict(list)
    for group in final_rows(rows).values():
        by_arm[group[0]["arm"]].append((group[0][f"sweep.{key}"], arm_summary(group)))
    numeric = all(isinstance(v, (int, float)) for pairs in by_arm.values() for v, _ in pairs)
    for arm, pairs in sorted(by_arm.items()):
        pairs.sort(key=lambda p: p[0] if numeric else str(p[0]))
        xs = [p[0] if numeric else str(p[0]) for p in pairs]
        errs = [0 if math.isnan(p[1]["fd_half"]) else p[1]["fd_half"] for p in pairs]
        ax.errorbar(xs, [p[1]["fd_mean"] for p in pairs], yerr=errs, marker="o", capsize=4, label=arm)
    return _finish(plt, fig, ax, rows, key, title, "final FD, 95% interval over seeds", path, log_x=False)


CURVE_AXES = (  # x column, axis label, file-name suffix, title words
    ("train_gflops", "training compute (GFLOPs)", "compute", "training compute"),
    ("wall_s", "training wall-clock (s)", "wallclock", "wall-clock"),
)
FILE_STEMS = {"cond_accuracy": "cond_acc"}  # the names studies have always written; other metrics use their column
CHANCE_METRIC = "cond_accuracy"  # the metric whose curves draw the accuracy of a guess


def _plotted_metrics(rows: list[dict[str, Any]]) -> list[Metric]:
    """The table's metrics with a column holding a number in ``rows``, in table order: a metric this study did not
    compute (no classifier, no captions, no Inception features) would only give an empty picture."""
    return [m for m in METRICS.values()
            if m.column and any(number(row.get(m.column)) is not None for row in rows)]


def _metric_curves(rows: list[dict[str, Any]], folder: Path, study: str, metric: Metric,
                   chance: float | None) -> list[Path]:
    """``metric`` against each of :data:`CURVE_AXES`. The headline's y label is left to :func:`_finish`, which
    takes the rows' ``score_name``: FD on Inception features is FID, which the table's label cannot know."""
    column = metric.column
    if column is None:  # not in results.csv: nothing to draw
        return []
    stem = FILE_STEMS.get(metric.name, column)
    ylabel = None if metric.name == HEADLINE else metric.label
    level = chance_level(rows, chance) if metric.name == CHANCE_METRIC else None
    return [_curve_plot(rows, x_key, xlabel, folder / f"{stem}_vs_{suffix}.png",
                        f"{study}: {metric.label} against {what}", metric=column, ylabel=ylabel, chance=level)
            for x_key, xlabel, suffix, what in CURVE_AXES]


def write_plots(rows: list[dict[str, Any]], folder: str | Path, study: str, chance: float | None = None) -> list[Path]:
    """Every plot of the study; returns the files written: each plotted metric's curves (table order, FD first),
    then the final-FD plots. ``chance`` is the conditional accuracy of a guess (default 1 / the dataset's classes,
    see :func:`archbench.study.readings.chance_level`)."""
    folder = Path(folder)
    if not rows:
        return []
    paths = [path for metric in _plotted_metrics(rows) for path in _metric_curves(rows, folder, study, metric, chance)]
    paths += [
        _final_plot(rows, "params", "parameters", folder / "fd_vs_params.png", f"{study}: final FD against size"),
        _final_plot(rows, "gmacs", "forward GMACs per image", folder / "fd_vs_gmacs.png",
                    f"{study}: final FD against forward cost"),
    ]
    for key in sorted({k[len("sweep."):] for row in rows for k in row if k.startswith("sweep.")}):
        safe = key.replace(".", "_")
        paths.append(_sweep_plot(rows, key, folder / f"fd_vs_{safe}.png", f"{study}: final FD against {key}"))
    return paths
