"""``python -m archbench.data ...``: see ``archbench.data.cli``."""

from archbench.data.cli import main

raise SystemExit(main())
