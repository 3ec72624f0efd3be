"""The study file: a preset or YAML path and ``key=value`` overrides, merged into the typed schema and checked.

OmegaConf merges the file and then each override into :class:`~archbench.study.schema.StudySpec`, so it types
every value and resolves ``${name}`` interpolations (``study_dir`` defaults to ``studies/${name}``); the override
grammar is its dotlist (dotted keys, YAML values). What is ours: the shorthands a study may use beyond the schema
(``launcher: local``, arms chosen by registry tag, swept keys that keep their dots), and turning the library's
errors into one line that names the key and what is valid. An unknown key anywhere is an error, so a typo never
silently changes what is compared.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from archbench.study.checks import check_spec
from archbench.study.schema import ArmSpec, StudyError, StudySpec, describe, field_names, sections, type_at

# An arm written as {tag: tiny, overrides?, match_params?, match_by?} stands for one arm per backbone with that tag.
TAG_ARM_KEYS = ("tag", "overrides", "match_params", "match_by")
_UNSET = object()


def studies_dir() -> Path:
    from archbench.training.config import recipes_dir

    return recipes_dir() / "studies"


def study_names() -> list[str]:
    return sorted(p.stem for p in studies_dir().glob("*.yaml"))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_study_file(study: str) -> tuple[dict[str, Any], Path]:
    """The raw mapping of a preset name or a YAML path (read as OmegaConf reads YAML), and where it came from."""
    path = Path(study)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = studies_dir() / f"{study}.yaml"
        if not path.is_file():
            raise StudyError(f"no study {study!r}: give a YAML file or a preset ({', '.join(study_names())})")
    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError:
        raise StudyError(f"study file {path} does not exist") from None
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise StudyError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(loaded, DictConfig):
        raise StudyError(f"{path} must hold a mapping of study keys ({', '.join(field_names(StudySpec))})")
    return OmegaConf.to_container(loaded), path  # type: ignore[return-value]


def override_tree(text: str) -> dict[str, Any]:
    """``key=value`` as the mapping it sets, by OmegaConf's dotlist grammar (``budget.steps=600``, ``seeds=[0,1]``,
    ``30e6`` a number, as people mean)."""
    key, sep, _ = text.partition("=")
    if not sep or not key:
        raise StudyError(f"cannot parse {text!r}; study overrides are key=value, e.g. seeds=[0] budget.steps=600")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([text]))  # type: ignore[return-value]
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise StudyError(f"cannot parse {text!r}: {_first_line(exc)}") from None


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid keys: {', '.join(valid)}"


def _escaped(texts: Any) -> Any:
    """Training overrides pass through untouched: a ``${...}`` in them is the training's, not the study's."""
    if not isinstance(texts, list):
        return texts
    return [t.replace("${", "\\${") if isinstance(t, str) else t for t in texts]


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


def _arm(index: int, arm: Any) -> dict[str, Any]:
    """One arm as the mapping the schema takes: ``dit_t2`` is ``{backbone: dit_t2}``, its name defaults to it."""
    if isinstance(arm, str):
        arm = {"backbone": arm}
    if not isinstance(arm, dict) or "backbone" not in arm:
        raise StudyError(f"arms[{index}] must name a backbone (backbone: dit_t2), got {arm!r}")
    for key in arm:
        if key not in field_names(ArmSpec):
            raise StudyError(f"unknown key arms[{index}].{key}{_suggest(str(key), field_names(ArmSpec))}")
    arm = {**arm, "name": arm.get("name") or arm["backbone"], "overrides": _escaped(arm.get("overrides", []))}
    _merge(OmegaConf.structured(ArmSpec), arm, ArmSpec, prefix=f"arms[{index}].")  # its types, named by its index
    return arm


def _arms(arms: Any, source: str) -> list[dict[str, Any]]:
    arms = expand_tag_arms([] if arms is None else arms, source)
    if not isinstance(arms, list):
        raise StudyError(f"{source}: 'arms' must be a list of arms or {{tag: NAME}}, e.g. arms: [{{backbone: dit_t2}}, "
                         f"{{backbone: dis_t2}}], got {arms!r}")
    return [_arm(index, arm) for index, arm in enumerate(arms)]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _sweep(sweep: Any) -> dict[str, Any]:
    """Swept training keys keep their dots (``sweep.backbone.depth=[2,4]`` sweeps ``backbone.depth``)."""
    sweep = {} if sweep is None else sweep
    flat = _flat(sweep) if isinstance(sweep, dict) else None
    if flat is None or not all(isinstance(v, list) and v for v in flat.values()):
        raise StudyError("'sweep' maps training keys to non-empty lists, e.g. sweep: {backbone.depth: [2, 4, 8]}")
    return flat


def _prepare(tree: dict[str, Any], source: str) -> dict[str, Any]:
    """A study mapping (the file's, or one override's) in the schema's shape, its shorthands written out."""
    tree = dict(tree)
    if isinstance(tree.get("launcher"), str):
        tree["launcher"] = {"name": tree["launcher"]}  # launcher: submitit is short for launcher.name
    for name, section in sections().items():
        if name in tree and not isinstance(tree[name], dict):
            raise StudyError(f"{name} must be {describe(section)}, got {tree[name]!r}")
    if "sweep" in tree:
        tree["sweep"] = _sweep(tree["sweep"])
    if "arms" in tree:
        tree["arms"] = _arms(tree["arms"], source)
    if "overrides" in tree:
        tree["overrides"] = _escaped(tree["overrides"])
    return tree


