"""The study's tuning stage: each arm (at each sweep point) gets its own best value of one training key.

A fair comparison gives every arm the optimiser setting that suits it, not the one that suits the reference.
Before the main runs, every point trains one short run per candidate value (``tune.budget`` of the point's
steps, the first seed unless ``tune.seed``), scored once at its end with the study's evaluation settings; the
best score by ``tune.metric`` wins (ties go to the value listed first) and the main runs of that point train
with it.  A candidate whose training diverges is recorded as such and never chosen.  The tuning runs are
ordinary study jobs under ``study_dir/tune/``: killed and re-run, they resume; finished, they are read back,
so the choice is the same on every call.  ``tune.csv`` and summary.md report every score, the choice and the
tuning compute, apart from the main budget.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from archbench.evaluation.metrics import Metric, column_metrics
from archbench.study.plan import Job, override
from archbench.study.schema import StudyError, StudySpec

TUNE_DIR = "tune"
TUNE_FILE = "tune.csv"
DIVERGED = "diverged"


def enabled(spec: StudySpec) -> bool:
    return spec.tune.key is not None


def value_label(key: str, value: Any) -> str:
    """How a candidate names its run: ``lr0.003`` for train.lr=3e-3."""
    from archbench.study.plan import format_value, short_key

    return f"{short_key(key)}{format_value(value)}"


def tune_jobs(spec: StudySpec, jobs: list[Job]) -> list[Job]:
    """One short run per point and candidate value, derived from the point's main job of the tuning seed."""
    if not enabled(spec):
        return []
    tune = spec.tune
    key = str(tune.key)
    seed = spec.seeds[0] if tune.seed is None else tune.seed
    firsts: dict[str, Job] = {}
    for job in jobs:
        firsts.setdefault(job.label, job)
    out = []
    for label, main in firsts.items():
        steps = max(1, round(tune.budget * main.steps))
        for index, value in enumerate(tune.values):
            name = f"{label}-{value_label(key, value)}"
            out.append(dataclasses.replace(
                main, label=name, seed=seed, steps=steps, eval_steps=[steps], ckpt_every=steps,
                log_every=math.gcd(main.log_every, steps), overrides=[*main.overrides, override(key, value)],
                run_dir=str(Path(spec.study_dir) / TUNE_DIR / f"{name}-s{seed}"), sweep=dict(main.sweep),
                extra={"tunes": label, "key": key, "value": value, "order": index},
            ))
    return out


def tune_rows(spec: StudySpec, jobs: list[Job]) -> list[dict[str, Any]]:
    """A row per tuning run that has finished (scored, or diverged), with its candidate and the choice."""
    from archbench.study.job import eval_settings, read_eval
    from archbench.study.results import job_rows

    metric = column_metrics()[spec.tune.metric]
    rows = []
    for job in jobs:
        base = {"tunes": job.extra["tunes"], "key": job.extra["key"], "value": job.extra["value"],
                "order": job.extra["order"], "metric": metric.name}
        record = read_eval(job.run_dir, job.eval_steps[-1], eval_settings(job))
        if record is not None and record.get("status") == DIVERGED:
            rows.append({"study": spec.name, "arm": job.arm, "label": job.label, "backbone": job.backbone,
                         "seed": job.seed, "step": job.steps, "steps": job.steps, "status": DIVERGED,
                         "score": math.nan, **base})
            continue
        for row in job_rows(str(spec.name), job):
            score = row.get(metric.column)
            rows.append({**row, **base, "status": "scored",
                         "score": math.nan if score is None else float(score)})
    chosen = choices(spec, rows, require_all=False)
    for row in rows:
        row["chosen"] = row["tunes"] in chosen and chosen[row["tunes"]] == row["value"]
    return rows


def choose(rows: list[dict[str, Any]], metric: Metric) -> dict[str, Any]:
    """The best candidate's row among one point's scored rows (ties: the value listed first)."""
    scored = [r for r in rows if r["status"] == "scored" and not math.isnan(r["score"])]
    if not scored:
        return {}
    sign = 1.0 if metric.lower_is_better else -1.0
    return min(scored, key=lambda r: (sign * r["score"], r["order"]))


def choices(spec: StudySpec, rows: list[dict[str, Any]], require_all: bool = True) -> dict[str, Any]:
    """point label -> chosen value; with ``require_all`` every point must have a finished, scored candidate."""
    metric = column_metrics()[spec.tune.metric]
    by_point: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_point.setdefault(row["tunes"], []).append(row)
    out = {}
    for point, group in by_point.items():
        best = choose(group, metric)
        if best:
            out[point] = best["value"]
        elif require_all:
            raise StudyError(f"tuning {spec.tune.key} for {point}: no candidate finished with a score "
                             f"(every one of {spec.tune.values} diverged or failed); add smaller values")
    return out


def apply_choices(spec: StudySpec, jobs: list[Job], chosen: dict[str, Any]) -> list[Job]:
    """The main jobs with each point's chosen value as their last override (so it wins)."""
    if not enabled(spec):
        return jobs
    key = str(spec.tune.key)
    missing = sorted({j.label for j in jobs} - set(chosen))
    if missing:
        raise StudyError(f"tuning {key}: no choice for {', '.join(missing)}")
    return [dataclasses.replace(j, overrides=[*j.overrides, override(key, chosen[j.label])],
                                extra={**j.extra, "tuned": {key: chosen[j.label]}}) for j in jobs]


def write_tune_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    from archbench.study.results import write_csv

    return write_csv(sorted(rows, key=lambda r: (r["tunes"], r["order"])), path)


def tune_section(spec: StudySpec, rows: list[dict[str, Any]]) -> list[str]:
    """summary.md's tuning section: every candidate's score, the choice, and the tuning compute on its own."""
    if not enabled(spec) or not rows:
        return []
    tune = spec.tune
    metric = column_metrics()[tune.metric]
    better = "lower" if metric.lower_is_better else "higher"
    values = list(tune.values)
    lines = [
        "## Tuning",
        "",
        f"`{tune.key}` tuned per arm over {values}: one run per value at {tune.budget:g} of the arm's steps "
        f"(seed {rows[0]['seed']}), {better} {metric.label} wins; the main runs use the chosen value.",
        "",
        "| arm | " + " | ".join(f"{tune.key}={v}" for v in values) + " | chosen |",
        "|---|" + "---:|" * len(values) + "---|",
    ]
    by_point: dict[str, dict[Any, dict[str, Any]]] = {}
    for row in rows:
        by_point.setdefault(row["tunes"], {})[row["order"]] = row
    for point, group in sorted(by_point.items()):
        cells = []
        for index in range(len(values)):
            row = group.get(index)
            if row is None:
                cells.append("-")
            elif row["status"] == DIVERGED:
                cells.append("diverged")
            else:
                text = f"{row['score']:{metric.table_fmt}}"
                cells.append(f"**{text}**" if row["chosen"] else text)
        chosen = [r["value"] for r in group.values() if r["chosen"]]
        lines.append(f"| {point} | " + " | ".join(cells) + f" | {chosen[0] if chosen else '-'} |")
    gflops = sum(r.get("train_gflops") or 0.0 for r in rows if r["status"] == "scored")
    wall = sum(r.get("wall_s") or 0.0 for r in rows if r["status"] == "scored" and not math.isnan(r["wall_s"]))
    lines += ["", f"Tuning compute, not counted in the budgets above: {len(rows)} runs, {gflops / 1e6:.4g} training "
              f"PFLOPs, {wall:.0f} s of training wall-clock (evaluation excluded).", ""]
    return lines
