"""Training configuration: Hydra's Compose API over three config groups and a base config.

Groups: ``recipe`` (``recipes/*.yaml``: data, optimiser, schedule; one per dataset), ``backbone``
(every registry name, generated from ``archbench.list_backbones()``) and ``diffusion`` (``ddpm`` or
``flow``).  Any nested key is overridable with Hydra's grammar (``train.lr=2e-4``,
``backbone.depth=6``).  We use ``compose`` rather than ``@hydra.main`` so nothing changes the working
directory or configures logging behind the caller's back, and so every user mistake can be reported
as one line (:class:`ConfigError`) instead of a Hydra traceback.

The backbone's data-dependent build options (``image_size``, ``in_channels``, ``num_classes``,
``learn_sigma``) are interpolations into ``data`` / ``diffusion``, so one recipe applies unchanged to
every backbone; :func:`fill_dataset_facts` fills ``data`` from ``archbench.data.dataset_info``.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from archbench.training.schema import DEFAULT_BACKBONE, ConfigError, RunConfig  # noqa: F401  (public here too)

log = logging.getLogger("archbench.config")

RECIPES_ENV = "ARCHBENCH_RECIPES"
PRIMARY = "archbench_train"
GROUPS = ("backbone", "diffusion", "recipe")

# Backbone build options that follow the data and the diffusion setting (interpolations), so a recipe
# never names model sizes and a backbone never names datasets.
_DATA_DRIVEN = {
    "image_size": "${data.image_size}",
    "in_channels": "${data.channels}",
    "num_classes": "${data.num_classes}",
    "caption_vocab": "${data.caption_vocab}",  # only where the backbone takes captions (its build options)
    "caption_tokens": "${data.caption_tokens}",
    "caption_dim": "${data.caption_dim}",
    "learn_sigma": "${diffusion.learn_sigma}",
}

def recipes_dir() -> Path:
    """``$ARCHBENCH_RECIPES`` or the repository's ``recipes/`` folder."""
    env = os.environ.get(RECIPES_ENV)
    if env:
        return Path(env).expanduser().resolve()
    source_tree = Path(__file__).resolve().parents[2] / "recipes"
    if (source_tree / "default.yaml").is_file():  # a checkout or an editable install
        return source_tree
    import sysconfig

    return Path(sysconfig.get_path("data")) / "share" / "archbench" / "recipes"  # installed from a wheel


def recipe_names() -> list[str]:
    """Names of the recipes (``recipes/<name>.yaml``)."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def backbone_node(name: str) -> dict[str, Any]:
    """The ``backbone`` group option for a registry name: its build options plus ``name``."""
    from backbones.registry import backbone_config

    config = backbone_config(name)
    config.pop("family", None)
    for key, interpolation in _DATA_DRIVEN.items():
        if key in config:
            config[key] = interpolation
    return config


def diffusion_node(objective: str) -> dict[str, Any]:
    """The ``diffusion`` group option: the objective's name and its settings (``archbench.diffusion``'s
    ``<Objective>.Settings``, the one place an objective's keys and defaults live)."""
    from archbench.diffusion import objective_settings

    return {"objective": objective, **objective_settings(objective)}


def _register(store: Any) -> None:
    from archbench.diffusion import OBJECTIVES
    from backbones.registry import list_backbones

    store.store(name=PRIMARY, node=RunConfig)
    for objective in OBJECTIVES:
        store.store(group="diffusion", name=objective, node=diffusion_node(objective))
    for name in list_backbones():
        store.store(group="backbone", name=name, node=backbone_node(name))
    for name in recipe_names():
        path = recipes_dir() / f"{name}.yaml"
        try:
            node = OmegaConf.load(path)
        except Exception as exc:
            raise ConfigError(f"recipe {path} is not valid YAML: {_first_line(exc)}") from None
        store.store(group="recipe", name=name, node=node, package="_global_")


