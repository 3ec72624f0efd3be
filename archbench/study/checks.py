"""What a study's values must satisfy beyond their types, checked before anything trains.

OmegaConf has already typed every key (:mod:`archbench.study.schema`); here are the rules a type cannot say:
a choice among words, a positive count, an arm that exists, a key the study manages itself. Each failure is one
line naming the key, what was wrong and what is valid.
"""

from __future__ import annotations

import re
from pathlib import Path

from archbench.study.schema import (
    CLUSTERS,
    LAUNCHERS,
    MATCH_BY,
    MATCH_MODES,
    ArmSpec,
    BudgetSpec,
    EvalSpec,
    LauncherSpec,
    StudyError,
    StudySpec,
    TuneSpec,
)

# Training keys the study sets itself for every run.
MANAGED_KEYS = ("run_dir", "seed", "train.steps", "train.resume", "train.ckpt_every", "train.keep_last",
                "train.log_every", "device", "backbone", "recipe")


def check_spec(spec: StudySpec, source: str = "study") -> None:
    """Every rule below, in the order a reader of the file meets the keys (the arms' names are final here)."""
    if not spec.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", spec.name):
        raise StudyError(f"{source}: 'name' must be a non-empty word (letters, digits, _ . -), got {spec.name!r}")
    names = _check_arms(spec.arms, source)
    _check_seeds(spec.seeds)
    _check_budget(spec.budget, names)
    _check_eval(spec.eval)
    _check_tune(spec.tune, spec.arms)
    _check_launcher(spec.launcher)
    _check_device(spec.device, here=spec.launcher.name == "local" or spec.launcher.cluster != "slurm")
    if spec.ckpt_every is not None and spec.ckpt_every < 1:
        raise StudyError(f"ckpt_every must be a positive integer or null, got {spec.ckpt_every!r}")
    _check_overrides(spec.overrides + [o for arm in spec.arms for o in arm.overrides])
    blocking = next((p for p in (Path(spec.study_dir), *Path(spec.study_dir).parents)
                     if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise StudyError(f"study_dir={spec.study_dir}: {blocking} is a file, not a folder; give another study_dir=")


def _check_arms(arms: list[ArmSpec], source: str) -> list[str]:
    """The arms' names (each arm's ``name`` is already its backbone when it gave none)."""
    if not arms:
        raise StudyError(f"{source}: 'arms' is empty; list what to compare, e.g. arms: [{{backbone: dit_t2}}, "
                         "{backbone: dis_t2}]")
    for index, arm in enumerate(arms):
        if not re.fullmatch(r"[A-Za-z0-9_.=+-]+", str(arm.name)):
            raise StudyError(f"arms[{index}].name {arm.name!r} must be letters, digits and _ . = + -")
        if arm.match_by not in MATCH_BY:
            raise StudyError(f"arms[{index}].match_by={arm.match_by!r}; valid: {', '.join(MATCH_BY)}")
        if arm.match_params is not None and arm.match_params <= 0:
            raise StudyError(f"arms[{index}].match_params must be a positive parameter count, e.g. 30e6")
        if not 0 < arm.budget_share <= 1:
            raise StudyError(f"arms[{index}].budget_share must lie in (0, 1], got {arm.budget_share}")
    names = [str(arm.name) for arm in arms]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise StudyError(f"two arms are both called {duplicated[0]!r}: give one a 'name'")
    sources = {str(arm.name): arm.init_from for arm in arms}
    for index, arm in enumerate(arms):
        if arm.init_from is None:
            continue
        if arm.init_from not in names or arm.init_from == arm.name:
            raise StudyError(f"arms[{index}].init_from={arm.init_from!r} must name another arm; arms: "
                             f"{', '.join(n for n in names if n != arm.name)}")
        if sources[arm.init_from] is not None:
            raise StudyError(f"arms[{index}].init_from={arm.init_from!r}: that arm starts from "
                             f"{sources[arm.init_from]!r} itself; an arm may start only from an arm trained from "
                             "scratch")
    return names


def _check_seeds(seeds: list[int]) -> None:
    if not seeds or any(s < 0 for s in seeds):
        raise StudyError(f"'seeds' must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"'seeds' repeats a seed: {seeds}")


def _check_budget(budget: BudgetSpec, names: list[str]) -> None:
    if budget.match not in MATCH_MODES:
        raise StudyError(f"budget.match={budget.match!r}; valid: {', '.join(MATCH_MODES)}")
    if budget.steps < 1:
        raise StudyError(f"budget.steps must be a positive integer, got {budget.steps!r}")
    if budget.reference is not None and budget.reference not in names:
        raise StudyError(f"budget.reference={budget.reference!r} is not an arm; arms: {', '.join(names)}")
    if budget.timing_steps < 1:
        raise StudyError(f"budget.timing_steps must be a positive integer (timed steps per arm for "
                         f"budget.match=wall_clock), got {budget.timing_steps!r}")


def _check_eval(ev: EvalSpec) -> None:
    for key in ("num_samples", "steps", "batch_size"):
        if getattr(ev, key) < 1:
            raise StudyError(f"eval.{key} must be a positive integer, got {getattr(ev, key)!r}")
    if ev.num_samples < 2:
        raise StudyError(f"eval.num_samples={ev.num_samples}: a Fréchet distance needs at least 2 samples "
                         "(the covariance of their features); use hundreds")
    every = ev.every
    listed = isinstance(every, list) and every and all(isinstance(p, int) and p > 0 for p in every)
    if not (listed or (isinstance(every, int) and every >= 0)):
        raise StudyError(f"eval.every must be a non-negative integer (0 = only at the end) or a list of reference-arm "
                         f"steps such as [125, 250, 500, 1000], got {every!r}")


def _check_tune(tune: TuneSpec, arms: list[ArmSpec]) -> None:
    from archbench.evaluation.metrics import column_metrics

    if tune.key is None:
        if tune.values:
            raise StudyError(f"tune.values={tune.values} without tune.key: name the training key they are for, "
                             "e.g. tune.key=train.lr")
        return
    key = tune.key
    if any(arm.init_from for arm in arms):
        raise StudyError("tune.key with arms[].init_from: tune the source arms in a study of their own and give each "
                         "arm its value in its overrides")
    if not re.fullmatch(r"[A-Za-z_][\w.]*", key):
        raise StudyError(f"tune.key must be a dotted training key such as train.lr, got {tune.key!r}")
    if key in MANAGED_KEYS:
        raise StudyError(f"tune.key={key}: the study sets {key} itself for every run; tune another training key")
    if not tune.values:
        raise StudyError(f"tune.values must be a non-empty list of candidates for {key}, e.g. [1.0e-3, 3.0e-3]")
    if len({str(v) for v in tune.values}) != len(tune.values):
        raise StudyError(f"tune.values repeats a value: {tune.values}")
    if not 0 < tune.budget <= 1:
        raise StudyError(f"tune.budget is the fraction of an arm's steps each candidate trains, in (0, 1]; "
                         f"got {tune.budget!r}")
    named = list(column_metrics())
    if tune.metric not in named:
        raise StudyError(f"tune.metric={tune.metric!r}; valid: {', '.join(named)}")
    if tune.seed is not None and tune.seed < 0:
        raise StudyError(f"tune.seed must be a non-negative integer or null, got {tune.seed!r}")
    for arm in arms:
        for text in arm.overrides:
            if text.partition("=")[0].lstrip("+~") == key:
                raise StudyError(f"arms {arm.name} sets {text} but tune.key={key} is tuned per arm: drop one")


def _check_launcher(launcher: LauncherSpec) -> None:
    if launcher.name not in LAUNCHERS:
        raise StudyError(f"launcher={launcher.name!r}; valid: {', '.join(LAUNCHERS)}")
    if launcher.cluster not in CLUSTERS:
        raise StudyError(f"launcher.cluster={launcher.cluster!r}; valid: {', '.join(CLUSTERS)}")
    if launcher.workers < 1:
        raise StudyError(f"launcher.workers must be a positive integer, got {launcher.workers!r}")


def _check_device(device: str, here: bool) -> None:
    """The runs' device, before anything trains: its kind always, and whether this machine has it when the runs
    train here (a SLURM node may have GPUs the submitting machine lacks)."""
    from archbench.training.distributed import check_device

    try:
        check_device(device, here=here)
    except RuntimeError as exc:
        raise StudyError(f"device={device}: {exc}") from None


def _check_overrides(overrides: list[str]) -> None:
    """No training override sets what the study sets per run: it would be silently replaced."""
    for text in overrides:
        key = text.partition("=")[0].lstrip("+~")
        if key in MANAGED_KEYS:
            instead = {"seed": "seeds", "train.steps": "budget.steps", "backbone": "arms", "device": "device"}
            raise StudyError(f"override {text!r}: the study sets {key} itself for every run "
                             f"(use the study key {instead.get(key, 'ckpt_every / study_dir / eval.every')})")
