"""``python -m archbench.report``: see :mod:`archbench.commands.report`, where every command lives."""

import sys

from archbench.commands.report import main

if __name__ == "__main__":
    sys.exit(main())
