"""Classifier-free guidance, written once for every backbone."""

from __future__ import annotations

import torch


def classifier_free_guidance(
    model,
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    cfg_scale: float,
    *,
    null_class: int | None = None,
    guide_channels: int | None = None,
) -> torch.Tensor:
    """``uncond + s * (cond - uncond)`` on the prediction channels, from one doubled batch.

    Only the first ``guide_channels`` (default: the input channel count, i.e. the
    eps/v/x0 part) are guided; learned-variance channels come from the conditional
    half, because extrapolating a variance interpolation value makes no sense.
    """
    if null_class is None:
        null_class = getattr(model, "null_class", None)
    if null_class is None:
        raise ValueError("classifier-free guidance needs a model with a null class (class_dropout_prob > 0)")
    if guide_channels is None:
        guide_channels = x.shape[1]
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_class)]))
    cond, uncond = out.chunk(2)
    guided = uncond[:, :guide_channels] + cfg_scale * (cond[:, :guide_channels] - uncond[:, :guide_channels])
    return torch.cat([guided, cond[:, guide_channels:]], dim=1)
