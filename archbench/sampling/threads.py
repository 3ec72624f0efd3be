"""``threads=auto`` for sampling: settle the thread count on a few forward passes like the ones sampling runs."""

from __future__ import annotations

import logging

import torch
from torch import nn

from archbench.console.threads import choose_threads, parse_threads, set_threads

log = logging.getLogger("archbench.sample")


def settle_threads(setting: str | int, net: nn.Module, shape: tuple[int, int, int], batch: int,
                   num_classes: int, device: torch.device) -> int | None:
    """Choose (``auto``) or set the CPU thread count for sampling ``net``; returns it (None off CPU with auto,
    where the model's work is not on the CPU's threads).  The probe is one forward pass on a ``batch`` of noise,
    what every sampler step does."""
    setting = parse_threads(setting)
    if device.type != "cpu":
        if setting != "auto":
            set_threads(int(setting))
            return int(setting)
        return None
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=generator)
    t = torch.full((batch,), 500, dtype=torch.long)
    y = torch.zeros(batch, dtype=torch.long) if num_classes > 0 else None
    if hasattr(net, "example_condition"):  # captions: a batch of caption tokens
        y = net.example_condition(batch, device)

    def probe() -> None:
        with torch.no_grad():
            net(x, t, y)

    return choose_threads(setting, probe, announce=log.info)