def _lookup(tree: Any, path: list[str]) -> Any:
    for part in path:
        try:
            tree = tree[int(part[1:-1])] if part.startswith("[") else tree[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return _UNSET
    return tree


def _merge(config: DictConfig, tree: dict[str, Any], schema: type = StudySpec, prefix: str = "",
           text: str | None = None) -> DictConfig:
    """``tree`` merged into ``config``; the library's error as one line naming the key (``text``: the override it
    came from) and what is valid there."""
    try:
        return OmegaConf.merge(config, tree)  # type: ignore[return-value]
    except ConfigKeyError as exc:
        owner = exc.object_type
        suggestion = _suggest(str(exc.key), field_names(owner) if isinstance(owner, type) else [])
        if text is not None:
            raise StudyError(f"unknown key {text.partition('=')[0]!r}{suggestion}") from None
        where = str(exc.full_key).rpartition(".")[0]
        raise StudyError(f"unknown key {prefix}{where + '.' if where else ''}{exc.key!r}{suggestion}") from None
    except ValidationError as exc:
        path = re.findall(r"\[\d+\]|[^.\[\]]+", str(exc.full_key))
        value = _lookup(tree, path)
        got = "" if value is _UNSET else f", got {value!r}"
        raise StudyError(f"{prefix}{exc.full_key} must be {describe(type_at(schema, path))}{got}") from None
    except OmegaConfBaseException as exc:
        raise StudyError(f"{prefix}{exc.full_key or text or 'study'}: {_first_line(exc)}") from None


def compose_study(raw: dict[str, Any], overrides: Sequence[str] = (), source: str = "study") -> StudySpec:
    """The typed, checked study: the schema's defaults, then ``raw`` (a study file's mapping), then ``overrides``."""
    config = _merge(OmegaConf.structured(StudySpec), _prepare(raw, source))
    for text in overrides:
        config = _merge(config, _prepare(override_tree(text), source), text=text)
    try:
        spec: StudySpec = OmegaConf.to_object(config)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise StudyError(f"cannot resolve {exc.full_key}: {_first_line(exc)}") from None
    check_spec(spec, source)
    return spec


def load_study(study: str, overrides: Sequence[str] = ()) -> StudySpec:
    """Read a preset or YAML file, apply ``key=value`` overrides, fill defaults and check the schema."""
    raw, path = read_study_file(study)
    return compose_study(raw, overrides, source=str(path))

