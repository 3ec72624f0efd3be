"""Sampling: drawing images from a network with a diffusion objective, and writing them as grids and arrays.

Used by the training loop (preview grids from the EMA weights), by ``python -m archbench.sample`` (grids, and
sharded, resumable ``.npz`` sets for FID-50k in ``shards``) and by the evaluation stage. Depends on the
diffusion core only.
"""

from archbench.sampling.grid import (
    chunk_generator,
    generate,
    grid_columns,
    grid_labels,
    save_grid,
    save_npz,
)
from archbench.sampling.npz import iter_npz_rows, npz_array_info, write_npz
from archbench.sampling.shards import SampleSetSpec, ShardError, write_sample_set

__all__ = [
    "SampleSetSpec",
    "ShardError",
    "chunk_generator",
    "generate",
    "grid_columns",
    "grid_labels",
    "iter_npz_rows",
    "npz_array_info",
    "save_grid",
    "save_npz",
    "write_npz",
    "write_sample_set",
]
