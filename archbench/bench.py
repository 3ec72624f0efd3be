"""``python -m archbench.bench``: see :mod:`archbench.commands.bench`, where every command lives."""

import sys

from archbench.commands.bench import main

if __name__ == "__main__":
    sys.exit(main())
