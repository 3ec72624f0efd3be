"""``python -m archbench.eval``: the command line of :mod:`archbench.evaluation.evaluate`."""

import sys

from archbench.evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
