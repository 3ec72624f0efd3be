"""``run_study``: plan, (measure,) run what is missing, then write the table, the summary, the plots, the grid.

Every step reads what is already on disk first, so the same call resumes an interrupted study and does no
work for a finished one.  The study folder is locked while a study process works in it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from archbench.console.files import write_text_atomic
from archbench.console.machine import load_averages
from archbench.study import plan as planning
from archbench.study import tune as tuning
from archbench.study.job import check_reuse, eval_request, job_done
from archbench.study.launchers import run_tasks
from archbench.study.plots import write_plots
from archbench.study.progress import Progress
from archbench.study.results import collect, write_csv
from archbench.study.samples import write_grid
from archbench.study.schema import StudyError, StudySpec
from archbench.study.summary import write_summary

log = logging.getLogger("archbench.study")
TIMING_FILE = "timing.json"
PLAN_FILE = "plan.json"


@dataclass
class StudyResult:
    """What a study call did and where its outputs are."""

    study_dir: Path
    jobs: list[planning.Job]
    rows: list[dict[str, Any]]
    ran: list[str] = field(default_factory=list)  # runs this call trained or evaluated
    failed: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)


def machine_description() -> str:
    """Host, cores, accelerator, the load averages when the summary was written (the 15-minute one reflects the
    study's own runs) and the date: every number a study publishes says where and when it was measured."""
    import torch

    cpus = os.cpu_count() or 1
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", CPU only"
    loads = load_averages()
    load = "" if loads is None else "load average {:.1f}/{:.1f}/{:.1f} (1/5/15 min) at writing, ".format(*loads)
    return f"{platform.node()} ({cpus} cores{gpu}), {load}{datetime.date.today().isoformat()}"


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def measure_seconds_per_step(spec: StudySpec, points: list[planning.ArmPoint]) -> dict[str, float]:
    """``budget.match=wall_clock``: each point's seconds per step, measured once (kept in timing.json)."""
    path = Path(spec.study_dir) / TIMING_FILE
    known: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
    tasks = [{
        "kind": "time", "label": p.label, "overrides": p.overrides, "steps": spec.budget.timing_steps,
        "run_dir": str(Path(spec.study_dir) / "timing" / p.label), "device": spec.device, "threads": spec.threads,
    } for p in points if p.label not in known]
    if tasks:
        log.info("timing %d arm(s) for budget.match=wall_clock, one at a time", len(tasks))
        for result in run_tasks(tasks, spec, poll=lambda: None, workers=1):
            if result["status"] != "done":
                raise StudyError(f"timing {result['run']} failed: {result.get('error')}")
            known[result["label"]] = float(result["s_per_step"])
        _write_json(path, known)
    return known


def plan_study(spec: StudySpec, measure: bool = True) -> tuple[list[planning.ArmPoint], list[planning.Job]]:
    """The arms (composed and counted) and the jobs; wall-clock budgets are measured when ``measure``."""
    points = planning.describe_arms(spec)
    seconds = None
    if spec.budget.match == "wall_clock":
        if not measure:
            raise StudyError("budget.match=wall_clock: the plan needs each arm's measured seconds per step")
        seconds = measure_seconds_per_step(spec, points)
    steps = planning.arm_steps(spec, points, seconds)
    return points, planning.make_jobs(spec, points, steps, planning.recipe_log_every(spec))


def write_outputs(spec: StudySpec, jobs: list[planning.Job], candidates: list[planning.Job] | None = None
                  ) -> tuple[list[dict[str, Any]], list[Path]]:
    """results.csv (and tune.csv), summary.md, the plots and the grid, from what the runs hold now."""
    folder = Path(spec.study_dir)
    rows = collect(str(spec.name), jobs)
    outputs = [write_csv(rows, folder / "results.csv")]
    tune_rows = tuning.tune_rows(spec, candidates) if candidates else []
    if candidates:
        outputs.append(tuning.write_tune_csv(tune_rows, folder / tuning.TUNE_FILE))
    if rows:
        outputs.append(write_summary(spec, rows, folder / "summary.md", machine_description(),
                                     sections=tuning.tune_section(spec, tune_rows)))
        outputs += write_plots(rows, folder, str(spec.name))
    grid = write_grid(jobs, spec, folder)
    if grid is not None:
        outputs.append(grid)
    return rows, outputs


def run_study(spec: StudySpec) -> StudyResult:
    """Run (or resume) the study ``spec`` (from ``load_study``) and write its outputs."""
    from archbench.training.run_lock import RunDirLockedError, run_dir_lock

    folder = Path(spec.study_dir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with run_dir_lock(folder):
            return _run_locked(spec, folder)
    except RunDirLockedError as exc:
        raise StudyError(f"study folder {folder} is in use: {exc}") from None


def check_feature_networks(jobs: list[planning.Job], cache: str) -> None:
    """Every dataset's feature network is on disk before any arm trains (not found out after the training)."""
    from archbench.evaluation.evaluate import EvalError, check_feature_network

    firsts = {job.dataset: job for job in jobs}
    for dataset, job in firsts.items():
        try:
            check_feature_network(eval_request(job, job.steps, cache), dataset)
        except EvalError as exc:
            raise StudyError(f"eval: {exc}") from None


def _run_locked(spec: StudySpec, folder: Path) -> StudyResult:
    points, jobs = plan_study(spec)
    check_feature_networks(jobs, str(folder / "cache"))
    candidates = tuning.tune_jobs(spec, jobs)
    ran: list[dict[str, Any]] = []
    if candidates:
        ran += _run_jobs(spec, candidates, "tuning", plan=candidates + jobs)
        if any(r["status"] != "done" for r in ran):
            return _finish(spec, folder, jobs, ran, candidates)
        jobs = tuning.apply_choices(spec, jobs, tuning.choices(spec, tuning.tune_rows(spec, candidates)))
    log.info("study %s: %d arm(s) x %d seed(s) = %d run(s)", spec.name, len(points), len(spec.seeds), len(jobs))
    ran += _run_jobs(spec, jobs, "main", plan=candidates + jobs)
    return _finish(spec, folder, jobs, ran, candidates)


def _run_jobs(spec: StudySpec, jobs: list[planning.Job], stage: str, plan: list[planning.Job]
              ) -> list[dict[str, Any]]:
    """Run the jobs not done yet through the study's launcher; their results.  Every run already on disk is
    checked first: one trained with other settings stops the study before anything is reused, trained or
    written (study.yaml and plan.json describe the study only once its runs are known to belong to it)."""
    for job in jobs:
        check_reuse(job)
    folder = Path(spec.study_dir)
    write_text_atomic(folder / "study.yaml", yaml.safe_dump(asdict(spec), sort_keys=False))
    _write_json(folder / PLAN_FILE, [job.to_dict() for job in plan])
    pending = [job for job in jobs if not job_done(job)]
    log.info("%s: %d run(s), %d to do", stage, len(jobs), len(pending))
    cache = str(folder / "cache")
    progress = Progress(jobs)
    results: list[dict[str, Any]] = []
    # Runs that start from another run's weights (arms[].init_from) wait for a second wave, and run only when
    # their source finished: a failed source fails them too, without training anything.
    first = [job for job in pending if not job.init_from]
    second = [job for job in pending if job.init_from]
    for wave in (first, second):
        unfinished = {r["run"] for r in results if r["status"] != "done"}  # a run's folder is named after it
        ready = [job for job in wave if not job.init_from or Path(job.init_from).name not in unfinished]
        results += [{"run": job.run_name, "status": "failed", "error": f"its source run {job.init_from} did not "
                     "finish"} for job in wave if job not in ready]
        if not ready:
            continue
        tasks = [{"kind": "train", "job": job.to_dict(), "cache": cache} for job in ready]
        # submitit jobs run side by side (as the cluster schedules them); local ones ``workers`` at a time
        parallel = len(ready) if spec.launcher.name == "submitit" else spec.launcher.workers
        results += run_tasks(tasks, spec, poll=lambda parallel=parallel: progress(parallel))
    return results


def _finish(spec: StudySpec, folder: Path, jobs: list[planning.Job], results: list[dict[str, Any]],
            candidates: list[planning.Job]) -> StudyResult:
    failed = [r for r in results if r["status"] != "done"]
    rows, outputs = write_outputs(spec, jobs, candidates)
    for item in failed:
        log.error("run %s %s: %s", item["run"], item["status"], item.get("error", f"signal {item.get('signal')}"))
    return StudyResult(folder, jobs, rows, [r["run"] for r in results], failed, outputs)
