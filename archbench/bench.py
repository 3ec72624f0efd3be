"""``python -m archbench.bench``: the command line of :mod:`archbench.measure.bench`."""

import sys

from archbench.measure.bench import main

if __name__ == "__main__":
    sys.exit(main())
