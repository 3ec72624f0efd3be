"""Where archbench keeps derived files (feature-network weights, reference statistics) and how it checksums them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ENV = "ARCHBENCH_CACHE"


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``override``, else ``$ARCHBENCH_CACHE``, else ``~/.cache/archbench`` (not created here)."""
    if override is not None:
        return Path(override)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "archbench"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large weight files do not need to fit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
