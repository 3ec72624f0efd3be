"""What one worker does for one job: train (resuming whatever is on disk), then evaluate each checkpoint.

A job is idempotent: training resumes from the run's newest checkpoint and does nothing when it reached its
steps; an evaluation whose JSON exists with the same settings is skipped.  So the study can be killed at
any moment and re-run, and a finished study re-run does no work.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archbench.console.files import write_text_atomic
from archbench.console.lifeline import child_dies_with_us, exit_if_orphaned
from archbench.study.plan import Job

if TYPE_CHECKING:
    from archbench.evaluation.evaluate import EvalRequest
    from archbench.training.schema import RunConfig

log = logging.getLogger("archbench.study")
EVALS_DIR = "evals"
TIMING_WARMUP = 2


def eval_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / EVALS_DIR / f"step_{step:07d}.json"


def run_overrides(job: Job) -> list[str]:
    """The job's training run as ``archbench.train`` overrides (the study's keys last: they win): the run's record
    in plan.json, and what torchrun's ranks compose in their own processes."""
    return [
        *job.overrides,
        f"run_dir={job.run_dir}",
        f"seed={job.seed}",
        f"train.steps={job.steps}",
        "train.resume=auto",
        f"train.ckpt_every={job.ckpt_every}",
        "train.keep_last=0",  # the evaluated checkpoints must survive until they are scored
        f"train.log_every={job.log_every}",
        f"device={job.device}",
        f"threads={job.threads or 'auto'}",
        "train.progress=false",
        *([f"train.init_from={job.init_from}"] if job.init_from else []),
    ]


def job_config(job: Job) -> RunConfig:
    """The typed training config of the job's run, composed once from :func:`run_overrides`."""
    from archbench.training.launch import compose_run

    return compose_run(run_overrides(job))


def check_reuse(job: Job) -> None:
    """Refuse, in one line, a run on disk that was trained with other settings than the job asks for now.

    An edited study (another recipe, an arm's override, a tuned value that changed) must never pass off the old
    runs' scores as the new experiment's; what may differ is what a resume may change (the step budget, logging,
    devices: :data:`archbench.training.resume_config.RESUMABLE`)."""
    from archbench.study.schema import StudyError
    from archbench.training.config import ConfigError
    from archbench.training.launch import config_record
    from archbench.training.resume_config import read_run_config, trajectory_changes

    try:
        saved = read_run_config(job.run_dir)
        if saved is None:
            return
        changes = trajectory_changes(saved, config_record(job_config(job)))
    except ConfigError as exc:
        raise StudyError(f"run {job.run_name}: {exc}") from None
    if changes:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
        raise StudyError(f"arm {job.arm}: run {job.run_dir} was trained with other settings than the study now asks "
                         f"for ({listed}); give a fresh study_dir= for the edited study, or delete that run folder "
                         "to retrain it")
    _check_checkpoints_kept(job)


def _check_checkpoints_kept(job: Job) -> None:
    """A run trained past an evaluation point the study now asks for must still hold that checkpoint (a lowered
    budget moves the points onto steps that were pruned): refuse rather than score something else."""
    from archbench.study.schema import StudyError
    from archbench.training.checkpoint import checkpoint_path

    reached = trained_step(job.run_dir)
    settings = eval_settings(job)
    lost = [step for step in job.eval_steps if step <= reached and read_eval(job.run_dir, step, settings) is None
            and not checkpoint_path(job.run_dir, step).is_file()]
    if lost:
        raise StudyError(f"arm {job.arm}: run {job.run_dir} is trained to step {reached} and the study now scores "
                         f"it at step(s) {', '.join(map(str, lost))}, whose checkpoints were not kept (only evaluation "
                         "points are); give a fresh study_dir= for the new budget")


def trained_step(run_dir: str | Path) -> int:
    """The newest checkpoint's step (0 without one)."""
    from archbench.training.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    return int(found[-1].stem.split("_")[1]) if found else 0


def eval_settings(job: Job) -> dict[str, Any]:
    """What an evaluation depends on; an existing result with other settings is redone."""
    return {**job.eval, "seed": job.seed if job.eval.get("seed") is None else job.eval["seed"]}


def read_eval(run_dir: str | Path, step: int, settings: dict[str, Any]) -> dict[str, Any] | None:
    path = eval_path(run_dir, step)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("study_eval") == settings else None


def job_done(job: Job) -> bool:
    settings = eval_settings(job)
    return all(read_eval(job.run_dir, step, settings) is not None for step in job.eval_steps)


def default_feature_weights(features: str, dataset: str) -> str | None:
    """The committed Fashion-MNIST CNN (the CI baselines' features), so every study scores with one network."""
    from archbench.evaluation.cond_accuracy import committed_classifier

    path = committed_classifier(dataset, features)
    return None if path is None else str(path)


def eval_request(job: Job, step: int, cache: str | None) -> EvalRequest:
    """The evaluation of ``job``'s checkpoint at ``step``, as the library call the eval command makes too."""
    from archbench.evaluation.evaluate import EvalRequest
    from archbench.training.checkpoint import checkpoint_path

    settings = eval_settings(job)
    return EvalRequest(
        checkpoint=str(checkpoint_path(job.run_dir, step)),
        num_samples=settings["num_samples"],
        features=settings["features"],
        weights=settings["weights"] or default_feature_weights(settings["features"], job.dataset),
        sampler=settings["sampler"],
        steps=settings["steps"],
        cfg_scale=settings["cfg_scale"],
        seed=settings["seed"],
        batch_size=settings["batch_size"],
        feature_batch_size=settings["batch_size"],
        ref_split=settings["ref_split"],
        device=job.device,
        progress=False,
        cache=cache,
        out=str(eval_path(job.run_dir, step)),
    )


