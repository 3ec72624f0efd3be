"""``python -m archbench.report``: the command line of :mod:`archbench.measure.report`."""

import sys

from archbench.measure.report import main

if __name__ == "__main__":
    sys.exit(main())
