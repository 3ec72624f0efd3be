"""``python -m archbench.data``: see :mod:`archbench.commands.data`, where every command lives."""

from archbench.commands.data import main

if __name__ == "__main__":
    raise SystemExit(main())
