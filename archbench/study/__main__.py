"""``python -m archbench.study STUDY [key=value ...] [--plan]``: run (or resume) a backbone comparison.

STUDY is a preset in recipes/studies/ ({presets}) or a path to a YAML file.  Any study key can be
overridden with the training's key=value grammar: seeds=[0] budget.steps=600 launcher=submitit
launcher.cluster=local eval.every=100.  --plan prints the runs (arms, steps, evaluation points) and exits
without training.  Re-running the same command resumes unfinished runs and skips finished evaluations.

Study file keys (defaults in brackets):
  name                      the study's name (required); study_dir [studies/${{name}}]
  recipe [default]          the training recipe every arm shares; overrides [[]]: training overrides for every arm
  arms                      list of {{backbone, name?, overrides?, match_params?, match_by? [width|depth]}}
  sweep [{{}}]                {{training key: [values]}}, crossed with every arm (e.g. backbone.depth: [2, 4, 8])
  seeds [[0]]
  budget.match [steps]      steps | train_flops | wall_clock; budget.steps [300]: the reference arm's steps;
  budget.reference          the arm whose steps set the budget [the first arm]; budget.timing_steps [8]
  eval.every [0]            reference-arm steps between evaluations (0: at the end only), scaled per arm
  eval.num_samples [500]    eval.features [auto] (auto|inception|fashion_mnist_cnn|digits_cnn), eval.weights,
                            eval.sampler [ddim], eval.steps [25], eval.cfg_scale [1.0], eval.batch_size [250],
                            eval.ref_split [test], eval.seed [the run's seed]
  grid.cfg_scale [4.0]      the study's sample grid (a row per arm): grid.columns [10], grid.seed [0]
  launcher [local]          local | submitit; launcher.workers [1] (local), launcher.cluster [slurm]
                            (slurm | local | debug), launcher.partition, launcher.gpus_per_job [0] (>1: torchrun),
                            launcher.cpus_per_job, launcher.timeout_min [240], launcher.mem_gb, launcher.slurm_args
  device [auto], threads [torch default], ckpt_every [each evaluation point], progress_every [30] seconds

Writes study_dir/results.csv, summary.md, fd_vs_compute.png, fd_vs_wallclock.png, fd_vs_params.png,
fd_vs_gmacs.png, fd_vs_<swept key>.png, samples.png, and runs/<arm>-s<seed>/ (ordinary training runs).
Exit codes: 0 done, 1 a bad study or a failed run (one line each), 130 Ctrl-C.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from archbench.console import fail, interruptible, one_line, setup_logging

PROGRAM = "archbench.study"


def _doc() -> str:
    from archbench.study.spec import study_names

    return __doc__.format(presets=", ".join(study_names()) or "none found")


def format_plan(jobs: list) -> str:
    lines = ["| run | backbone | params | GMACs | steps | evaluations | run_dir |", "|---|---|---:|---:|---:|---|---|"]
    for job in jobs:
        lines.append(f"| {job.run_name} | {job.backbone} | {job.params:,} | {job.gmacs:.4f} | {job.steps} | "
                     f"{','.join(map(str, job.eval_steps))} | {job.run_dir} |")
    return "\n".join(lines)


@interruptible(PROGRAM)
def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or any(a in ("-h", "--help") for a in args):
        print(_doc())
        return 0 if args else 1
    setup_logging()
    from archbench.study.runner import plan_study, run_study
    from archbench.study.spec import StudyError, load_study

    show_plan = "--plan" in args
    args = [a for a in args if a != "--plan"]
    flags = [a for a in args if a.startswith("-")]
    if flags:
        return fail(PROGRAM, f"unknown option {flags[0]!r}; options are --plan and -h, the rest is key=value")
    try:
        spec = load_study(args[0], args[1:])
        if show_plan:
            print(format_plan(plan_study(spec, measure=False)[1]))
            return 0
        result = run_study(spec)
    except (StudyError, OSError) as exc:
        return fail(PROGRAM, one_line(exc))
    for item in result.failed:
        print(f"{PROGRAM}: run {item['run']} {item['status']}: {one_line(item.get('error', ''))}", file=sys.stderr)
    print(f"study {spec['name']}: {len(result.rows)} result rows; wrote {', '.join(p.name for p in result.outputs)} "
          f"in {result.study_dir}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
