"""``python -m archbench.report flops|summary|scaling|kernels [key=value ...]``: reports on registered backbones.

The reports are :mod:`archbench.measure.report`; this module parses each one's keys, calls it and prints.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from archbench.console.args import (
    arg,
    guess_value,
    key_table,
    keys,
    parse_args,
    split_args,
    split_command,
    wants_help,
)
from archbench.console.errors import UsageError, fail
from archbench.console.threads import parse_threads

PROGRAM = "archbench.report"
USAGE = """\
    python -m archbench.report flops backbones=dit_s2,dis_* [build overrides] [format=md|csv|json]
    python -m archbench.report flops preset=paper [format=md|csv|json]
    python -m archbench.report summary backbone=dis_s2 [depth=3] [build overrides]
    python -m archbench.report scaling backbones=dis_s2,dit_s2 resolutions=16,32,64 out=DIR [...]
    python -m archbench.report kernels      # which scan implementation `auto` runs here, per device"""
ABOUT = """\
Keys a report does not declare are build overrides (image_size, in_channels, num_classes, learn_sigma, ...),
given to every selected backbone, which must all accept them; their values are guessed (int, float, bool,
none, a comma list as a tuple, else a string). Every count follows fvcore's convention (one multiply-add = 1
MAC, forward pass, one image; GFLOPs = 2 x GMACs)."""


@dataclass(frozen=True, kw_only=True)
class FlopsArgs:
    backbones: str | None = arg(None, doc="names or fnmatch patterns, comma-separated")
    format: Literal["md", "csv", "json"] = arg("md", doc="table format")
    preset: Literal["paper"] | None = arg(None, doc="paper: the DiT paper table and the DiS family at 32x32x4 "
                                                    "latents, 1000 classes (no other keys)")
    progress: bool = arg(True, doc="one progress bar on stderr while counting (false: none)")


@dataclass(frozen=True, kw_only=True)
class SummaryArgs:
    backbone: str = arg(doc="one registered name")
    depth: int = arg(3, minimum=1, doc="module nesting shown by torchinfo")
    batch: int = arg(1, minimum=1, doc="batch size of the summary's example input")
    progress: bool = arg(True, doc="one progress bar on stderr while building and counting (false: none)")


@dataclass(frozen=True, kw_only=True)
class ScalingArgs:
    backbones: str = arg("dis_s2,dit_s2,uvit_s2", doc="names or fnmatch patterns, comma-separated")
    resolutions: tuple[int, ...] = arg((16, 32, 64, 128), minimum=1, doc="input sizes, comma-separated")
    out: str = arg("scaling_out", doc="output directory for scaling.csv, crossover.csv and scaling.png")
    device: Literal["cpu", "cuda"] = arg("cpu", doc="cuda: bf16 autocast, max_memory_allocated")
    batch: int | None = arg(None, minimum=1, shown="1", doc="images per pass; times and memory are per image")
    repeats: int | None = arg(None, minimum=1, shown="5", doc="timed passes per measurement (median)")
    warmup: int | None = arg(None, minimum=0, shown="1", doc="untimed passes first")
    threads: str = arg("auto", doc="torch CPU threads: auto (per resolution, the fastest of 1, 2, 4, ... over "
                                   "all the backbones together; OMP_NUM_THREADS pins it) or N")
    memory: bool = arg(True, doc="measure peak memory (in a fresh process)")


@dataclass(frozen=True, kw_only=True)
class KernelsArgs:
    pass


COMMANDS: dict[str, type] = {"flops": FlopsArgs, "summary": SummaryArgs, "scaling": ScalingArgs,
                             "kernels": KernelsArgs}


def usage(command: str | None = None) -> str:
    """The usage lines, then the keys of ``command`` (of every report when None)."""
    names = [command] if command else list(COMMANDS)
    tables = "\n\n".join(f"{name} keys (key=value):\n{key_table(COMMANDS[name])}" for name in names)
    return f"usage:\n{USAGE}\n\n{ABOUT}\n\n{tables}"


def _overrides(extras: list[str]) -> dict[str, Any]:
    return {word.partition("=")[0]: guess_value(word.partition("=")[2]) for word in extras}


def _own_keys(schema: type) -> list[str]:
    return [key.name for key in keys(schema)]


def flops(args: list[str]) -> str:
    from archbench.measure import report

    request, extras = split_args(FlopsArgs, args)
    if request.preset is not None:
        if extras or request.backbones is not None:
            given = sorted([w.partition("=")[0] for w in extras] + ["backbones"] * (request.backbones is not None))
            raise UsageError(f"flops: preset=paper fixes the setting; drop {', '.join(given)}")
        return report.paper_report(request.format, progress=request.progress)
    if request.backbones is None:
        raise UsageError("flops: give backbones=NAME[,PATTERN...] or preset=paper")
    names = report.resolve_backbones(request.backbones)
    overrides = _overrides(extras)
    report.check_overrides(names, overrides, _own_keys(FlopsArgs))
    return report.flops_table(names, overrides, request.format, progress=request.progress)


def summary(args: list[str]) -> str:
    from archbench.measure import report

    request, extras = split_args(SummaryArgs, args)
    names = report.resolve_backbones(request.backbone)
    if len(names) != 1:
        raise UsageError(f"summary: backbone= takes one name, got {', '.join(names)}")
    overrides = _overrides(extras)
    report.check_overrides(names, overrides, _own_keys(SummaryArgs))
    return report.summary_table(names[0], overrides, depth=request.depth, batch=request.batch,
                                progress=request.progress)


def scaling(args: list[str]) -> str:
    from archbench.measure import report

    request, extras = split_args(ScalingArgs, args)
    names = report.resolve_backbones(request.backbones)
    overrides = _overrides(extras)
    report.check_overrides(names, overrides, _own_keys(ScalingArgs), exclude={"image_size": "use resolutions="})
    if not request.resolutions:
        raise UsageError("scaling: resolutions must be positive integers, got none")
    try:
        threads = parse_threads(request.threads)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = {k: getattr(request, k) for k in ("batch", "repeats", "warmup") if getattr(request, k) is not None}
    options["threads"] = threads
    return report.scaling_report(names, request.resolutions, overrides, request.out, device=request.device,
                                 memory=request.memory, options=options)


def kernels(args: list[str]) -> str:
    from archbench.measure import report

    parse_args(KernelsArgs, args)
    return report.kernels_table()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the report's keys, build it, print it; a bad key or value is one line and exit code 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] == "help" or (wants_help(args) and args[0] not in COMMANDS):
        print(usage())
        return 0 if args else 1
    if wants_help(args):
        print(usage(args[0]))
        return 0
    try:
        command, rest = split_command(args, list(COMMANDS))
        text = {"flops": flops, "summary": summary, "scaling": scaling, "kernels": kernels}[command](rest)
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except UsageError as exc:
        return fail(PROGRAM, exc)
    except OSError as exc:  # an output folder that cannot be written, a missing file
        return fail(PROGRAM, f"{exc.strerror or exc}: {exc.filename or ''}".strip(": "))
    return 0
