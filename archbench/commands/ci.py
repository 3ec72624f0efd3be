"""``python -m archbench.ci fid [key=value ...]``: the FD regression check of the tiny backbones.

The check is :mod:`archbench.study.regression` (a thin wrapper over the ``ci`` study); this module parses, runs
it and prints the table. Every key defaults to the study file's value, so editing ``recipes/studies/ci.yaml``
changes what CI runs and a key given here changes that one setting. The older ``--flag value`` spellings
(``--work-dir DIR``, ``--update-baselines --seeds 0,1,2``) are the same keys.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from archbench.console.args import arg, help_text, parse_args, split_command, wants_help
from archbench.console.errors import fail, interruptible
from archbench.console.logs import setup_logging

if TYPE_CHECKING:
    from archbench.study.schema import StudySpec

PROGRAM = "archbench.ci"
ABOUT = """\
Trains the tiny member of every family with the ci study's recipe, samples with a fixed sampler, scores
FD-fashion_mnist_cnn against the real test set and compares each score with recipes/baselines/<backbone>.json;
exits 1 when any backbone regresses beyond its tolerance (or has no comparable baseline). update_baselines=true
rewrites the baselines; with seeds=0,1,2 the tolerance is max(min_tolerance, 3 x relative std) over the seeds."""


@dataclass(frozen=True, kw_only=True)
class FidArgs:
    study: str = arg("ci", doc="study preset or YAML file holding the settings (ci: recipes/studies/ci.yaml)")
    backbones: tuple[str, ...] | None = arg(None, shown="the study's arms", doc="registry names, comma-separated")
    train_steps: int | None = arg(None, minimum=1, aliases=("--steps",), shown="the study's budget.steps",
                                  doc="training steps per backbone, the baselines' budget")
    num_samples: int | None = arg(None, minimum=1, shown="the study's", doc="generated images scored per backbone")
    sampler: str | None = arg(None, shown="the study's", doc="sampler for the scored images")
    sample_steps: int | None = arg(None, minimum=1, shown="the study's eval.steps", doc="sampling steps")
    seed: int | None = arg(None, shown="the study's seeds", doc="training and sampling seed")
    work_dir: str | None = arg(None, shown="the study's study_dir",
                               doc="the study folder: runs, results.csv, plots, ci_fid.json")
    baselines: str | None = arg(None, shown="recipes/baselines", doc="baseline folder")
    update_baselines: bool = arg(False, doc="rewrite the baselines from this run")
    resume: bool = arg(False, doc="continue the runs already in work_dir (an interrupted check or baseline update) "
                       "instead of training from scratch")
    seeds: tuple[int, ...] | None = arg(None, doc="with update_baselines: seeds whose spread sets the tolerance")
    min_tolerance: float = arg(0.10, minimum=0, doc="smallest relative tolerance allowed")
    threads: int | None = arg(None, minimum=1, shown="the study's (1)",
                              doc="torch threads; ci.yaml's 1 makes scores independent of the core count")


def fid_spec(request: FidArgs) -> StudySpec:
    """The study file with the keys the user gave (and only those) applied."""
    from archbench.study.regression import ci_spec

    seeds = list(request.seeds) if request.seeds else [request.seed] if request.seed is not None else None
    return ci_spec(None if request.backbones is None else list(request.backbones), steps=request.train_steps,
                   num_samples=request.num_samples, sampler=request.sampler, sample_steps=request.sample_steps,
                   seeds=seeds, work_dir=request.work_dir, threads=request.threads, study=request.study)


def usage() -> str:
    return help_text(FidArgs, usage=f"python -m {PROGRAM} fid [key=value ...]", about=ABOUT)


def fid(args: list[str]) -> int:
    """Run the check and print its table; 1 when a backbone failed it."""
    from archbench.study.regression import format_table, run_regression

    request = parse_args(FidArgs, args)
    result = run_regression(fid_spec(request), update_baselines=request.update_baselines,
                            min_tolerance=request.min_tolerance, baselines=request.baselines,
                            fresh=not request.resume)
    first, ev = result.rows[0], result.evaluation
    print(f"\nFD regression ({first['score_name']}, {first['dataset']}, {ev['num_samples']} samples, "
          f"{ev['sampler']} {ev['steps']} steps, seed {result.seeds[0]}):\n")
    print(format_table(result.rows))
    if result.failed:
        print(f"\n{PROGRAM}: FD regression check failed for {', '.join(result.failed)}", file=sys.stderr)
        return 1
    return 0


@interruptible(PROGRAM)
def main(argv: Sequence[str] | None = None) -> int:
    """``fid`` is the one check; a bad argument or a failed run is one line and exit code 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or wants_help(args):
        print(usage())
        return 0 if args else 1
    setup_logging()  # archbench's own handler: the root logger stays untouched
    try:
        split_command(args, ["fid"])
        return fid(args[1:])
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:  # UsageError is a ValueError
        return fail(PROGRAM, exc)