def group_options(group: str) -> list[str]:
    """Valid values of ``group=...`` on the command line."""
    if group == "backbone":
        from backbones.registry import list_backbones

        return list_backbones()
    if group == "diffusion":
        from archbench.diffusion import OBJECTIVES

        return list(OBJECTIVES)
    return recipe_names()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _choices_error(what: str, value: object, choices: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown {what} {value!r}{hint}; valid choices: {', '.join(choices)}")


def _parse(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise ConfigError(f"cannot parse override {text!r}; expected key=value ({_first_line(exc)})") from None
        if override.is_sweep_override():
            raise ConfigError(f"{text!r}: sweeps are not supported; quote a string containing commas: key='a,b'")
        if override.is_add() or override.is_force_add() or override.is_delete():
            raise ConfigError(f"{text!r}: adding or deleting keys is not supported; every valid key already exists")
        parsed.append(override)
    return parsed


def _compose(overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException

    _register(ConfigStore.instance())
    config_dir = recipes_dir()
    if not config_dir.is_dir():
        raise ConfigError(f"recipe folder {config_dir} not found; set ${RECIPES_ENV} to the folder of recipe YAMLs")
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None, job_name="archbench"):
            cfg = compose(PRIMARY, overrides=list(overrides), return_hydra_config=True)
    except (HydraException, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"invalid configuration: {_first_line(exc)}") from None
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg["recipe"] = choices.get("recipe")
    return cfg


def _check_key(base: DictConfig, key: str) -> Any:
    """Return the base value at dotted ``key``, or raise ConfigError listing the valid keys there."""
    node: Any = base
    walked: list[str] = []
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(walked)
            if isinstance(node, DictConfig):
                valid = sorted(str(k) for k in node.keys())
                scope = f"under '{where}'" if where else "at the top level"
                close = difflib.get_close_matches(part, valid, n=1, cutoff=0.6)
                hint = f" (did you mean '{'.'.join([*walked, close[0]])}'?)" if close else ""
                raise ConfigError(f"unknown config key '{key}'{hint}; valid keys {scope}: {', '.join(valid)}")
            raise ConfigError(f"unknown config key '{key}': '{where}' is a value, not a section")
        walked.append(part)
        node = node._get_node(part)
    return node


def _coerce(key: str, old: Any, new: Any) -> Any:
    """Give an override the type of the value it replaces (ints become floats where a float was)."""
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise ConfigError(f"{key}={new!r}: expected true or false")
        return new
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    if isinstance(old, int) and not isinstance(old, bool):
        if isinstance(new, float) and math.isfinite(new) and new.is_integer():
            return int(new)
        if not isinstance(new, int) or isinstance(new, bool):
            raise ConfigError(f"{key}={new!r}: expected an integer")
    if isinstance(old, float) and not isinstance(new, (int, float)):
        raise ConfigError(f"{key}={new!r}: expected a number")
    if isinstance(old, (list, ListConfig)) and not isinstance(new, (list, ListConfig)):
        raise ConfigError(f"{key}={new!r}: expected a list, e.g. {key}=[0.9,0.999]")
    return new


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose base + groups + ``overrides`` (Hydra grammar), check every key, fill the data facts.

    Raises :class:`ConfigError` (one line) for an unknown group option, key or badly typed value.
    """
    parsed = _parse(overrides)
    groups = [o for o in parsed if o.key_or_group in GROUPS]
    keys = [o for o in parsed if o.key_or_group not in GROUPS]
    for override in groups:
        options = group_options(override.key_or_group)
        if override.value() not in options:
            raise _choices_error(override.key_or_group, override.value(), options)
    base = _compose([o.input_line for o in groups])
    updates = []
    for override in keys:
        key = override.key_or_group
        if key == "backbone.name":
            raise ConfigError(f"use backbone=<name> to change the backbone (not {override.input_line})")
        if key == "recipe" or key.startswith("recipe."):
            raise ConfigError(f"'{key}' is not overridable; use recipe=<name> ({', '.join(recipe_names())})")
        node = _check_key(base, key)
        if isinstance(node, DictConfig) and not isinstance(override.value(), dict):
            raise ConfigError(f"'{key}' is a section; override one of its keys: {', '.join(map(str, node.keys()))}")
        old = None if node._is_interpolation() else node._value()
        updates.append((key, _coerce(key, old, override.value())))
    cfg = base
    with open_dict(cfg):
        for key, value in updates:
            OmegaConf.update(cfg, key, value, merge=False)
    OmegaConf.set_struct(cfg, True)
    fill_dataset_facts(cfg)
    return cfg


_ANNOUNCED: set[str] = set()


def fill_dataset_facts(cfg: DictConfig) -> None:
    """Resolve ``data.name=auto`` and fill ``data.image_size/channels/num_classes`` from the catalogue."""
    from archbench.data import DATASETS, dataset_info, default_dataset

    if cfg.data.name == "auto":
        cfg.data.name = default_dataset()
        why = (
            "the Debian package dataset-fashion-mnist is installed"
            if cfg.data.name == "fashion_mnist"
            else "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist), using scikit-learn's digits"
        )
        if cfg.data.name not in _ANNOUNCED:  # once per process: a study composes every arm
            _ANNOUNCED.add(cfg.data.name)
            log.info("data.name=auto -> %s (%s)", cfg.data.name, why)
    if cfg.data.name not in DATASETS:
        raise _choices_error("dataset (data.name)", cfg.data.name, list(DATASETS))
    info = dataset_info(cfg.data.name)
    if cfg.data.image_size is None:
        cfg.data.image_size = info.image_size
    if cfg.data.channels is None:
        cfg.data.channels = info.channels
    if cfg.data.num_classes is None:
        cfg.data.num_classes = info.num_classes if cfg.data.class_cond else 0
    if cfg.data.caption_vocab is None:
        cfg.data.caption_vocab = info.caption_vocab if cfg.data.class_cond else 0
    if cfg.data.caption_tokens is None:
        cfg.data.caption_tokens = info.caption_tokens
    if cfg.data.caption_dim is None:
        cfg.data.caption_dim = 0
    if cfg.data.caption_features is not None and cfg.data.class_cond:
        _fill_caption_features(cfg.data, info)


def _fill_caption_features(data: Any, info: Any) -> None:
    """Captions as precomputed features: the backbone takes (T, D) rows instead of word indices."""
    from archbench.data.caption_features import load_caption_features

    if not info.caption_vocab:
        raise ConfigError(f"data.caption_features is for a captioned dataset; {info.name} has no captions")
    try:
        table = load_caption_features(data.caption_features)
    except ValueError as exc:
        raise ConfigError(f"data.caption_features: {_first_line(exc)}") from None
    data.caption_vocab, data.caption_tokens, data.caption_dim = 0, table.tokens, table.dim


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain dicts/lists/primitives (JSON-safe, checkpoint-safe)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except Exception as exc:
        raise ConfigError(f"cannot resolve the configuration: {_first_line(exc)}") from None


def to_yaml(cfg: DictConfig | dict[str, Any]) -> str:
    """Resolved YAML, as printed by ``--cfg`` and written to ``run_dir/config.yaml``."""
    container = to_container(cfg) if isinstance(cfg, DictConfig) else cfg
    return OmegaConf.to_yaml(OmegaConf.create(container))


def backbone_options(cfg: Any) -> tuple[str, dict[str, Any]]:
    """(registry name, build overrides) for ``archbench.build``."""
    if isinstance(cfg, DictConfig):
        node = to_container(cfg)["backbone"]
    else:
        node = dict(cfg["backbone"] if isinstance(cfg, dict) else cfg.backbone)
    node = dict(node)
    return node.pop("name"), node
