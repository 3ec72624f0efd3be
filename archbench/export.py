"""``python -m archbench.export``: see :mod:`archbench.commands.export`, where every command lives."""

import sys

from archbench.commands.export import main

if __name__ == "__main__":
    sys.exit(main())
