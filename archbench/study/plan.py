"""From a checked study spec to the list of runs: arms x sweep points x seeds, each with its step budget.

Every arm is composed through the training config (so an unknown backbone, key or value fails here, before
any training, with the training's own one-line message), measured once by the FLOP counter, and given the
steps its budget rule asks for.  A job is plain data (JSON-safe), so it crosses into worker processes and
SLURM jobs unchanged.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from archbench.study import budget
from archbench.study.schema import StudyError, StudySpec


@dataclass(frozen=True)
class ArmPoint:
    """One compared model: an arm at one sweep point."""

    label: str  # e.g. dit_t2 or dit_t2-depth4: names its runs and its rows
    arm: str
    backbone: str
    sweep: dict[str, Any]
    overrides: list[str]  # training overrides except the per-run ones (run_dir, seed, steps, ...)
    params: int
    gmacs: float
    batch_size: int
    dataset: str
    init_from: str | None = None  # the label of the point whose runs this one starts from
    budget_share: float = 1.0


@dataclass
class Job:
    """One training run of the study and the evaluations at its checkpoints."""

    label: str
    arm: str
    backbone: str
    seed: int
    sweep: dict[str, Any]
    overrides: list[str]
    steps: int
    eval_steps: list[int]
    ckpt_every: int
    log_every: int
    run_dir: str
    eval: dict[str, Any]
    params: int
    gmacs: float
    batch_size: int
    dataset: str
    device: str = "auto"
    threads: int | None = None
    gpus: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # the run folder this run starts from (arms[].init_from), trained first
    pre_gflops: float = 0.0  # that run's training compute, counted on this run's side

    @property
    def run_name(self) -> str:
        return f"{self.label}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(**data)


def short_key(key: str) -> str:
    return key.split(".")[-1]


def format_value(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def sweep_points(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the swept values (one empty point without a sweep)."""
    keys = list(sweep)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(sweep[k] for k in keys))]


def point_label(arm: str, point: dict[str, Any]) -> str:
    return "-".join([arm, *(f"{short_key(k)}{format_value(v)}" for k, v in point.items())])


