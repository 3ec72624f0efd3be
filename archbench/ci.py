"""``python -m archbench.ci fid``: the command line of :mod:`archbench.study.regression`."""

import sys

from archbench.study.regression import main

if __name__ == "__main__":
    sys.exit(main())
