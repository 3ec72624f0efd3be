"""``python -m archbench.ci``: see :mod:`archbench.commands.ci`, where every command lives."""

import sys

from archbench.commands.ci import main

if __name__ == "__main__":
    sys.exit(main())
