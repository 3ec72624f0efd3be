"""Measurement of backbones: the FLOP counter, benchmarks, scaling sweeps, reports and the zoo table.

It reads only the backbone (``backbones``), so every later stage (the CI regression, the study) can
use the same counter for compute matching.
"""
