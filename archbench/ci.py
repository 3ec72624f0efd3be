"""``python -m archbench.ci fid``: the command line of :mod:`archbench.evaluation.regression`."""

import sys

from archbench.evaluation.regression import main

if __name__ == "__main__":
    sys.exit(main())
