"""Shared test settings: small, deterministic, CPU-only."""

import os

import torch
from hypothesis import settings

from backbones.registry import list_backbones

# One thread per test process when pytest-xdist runs several side by side (more busy threads than cores make
# OpenMP spin), two otherwise.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))
# Training and sampling in the tests take this fixed count instead of timing thread counts (threads=auto does
# that, unless OMP_NUM_THREADS pins the count): fewer steps at two threads, which spin on a busy machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# From the registry's tags, so a new family's tiny member (or a new variant) is tested without editing a list.
# The tiny member of each family (dis_t2, dit_t2, uvit_t2, unet_t today).
TINY_BACKBONES = list_backbones(tag="tiny")
# One axis changed from a tiny member: scan order, mixer, hybrid, skeleton, patch size.
TINY_VARIANTS = list_backbones(tag="tiny_variant")
