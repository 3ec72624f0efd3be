"""Exact denoisers for Gaussian data x_0 ~ N(mu, s^2) (per element), to test samplers without training
(DDPM's parameterisations, flow's velocity, EDM's preconditioned F).

For x_t = a x_0 + b eps: E[x_0|x_t] = mu + a s^2 (x_t - a mu) / (a^2 s^2 + b^2),
E[eps|x_t] = b (x_t - a mu) / (a^2 s^2 + b^2), Var[x_0|x_t] = s^2 b^2 / (a^2 s^2 + b^2).
A sampler driven by these must reproduce N(mu, s^2) up to its discretisation error.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .edm import EDM
from .gaussian import GaussianDiffusion

Model = Callable[..., torch.Tensor]


def gaussian_posterior(
    xt: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mu: float, s: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(E[x_0|x_t], E[eps|x_t], Var[x_0|x_t]); finite at b = 0 and at a = 0."""
    denom = a**2 * s**2 + b**2
    resid = xt - a * mu
    return mu + a * s**2 * resid / denom, b * resid / denom, s**2 * b**2 / denom


def gaussian_oracle(diffusion: GaussianDiffusion, mu: float, s: float) -> Model:
    """Optimal backbone for ``diffusion`` (its prediction type and, with learn_sigma, the exact
    reverse-step variance as a learned-range value). Build it from the schedule you will sample
    with (e.g. ``diffusion.respaced(steps)``): the optimal variance value depends on the spacing.
    It is called with original timesteps, which are mapped back through ``timestep_map``.
    """
    sched = diffusion.schedule

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        tmap = sched.timestep_map.to(t.device)
        idx = torch.searchsorted(tmap, t.round().long())
        view = (-1,) + (1,) * (x.ndim - 1)

        def at(arr: torch.Tensor) -> torch.Tensor:
            return arr.to(t.device)[idx].to(x.dtype).view(view)

        a, b = at(sched.sqrt_alphas_cumprod), at(sched.sqrt_one_minus_alphas_cumprod)
        x0_hat, eps_hat, var_x0 = gaussian_posterior(x, a, b, mu, s)
        if diffusion.prediction == "eps":
            pred = eps_hat
        elif diffusion.prediction == "x0":
            pred = x0_hat
        else:
            pred = a * eps_hat - b * x0_hat
        if not diffusion.learn_sigma:
            return pred
        # Exact reverse variance = posterior variance + coef1^2 Var[x_0|x_t]; as a log-linear
        # interpolation value between the clipped posterior log-variance and log beta.
        true_var = at(sched.posterior_variance) + at(sched.posterior_mean_coef1) ** 2 * var_x0
        lo, hi = at(sched.posterior_log_variance_clipped), at(torch.log(sched.betas))
        frac = (torch.log(true_var.clamp(min=1e-30)) - lo) / (hi - lo).clamp(min=1e-12)
        var_value = (2.0 * frac - 1.0).clamp(-1.0, 1.0).expand_as(pred)
        return torch.cat([pred, var_value], dim=1)

    return model


def flow_oracle(mu: float, s: float, time_scale: float = 1000.0, learn_sigma: bool = False) -> Model:
    """Optimal velocity E[eps - x_0 | x_t] for the linear interpolant x_t = (1-t) x_0 + t eps."""

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        tt = (t / time_scale).to(x.dtype).view((-1,) + (1,) * (x.ndim - 1))
        x0_hat, eps_hat, _ = gaussian_posterior(x, 1.0 - tt, tt, mu, s)
        vel = eps_hat - x0_hat
        return torch.cat([vel, torch.zeros_like(vel)], dim=1) if learn_sigma else vel

    return model


def edm_oracle(edm: EDM, mu: float, s: float) -> Model:
    """The backbone F whose preconditioned denoiser is exact for x = x_0 + sigma eps: D = mu + s^2 (x - mu)/(s^2 +
    sigma^2). It reads sigma back from its time input (T ln(sigma) / 4) and x from its scaled input c_in x."""

    def model(x_in: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.exp(4.0 * t.double() / edm.time_scale).to(x_in.dtype).view((-1,) + (1,) * (x_in.ndim - 1))
        x = x_in / edm.c_in(sigma)
        x0_hat, _, _ = gaussian_posterior(x, torch.ones_like(sigma), sigma, mu, s)
        raw = (x0_hat - edm.c_skip(sigma) * x) / edm.c_out(sigma)
        return torch.cat([raw, torch.zeros_like(raw)], dim=1) if edm.learn_sigma else raw

    return model
