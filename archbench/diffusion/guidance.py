"""Classifier-free guidance as a model wrapper, so every sampler gets it for free."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from backbones.layers.guidance import classifier_free_guidance

Model = Callable[..., torch.Tensor]


def guided_model(model: Model, cfg_scale: float, null_class: int, guide_channels: int | None = None) -> Model:
    """Wrap ``model(x, t, y)`` so it returns uncond + s * (cond - uncond) in one batched call.

    The arithmetic lives in the backbone layer (``classifier_free_guidance``) so that
    ``model.forward_with_cfg`` and the samplers guide identically.
    """

    def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier-free guidance needs class labels y")
        return classifier_free_guidance(
            lambda *args: model(*args, **kwargs), x, t, y, cfg_scale,
            null_class=null_class, guide_channels=guide_channels,
        )

    return guided
