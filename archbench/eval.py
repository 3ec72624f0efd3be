"""``python -m archbench.eval``: see :mod:`archbench.commands.eval`, where every command lives."""

import sys

from archbench.commands.eval import main

if __name__ == "__main__":
    sys.exit(main())
