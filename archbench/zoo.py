"""``python -m archbench.zoo``: the command line of :mod:`archbench.measure.zoo`."""

import sys

from archbench.measure.zoo import main

if __name__ == "__main__":
    sys.exit(main())
