"""Where datasets live by default; one place so every loader and the docs agree."""

from __future__ import annotations

import os
from pathlib import Path

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the four IDX files."""

DATA_ROOT_ENV = "ARCHBENCH_DATA"


def default_data_root() -> Path:
    """Cache folder for datasets fetched by torchvision: ``$ARCHBENCH_DATA`` or ``~/.cache/archbench/data``."""
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "archbench" / "data"
