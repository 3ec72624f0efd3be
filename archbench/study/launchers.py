"""Where jobs run: this machine's processes (``local``) or SLURM through submitit (``submitit``).

Both use an existing engine: ``concurrent.futures`` with one fresh spawned process per job (so a run's peak
memory is its own, and a crash takes down one run, not the study), and submitit's executors (``slurm``, or
``local``/``debug`` to run the same job functions here).  The caller polls ``pending`` to show progress.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from archbench.console.errors import one_line
from archbench.console.lifeline import die_with_parent
from archbench.study.job import run_task
from archbench.study.schema import LauncherSpec, StudyError, StudySpec


def _failed(task: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    name = task["job"]["label"] + f"-s{task['job']['seed']}" if task["kind"] == "train" else task["label"]
    return {"run": name, "status": "failed", "error": f"{type(exc).__name__}: {one_line(exc)}"}


def run_local(tasks: list[dict[str, Any]], workers: int, poll: Callable[[], None], poll_every: float
              ) -> list[dict[str, Any]]:
    """Run ``tasks`` ``workers`` at a time, each in a fresh spawned process; results in task order.

    Each worker's first action (:func:`~archbench.console.lifeline.die_with_parent`, from a module that imports
    no torch) ties it to this process: when the study dies, even by kill -9, its workers get SIGTERM (training
    stops, keeping whole checkpoints only; anything else ends at once), and a worker whose study died before it
    got that far exits.
    The pool starts workers from this thread and from its manager thread, which both outlive them."""
    if not tasks:
        return []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=die_with_parent,
                             initargs=(os.getpid(),), max_tasks_per_child=1) as pool:
        futures: list[Future] = [pool.submit(run_task, task) for task in tasks]
        try:
            _wait([f.done for f in futures], poll, poll_every)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    results = []
    for task, future in zip(tasks, futures, strict=True):
        try:
            results.append(future.result())
        except Exception as exc:  # the worker's error (or its death): reported per run, the rest carry on
            results.append(_failed(task, exc))
    return results


def _wait(done: list[Callable[[], bool]], poll: Callable[[], None], poll_every: float) -> None:
    last = 0.0
    while not all(d() for d in done):
        if time.monotonic() - last >= poll_every:
            poll()
            last = time.monotonic()
        time.sleep(min(1.0, poll_every))
    poll()


def submitit_executor(folder: Path, launcher: LauncherSpec, study_name: str) -> Any:
    """A submitit executor for ``launcher`` (cluster slurm / local / debug) with the study's job resources."""
    try:
        import submitit
    except ImportError:
        raise StudyError("launcher=submitit needs the submitit package: pip install 'archbench[slurm]'") from None
    cluster = None if launcher.cluster == "slurm" else launcher.cluster
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as exc:  # no sbatch on this machine
        raise StudyError(f"submitit cannot reach SLURM here ({one_line(exc)}); launcher.cluster=local runs the "
                         "same jobs on this machine") from None
    gpus = launcher.gpus_per_job
    params: dict[str, Any] = {
        "name": f"archbench-{study_name}",
        "timeout_min": launcher.timeout_min,
        "nodes": 1,
        "tasks_per_node": 1,  # one process per job: it starts torchrun itself when gpus_per_job > 1
        "gpus_per_node": gpus or None,
        "cpus_per_task": launcher.cpus_per_job,
        "mem_gb": launcher.mem_gb,
    }
    if executor.cluster == "slurm":
        params["slurm_partition"] = launcher.partition
        if launcher.slurm_args:
            params["slurm_additional_parameters"] = dict(launcher.slurm_args)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def _error_line(text: str) -> str:
    """The last ``SomeError: message`` line of a traceback (submitit appends log paths after it)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*", line)]
    return errors[-1] if errors else (lines[-1] if lines else "")


def run_submitit(tasks: list[dict[str, Any]], folder: Path, launcher: LauncherSpec, study_name: str,
                 poll: Callable[[], None], poll_every: float) -> list[dict[str, Any]]:
    """Submit one job per task and wait for all of them; results in task order."""
    if not tasks:
        return []
    executor = submitit_executor(folder, launcher, study_name)
    jobs = [executor.submit(run_task, task) for task in tasks]
    _wait([job.done for job in jobs], poll, poll_every)
    results = []
    for task, job in zip(tasks, jobs, strict=True):
        try:
            results.append(job.result())
        except Exception as exc:  # submitit's FailedJobError carries the job's traceback: keep its error line
            results.append(_failed(task, RuntimeError(_error_line(str(exc)) or repr(exc))))
    return results


def run_tasks(tasks: list[dict[str, Any]], spec: StudySpec, poll: Callable[[], None],
              workers: int | None = None) -> list[dict[str, Any]]:
    """Run tasks through the study's launcher."""
    launcher = spec.launcher
    every = spec.progress_every
    if launcher.name == "submitit":
        return run_submitit(tasks, Path(spec.study_dir) / "submitit", launcher, str(spec.name), poll, every)
    return run_local(tasks, workers or launcher.workers, poll, every)
