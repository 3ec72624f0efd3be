"""``results.csv``: one row per arm x seed x evaluation point, gathered from the runs' own files.

Nothing is kept in memory between study invocations: the rows are rebuilt from each run's ``metrics.jsonl``
(training time, memory) and ``evals/step_*.json`` (scores), so a resumed or re-run study writes the same
table as an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any

from archbench.console.files import write_text_atomic
from archbench.evaluation.metrics import csv_values, metric_columns
from archbench.study.budget import train_gflops
from archbench.study.job import eval_settings, read_eval
from archbench.study.plan import Job

# The run's columns; the metrics' columns come from the metrics table, between score_name and num_samples.
RUN_COLUMNS = (
    "study", "arm", "label", "backbone", "seed", "step", "steps", "train_gflops", "wall_s", "s_per_step",
    "peak_mem_mb", "load_1m", "params", "gmacs", "batch_size", "dataset", "score_name",
)
RUN_NUMERIC = ("train_gflops", "wall_s", "s_per_step", "peak_mem_mb", "load_1m", "gmacs")
INTEGER = ("seed", "step", "steps", "params", "batch_size", "num_samples")


def columns() -> tuple[str, ...]:
    """results.csv's fixed columns, in order (``sweep.<key>`` columns follow them)."""
    return (*RUN_COLUMNS, *metric_columns(), "num_samples")


def numeric_columns() -> tuple[str, ...]:
    """The columns read back as floats."""
    return (*RUN_NUMERIC, *metric_columns())


COLUMNS = columns()  # the table as it is at import; writers and readers ask columns() each time
NUMERIC = numeric_columns()


def _metrics_upto(rows: list[dict[str, Any]], step: int) -> dict[str, float]:
    upto = [r for r in rows if r["step"] <= step]
    if not upto:
        return {"wall_s": math.nan, "s_per_step": math.nan, "peak_mem_mb": math.nan, "load_1m": math.nan}
    rates = [r["it_per_s"] for r in upto if r.get("it_per_s")]
    last = upto[-1]
    wall = float(last.get("train_s", math.nan)) * step / last["step"] if last.get("train_s") is not None else math.nan
    peaks = [r["peak_mem_mb"] for r in upto if r.get("peak_mem_mb") is not None]
    loads = [r["load_1m"] for r in upto if r.get("load_1m") is not None]  # runs logged before it have none
    return {
        "wall_s": wall,
        "s_per_step": 1.0 / statistics.median(rates) if rates else math.nan,
        "peak_mem_mb": max(peaks) if peaks else math.nan,
        "load_1m": statistics.mean(loads) if loads else math.nan,  # the machine's load while this run trained
    }


def _pretraining_seconds(job: Job) -> float:
    """The training wall-clock of the run ``job`` started from (0 for a run from scratch): counted on its side,
    as its training FLOPs are."""
    from archbench.training.log import read_metrics

    if not job.init_from:
        return 0.0
    rows = read_metrics(job.init_from) if Path(job.init_from, "metrics.jsonl").is_file() else []
    seconds = rows[-1].get("train_s") if rows else None
    return math.nan if seconds is None else float(seconds)


def job_rows(study: str, job: Job) -> list[dict[str, Any]]:
    """The rows of one job's finished evaluations (missing ones are simply not there yet)."""
    from archbench.training.log import read_metrics

    metrics = read_metrics(job.run_dir) if Path(job.run_dir, "metrics.jsonl").is_file() else []
    settings = eval_settings(job)
    rows = []
    for step in job.eval_steps:
        record = read_eval(job.run_dir, step, settings)
        if record is None:
            continue
        row = {
            "study": study, "arm": job.arm, "label": job.label, "backbone": job.backbone, "seed": job.seed,
            "step": step, "steps": job.steps,
            "train_gflops": job.pre_gflops + train_gflops(job.gmacs, job.batch_size, step),
            **_metrics_upto(metrics, step), "params": job.params, "gmacs": job.gmacs, "batch_size": job.batch_size,
            "dataset": job.dataset, "score_name": record["score_name"], **csv_values(record),
            "num_samples": record.get("num_samples", settings["num_samples"]),
        }
        row["wall_s"] += _pretraining_seconds(job)
        row.update({f"sweep.{k}": v for k, v in job.sweep.items()})
        rows.append(row)
    return rows


def collect(study: str, jobs: list[Job]) -> list[dict[str, Any]]:
    return [row for job in jobs for row in job_rows(study, job)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write atomically: a reader never sees half a table."""
    path = Path(path)
    fixed = columns()
    extra = sorted({k for row in rows for k in row if k not in fixed})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*fixed, *extra])
    for row in rows:
        writer.writerow([_cell(row.get(k)) for k in (*fixed, *extra)])
    return write_text_atomic(path, buffer.getvalue())


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows with numbers as numbers (empty cells as None)."""
    out = []
    numeric = numeric_columns()
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                if value == "":
                    parsed[key] = None
                elif key in numeric:
                    parsed[key] = float(value)
                elif key in INTEGER:
                    parsed[key] = int(value)
                else:
                    parsed[key] = value
            out.append(parsed)
    return out
