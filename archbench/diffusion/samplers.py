"""Samplers for discrete Gaussian diffusion: DDPM ancestral, DDIM (+ inversion), DPM-Solver++(2M).

All take the full-length :class:`GaussianDiffusion` and respace it to ``steps`` themselves
(``int`` = evenly spaced including 0 and T-1, or any :func:`space_timesteps` string such as
``"ddim50"``); the model is always conditioned on original timesteps. Randomness comes only
from ``generator``/``noise``, so a seeded generator makes every sampler reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ._sampling import initial_noise, progress_bar, randn
from .gaussian import GaussianDiffusion, Model, PMeanVar, extract
from .guidance import guided_model

__all__ = ["ddim_invert", "ddim_sample", "ddim_step", "ddpm_sample", "dpmpp_2m_sample", "guided_model"]

Steps = int | str | Iterable[int] | None


def _index(i: int, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), i, dtype=torch.long, device=device)


def ddpm_sample(
    model: Model,
    shape: tuple[int, ...],
    *,
    diffusion: GaussianDiffusion,
    steps: Steps = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = False,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling x_{t-1} ~ p(x_{t-1} | x_t) with the model's (learned or fixed) variance."""

    def update(diff: GaussianDiffusion, i: int, t: torch.Tensor, x: torch.Tensor, out: PMeanVar) -> torch.Tensor:
        if i == 0:
            return out.mean  # the last step returns the mean (no noise), as in DDPM
        z = randn(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
        return out.mean + torch.exp(0.5 * out.log_variance) * z

    return _reverse_chain(model, shape, diffusion, steps, update, generator, noise, model_kwargs, clip_denoised,
                          device, progress)


def ddim_step(
    diffusion: GaussianDiffusion,
    pred_x0: torch.Tensor,
    pred_eps: torch.Tensor,
    t: torch.Tensor,
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM update from schedule index t to t-1 given the denoised estimates (eq. 12, Song et al.).

    sigma = eta * sqrt((1 - abar') / (1 - abar)) * sqrt(1 - abar / abar'); eta=1 is DDPM-like.
    """
    s = diffusion.schedule
    abar = extract(s.alphas_cumprod, t, pred_x0)
    abar_prev = extract(s.alphas_cumprod_prev, t, pred_x0)
    sigma = eta * torch.sqrt((1.0 - abar_prev) / (1.0 - abar)) * torch.sqrt(1.0 - abar / abar_prev)
    mean = abar_prev.sqrt() * pred_x0 + torch.sqrt((1.0 - abar_prev - sigma**2).clamp(min=0.0)) * pred_eps
    if eta == 0.0 or noise is None:
        return mean
    return mean + sigma * noise


def ddim_sample(
    model: Model,
    shape: tuple[int, ...],
    *,
    diffusion: GaussianDiffusion,
    steps: Steps = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = False,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM; ``eta=0`` is the deterministic probability-flow discretisation (invertible, see ddim_invert)."""

    def update(diff: GaussianDiffusion, i: int, t: torch.Tensor, x: torch.Tensor, out: PMeanVar) -> torch.Tensor:
        z = None
        if eta != 0.0 and i > 0:
            z = randn(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
        return ddim_step(diff, out.pred_x0, out.pred_eps, t, eta=eta, noise=z)

    return _reverse_chain(model, shape, diffusion, steps, update, generator, noise, model_kwargs, clip_denoised,
                          device, progress)


def ddim_invert(
    model: Model,
    x0: torch.Tensor,
    *,
    diffusion: GaussianDiffusion,
    steps: Steps = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Run the deterministic DDIM ODE forwards, data -> x_T, the mirror image of ``ddim_sample(eta=0)``.

    The data is the abar=1 state that DDIM sampling ends at; each step moves to the next kept
    timestep using the model evaluated at the current state (at the smallest kept timestep for the
    first step, where the data has no timestep of its own). Feeding the result to ``ddim_sample``
    with the same ``steps`` reconstructs ``x0`` up to the O(step) mismatch between the two.
    """
    diff = diffusion.respaced(steps)
    s = diff.schedule
    x = x0
    for i in progress_bar(range(diff.num_timesteps), progress):
        t_eval = _index(max(i - 1, 0), x.shape[0], x.device)
        out = diff.p_mean_variance(model, x, t_eval, model_kwargs, clip_denoised)
        pred_eps = out.pred_eps
        # From the data (i == 0) the clean estimate is the data itself, whatever eps is.
        pred_x0 = x if i == 0 else out.pred_x0
        abar_next = extract(s.alphas_cumprod, _index(i, x.shape[0], x.device), x)
        x = abar_next.sqrt() * pred_x0 + (1.0 - abar_next).sqrt() * pred_eps
    return x


def dpmpp_2m_sample(
    model: Model,
    shape: tuple[int, ...],
    *,
    diffusion: GaussianDiffusion,
    steps: Steps = 20,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = False,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), data-prediction multistep form in lambda = log(alpha/sigma).

    Lower order at the ends, as usual: the first update is first order (no history), so is the
    update into the smallest kept timestep (t=0 has SNR ~1e4, so that lambda jump dwarfs the previous
    one and the 2M extrapolation, weighted 1/(2r) with r = h_prev/h, would overshoot), and the final
    update to sigma=0 is exactly the model's x0 estimate. ``steps`` model calls in total.
    That first-order jump into t=0 bounds the accuracy at very few steps on the linear schedule
    (Gaussian-data oracle, s=0.3: variance 17% low at 25 steps, within 2.5% at 50).
    """
    history: dict[str, Any] = {"x0": None, "h": 0.0}

    def lam(abar: float) -> float:
        return 0.5 * (math.log(abar) - math.log1p(-abar))

    def update(diff: GaussianDiffusion, i: int, t: torch.Tensor, x: torch.Tensor, out: PMeanVar) -> torch.Tensor:
        d = out.pred_x0
        if i == 0:
            return d
        ac = diff.schedule.alphas_cumprod
        a_s, a_t = float(ac[i]), float(ac[i - 1])
        h = lam(a_t) - lam(a_s)
        if history["x0"] is None or i == 1:
            denoised = d
        else:
            r = history["h"] / h
            denoised = (1.0 + 0.5 / r) * d - (0.5 / r) * history["x0"]
        history["x0"], history["h"] = d, h
        sigma_ratio = math.sqrt((1.0 - a_t) / (1.0 - a_s))
        return sigma_ratio * x - math.sqrt(a_t) * math.expm1(-h) * denoised

    return _reverse_chain(model, shape, diffusion, steps, update, generator, noise, model_kwargs, clip_denoised,
                          device, progress)


def _reverse_chain(
    model: Model,
    shape: tuple[int, ...],
    diffusion: GaussianDiffusion,
    steps: Steps,
    update: Callable[[GaussianDiffusion, int, torch.Tensor, torch.Tensor, PMeanVar], torch.Tensor],
    generator: torch.Generator | None,
    noise: torch.Tensor | None,
    model_kwargs: dict[str, Any] | None,
    clip_denoised: bool,
    device: torch.device | str | None,
    progress: bool,
) -> torch.Tensor:
    """The loop every reverse-time sampler shares: respace, draw x_T, then for each kept index from the last
    to 0 evaluate the model once and let ``update(diff, i, t, x, out)`` return the next state."""
    diff = diffusion.respaced(steps)
    x = initial_noise(shape, generator=generator, noise=noise, device=device)
    for i in progress_bar(range(diff.num_timesteps - 1, -1, -1), progress):
        t = _index(i, x.shape[0], x.device)
        x = update(diff, i, t, x, diff.p_mean_variance(model, x, t, model_kwargs, clip_denoised))
    return x
