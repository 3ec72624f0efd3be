"""The progress line while a study runs: which runs are going, their steps, and the ETA of the whole study.

It reads the runs' own files (``metrics.jsonl``, ``evals/``), so it works the same for local workers and
for SLURM jobs on a shared file system.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from archbench.study.job import eval_settings, read_eval
from archbench.study.plan import Job

log = logging.getLogger("archbench.study")
DEFAULT_EVAL_S = 30.0  # assumed seconds per evaluation until one has been measured


def _last_metrics(run_dir: str) -> dict[str, Any] | None:
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 4096))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Polls the study's runs and logs one line: done/total runs, the active runs' steps, the ETA."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.start = time.monotonic()
        self.last_line = ""

    def snapshot(self) -> dict[str, Any]:
        steps_left, evals_left, active, finished = 0.0, 0, [], 0
        rates, eval_seconds = {}, []
        states = []
        for job in self.jobs:
            row = _last_metrics(job.run_dir)
            step = int(row["step"]) if row else 0
            if row and row.get("it_per_s"):
                rates[job.label] = 1.0 / float(row["it_per_s"])
            settings = eval_settings(job)
            done_evals = [read_eval(job.run_dir, s, settings) for s in job.eval_steps]
            eval_seconds += [sum(r["seconds"].values()) for r in done_evals if r and "seconds" in r]
            missing = sum(r is None for r in done_evals)
            states.append((job, step, missing))
        known = list(rates.values())
        per_eval = sum(eval_seconds) / len(eval_seconds) if eval_seconds else DEFAULT_EVAL_S
        remaining = 0.0
        for job, step, missing in states:
            if missing == 0:
                finished += 1
                continue
            if 0 < step < job.steps:
                active.append(f"{job.run_name} {step}/{job.steps}")
            s_per_step = rates.get(job.label, sum(known) / len(known) if known else 1.0)
            steps_left += max(0, job.steps - step)
            evals_left += missing
            remaining += max(0, job.steps - step) * s_per_step + missing * per_eval
        return {"finished": finished, "total": len(self.jobs), "active": active, "eta_s": remaining,
                "steps_left": steps_left, "evals_left": evals_left}

    def line(self, workers: int = 1) -> str:
        snap = self.snapshot()
        active = ", ".join(snap["active"][:4]) or "evaluating / starting"
        eta = _duration(snap["eta_s"] / max(1, workers))
        return (f"study: {snap['finished']}/{snap['total']} runs done; {active}; "
                f"elapsed {_duration(time.monotonic() - self.start)}, ETA {eta}")

    def __call__(self, workers: int = 1) -> None:
        text = self.line(workers)
        if text != self.last_line:
            log.info("%s", text)
            self.last_line = text
