"""``python -m archbench.sample``: see :mod:`archbench.commands.sample`, where every command lives."""

import sys

from archbench.commands.sample import main

if __name__ == "__main__":
    sys.exit(main())
