"""The FD regression check (``python -m archbench.ci fid``, see :mod:`archbench.commands.ci`): catch a
sample-quality regression on small training runs.

A thin wrapper over the ``ci`` study (``recipes/studies/ci.yaml``, run by :func:`archbench.study.run_study`):
every family's 16-token member trains with the same recipe (``recipes/cpu_study.yaml``, its tuned learning
rate), seed and step budget on real Fashion-MNIST, samples a fixed number of guided images with a fixed sampler,
and is scored by the Fréchet distance on the project's own Fashion-MNIST CNN features
(``FD-fashion_mnist_cnn``: no Inception weights can be downloaded in CI) against the real
test set.  Each score is compared with ``recipes/baselines/<backbone>.json``; a score above
``baseline * (1 + tolerance)`` is a regression.

Every setting (backbones, steps, samples, sampler, seeds, threads, folder) comes from ``ci.yaml``, so editing
that file changes what CI runs; :func:`ci_spec` replaces only the settings it is given.

``update_baselines`` rewrites the baselines deliberately.  With seeds 0, 1, 2 it trains every backbone once
per seed and sets the tolerance from the measured run-to-run spread: ``max(min_tolerance, 3 * std / mean)``
over the seeds, the baseline being the seed-0 score (the seed CI runs).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from archbench.console.errors import UsageError
from archbench.console.files import write_text_atomic
from archbench.study.job import eval_settings, read_eval
from archbench.study.schema import StudySpec

STUDY = "ci"  # recipes/studies/ci.yaml: the recipe, the arms (the registry's "tiny" tag), the evaluation, seeds
FEATURES = "fashion_mnist_cnn"
log = logging.getLogger("archbench.ci")


def recipes_dir() -> Path:
    from archbench.training.config import recipes_dir as configured

    return configured()


def baselines_dir() -> Path:
    return recipes_dir() / "baselines"


def feature_weights() -> Path:
    """The committed feature CNN: a fixed network, so baselines stay comparable across machines."""
    return baselines_dir() / f"{FEATURES}.safetensors"


@dataclass(frozen=True)
class RunSettings:
    """What must match between a run and its baseline for the comparison to mean anything."""

    steps: int
    num_samples: int
    sampler: str
    sample_steps: int
    seed: int
    cfg_scale: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def ci_spec(
    names: list[str] | None = None,
    *,
    steps: int | None = None,
    num_samples: int | None = None,
    sampler: str | None = None,
    sample_steps: int | None = None,
    seeds: list[int] | None = None,
    work_dir: str | Path | None = None,
    threads: int | None = None,
    study: str | Path = STUDY,
) -> StudySpec:
    """The ``ci`` study file (or ``study``) with only the settings given here replaced.

    ``None`` keeps the file's value, so the file is what CI runs and a flag changes one thing.  The file may
    leave the features out: CI then scores with the committed Fashion-MNIST CNN, as its baselines do.
    """
    from archbench.study.spec import compose_study, expand_tag_arms, read_study_file

    raw, path = read_study_file(str(study))
    if names is not None:  # a named backbone keeps the file's arm (its learning rate), others train as they are
        given = {arm["backbone"]: arm for arm in expand_tag_arms(raw.get("arms") or [], str(path))
                 if isinstance(arm, dict) and "backbone" in arm}
        raw["arms"] = [given.get(name, {"backbone": name}) for name in names]
    if seeds is not None:
        raw["seeds"] = list(seeds)
    if work_dir is not None:
        raw["study_dir"] = str(work_dir)
    if threads is not None:
        raw["threads"] = threads
    budget = dict(raw.get("budget") or {})
    if steps is not None:
        budget["steps"] = steps
    given = {"num_samples": num_samples, "sampler": sampler, "steps": sample_steps}
    evaluation = {**dict(raw.get("eval") or {}), **{k: v for k, v in given.items() if v is not None}}
    evaluation.setdefault("features", FEATURES)
    if evaluation["features"] == FEATURES and evaluation.get("weights") is None:
        evaluation["weights"] = str(feature_weights())
    raw.update(budget=budget, eval=evaluation)
    return compose_study(raw, source=str(path))


def run_ci_study(spec: StudySpec, fresh: bool = True) -> dict[tuple[str, int], dict[str, Any]]:
    """Run the study (from scratch unless ``fresh`` is false); (backbone, seed) -> its CI table row."""
    from archbench.study.runner import run_study

    runs = Path(spec.study_dir) / "runs"
    if fresh and runs.exists():  # a scratch folder of an earlier check: every CI run trains from scratch
        shutil.rmtree(runs)
    result = run_study(spec)
    if result.failed:
        raise RuntimeError("; ".join(f"{f['run']} {f['status']}: {f.get('error', '')}" for f in result.failed))
    rows = {}
    for job in result.jobs:
        record = read_eval(job.run_dir, job.steps, eval_settings(job))
        final = [r for r in result.rows if r["label"] == job.label and r["seed"] == job.seed and r["step"] == job.steps]
        if record is None or not final:
            raise RuntimeError(f"{job.run_name} has no final evaluation")
        row = final[0]
        rows[(job.backbone, job.seed)] = {
            "backbone": job.backbone,
            "dataset": job.dataset,
            "params": job.params,
            "gmacs": job.gmacs,
            "steps": job.steps,
            "s_per_step": row["s_per_step"],
            "score_name": record["score_name"],
            "fd": float(record["score"]),
            "precision": record.get("precision"),
            "recall": record.get("recall"),
            "feature_checksum": record["feature_checksum"],
            "settings": RunSettings(job.steps, spec.eval.num_samples, spec.eval.sampler, spec.eval.steps, job.seed,
                                    spec.eval.cfg_scale).as_dict(),
            "cond_accuracy": record.get("cond_accuracy"),
            "train_s": row["wall_s"],
        }
    return rows


def load_baseline(name: str, directory: Path) -> dict[str, Any] | None:
    path = directory / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def verdict(row: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """``ok`` / ``better`` / ``REGRESSED`` / ``NO BASELINE`` / ``MISMATCH`` (baseline not comparable)."""
    if baseline is None:
        return "NO BASELINE"
    for key in ("dataset", "feature_checksum"):
        if baseline.get(key) != row[key]:
            return f"MISMATCH ({key})"
    if baseline.get("settings") != row["settings"]:
        return "MISMATCH (settings)"
    limit = baseline["fd"] * (1 + baseline["tolerance"])
    if row["fd"] > limit:
        return "REGRESSED"
    return "better" if row["fd"] < baseline["fd"] * (1 - baseline["tolerance"]) else "ok"


def write_baseline(row: dict[str, Any], seed_fds: list[float], min_tolerance: float, directory: Path) -> Path:
    """Save ``row`` as the baseline; the tolerance comes from the spread of ``seed_fds``."""
    spread = statistics.stdev(seed_fds) / statistics.mean(seed_fds) if len(seed_fds) > 1 else 0.0
    tolerance = max(min_tolerance, 3 * spread)
    baseline = {
        **{k: row[k] for k in ("backbone", "dataset", "score_name", "fd", "params", "gmacs", "feature_checksum")},
        "tolerance": round(tolerance, 4),
        "settings": row["settings"],
        "spread": {"seed_fds": seed_fds, "relative_std": round(spread, 4), "min_tolerance": min_tolerance},
        "measured": {"s_per_step": round(row["s_per_step"], 4), "on": os.uname().nodename,
                     "cond_accuracy": row.get("cond_accuracy"), "date": datetime.date.today().isoformat()},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{row['backbone']}.json"
    return write_text_atomic(path, json.dumps(baseline, indent=2) + "\n")


def format_table(rows: list[dict[str, Any]]) -> str:
    header = "| backbone | params | GMACs | steps | s/step | FD | cond. acc. | baseline | verdict |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        base = row.get("baseline_fd")
        base_text = f"{base:.3f} (+{100 * row['tolerance']:.0f}%)" if base is not None else "-"
        accuracy = row.get("cond_accuracy")
        lines.append(
            f"| {row['backbone']} | {row['params']:,} | {row['gmacs']:.4f} | {row['steps']} | "
            f"{row['s_per_step']:.3f} | {row['fd']:.3f} | {'-' if accuracy is None else f'{accuracy:.3f}'} | "
            f"{base_text} | {row['verdict']} |"
        )
    return "\n".join(lines)


@dataclass
class RegressionResult:
    """One check: a row per backbone (scores, baseline, verdict), the seeds and evaluation settings it used."""

    rows: list[dict[str, Any]]
    seeds: list[int]
    evaluation: dict[str, Any]
    table_path: Path

    @property
    def failed(self) -> list[str]:
        """Backbones whose verdict is not ok or better (a regression, a mismatch, no baseline)."""
        return [r["backbone"] for r in self.rows if r["verdict"] not in ("ok", "better")]


def check_spec(spec: StudySpec, update_baselines: bool = False) -> None:
    """What the check refuses before training anything: unknown or repeated backbones, several seeds outside
    ``update_baselines``; a UsageError naming it."""
    from backbones.registry import list_backbones

    names = [arm.backbone for arm in spec.arms]
    unknown = [n for n in names if n not in list_backbones()]
    if unknown:
        raise UsageError(f"unknown backbone(s) {', '.join(unknown)}; e.g. "
                         f"{', '.join(list_backbones(tag='cpu_study'))}")
    if len(set(names)) != len(names):
        raise UsageError(f"each backbone is compared once, got {', '.join(names)}")
    if not update_baselines and len(spec.seeds) > 1:
        raise UsageError(f"CI compares one seed, got {spec.seeds}; several seeds are for update_baselines")


def run_regression(
    spec: StudySpec,
    *,
    update_baselines: bool = False,
    min_tolerance: float = 0.10,
    baselines: str | Path | None = None,
    fresh: bool = True,
) -> RegressionResult:
    """Train and score every arm of ``spec`` (from scratch unless ``fresh`` is false: then the runs already in the
    study folder are resumed, e.g. an interrupted baseline update), optionally rewrite the baselines from this run,
    and give each backbone its verdict; the rows are also written to ``study_dir/ci_fid.json``."""
    check_spec(spec, update_baselines)
    names = [arm.backbone for arm in spec.arms]
    seeds = spec.seeds
    directory = Path(baselines) if baselines else baselines_dir()
    scored = run_ci_study(spec, fresh=fresh)
    rows = []
    for name in names:
        per_seed = [scored[(name, seed)] for seed in seeds]
        row = per_seed[0]
        if update_baselines:
            path = write_baseline(row, [r["fd"] for r in per_seed], min_tolerance, directory)
            log.info("wrote %s", path)
        baseline = load_baseline(name, directory)
        row["baseline_fd"] = baseline["fd"] if baseline else None
        row["tolerance"] = baseline["tolerance"] if baseline else 0.0
        row["verdict"] = verdict(row, baseline)
        rows.append(row)
        log.info("%s: %s %.3f -> %s", name, row["score_name"], row["fd"], row["verdict"])
    table_path = write_text_atomic(Path(spec.study_dir) / "ci_fid.json", json.dumps(rows, indent=2) + "\n")
    return RegressionResult(rows, list(seeds), asdict(spec.eval), table_path)