def evaluate_step(job: Job, step: int, cache: str | None) -> dict[str, Any]:
    """Score one checkpoint; its record keeps the study's settings, so a re-run knows it is done."""
    from archbench.evaluation.evaluate import evaluate

    record = evaluate(eval_request(job, step, cache))
    record["study_eval"] = eval_settings(job)
    write_text_atomic(eval_path(job.run_dir, step), json.dumps(record, indent=2, default=str) + "\n")
    return record


def record_divergence(job: Job, message: str) -> None:
    """Mark a tuning candidate as diverged where its final evaluation would be, so a re-run does not retry it."""
    record = {"status": "diverged", "error": message, "study_eval": eval_settings(job)}
    write_text_atomic(eval_path(job.run_dir, job.steps), json.dumps(record, indent=2) + "\n")


def _train(job: Job) -> int | None:
    """Train to the job's steps; returns the signal that stopped it, or None."""
    if job.gpus > 1:  # the ranks are processes of their own: they get the strings and compose them there
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={job.gpus}",
                   "-m", "archbench.train", *run_overrides(job)]
        # torchrun gets SIGTERM when this worker dies and passes it on to its ranks (they save and stop)
        code = subprocess.run(command, preexec_fn=child_dies_with_us()).returncode
        if code >= 128:
            return code - 128
        if code:
            raise RuntimeError(f"torchrun training of {job.run_name} failed with exit code {code}")
        return None
    from archbench.training.launch import train_from_config

    return train_from_config(job_config(job)).signum


def prune(job: Job) -> None:
    """Drop checkpoints that are neither evaluation points nor the last: they were only there for resuming."""
    from archbench.training.checkpoint import list_checkpoints

    keep = {f"step_{s:07d}.pt" for s in job.eval_steps}
    found = list_checkpoints(job.run_dir)
    for path in found[:-1]:
        if path.name not in keep:
            path.unlink(missing_ok=True)


def configure(threads: int | None) -> None:
    from archbench.console.logs import setup_logging

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    setup_logging()


def run_job(job_data: dict[str, Any], cache: str | None = None) -> dict[str, Any]:
    """Train and evaluate one job (its dict form); returns ``{"run", "status", "seconds"}``."""
    from archbench.evaluation.metrics import result_line
    from archbench.training.loop import NonFiniteLossError

    job = Job.from_dict(job_data)
    exit_if_orphaned()
    configure(job.threads)
    start = time.perf_counter()
    if trained_step(job.run_dir) < job.steps and read_eval(job.run_dir, job.steps, eval_settings(job)) is None:
        try:
            signum = _train(job)
        except NonFiniteLossError as exc:
            if "tunes" not in job.extra:
                raise
            record_divergence(job, str(exc))  # a tuning candidate that diverges is an answer, not a failure
            log.info("%s diverged: %s", job.run_name, exc)
            return {"run": job.run_name, "status": "done", "seconds": time.perf_counter() - start}
        if signum is not None:
            return {"run": job.run_name, "status": "interrupted", "signal": signum}
    for step in job.eval_steps:
        if read_eval(job.run_dir, step, eval_settings(job)) is None:
            exit_if_orphaned()  # the study is gone (a signal the training swallowed): score nothing for nobody
            record = evaluate_step(job, step, cache)
            log.info("%s step %d: %s", job.run_name, step, result_line(record))
    prune(job)
    return {"run": job.run_name, "status": "done", "seconds": time.perf_counter() - start}


def time_point(overrides: list[str], run_dir: str, steps: int, device: str, threads: int | None) -> float:
    """Median seconds per training step of ``steps`` real steps after a warm-up, from the loop's own log."""
    from archbench.console.threads import measurement_units
    from archbench.training.checkpoint import list_checkpoints
    from archbench.training.launch import compose_run, train_from_config
    from archbench.training.log import read_metrics

    configure(threads)
    setting = threads or "auto"
    skip = TIMING_WARMUP + measurement_units(setting)  # threads=auto's measuring steps are not what is timed
    rows = read_metrics(run_dir) if Path(run_dir, "metrics.jsonl").is_file() else []
    if len(rows) < steps + skip:
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted timing run starts over: it is short
        train_from_config(compose_run([
            *overrides, f"run_dir={run_dir}", f"train.steps={steps + skip}", "train.resume=null",
            "train.log_every=1", "train.sample_every=0", f"train.ckpt_every={steps + skip}",
            f"device={device}", f"threads={setting}", "train.progress=false", "train.logger=none",
        ]))
        exit_if_orphaned()
        rows = read_metrics(run_dir)
        for path in list_checkpoints(run_dir):
            path.unlink(missing_ok=True)
    seconds = [1.0 / row["it_per_s"] for row in rows if row["step"] > skip]
    return statistics.median(seconds)


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Entry point of every worker (local pool or submitit): ``{"kind": "train"|"time", ...}``."""
    if task["kind"] == "time":
        seconds = time_point(task["overrides"], task["run_dir"], task["steps"], task["device"], task["threads"])
        return {"label": task["label"], "status": "done", "s_per_step": seconds}
    return run_job(task["job"], task.get("cache"))
