"""The backbone registry: one name -> one constructor plus its default configuration.

A registered backbone is a class (or factory function) whose keyword arguments *are* its
configuration.  Registering a name binds some of those keywords (depth, width, ...); the
rest keep the constructor's defaults.  That makes ``backbone_config`` exact without
building the model, and lets ``build`` reject unknown overrides by name.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch.nn as nn

ENTRY_POINT_GROUP = "archbench.backbones"

_REGISTRY: dict[str, BackboneSpec] = {}
_LOCK = threading.Lock()
_BUILTINS_LOADED = False
_ENTRY_POINTS_LOADED = False


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about one name."""

    name: str
    constructor: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()

    def parameters(self) -> dict[str, Any]:
        """Every keyword the constructor accepts, with its default value."""
        signature = inspect.signature(self.constructor)
        found: dict[str, Any] = {}
        for param in signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            found[param.name] = None if param.default is param.empty else param.default
        return found

    def resolve(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Merge constructor defaults, registered defaults and user overrides."""
        params = self.parameters()
        unknown = sorted(set(overrides) - set(params))
        if unknown:
            raise TypeError(
                f"{self.name}: unknown override(s) {', '.join(map(repr, unknown))}; "
                f"valid overrides are: {', '.join(sorted(params))}"
            )
        return {**params, **self.defaults, **overrides}


def register_backbone(
    name: str,
    constructor: Callable[..., nn.Module] | None = None,
    *,
    family: str = "",
    description: str = "",
    tags: str | Iterable[str] = (),
    overwrite: bool = False,
    **defaults: Any,
):
    """Register ``constructor`` under ``name`` with default keyword arguments.

    Usable as a call, ``register_backbone("dit_s2", DiT, depth=12, ...)``, or as a
    decorator on a class or factory, ``@register_backbone("my_net", width=64)``.
    ``tags`` label the name for queries such as ``list_backbones(tag="tiny")``, so that sets like "the tiny
    member of every family" live in the registry instead of in hand-kept lists.
    """
    tag_tuple = _check_tags(name, tags)

    def _register(target: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        spec = BackboneSpec(
            name=name,
            constructor=target,
            defaults=dict(defaults),
            family=family or getattr(target, "family", "") or name.split("_")[0],
            description=description or _first_doc_line(target),
            tags=tag_tuple,
        )
        spec.resolve({})  # fail at registration, not at build, on a mistyped default
        with _LOCK:
            if name in _REGISTRY and not overwrite and _REGISTRY[name].constructor is not target:
                raise ValueError(f"backbone {name!r} is already registered; pass overwrite=True to replace it")
            _REGISTRY[name] = spec
        return target

    if constructor is not None:
        return _register(constructor)
    return _register


def unregister_backbone(name: str) -> None:
    """Remove a name (mainly for tests and interactive sessions)."""
    with _LOCK:
        _REGISTRY.pop(name, None)


def _check_tags(name: str, tags: str | Iterable[str]) -> tuple[str, ...]:
    """Tags as a tuple of non-empty words; one string is one tag (not its characters)."""
    found = (tags,) if isinstance(tags, str) else tuple(tags)
    bad = [t for t in found if not isinstance(t, str) or not t.strip() or t != t.strip()]
    if bad:
        raise ValueError(f"backbone {name!r}: tags must be non-empty words, got {bad!r}")
    return tuple(dict.fromkeys(found))


def _first_doc_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _ensure_loaded() -> None:
    """Import the built-in families and third-party entry points, once."""
    global _BUILTINS_LOADED, _ENTRY_POINTS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        import backbones  # noqa: F401  (registers the built-in families)
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        load_entry_points()


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Load third-party backbones advertised under the ``archbench.backbones`` group.

    An entry point may name a module (importing it runs its ``register_backbone``
    decorators) or a class/factory, which is registered under the entry point's name.
    Returns the entry-point names that were loaded.
    """
    loaded = []
    for entry in metadata.entry_points(group=group):
        target = entry.load()
        if callable(target) and entry.name not in _REGISTRY:
            register_backbone(entry.name, target)
        loaded.append(entry.name)
    return loaded


def refresh_entry_points() -> list[str]:
    """Re-scan entry points (after installing a plugin in a running interpreter)."""
    global _ENTRY_POINTS_LOADED
    _ensure_loaded()
    _ENTRY_POINTS_LOADED = True
    return load_entry_points()


def backbone_tags() -> list[str]:
    """Every tag some registered backbone carries, sorted."""
    _ensure_loaded()
    return sorted({tag for spec in list(_REGISTRY.values()) for tag in spec.tags})


def list_backbones(pattern: str | Iterable[str] = "*", tag: str | None = None) -> list[str]:
    """Sorted registered names matching one fnmatch pattern or any of several, and carrying ``tag`` if given.

    A tag no backbone carries raises ValueError listing the known tags: a typo must not select nothing.
    """
    _ensure_loaded()
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    specs = list(_REGISTRY.values())
    if tag is not None:
        known = backbone_tags()
        if tag not in known:
            raise ValueError(f"unknown backbone tag {tag!r}; known tags: {', '.join(known) or '(none)'}")
        specs = [spec for spec in specs if tag in spec.tags]
    return sorted(s.name for s in specs if any(fnmatch.fnmatchcase(s.name, p) for p in patterns))


def get_spec(name: str) -> BackboneSpec:
    """The spec for ``name``; an unknown name raises KeyError with the closest names."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown backbone {name!r}.{hint} See archbench.list_backbones() for all "
            f"{len(_REGISTRY)} registered names."
        ) from None


def backbone_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The resolved, JSON-serialisable configuration ``build(name, **overrides)`` would use."""
    spec = get_spec(name)
    config = spec.resolve(overrides)
    json.dumps(config)  # a registered default that is not JSON-serialisable is a bug
    return {"name": name, "family": spec.family, **config}


# Structural sizes every family that has them needs to be positive integers (checked before building, so a bad
# value is named instead of surfacing as "math domain error" or "groups must be a positive integer").
POSITIVE_INTEGERS = ("depth", "width", "num_heads", "patch_size", "base_channels", "num_res_blocks", "norm_groups")


def check_structure(name: str, config: dict[str, Any]) -> None:
    """Refuse non-positive or non-integer structural sizes, naming the argument."""
    for key in POSITIVE_INTEGERS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: {key} must be a positive integer, got {value!r}")
    ratio = config.get("mlp_ratio")
    if ratio is not None and not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and ratio > 0):
        raise ValueError(f"{name}: mlp_ratio must be a positive number, got {ratio!r}")
    mult = config.get("channel_mult")
    if mult is not None and not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in mult):
        raise ValueError(f"{name}: channel_mult must hold positive integers, got {mult!r}")


def build(name: str, **overrides: Any) -> nn.Module:
    """Build a registered backbone; ``overrides`` replace its default configuration."""
    spec = get_spec(name)
    config = spec.resolve(overrides)
    check_structure(name, config)
    model = spec.constructor(**config)
    model.backbone_name = name
    model.backbone_config = {"name": name, "family": spec.family, **config}
    return model
