"""Sampling: drawing images from a network with a diffusion objective, and writing them as grids and arrays.

Used by the training loop (preview grids from the EMA weights), by ``python -m archbench.sample`` and by
the evaluation stage. Depends on the diffusion core only.
"""

from archbench.sampling.grid import default_sampler, generate, grid_columns, grid_labels, save_grid, save_npz

__all__ = ["default_sampler", "generate", "grid_columns", "grid_labels", "save_grid", "save_npz"]
