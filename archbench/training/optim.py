"""The optimiser and learning-rate schedule every backbone trains with (AdamW, linear warmup, then flat or cosine)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("constant", "cosine")


class WarmupSchedule:
    """LR multiplier for optimiser step ``s`` (0-based): ``(s + 1) / warmup`` during warmup, then flat or cosine.

    A callable object rather than a lambda so ``LambdaLR.state_dict`` stores its (primitive) fields and a
    checkpoint records the schedule it was trained with.
    """

    def __init__(self, warmup_steps: int, total_steps: int, kind: str = "constant", min_ratio: float = 0.0) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown lr_schedule {kind!r}; valid choices: {', '.join(SCHEDULES)}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.kind = kind
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW over all parameters (DiT and U-ViT apply weight decay uniformly); fused kernels on CUDA."""
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"train.lr must be a positive finite number, got {lr}")
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, kind: str, lr: float, min_lr: float
) -> LambdaLR:
    return LambdaLR(optimizer, WarmupSchedule(warmup_steps, total_steps, kind, min_lr / lr if lr else 0.0))
