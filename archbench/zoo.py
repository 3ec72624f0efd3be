"""``python -m archbench.zoo``: see :mod:`archbench.commands.zoo`, where every command lives."""

import sys

from archbench.commands.zoo import main

if __name__ == "__main__":
    sys.exit(main())
