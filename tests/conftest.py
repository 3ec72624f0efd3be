"""Shared test settings: small, deterministic, CPU-only."""

import os

import torch
from hypothesis import settings

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TINY_BACKBONES = ["dis_t2", "dit_t2", "uvit_t2", "uvit_bimamba_t2", "unet_t"]
# One axis changed from a tiny family: scan order, mixer, hybrid, skeleton.
TINY_VARIANTS = ["dis_zigzag_t2", "dis_cross_t2", "dis_alternate_t2", "dis_hybrid_t2", "dis_mamba2_t2",
                 "dit_bimamba_t2"]
