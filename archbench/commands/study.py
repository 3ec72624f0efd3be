"""``python -m archbench.study STUDY [key=value ...] [plan=true | --plan]``: run (or resume) a backbone comparison.

The study is :mod:`archbench.study` (:func:`~archbench.study.load_study`, :func:`~archbench.study.run_study`);
this module parses, runs it and prints where the results went. Keys the command does not declare are study
overrides, handed to the study file's own grammar unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from archbench.console.args import arg, help_text, split_args, wants_help
from archbench.console.errors import UsageError, fail, interruptible, one_line
from archbench.console.logs import setup_logging

PROGRAM = "archbench.study"
ABOUT = """\
STUDY is a preset in recipes/studies/ ({presets}) or a path to a YAML file. Any study key can be
overridden with the training's key=value grammar: seeds=[0] budget.steps=600 launcher=submitit
launcher.cluster=local eval.every=100. plan=true (or --plan) prints the runs (arms, steps, evaluation points)
and exits without training. Re-running the same command resumes unfinished runs and skips finished
evaluations."""
WRITES = """\
Writes study_dir/results.csv, tune.csv and tune/ (with a tune section), summary.md, fd_vs_compute.png,
fd_vs_wallclock.png, cond_acc_vs_compute.png, cond_acc_vs_wallclock.png (and <metric>_vs_compute.png,
<metric>_vs_wallclock.png for every other metric the study records), fd_vs_params.png, fd_vs_gmacs.png,
fd_vs_<swept key>.png, samples.png, and runs/<arm>-s<seed>/ (ordinary training runs).
Exit codes: 0 done, 1 a bad study or a failed run (one line each), 130 Ctrl-C."""


@dataclass(frozen=True, kw_only=True)
class StudyArgs:
    study: str = arg(doc="a preset name in recipes/studies/ or a YAML file (positional)")
    plan: bool = arg(False, doc="print the runs and exit without training")


def usage() -> str:
    from archbench.study.spec import study_names

    about = ABOUT.format(presets=", ".join(study_names()) or "none found")
    return help_text(StudyArgs, usage=f"python -m {PROGRAM} STUDY [key=value ...] [--plan]", about=about,
                     notes=study_keys() + "\n\n" + WRITES, positional=("study",))


def study_keys() -> str:
    """The study file's keys with their defaults, generated from the schema (:mod:`archbench.study.schema`)."""
    from archbench.study.schema import key_rows

    lines = ["Study file keys [defaults]:"]
    for key, shown, doc in key_rows():
        lines.append(f"  {key}{f' [{shown}]' if shown else ''}: {doc.replace('`', '')}")
    return "\n".join(lines)


def format_plan(jobs: list) -> str:
    """The planned runs as a Markdown table (params, GMACs, steps, evaluation points, folder)."""
    lines = ["| run | backbone | params | GMACs | steps | evaluations | run_dir |", "|---|---|---:|---:|---:|---|---|"]
    for job in jobs:
        lines.append(f"| {job.run_name} | {job.backbone} | {job.params:,} | {job.gmacs:.4f} | {job.steps} | "
                     f"{','.join(map(str, job.eval_steps))} | {job.run_dir} |")
    return "\n".join(lines)


@interruptible(PROGRAM)
def main(argv: Sequence[str] | None = None) -> int:
    """Parse, plan or run the study, print where it wrote; 1 for a bad study or any failed run."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or wants_help(args):
        print(usage())
        return 0 if args else 1
    setup_logging()
    from archbench.study.runner import plan_study, run_study
    from archbench.study.spec import StudyError, load_study
    from archbench.study.tune import tune_jobs

    try:
        request, overrides = split_args(StudyArgs, args, positional=("study",))
        spec = load_study(request.study, overrides)
        if request.plan:
            jobs = plan_study(spec, measure=False)[1]
            candidates = tune_jobs(spec, jobs)
            if candidates:
                print(f"Tuning runs ({spec.tune.key} per arm, {spec.tune.metric} picks the value the "
                      "main runs then train with):\n")
                print(format_plan(candidates) + "\n\nMain runs:\n")
            print(format_plan(jobs))
            return 0
        result = run_study(spec)
    except (UsageError, StudyError, OSError) as exc:
        return fail(PROGRAM, one_line(exc))
    for item in result.failed:
        print(f"{PROGRAM}: run {item['run']} {item['status']}: {one_line(item.get('error', ''))}", file=sys.stderr)
    print(f"study {spec.name}: {len(result.rows)} result rows; wrote {', '.join(p.name for p in result.outputs)} "
          f"in {result.study_dir}")
    return 1 if result.failed else 0
