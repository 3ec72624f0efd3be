"""Training: config composition, the loop, optimiser and schedule, EMA, checkpoints, signals, RNG state,
the data order, per-example noise, logging and distributed set-up.

The one entry point is :func:`archbench.training.loop.train`, whose argument is the documented config
(``python -m archbench.train --cfg`` prints it).
"""
