"""``key=value`` command lines declared by a dataclass, so every ``python -m archbench.X`` parses, checks and
documents its keys the same way.

A command's keys are the fields of a dataclass: the field's type says how a value parses, :func:`arg` gives
the one-line doc (and optional aliases, a lower bound, a display default), and :func:`help_text` prints them.
Every bad argument is a :class:`~archbench.console.errors.UsageError` naming the key: an unknown key with the
closest valid one and the full list, a value of the wrong type with the type expected.

Accepted spellings, in any order::

    key=value              the grammar of every command (and of training overrides)
    --key value            the older argparse spelling of the same key (dashes or underscores),
    --key=value              kept so documented command lines such as ``ci fid --work-dir DIR`` still work
    --flag                 a bool key set to true
    --key v1 v2 v3         a tuple key's values, the same as key=v1,v2,v3
    word                   a positional key, for commands that declare one (``study STUDY``)

Types: ``int``, ``float``, ``bool`` (true/false, yes/no, on/off, 1/0), ``str``, ``Literal[...]`` (choices),
``tuple[X, ...]`` (a comma list, optionally in brackets), unions tried left to right (``int | str``), and
``X | None`` (``none`` or ``null``); ``Any`` guesses (:func:`guess_value`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from archbench.console.errors import UsageError

T = TypeVar("T")
HELP_FLAGS = ("-h", "--help")


@dataclass(frozen=True)
class _Doc:
    """A key's documentation and options, read from its field's metadata (``doc`` alone for plain fields, the
    convention :mod:`archbench.training.schema` uses too)."""

    doc: str = ""
    aliases: tuple[str, ...] = ()
    key: str | None = None
    minimum: float | None = None
    shown: str | None = None
    const: str | None = None

    @classmethod
    def of(cls, field: dataclasses.Field) -> _Doc:
        return cls(**{f.name: field.metadata[f.name] for f in dataclasses.fields(cls) if f.name in field.metadata})


def arg(
    default: Any = MISSING,
    *,
    doc: str,
    aliases: Sequence[str] = (),
    key: str | None = None,
    minimum: float | None = None,
    shown: str | None = None,
    const: str | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A dataclass field that is a command-line key.

    ``doc``: the one line ``--help`` prints. ``aliases``: older names still accepted (``"steps"`` as a key and
    as ``--steps``; an entry starting with ``--`` is accepted as a flag only). ``key``: the name on the command
    line when it cannot be the field's (``class``). ``minimum``: the smallest number allowed (each element of a
    tuple). ``shown``: the default as ``--help`` prints it, when the field's default is a placeholder.
    ``const``: the value of a bare ``--flag`` given without one (argparse's ``nargs="?"``).
    No default (and no ``default_factory``) makes the key required.
    """
    meta = {"doc": doc, "aliases": tuple(aliases), "key": key, "minimum": minimum, "shown": shown, "const": const}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Key:
    """One key of a command: its name on the command line, the field it fills, its type and documentation."""

    name: str
    attr: str
    hint: Any
    default: Any  # MISSING: required; a callable marked by ``factory``: computed per instance
    factory: bool
    doc: _Doc

    @property
    def required(self) -> bool:
        return self.default is MISSING and not self.factory

    def flags(self) -> list[str]:
        """The ``--flag`` spellings of this key (without the dashes)."""
        names = [self.name, *(a for a in self.doc.aliases if not a.startswith("--"))]
        out = {spelling for n in names for spelling in (n, n.replace("_", "-"))}
        out |= {a[2:] for a in self.doc.aliases if a.startswith("--")}
        return sorted(out)


def keys(schema: type) -> list[Key]:
    """The keys a dataclass declares, in field order (fields made with :func:`arg`, or plain fields)."""
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass")
    hints = typing.get_type_hints(schema)
    found = []
    for field in dataclasses.fields(schema):
        if not field.init:
            continue
        doc = _Doc.of(field)
        factory = field.default_factory is not MISSING
        default = field.default_factory if factory else field.default
        found.append(Key(doc.key or field.name, field.name, hints[field.name], default, factory, doc))
    return found


# --- values --------------------------------------------------------------------------------------------------

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null")


