"""The study file as typed dataclasses: the structured config OmegaConf merges a study YAML and its overrides into.

Every key's default and one-line doc sit on its field (:func:`archbench.training.schema.key`, as the training
configuration does), so ``python -m archbench.study --help`` and the README's key table are generated here
(:func:`key_rows`) and OmegaConf types every value. Checks that a type cannot say (an arm exists, a positive step
count, a choice among words) are :mod:`archbench.study.checks`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from archbench.console.errors import UsageError
from archbench.training.schema import key as _key

MATCH_MODES = ("steps", "train_flops", "wall_clock")
LAUNCHERS = ("local", "submitit")
CLUSTERS = ("slurm", "local", "debug")
MATCH_BY = ("width", "depth")
README_BEGIN, README_END = "<!-- study-keys:begin -->", "<!-- study-keys:end -->"


class StudyError(UsageError):
    """A mistake in a study file or its overrides, reported as one line before any training starts (a bad
    argument like any other: a :class:`~archbench.console.errors.UsageError`)."""


@dataclass
class ArmSpec:
    """One compared backbone (its fields show no default in the key table: an arm is a list item)."""

    backbone: str = field(metadata={"doc": "a registry name"})
    name: str | None = _key(None, "the arm's name (default: its backbone); names its runs and rows")
    overrides: list[str] = _key(doc="the arm's own training overrides", factory=list)
    match_params: float | None = _key(None, "resize the arm to the nearest valid size within 2% of this many "
                                      "parameters, or fail saying how far the nearest is")
    match_by: str = _key("width", "what `match_params` resizes: `width` (default) or `depth`")
    budget_share: float = _key(1.0, "the share of the budget this arm trains for (e.g. 0.5 for a pre-training arm "
                               "whose fine-tuning arm gets the rest through `init_from`)")
    init_from: str | None = _key(None, "another arm: each seed starts from that arm's run of the same seed (its final "
                                 "EMA weights, `train.init_from`), trained first; under `budget.match=train_flops` "
                                 "that run's training FLOPs count against this arm's budget")


@dataclass
class BudgetSpec:
    match: str = _key("steps", "`steps` (every arm `budget.steps`), `train_flops` (steps_arm = steps_ref x "
                      "GMACs_ref x batch_ref / (GMACs_arm x batch_arm), rounded) or `wall_clock` (each arm timed first "
                      "for `budget.timing_steps` steps after 2 warm-up steps, kept in `timing.json`; steps_arm = "
                      "steps_ref x s/step_ref / s/step_arm)")
    steps: int = _key(300, "the reference arm's steps (at each sweep point, the reference arm at that point sets the "
                      "budget)")
    reference: str | None = _key(None, "the arm whose steps set the budget (null: the first arm)")
    timing_steps: int = _key(8, "`wall_clock`: timed steps per arm")


@dataclass
class EvalSpec:
    every: Any = _key(0, "reference-arm steps between evaluations (0: only at the end), or a list of reference-arm "
                      "steps (e.g. `[125, 250, 500, 1000]`, the end is always scored); each arm is scored at the same "
                      "compute fractions")
    num_samples: int = _key(500, "samples scored at each evaluation point")
    features: str = _key("auto", "`auto`, `inception`, `fashion_mnist_cnn` or `digits_cnn`")
    weights: str | None = _key(None, "feature weights (null: the committed CNN in recipes/baselines, or the usual "
                               "lookup)")
    sampler: str = _key("ddim", "the sampler of the evaluation samples")
    steps: int = _key(25, "sampling steps of the evaluation samples")
    cfg_scale: float = _key(1.0, "guidance of the evaluation samples")
    batch_size: int = _key(250, "sampling and feature batch")
    ref_split: str = _key("test", "the real data's split the samples are compared with")
    seed: int | None = _key(None, "the evaluation samples' seed (null: the run's seed)")


@dataclass
class TuneSpec:
    key: str | None = _key(None, "a training key tuned per arm before the main runs, e.g. `train.lr` (null: no "
                           "tuning); the chosen value, every candidate's score and the tuning compute go to tune.csv "
                           "and summary.md")
    values: list[Any] = _key(doc="the candidate values, e.g. `[1.0e-3, 3.0e-3, 1.0e-2]`", factory=list)
    budget: float = _key(0.25, "each candidate trains this fraction of the arm's steps (its compute is reported apart)")
    metric: str = _key("fd", "what picks the winner: a metrics-table name (`fd` lower wins, `cond_accuracy` higher "
                       "wins, ...)")
    seed: int | None = _key(None, "the candidates' seed (null: the first of `seeds`)")


@dataclass
class GridSpec:
    cfg_scale: float = _key(4.0, "guidance of the study's sample grid (a row per arm, same noise and labels)")
    columns: int = _key(10, "columns of the sample grid")
    seed: int = _key(0, "noise seed of the sample grid")


@dataclass
class LauncherSpec:
    name: str = _key("local", "`local` or `submitit` (`launcher: local` is short for it)")
    workers: int = _key(1, "local: runs at the same time, each its own process")
    cluster: str = _key("slurm", "submitit: `slurm`, `local` (submitit's local executor) or `debug` (in-process)")
    partition: str | None = _key(None, "SLURM partition")
    gpus_per_job: int = _key(0, "GPUs per run; more than 1 trains through torchrun (DDP) inside the job")
    cpus_per_job: int | None = _key(None, "SLURM CPUs per run")
    timeout_min: int = _key(240, "SLURM time limit per run, minutes")
    mem_gb: float | None = _key(None, "SLURM memory per run")
    slurm_args: dict[str, Any] = _key(doc="anything else submitit passes to sbatch (e.g. `{account: abc, qos: high}`)",
                                      factory=dict)


@dataclass
class StudySpec:
    """A whole study: what is compared (arms x sweep x seeds), at which budget, scored how, run where."""

    name: str | None = _key(None, "required: the study's name; `study_dir` defaults to `studies/${name}`")
    recipe: str = _key("default", "the training recipe every arm shares (data, diffusion, optimiser)")
    overrides: list[str] = _key(doc="training overrides applied to every arm", factory=list)
    arms: list[ArmSpec] = _key(doc="what is compared: a list of arms, or `{tag: tiny}` (one arm per backbone with that "
                               "registry tag)", factory=list)
    sweep: dict[str, list[Any]] = _key(doc="`{training key: [values]}`, crossed with every arm; runs are named "
                                       "`<arm>-<key><value>`", factory=dict)
    seeds: list[int] = _key(doc="one run per seed per arm", factory=lambda: [0])
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    tune: TuneSpec = field(default_factory=TuneSpec)
    grid: GridSpec = field(default_factory=GridSpec)
    launcher: LauncherSpec = field(default_factory=LauncherSpec)
    device: str = _key("auto", "every run's device")
    threads: int | None = _key(None, "torch threads per run (null: auto, each run times its first steps at 1, 2, "
                               "4, ... threads and keeps the fastest; 1 makes CPU numbers machine-independent)")
    ckpt_every: int | None = _key(None, "arm steps between checkpoints (null: at each evaluation point)")
    progress_every: float = _key(30.0, "seconds between progress lines")
    study_dir: str = _key("studies/${name}", "where the study writes (results, summary, plots, runs/)")


def hints(cls: type) -> dict[str, Any]:
    """A dataclass's field types as objects (this module's annotations are strings)."""
    return typing.get_type_hints(cls)


def sections() -> dict[str, type]:
    """The study's sections (``budget``, ``eval``, ...): keys whose value is a mapping of its own keys."""
    return {name: hint for name, hint in hints(StudySpec).items() if dataclasses.is_dataclass(hint)}


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _item_type(hint: Any) -> Any:
    """``X`` of ``list[X]``, or None."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is list else None


def describe(hint: Any) -> str:
    """A type as the words of an error message: ``an integer or null``, ``a list of strings``."""
    args = typing.get_args(hint)
    if type(None) in args:
        return " or ".join(describe(a) for a in args if a is not type(None)) + " or null"
    if dataclasses.is_dataclass(hint):
        return f"a section with keys {', '.join(field_names(hint))}"
    item = _item_type(hint)
    if typing.get_origin(hint) is list:
        plural = {int: " of integers", float: " of numbers", str: " of strings"}.get(item, "")
        return f"a list{plural}"
    if typing.get_origin(hint) is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, "a value")


def type_at(cls: type, path: list[str]) -> Any:
    """The declared type at a key path (``["eval", "steps"]``, ``["seeds", "[1]"]``) under ``cls``, or None."""
    hint: Any = cls
    for part in path:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if type(None) in typing.get_args(hint) and len(args) == 1:
            hint = args[0]
        if dataclasses.is_dataclass(hint):
            hint = hints(hint).get(part)
        elif typing.get_origin(hint) is list and part.startswith("["):
            hint = _item_type(hint)
        elif typing.get_origin(hint) is dict:
            return typing.get_args(hint)[1]
        else:
            return None
    return hint


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ""


def _shown(value: Any) -> str:
    return "null" if value is None else str(value)


def _rows(cls: type, prefix: str, with_defaults: bool) -> list[tuple[str, str, str]]:
    rows = []
    types = hints(cls)
    for f in dataclasses.fields(cls):
        hint = types[f.name]
        if dataclasses.is_dataclass(hint):
            rows += _rows(hint, f"{prefix}{f.name}.", with_defaults)
            continue
        rows.append((f"{prefix}{f.name}", _shown(_default(f)) if with_defaults else "", f.metadata.get("doc", "")))
        item = _item_type(hint)
        if dataclasses.is_dataclass(item):
            rows += _rows(item, f"{prefix}{f.name}[].", with_defaults=False)
    return rows


def key_rows() -> list[tuple[str, str, str]]:
    """(key, default, doc) for every study key, in the schema's order (a list item's keys show no default)."""
    return _rows(StudySpec, "", with_defaults=True)


def key_table() -> str:
    """The study keys as a Markdown table (the README's, regenerated by a test)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | {f'`{shown}`' if shown else ''} | {doc} |" for key, shown, doc in key_rows()]
    return "\n".join(lines)
