"""``python -m archbench.bench scan|mixers|step``: micro-benchmarks.

``scan`` and ``mixers`` live in :mod:`archbench.measure.bench`; ``step`` (a whole training step, which needs
the diffusion objective) in :mod:`archbench.training.step_bench`.
"""

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "step":
        from archbench.training.step_bench import main as step_main

        return step_main(args[1:])
    from archbench.measure.bench import main as measure_main

    return measure_main(args)


if __name__ == "__main__":
    sys.exit(main())