def guess_value(text: str) -> Any:
    """A value whose type the command cannot know (a backbone's build override): ``"32"`` -> 32, ``"0.1"`` ->
    0.1, ``"true"`` -> True, ``"none"`` -> None, ``"1,2"`` -> (1, 2), anything else the string itself."""
    if "," in text:
        return tuple(guess_value(part) for part in text.split(",") if part)
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in _NONE:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _without_none(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); other hints -> (hint, False)."""
    if not _is_union(hint):
        return hint, False
    options = [a for a in get_args(hint) if a is not type(None)]
    optional = len(options) < len(get_args(hint))
    if len(options) == 1:
        return options[0], optional
    return Union[tuple(options)], optional  # noqa: UP007 (built from a runtime tuple)


def type_name(hint: Any) -> str:
    """How ``--help`` and error messages name a type: ``int``, ``fp32|bf16``, ``int,...``, ``int|str``."""
    hint, _ = _without_none(hint)
    if get_origin(hint) is Literal:
        return "|".join(str(c) for c in get_args(hint))
    if get_origin(hint) is tuple:
        return f"{type_name(get_args(hint)[0])},..."
    if _is_union(hint):
        return "|".join(type_name(a) for a in get_args(hint))
    if hint is Any:
        return "value"
    return getattr(hint, "__name__", str(hint))


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _convert(name: str, hint: Any, text: str) -> Any:
    if _is_union(hint):  # str last, so int | str reads "25" as 25 and "ddim25" as a string
        options = sorted(get_args(hint), key=lambda a: a is str)
        for option in options:
            try:
                return _convert(name, option, text)
            except UsageError:
                continue
        raise UsageError(f"{name} must be {type_name(hint)}, got {text!r}")
    origin = get_origin(hint)
    if origin is Literal:
        for choice in get_args(hint):
            if str(choice) == text:
                return choice
        raise UsageError(f"{name} must be one of {', '.join(str(c) for c in get_args(hint))}, got {text!r}")
    if origin is tuple:
        inner = get_args(hint)[0]
        body = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        return tuple(_convert(name, inner, part.strip()) for part in body.split(",") if part.strip())
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    elif hint is int or hint is float:
        try:
            value = hint(text)
        except ValueError:
            pass
        else:
            if not math.isfinite(value):  # nan/inf would flow silently into black images or endless loops
                raise UsageError(f"{name} must be a finite number, got {text!r}")
            return value
    elif hint is str:
        return text
    elif hint is Any:
        return guess_value(text)
    else:
        raise TypeError(f"key {name}: unsupported type {hint!r}")  # the command's own mistake, not the user's
    raise UsageError(f"{name} must be {_EXPECTED[hint]}, got {text!r}")


def convert(key: Key, text: str) -> Any:
    """``text`` as the key's type, checked against its minimum; a bad value is a UsageError naming the key."""
    hint, optional = _without_none(key.hint)
    if optional and text.lower() in _NONE:
        return None
    value = _convert(key.name, hint, text)
    low = key.doc.minimum
    if low is not None:
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, (int, float)) and not isinstance(item, bool) and item < low:
                raise UsageError(f"{key.name} must be >= {low:g}, got {item}")
    return value


# --- parsing -------------------------------------------------------------------------------------------------


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(word: str, table: list[Key], flag: bool) -> UsageError:
    names = [k.name for k in table]
    if flag:
        choices = sorted({f"--{f}" for k in table for f in k.flags()})
        return UsageError(f"unknown option {word!r}{_did_you_mean(word, choices)}; arguments are key=value with keys "
                          f"{', '.join(names) or '(none)'}")
    return UsageError(f"unknown key {word!r}{_did_you_mean(word, names)}; valid keys: {', '.join(names) or '(none)'}")


def _flag_value(key: Key, flag: str, argv: list[str], i: int) -> tuple[str, int]:
    """The value of ``--flag`` given without ``=``: true for a bool, the following words for a tuple, else the
    next word (or the key's ``const``)."""
    hint, _ = _without_none(key.hint)
    if hint is bool:
        return "true", i
    is_value = [not (w.startswith("--") or ("=" in w and not w.startswith("["))) for w in argv[i:]] + [False]
    if get_origin(hint) is tuple:
        end = is_value.index(False) + i
        if end == i:
            raise UsageError(f"--{flag} needs at least one value")
        return ",".join(argv[i:end]), end
    if is_value[0] and not (key.doc.const is not None and argv[i].startswith("-")):
        return argv[i], i + 1
    if key.doc.const is not None:
        return key.doc.const, i
    raise UsageError(f"--{flag} needs a value")


