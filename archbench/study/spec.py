"""The study file: its schema, its defaults, ``key=value`` overrides and the checks run before any training.

A study file is YAML (``recipes/studies/<name>.yaml`` or any path).  Every key below exists with this
default; an unknown key anywhere is an error that names the valid ones, so a typo never silently changes
what is compared.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from archbench.console.errors import UsageError

MATCH_MODES = ("steps", "train_flops", "wall_clock")
LAUNCHERS = ("local", "submitit")
CLUSTERS = ("slurm", "local", "debug")
MATCH_BY = ("width", "depth")

DEFAULTS: dict[str, Any] = {
    "name": None,  # required: names the study and, by default, its folder
    "recipe": "default",  # the training recipe every arm shares (data, diffusion, optimiser)
    "overrides": [],  # training overrides applied to every arm
    "arms": [],  # what is compared: [{backbone, name?, overrides?, match_params?, match_by?}] or {tag: tiny}
    "sweep": {},  # {training key: [values]}, crossed with every arm
    "seeds": [0],
    "budget": {
        "match": "steps",  # steps | train_flops | wall_clock
        "steps": 300,  # steps of the reference arm (of every arm when match=steps)
        "reference": None,  # arm whose steps set the budget; None = the first arm
        "timing_steps": 8,  # wall_clock: timed steps per arm (after 2 warm-up steps)
    },
    "eval": {
        "every": 0,  # reference-arm steps between evaluations (0 = only at the end); scaled per arm
        "num_samples": 500,
        "features": "auto",  # auto | inception | fashion_mnist_cnn | digits_cnn
        "weights": None,  # feature weights; None = the committed CNN (recipes/baselines) or the usual lookup
        "sampler": "ddim",
        "steps": 25,
        "cfg_scale": 1.0,
        "batch_size": 250,
        "ref_split": "test",
        "seed": None,  # None = the run's seed
    },
    "tune": {
        "key": None,  # a training key tuned per arm (null: no tuning), e.g. train.lr
        "values": [],  # its candidate values
        "budget": 0.25,  # each candidate run trains this fraction of the arm's steps
        "metric": "fd",  # the metric that picks the winner (its direction comes from the metrics table)
        "seed": None,  # the candidates' seed; None = the first of seeds
    },
    "grid": {
        "cfg_scale": 4.0,  # the study's sample grid (one row per arm, same noise and labels)
        "columns": 10,
        "seed": 0,
    },
    "launcher": {
        "name": "local",  # local | submitit
        "workers": 1,  # local: runs at the same time (each its own process)
        "cluster": "slurm",  # submitit: slurm | local (submitit's local executor) | debug (in-process)
        "partition": None,
        "gpus_per_job": 0,  # > 1: the job trains through torchrun (DDP) on that many GPUs
        "cpus_per_job": None,
        "timeout_min": 240,
        "mem_gb": None,
        "slurm_args": {},  # anything else submitit passes to sbatch (e.g. {account: abc, qos: high})
    },
    "device": "auto",  # every run's device
    "threads": None,  # torch threads per run; None = auto (each run measures its fastest count)
    "ckpt_every": None,  # arm steps between checkpoints; None = at each evaluation point
    "progress_every": 30.0,  # seconds between progress lines
    "study_dir": "studies/${name}",
}
# Every study key's one-line documentation: the one place it is written. ``python -m archbench.study --help`` and
# the README's table are generated from it (:func:`key_rows`); a test fails when a key of DEFAULTS has none.
KEY_DOCS: dict[str, str] = {
    "name": "required: the study's name; `study_dir` defaults to `studies/${name}`",
    "recipe": "the training recipe every arm shares (data, diffusion, optimiser)",
    "overrides": "training overrides applied to every arm",
    "arms": "what is compared: a list of arms, or `{tag: tiny}` (one arm per backbone with that registry tag)",
    "arms[].backbone": "a registry name",
    "arms[].name": "the arm's name (default: its backbone); names its runs and rows",
    "arms[].overrides": "the arm's own training overrides",
    "arms[].match_params": "resize the arm to the nearest valid size within 2% of this many parameters, or fail "
    "saying how far the nearest is",
    "arms[].match_by": "what `match_params` resizes: `width` (default) or `depth`",
    "sweep": "`{training key: [values]}`, crossed with every arm; runs are named `<arm>-<key><value>`",
    "seeds": "one run per seed per arm",
    "budget.match": "`steps` (every arm `budget.steps`), `train_flops` (steps_arm = steps_ref x GMACs_ref x batch_ref "
    "/ (GMACs_arm x batch_arm), rounded) or `wall_clock` (each arm timed first for `budget.timing_steps` steps after "
    "2 warm-up steps, kept in `timing.json`; steps_arm = steps_ref x s/step_ref / s/step_arm)",
    "budget.steps": "the reference arm's steps (at each sweep point, the reference arm at that point sets the budget)",
    "budget.reference": "the arm whose steps set the budget (null: the first arm)",
    "budget.timing_steps": "`wall_clock`: timed steps per arm",
    "eval.every": "reference-arm steps between evaluations (0: only at the end), or a list of reference-arm steps "
    "(e.g. `[125, 250, 500, 1000]`, the end is always scored); each arm is scored at the same compute fractions",
    "eval.num_samples": "samples scored at each evaluation point",
    "eval.features": "`auto`, `inception`, `fashion_mnist_cnn` or `digits_cnn`",
    "eval.weights": "feature weights (null: the committed CNN in recipes/baselines, or the usual lookup)",
    "eval.sampler": "the sampler of the evaluation samples",
    "eval.steps": "sampling steps of the evaluation samples",
    "eval.cfg_scale": "guidance of the evaluation samples",
    "eval.batch_size": "sampling and feature batch",
    "eval.ref_split": "the real data's split the samples are compared with",
    "eval.seed": "the evaluation samples' seed (null: the run's seed)",
    "tune.key": "a training key tuned per arm before the main runs, e.g. `train.lr` (null: no tuning); "
    "the chosen value, every candidate's score and the tuning compute go to tune.csv and summary.md",
    "tune.values": "the candidate values, e.g. `[1.0e-3, 3.0e-3, 1.0e-2]`",
    "tune.budget": "each candidate trains this fraction of the arm's steps (its compute is reported apart)",
    "tune.metric": "what picks the winner: a metrics-table name (`fd` lower wins, `cond_accuracy` higher wins, ...)",
    "tune.seed": "the candidates' seed (null: the first of `seeds`)",
    "grid.cfg_scale": "guidance of the study's sample grid (a row per arm, same noise and labels)",
    "grid.columns": "columns of the sample grid",
    "grid.seed": "noise seed of the sample grid",
    "launcher.name": "`local` or `submitit` (`launcher: local` is short for it)",
    "launcher.workers": "local: runs at the same time, each its own process",
    "launcher.cluster": "submitit: `slurm`, `local` (submitit's local executor) or `debug` (in-process)",
    "launcher.partition": "SLURM partition",
    "launcher.gpus_per_job": "GPUs per run; more than 1 trains through torchrun (DDP) inside the job",
    "launcher.cpus_per_job": "SLURM CPUs per run",
    "launcher.timeout_min": "SLURM time limit per run, minutes",
    "launcher.mem_gb": "SLURM memory per run",
    "launcher.slurm_args": "anything else submitit passes to sbatch (e.g. `{account: abc, qos: high}`)",
    "device": "every run's device",
    "threads": "torch threads per run (null: auto, each run times its first steps at 1, 2, 4, ... threads and keeps "
               "the fastest; 1 makes CPU numbers machine-independent)",
    "ckpt_every": "arm steps between checkpoints (null: at each evaluation point)",
    "progress_every": "seconds between progress lines",
    "study_dir": "where the study writes (results, summary, plots, runs/)",
}
README_BEGIN, README_END = "<!-- study-keys:begin -->", "<!-- study-keys:end -->"


def _flat_defaults(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("sweep",):
            flat.update(_flat_defaults(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def key_rows() -> list[tuple[str, str, str]]:
    """(key, default, doc) for every study key, in the order :data:`KEY_DOCS` lists them."""
    defaults = _flat_defaults(DEFAULTS)
    rows = []
    for key, doc in KEY_DOCS.items():
        value = defaults.get(key, "")
        shown = "null" if value is None else "" if value == "" else str(value)
        rows.append((key, shown, doc))
    return rows


def key_table() -> str:
    """The study keys as a Markdown table (the README's, regenerated by a test)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | {f'`{shown}`' if shown else ''} | {doc} |" for key, shown, doc in key_rows()]
    return "\n".join(lines)


ARM_KEYS = ("backbone", "name", "overrides", "match_params", "match_by")
# An arm written as {tag: tiny, overrides?, match_params?, match_by?} stands for one arm per backbone with that tag.
TAG_ARM_KEYS = ("tag", "overrides", "match_params", "match_by")
# Training keys the study sets itself for every run.
MANAGED_KEYS = ("run_dir", "seed", "train.steps", "train.resume", "train.ckpt_every", "train.keep_last",
                "train.log_every", "device", "backbone", "recipe")


class StudyError(UsageError):
    """A mistake in a study file or its overrides, reported as one line before any training starts (a bad
    argument like any other: a :class:`~archbench.console.errors.UsageError`)."""


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid keys: {', '.join(valid)}"


def _check_keys(given: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    for key, value in given.items():
        if key not in schema:
            raise StudyError(f"unknown key {where}{key!r}{_suggest(str(key), list(schema))}")
        if isinstance(schema[key], dict) and schema[key] and not isinstance(value, dict):
            raise StudyError(f"{where}{key} is a section with keys {', '.join(schema[key])}, got {value!r}")
        if isinstance(schema[key], dict) and schema[key]:
            _check_keys(value, schema[key], f"{where}{key}.")


def _merge(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in given.items():
        if isinstance(out.get(key), dict) and out[key] and isinstance(value, dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def studies_dir() -> Path:
    from archbench.training.config import recipes_dir

    return recipes_dir() / "studies"


def study_names() -> list[str]:
    return sorted(p.stem for p in studies_dir().glob("*.yaml"))


def read_study_file(study: str) -> tuple[dict[str, Any], Path]:
    """The raw mapping of a preset name or a YAML path, and where it came from."""
    path = Path(study)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = studies_dir() / f"{study}.yaml"
        if not path.is_file():
            raise StudyError(f"no study {study!r}: give a YAML file or a preset ({', '.join(study_names())})")
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"study file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise StudyError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path} must hold a mapping of study keys ({', '.join(DEFAULTS)})")
    return raw, path


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str) -> Any:
    """A command-line value in YAML syntax (``[0,1]``, ``true``, ``null``); ``30e6`` is a number, as people mean."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise StudyError(f"cannot parse the value {text!r}") from None
    if isinstance(value, str) and _NUMBER.match(value):
        number = float(value)
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return value


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads ``30e6`` as a string: turn such strings into numbers wherever they sit."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and _NUMBER.match(value):
        return parse_value(value)
    return value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``key=value`` (dotted keys into sections, the same grammar as training) applied to a raw study mapping."""
    out = copy.deepcopy(raw)
    for text in overrides:
        key, sep, value_text = text.partition("=")
        if not sep or not key:
            raise StudyError(f"cannot parse {text!r}; study overrides are key=value, e.g. seeds=[0] budget.steps=600")
        value = parse_value(value_text)
        parts = key.split(".")
        if parts[0] == "launcher" and len(parts) == 1 and isinstance(value, str):
            parts = ["launcher", "name"]  # launcher=submitit is short for launcher.name=submitit
        if parts[0] == "sweep" and len(parts) > 1:
            parts = ["sweep", ".".join(parts[1:])]  # sweep.backbone.depth=[2,4]: the swept key keeps its dots
        schema: Any = DEFAULTS
        node = out
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(schema, dict) or part not in schema or not isinstance(schema[part], dict):
                prefix = ".".join(parts[:depth])
                valid = list(schema) if isinstance(schema, dict) else []
                under = f" (under {prefix})" if prefix else ""
                raise StudyError(f"unknown key {key!r}{_suggest(part, valid)}{under}")
            schema = schema[part]
            if isinstance(node.get(part), str) and part == "launcher":
                node[part] = {"name": node[part]}
            node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(schema, dict) and schema and last not in schema and parts[0] != "sweep":
            raise StudyError(f"unknown key {key!r}{_suggest(last, list(schema))}")
        node[last] = value
    return out


def _interpolate(text: str, spec: dict[str, Any]) -> str:
    def value(match: re.Match) -> str:
        node: Any = spec
        for part in match.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                raise StudyError(f"cannot resolve ${{{match.group(1)}}} in {text!r}")
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def expand_tag_arms(arms: Any, source: str = "study") -> Any:
    """``{tag: tiny}`` (alone, or as an entry of the list) -> one arm per registered backbone carrying the tag.

    So a study of "every family's tiny member" follows the registry instead of a hand-kept list.  The registry
    is imported only when a tag is used; anything that is not a tag query is returned as it is.
    """
    if isinstance(arms, dict) and "tag" in arms:
        arms = [arms]
    if not isinstance(arms, list) or not any(isinstance(a, dict) and "tag" in a for a in arms):
        return arms
    from backbones.registry import list_backbones

    expanded: list[Any] = []
    for index, arm in enumerate(arms):
        if not (isinstance(arm, dict) and "tag" in arm):
            expanded.append(arm)
            continue
        for key in arm:
            if key not in TAG_ARM_KEYS:
                raise StudyError(f"{source}: arms[{index}] selects backbones by tag, so it cannot have {key!r}; "
                                 f"valid keys with tag: {', '.join(TAG_ARM_KEYS)}")
        if not isinstance(arm["tag"], str):
            raise StudyError(f"{source}: arms[{index}].tag must be a word (e.g. tiny), got {arm['tag']!r}")
        try:
            names = list_backbones(tag=arm["tag"])
        except ValueError as exc:
            raise StudyError(f"{source}: arms[{index}]: {exc}") from None
        rest = {k: v for k, v in arm.items() if k != "tag"}
        expanded.extend({"backbone": name, **copy.deepcopy(rest)} for name in names)
    return expanded


def _check_tune(tune: dict[str, Any], arms: list[dict[str, Any]]) -> None:
    from archbench.evaluation.metrics import column_metrics

    if tune["key"] is None:
        if tune["values"]:
            raise StudyError(f"tune.values={tune['values']} without tune.key: name the training key they are for, "
                             "e.g. tune.key=train.lr")
        return
    key = str(tune["key"])
    if not re.fullmatch(r"[A-Za-z_][\w.]*", key):
        raise StudyError(f"tune.key must be a dotted training key such as train.lr, got {tune['key']!r}")
    if key in MANAGED_KEYS:
        raise StudyError(f"tune.key={key}: the study sets {key} itself for every run; tune another training key")
    values = tune["values"]
    if not isinstance(values, list) or not values:
        raise StudyError(f"tune.values must be a non-empty list of candidates for {key}, e.g. [1.0e-3, 3.0e-3]")
    if len({str(v) for v in values}) != len(values):
        raise StudyError(f"tune.values repeats a value: {values}")
    budget_fraction = tune["budget"]
    if not isinstance(budget_fraction, (int, float)) or not 0 < budget_fraction <= 1:
        raise StudyError(f"tune.budget is the fraction of an arm's steps each candidate trains, in (0, 1]; "
                         f"got {budget_fraction!r}")
    named = list(column_metrics())
    if tune["metric"] not in named:
        raise StudyError(f"tune.metric={tune['metric']!r}; valid: {', '.join(named)}")
    if tune["seed"] is not None and (not isinstance(tune["seed"], int) or tune["seed"] < 0):
        raise StudyError(f"tune.seed must be a non-negative integer or null, got {tune['seed']!r}")
    for arm in arms:
        for text in arm["overrides"]:
            if text.partition("=")[0].lstrip("+~") == key:
                raise StudyError(f"arms {arm['name']} sets {text} but tune.key={key} is tuned per arm: drop one")


def _check_device(device: Any, here: bool) -> None:
    """The runs' device, before anything trains: its kind always, and whether this machine has it when the runs
    train here (a SLURM node may have GPUs the submitting machine lacks)."""
    from archbench.training.distributed import check_device

    try:
        check_device(str(device), here=here)
    except RuntimeError as exc:
        raise StudyError(f"device={device}: {exc}") from None


def normalise(raw: dict[str, Any], source: str = "study") -> dict[str, Any]:
    """Defaults filled in, keys and values checked (tag arms expanded; names are checked in ``plan``)."""
    raw = _numbers(dict(raw))
    if isinstance(raw.get("launcher"), str):
        raw["launcher"] = {"name": raw["launcher"]}
    _check_keys({k: v for k, v in raw.items() if k not in ("arms", "sweep")}, DEFAULTS, "")
    spec = _merge(DEFAULTS, raw)
    if not spec["name"] or not isinstance(spec["name"], str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", spec["name"]):
        raise StudyError(f"{source}: 'name' must be a non-empty word (letters, digits, _ . -), got {spec['name']!r}")
    if not isinstance(spec["overrides"], list) or not all(isinstance(o, str) for o in spec["overrides"]):
        raise StudyError("'overrides' must be a list of key=value strings, e.g. [train.batch_size=32]")
    arms = expand_tag_arms(spec["arms"], source)
    if not isinstance(arms, list) or not arms:
        raise StudyError(f"{source}: 'arms' is empty; list what to compare, e.g. arms: [{{backbone: dit_t2}}, "
                         "{backbone: dis_t2}]")
    normal_arms = []
    for index, arm in enumerate(arms):
        if isinstance(arm, str):
            arm = {"backbone": arm}
        if not isinstance(arm, dict) or "backbone" not in arm:
            raise StudyError(f"arms[{index}] must name a backbone (backbone: dit_t2), got {arm!r}")
        for key in arm:
            if key not in ARM_KEYS:
                raise StudyError(f"unknown key arms[{index}].{key}{_suggest(str(key), ARM_KEYS)}")
        arm = {"name": None, "overrides": [], "match_params": None, "match_by": "width", **arm}
        arm["name"] = str(arm["name"] or arm["backbone"])
        if not re.fullmatch(r"[A-Za-z0-9_.=+-]+", arm["name"]):
            raise StudyError(f"arms[{index}].name {arm['name']!r} must be letters, digits and _ . = + -")
        if not isinstance(arm["overrides"], list) or not all(isinstance(o, str) for o in arm["overrides"]):
            raise StudyError(f"arms[{index}].overrides must be a list of key=value strings")
        if arm["match_by"] not in MATCH_BY:
            raise StudyError(f"arms[{index}].match_by={arm['match_by']!r}; valid: {', '.join(MATCH_BY)}")
        if arm["match_params"] is not None and (not isinstance(arm["match_params"], (int, float))
                                                or arm["match_params"] <= 0):
            raise StudyError(f"arms[{index}].match_params must be a positive parameter count, e.g. 30e6")
        normal_arms.append(arm)
    names = [a["name"] for a in normal_arms]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise StudyError(f"two arms are both called {duplicated[0]!r}: give one a 'name'")
    spec["arms"] = normal_arms
    sweep = spec["sweep"] or {}
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
        raise StudyError("'sweep' maps training keys to non-empty lists, e.g. sweep: {backbone.depth: [2, 4, 8]}")
    spec["sweep"] = sweep
    seeds = spec["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise StudyError(f"'seeds' must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"'seeds' repeats a seed: {seeds}")
    budget = spec["budget"]
    if budget["match"] not in MATCH_MODES:
        raise StudyError(f"budget.match={budget['match']!r}; valid: {', '.join(MATCH_MODES)}")
    if not isinstance(budget["steps"], int) or budget["steps"] < 1:
        raise StudyError(f"budget.steps must be a positive integer, got {budget['steps']!r}")
    if budget["reference"] is not None and budget["reference"] not in names:
        raise StudyError(f"budget.reference={budget['reference']!r} is not an arm; arms: {', '.join(names)}")
    if not isinstance(budget["timing_steps"], int) or budget["timing_steps"] < 1:
        raise StudyError(f"budget.timing_steps must be a positive integer (timed steps per arm for "
                         f"budget.match=wall_clock), got {budget['timing_steps']!r}")
    ev = spec["eval"]
    for key in ("num_samples", "steps", "batch_size"):
        if not isinstance(ev[key], int) or ev[key] < 1:
            raise StudyError(f"eval.{key} must be a positive integer, got {ev[key]!r}")
    if ev["num_samples"] < 2:
        raise StudyError(f"eval.num_samples={ev['num_samples']}: a Fréchet distance needs at least 2 samples "
                         "(the covariance of their features); use hundreds")
    every = ev["every"]
    listed = isinstance(every, list) and every and all(isinstance(p, int) and p > 0 for p in every)
    if not (listed or (isinstance(every, int) and every >= 0)):
        raise StudyError(f"eval.every must be a non-negative integer (0 = only at the end) or a list of reference-arm "
                         f"steps such as [125, 250, 500, 1000], got {every!r}")
    _check_tune(spec["tune"], normal_arms)
    launcher = spec["launcher"]
    if launcher["name"] not in LAUNCHERS:
        raise StudyError(f"launcher={launcher['name']!r}; valid: {', '.join(LAUNCHERS)}")
    if launcher["cluster"] not in CLUSTERS:
        raise StudyError(f"launcher.cluster={launcher['cluster']!r}; valid: {', '.join(CLUSTERS)}")
    if not isinstance(launcher["workers"], int) or launcher["workers"] < 1:
        raise StudyError(f"launcher.workers must be a positive integer, got {launcher['workers']!r}")
    _check_device(spec["device"], here=launcher["name"] == "local" or launcher["cluster"] != "slurm")
    if spec["ckpt_every"] is not None and (not isinstance(spec["ckpt_every"], int) or spec["ckpt_every"] < 1):
        raise StudyError(f"ckpt_every must be a positive integer or null, got {spec['ckpt_every']!r}")
    for text in spec["overrides"] + [o for a in normal_arms for o in a["overrides"]]:
        key = text.partition("=")[0].lstrip("+~")
        if key in MANAGED_KEYS:
            instead = {"seed": "seeds", "train.steps": "budget.steps", "backbone": "arms", "device": "device"}
            raise StudyError(f"override {text!r}: the study sets {key} itself for every run "
                             f"(use the study key {instead.get(key, 'ckpt_every / study_dir / eval.every')})")
    spec["study_dir"] = _interpolate(str(spec["study_dir"]), spec)
    blocking = next((p for p in (Path(spec["study_dir"]), *Path(spec["study_dir"]).parents)
                     if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise StudyError(f"study_dir={spec['study_dir']}: {blocking} is a file, not a folder; give another study_dir=")
    return spec


def load_study(study: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a preset or YAML file, apply ``key=value`` overrides, fill defaults and check the schema."""
    raw, path = read_study_file(study)
    return normalise(apply_overrides(raw, overrides), source=str(path))
