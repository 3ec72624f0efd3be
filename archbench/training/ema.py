"""Exponential moving average of model weights, the weights every sample and evaluation is drawn from."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy of a model whose parameters track ``decay * ema + (1 - decay) * live`` after each step.

    ``warmup`` caps the decay at ``(1 + n) / (10 + n)`` after ``n`` updates, so a short run is not
    dominated by the random initialisation; published recipes (DiT, U-ViT) use a fixed 0.9999 with no cap.
    Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the live weights into the average (call after each optimiser step)."""
        weight = 1.0 - self.current_decay()
        ema_params = [p for p in self.model.parameters()]
        live_params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(live_params):
            raise ValueError("EMA.update: the model's parameter list differs from the averaged copy")
        torch._foreach_lerp_(ema_params, live_params, weight)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
