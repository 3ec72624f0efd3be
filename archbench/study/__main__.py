"""``python -m archbench.study``: see :mod:`archbench.commands.study`, where every command lives."""

from archbench.commands.study import main

if __name__ == "__main__":
    raise SystemExit(main())