def _parse(schema: type[T], argv: Sequence[str], positional: Sequence[str], extra: bool) -> tuple[T, list[str]]:
    table = keys(schema)
    by_key: dict[str, Key] = {}
    by_flag: dict[str, Key] = {}
    for key in table:
        by_key[key.name] = key
        by_key.update({a: key for a in key.doc.aliases if not a.startswith("--")})
        by_flag.update({f: key for f in key.flags()})
    waiting = [by_key[name] for name in positional]
    given: dict[str, Any] = {}
    extras: list[str] = []
    words, i = list(argv), 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--") and len(word) > 2:
            flag, eq, raw = word[2:].partition("=")
            key = by_flag.get(flag)
            if key is None:
                raise _unknown(f"--{flag}", table, flag=True)
            if not eq:
                raw, i = _flag_value(key, flag, words, i)
            given[key.attr] = convert(key, raw)
        elif "=" in word and not word.startswith("-"):
            name, _, raw = word.partition("=")
            key = by_key.get(name)
            if key is not None:
                given[key.attr] = convert(key, raw)
            elif extra and name:
                extras.append(word)
            else:
                raise _unknown(name, table, flag=False)
        elif word.startswith("-") and not _is_number(word):
            raise _unknown(word, table, flag=True)
        elif waiting := [k for k in waiting if k.attr not in given]:  # a positional key not given as key=value
            key = waiting.pop(0)
            given[key.attr] = convert(key, word)
        else:
            raise UsageError(f"cannot use {word!r}: arguments are key=value with keys "
                             f"{', '.join(k.name for k in table)}")
    missing = [k for k in table if k.required and k.attr not in given]
    if missing:
        raise UsageError("missing " + ", ".join(
            (k.name.upper() if k.name in positional else f"{k.name}=...") + (f" ({k.doc.doc})" if k.doc.doc else "")
            for k in missing))
    return schema(**given), extras


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def parse_args(schema: type[T], argv: Sequence[str], *, positional: Sequence[str] = ()) -> T:
    """An instance of ``schema`` from the command line; every bad argument raises UsageError."""
    return _parse(schema, argv, positional, extra=False)[0]


def split_args(schema: type[T], argv: Sequence[str], *, positional: Sequence[str] = ()) -> tuple[T, list[str]]:
    """Like :func:`parse_args`, but ``key=value`` words of keys ``schema`` does not declare are returned as they
    were given, in order, for the command to hand on (a study's overrides, a backbone's build options)."""
    return _parse(schema, argv, positional, extra=True)


def wants_help(argv: Sequence[str]) -> bool:
    """``-h`` or ``--help`` anywhere on the command line."""
    return any(word in HELP_FLAGS for word in argv)


def split_command(argv: Sequence[str], commands: Sequence[str]) -> tuple[str, list[str]]:
    """``COMMAND key=value ...`` -> the command and its arguments; a missing or unknown command is a UsageError."""
    if not argv or argv[0] not in commands:
        got = f" {argv[0]!r}" if argv else ""
        hint = _did_you_mean(argv[0], commands) if argv else ""
        raise UsageError(f"expected a command{got}{hint}: one of {', '.join(commands)} (see --help)")
    return argv[0], list(argv[1:])


# --- help ----------------------------------------------------------------------------------------------------


def _shown(key: Key) -> str:
    if key.doc.shown is not None:
        return key.doc.shown
    if key.required:
        return "required"
    if key.factory:
        return "(computed)"
    value = key.default
    if value is None:
        return "-"
    if value == "":
        return "''"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "(empty)"
    return str(value)


def key_table(schema: type, positional: Sequence[str] = ()) -> str:
    """One line per key: name, type, default, doc (with its older names)."""
    rows = []
    for key in keys(schema):
        aliases = [a if a.startswith("--") else f"{a}=" for a in key.doc.aliases]
        doc = key.doc.doc + (f" (also {', '.join(aliases)})" if aliases else "")
        name = key.name if key.name not in positional else key.name.upper()
        rows.append((name, type_name(key.hint), _shown(key), doc))
    if not rows:
        return "  (no keys)"
    widths = [max(len(row[col]) for row in rows) for col in range(3)]
    return "\n".join(
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    )


def help_text(schema: type, *, usage: str, about: str = "", notes: str = "", positional: Sequence[str] = ()) -> str:
    """``--help`` for a command: usage line, what it does, every key (name, type, default, doc), notes."""
    parts = [f"usage: {usage}"]
    if about:
        parts.append(about.strip("\n").replace("``", ""))  # docstrings' reST literals read as plain words here
    parts.append("keys (key=value; --key value and --key=value are accepted too):\n" + key_table(schema, positional))
    if notes:
        parts.append(notes.strip("\n"))
    return "\n\n".join(parts)