def override(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{key}=[{','.join(map(str, value))}]"
    return f"{key}={'null' if value is None else value}"


def _compose(overrides: list[str], what: str) -> dict[str, Any]:
    from archbench.data import DatasetNotFoundError
    from archbench.training.config import ConfigError, compose_config, to_container

    try:
        return to_container(compose_config(overrides))
    except (ConfigError, DatasetNotFoundError) as exc:
        raise StudyError(f"{what}: {exc}") from None


def describe_arms(spec: StudySpec) -> list[ArmPoint]:
    """Compose and measure every arm at every sweep point (params, GMACs at the recipe's resolution)."""
    from archbench.measure.flops import backbone_flops
    from archbench.training.config import backbone_options

    points = []
    for arm in spec.arms:
        for point in sweep_points(spec.sweep):
            label = point_label(str(arm.name), point)
            overrides = [f"recipe={spec.recipe}", f"backbone={arm.backbone}", *spec.overrides,
                         *arm.overrides, *(override(k, v) for k, v in point.items())]
            config = _compose(overrides, f"arm {label}")
            name, options = backbone_options(config)
            if arm.match_params is not None:
                key, value, _ = budget.match_params(name, options, float(arm.match_params), arm.match_by)
                overrides.append(f"backbone.{key}={value}")
                config = _compose(overrides, f"arm {label}")
                name, options = backbone_options(config)
            try:
                counted = backbone_flops(name, **options)
            except (ValueError, RuntimeError, AssertionError) as exc:
                raise StudyError(f"arm {label}: {name} does not build with {options}: {exc}") from None
            points.append(ArmPoint(
                label=label, arm=str(arm.name), backbone=name, sweep=point, overrides=overrides,
                params=int(counted["params"]), gmacs=float(counted["gmacs"]),
                batch_size=int(config["train"]["batch_size"]), dataset=str(config["data"]["name"]),
                init_from=None if arm.init_from is None else point_label(arm.init_from, point),
                budget_share=float(arm.budget_share),
            ))
    return points


def reference_points(spec: StudySpec, points: list[ArmPoint]) -> dict[str, ArmPoint]:
    """For each point, the reference arm at the same sweep point (its steps set the budget there)."""
    reference = spec.budget.reference or spec.arms[0].name
    by_sweep = {tuple(sorted(p.sweep.items(), key=str)): p for p in points if p.arm == reference}
    return {p.label: by_sweep[tuple(sorted(p.sweep.items(), key=str))] for p in points}


def arm_steps(spec: StudySpec, points: list[ArmPoint], seconds_per_step: dict[str, float] | None = None
              ) -> dict[str, int]:
    """Training steps per point under the budget rule (``wall_clock`` needs measured seconds per step)."""
    match, ref_steps = spec.budget.match, spec.budget.steps
    refs = reference_points(spec, points)
    steps = {}
    for point in points:
        ref = refs[point.label]
        if match == "steps":
            steps[point.label] = ref_steps
        elif match == "train_flops":
            steps[point.label] = budget.matched_steps(ref_steps, ref.gmacs * ref.batch_size,
                                                      point.gmacs * point.batch_size)
        else:
            if seconds_per_step is None:
                raise StudyError("budget.match=wall_clock needs each arm's seconds per step measured first")
            steps[point.label] = budget.matched_steps(ref_steps, seconds_per_step[ref.label],
                                                      seconds_per_step[point.label])
    for point in points:
        if point.budget_share != 1.0:
            steps[point.label] = max(1, math.floor(steps[point.label] * point.budget_share + 0.5))
    if match == "train_flops":
        by_label = {p.label: p for p in points}
        for point in points:
            if point.init_from is not None:
                steps[point.label] = _steps_after_pretraining(point, by_label[point.init_from], steps, refs, ref_steps)
    return steps


def _steps_after_pretraining(point: ArmPoint, source: ArmPoint, steps: dict[str, int], refs: dict[str, ArmPoint],
                             ref_steps: int) -> int:
    """The steps left to an arm that starts from ``source``'s runs: the budget minus their training FLOPs."""
    ref = refs[point.label]
    left = ref_steps * ref.gmacs * ref.batch_size - steps[source.label] * source.gmacs * source.batch_size
    n = math.floor(left / (point.gmacs * point.batch_size) + 0.5)
    if n < 1:
        raise StudyError(f"arm {point.label}: its source {source.label} already spends the whole training-FLOPs "
                         f"budget ({steps[source.label]} steps); give the source fewer steps or the study more")
    return n


def make_jobs(spec: StudySpec, points: list[ArmPoint], steps: dict[str, int], recipe_log_every: int = 10
              ) -> list[Job]:
    """Arms x seeds, each with its run folder, evaluation points and checkpoint interval."""
    refs = reference_points(spec, points)
    by_label = {p.label: p for p in points}
    every = spec.eval.every
    jobs = []
    for point in points:
        ref_steps = steps[refs[point.label].label]
        n = steps[point.label]
        evals, interval = budget.eval_points(n, ref_steps, every)
        ckpt_every = math.gcd(spec.ckpt_every, interval) if spec.ckpt_every else interval
        source = by_label.get(point.init_from) if point.init_from else None
        for seed in spec.seeds:
            start = str(Path(spec.study_dir) / "runs" / f"{source.label}-s{seed}") if source else None
            jobs.append(Job(
                label=point.label, arm=point.arm, backbone=point.backbone, seed=int(seed), sweep=point.sweep,
                overrides=point.overrides, steps=n, eval_steps=evals, ckpt_every=ckpt_every,
                log_every=math.gcd(recipe_log_every, ckpt_every),
                run_dir=str(Path(spec.study_dir) / "runs" / f"{point.label}-s{seed}"),
                eval=asdict(spec.eval), params=point.params, gmacs=point.gmacs, batch_size=point.batch_size,
                dataset=point.dataset, device=spec.device, threads=spec.threads, gpus=spec.launcher.gpus_per_job,
                init_from=start,
                pre_gflops=budget.train_gflops(source.gmacs, source.batch_size, steps[source.label]) if source else 0.0,
            ))
    return jobs


def recipe_log_every(spec: StudySpec) -> int:
    config = _compose([f"recipe={spec.recipe}", *spec.overrides], "the study's recipe")
    return int(config["train"]["log_every"])
