"""The key=value helper every command parses with: types from the dataclass, one UsageError for every bad
argument (unknown key with a suggestion, wrong type naming the key), the older --flag spellings as aliases,
and --help generated from the fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pytest

from archbench.console.args import arg, help_text, parse_args, split_args, split_command
from archbench.console.errors import UsageError


@dataclass(frozen=True, kw_only=True)
class Demo:
    name: str = arg(doc="what to run")
    count: int = arg(3, minimum=1, aliases=("n",), doc="how many")
    scale: float | None = arg(None, doc="a scale")
    fast: bool = arg(False, doc="go fast")
    sizes: tuple[int, ...] = arg((16, 32), minimum=1, doc="input sizes")
    mode: Literal["md", "csv"] = arg("md", doc="output format")
    steps: int | str | None = arg(None, doc="steps or a respacing")
    train_steps: int | None = arg(None, aliases=("--steps-old",), doc="training steps")
    readme: str | None = arg(None, const="README.md", doc="a file")
    class_: int | None = arg(None, key="class", doc="one class")
    extra: Any = arg(None, doc="anything")


def parse(*words: str) -> Demo:
    return parse_args(Demo, words, positional=("name",))


def test_values_take_the_field_types():
    got = parse("name=x", "count=5", "scale=0.5", "fast=yes", "sizes=[8,64]", "mode=csv", "class=2", "extra=1,2")
    assert (got.name, got.count, got.scale, got.fast, got.sizes, got.mode, got.class_) == ("x", 5, 0.5, True,
                                                                                           (8, 64), "csv", 2)
    assert got.extra == (1, 2)
    assert parse("x", "scale=none").scale is None and parse("x", "fast=off").fast is False
    assert parse("x", "steps=25").steps == 25 and parse("x", "steps=ddim25").steps == "ddim25"  # int first, then str
    assert parse("x").sizes == (16, 32) and parse("x").count == 3  # defaults


@pytest.mark.parametrize(("words", "message"), [
    (["x", "count=many"], "count must be an integer, got 'many'"),
    (["x", "scale=big"], "scale must be a number, got 'big'"),
    (["x", "fast=maybe"], "fast must be true or false, got 'maybe'"),
    (["x", "mode=json"], "mode must be one of md, csv, got 'json'"),
    (["x", "sizes=8,a"], "sizes must be an integer, got 'a'"),
    (["x", "count=0"], "count must be >= 1, got 0"),
    (["x", "sizes=8,-1"], "sizes must be >= 1, got -1"),
    (["x", "cuont=2"], "unknown key 'cuont' (did you mean 'count'?); valid keys: name, count, scale"),
    (["x", "--cuont", "2"], "unknown option '--cuont' (did you mean '--count'?)"),
    (["x", "-q"], "unknown option '-q'"),
    (["x", "y"], "cannot use 'y': arguments are key=value"),
    (["x", "--count"], "--count needs a value"),
    (["x", "--sizes", "--fast"], "--sizes needs at least one value"),
    (["count=2"], "missing NAME (what to run)"),
    (["x", "steps-old=3"], "unknown key 'steps-old'"),  # a flag-only alias is not a key
])
def test_every_bad_argument_is_one_usage_error(words, message):
    with pytest.raises(UsageError) as caught:
        parse(*words)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_usage_error_is_a_value_error():
    """Library callers that caught ValueError for a bad setting keep working."""
    assert issubclass(UsageError, ValueError)


def test_older_flag_spellings_are_aliases_of_the_keys():
    by_key = parse("name=x", "count=4", "fast=true", "sizes=8,16,24", "train_steps=7", "readme=R.md")
    by_flag = parse("--name", "x", "--count=4", "--fast", "--sizes", "8", "16", "24", "--steps-old", "7",
                    "--readme", "R.md")
    assert by_key == by_flag
    assert parse("x", "--train-steps", "7") == parse("x", "--train_steps=7") == parse("x", "train_steps=7")
    assert parse("x", "n=9").count == 9 and parse("x", "--n", "9").count == 9  # a key alias works both ways
    assert parse("x", "--readme").readme == "README.md" and parse("x", "--readme", "--fast").readme == "README.md"
    assert parse("x", "--scale", "-0.5").scale == -0.5  # a negative number is a value, not an option


def test_positional_and_split_extras():
    assert parse("x").name == "x" and parse("name=y").name == "y"
    with pytest.raises(UsageError, match="cannot use 'x'"):  # the positional key is already given
        parse("name=y", "x")
    got, extras = split_args(Demo, ["x", "seeds=[0]", "count=2", "budget.steps=600", "overrides=[a=1]"],
                             positional=("name",))
    assert got.count == 2 and extras == ["seeds=[0]", "budget.steps=600", "overrides=[a=1]"]
    with pytest.raises(UsageError, match="unknown option '--plan'"):  # flags are never passed through
        split_args(Demo, ["x", "--plan"], positional=("name",))


def test_split_command():
    assert split_command(["scan", "a=1"], ["scan", "step"]) == ("scan", ["a=1"])
    with pytest.raises(UsageError, match="expected a command 'scna' \\(did you mean 'scan'\\?\\): one of scan, step"):
        split_command(["scna"], ["scan", "step"])
    with pytest.raises(UsageError, match="expected a command: one of"):
        split_command([], ["scan"])


def test_help_is_generated_from_the_fields():
    text = help_text(Demo, usage="demo NAME [key=value ...]", about="Runs a demo.", positional=("name",))
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("  ")}
    assert rows["NAME"][1:3] == ["str", "required"]
    assert rows["count"][1:3] == ["int", "3"] and "(also n=)" in " ".join(rows["count"])
    assert rows["sizes"][1:3] == ["int,...", "16,32"]
    assert rows["mode"][1:3] == ["md|csv", "md"] and rows["fast"][1:3] == ["bool", "false"]
    assert rows["steps"][1] == "int|str" and rows["class"][1] == "int"
    assert "--steps-old" in " ".join(rows["train_steps"])
    assert text.startswith("usage: demo NAME") and "Runs a demo." in text


def test_a_field_without_help_metadata_still_parses():
    @dataclass
    class Plain:
        depth: int = 2

    assert parse_args(Plain, ["depth=4"]).depth == 4
    with pytest.raises(TypeError, match="not a dataclass"):
        parse_args(dict, [])
