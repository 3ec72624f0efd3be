"""``python -m archbench.train``: see :mod:`archbench.commands.train`, where every command lives."""

import sys

from archbench.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
