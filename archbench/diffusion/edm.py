"""EDM (Karras et al., 2022): a preconditioned denoiser, log-normal training noise levels and the rho schedule.

Convention: x = x_0 + sigma * eps. The backbone F sees ``c_in(sigma) * x`` and ``T * c_noise(sigma)`` (EDM's
c_noise = ln(sigma)/4, scaled by the same ``T`` that flow uses, so a timestep embedding built for 0..T resolves
the noise level), and the denoiser is D(x; sigma) = c_skip x + c_out F. With sigma_data the data's standard
deviation, c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2)
make both F's input and its regression target unit-variance at every noise level. The loss weight
lambda = (sigma^2 + sd^2) / (sigma sd)^2 equals 1 / c_out^2, so lambda |D - x_0|^2 = |F - target|^2 with
target = (x_0 - c_skip x) / c_out: the loss is computed in that form, which stays well conditioned at tiny sigma.
A learn-sigma backbone's extra channels are ignored (kept in the graph with zero weight, as flow does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ._sampling import initial_noise, progress_bar, randn
from .gaussian import Model
from .likelihood import mean_flat
from .objective import Objective


@dataclass(frozen=True)
class EDM:
    """Stateless EDM math: preconditioning, training noise levels, the denoiser and its loss."""

    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2
    learn_sigma: bool = True
    time_scale: float = 1000.0

    # ----- preconditioning (EDM's Table 1, "ours") ---------------------------------------------------------
    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1.0 / (sigma**2 + self.sigma_data**2).sqrt()

    @staticmethod
    def c_noise(sigma: torch.Tensor) -> torch.Tensor:
        return sigma.log() / 4.0

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, the weight that makes the effective F loss unit."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def model_timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        """What the backbone is conditioned on: T * c_noise(sigma), float32 [B]."""
        return (self.time_scale * self.c_noise(sigma.double())).float()

    # ----- training --------------------------------------------------------------------------------------
    def draw_sigma(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Training noise levels: ln(sigma) ~ N(P_mean, P_std^2)."""
        return (self.P_mean + self.P_std * torch.randn((batch,), generator=generator, device=device)).exp()

    def _raw(self, model: Model, x: torch.Tensor, sigma: torch.Tensor, model_kwargs: dict[str, Any] | None):
        """F's mean channels (and extra channels or None) for noisy ``x`` at per-example ``sigma`` [B]."""
        s = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        output = model(self.c_in(s) * x, self.model_timesteps(sigma), **(model_kwargs or {}))
        channels = x.shape[1]
        expected = 2 * channels if self.learn_sigma else channels
        if output.shape[1] != expected:
            raise ValueError(f"expected {expected} output channels, got {output.shape[1]}")
        return (output[:, :channels], output[:, channels:]) if self.learn_sigma else (output, None)

    def denoise(
        self, model: Model, x: torch.Tensor, sigma: torch.Tensor, model_kwargs: dict[str, Any] | None = None
    ) -> torch.Tensor:
        """D(x; sigma) = c_skip x + c_out F(c_in x, T c_noise), for per-example ``sigma`` [B] > 0."""
        raw, _ = self._raw(model, x, sigma, model_kwargs)
        s = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return self.c_skip(s) * x + self.c_out(s) * raw.to(x.dtype)

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        sigma: torch.Tensor,
        noise: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example ``loss`` = lambda(sigma) |D - x_0|^2 (mean over elements, computed as |F - target|^2) and
        ``mse`` = |D - x_0|^2, the unweighted denoising error."""
        s = sigma.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        x = x0 + s * noise
        raw, extra = self._raw(model, x, sigma, model_kwargs)
        c_skip, c_out = self.c_skip(s), self.c_out(s)
        target = (x0 - c_skip * x) / c_out
        loss = mean_flat((raw - target) ** 2)
        mse = mean_flat((c_skip * x + c_out * raw - x0) ** 2).detach()
        if extra is not None:
            loss = loss + 0.0 * mean_flat(extra)
        return {"loss": loss, "mse": mse}


def edm_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> list[float]:
    """The rho schedule: ``steps`` levels from sigma_max to sigma_min, evenly spaced in sigma^(1/rho), then 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max or rho <= 0:
        raise ValueError(f"need 0 < sigma_min < sigma_max and rho > 0, got {sigma_min}, {sigma_max}, {rho}")
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    ramp = [i / (steps - 1) if steps > 1 else 0.0 for i in range(steps)]
    return [(hi + r * (lo - hi)) ** rho for r in ramp] + [0.0]


def edm_sample(
    model: Model,
    shape: tuple[int, ...],
    *,
    edm: EDM,
    steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
    second_order: bool = True,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    model_kwargs: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """EDM's sampler (their Algorithm 2; ``S_churn=0`` is the deterministic Algorithm 1).

    Walk the rho schedule; at levels in [S_tmin, S_tmax] first raise the noise to sigma_hat = (1 + gamma) sigma with
    gamma = min(S_churn / steps, sqrt(2) - 1), adding fresh noise of variance (sigma_hat^2 - sigma^2) S_noise^2; then
    an Euler step of dx/dsigma = (x - D(x; sigma)) / sigma to the next level, corrected by Heun's trapezoid except
    on the step to sigma = 0 (``second_order=False``: Euler only). Heun costs 2 * steps - 1 model calls.
    """
    if S_churn < 0 or S_noise <= 0:
        raise ValueError(f"need S_churn >= 0 and S_noise > 0, got {S_churn}, {S_noise}")
    sigmas = edm_sigmas(int(steps), sigma_min, sigma_max, rho)
    x = initial_noise(shape, generator=generator, noise=noise, device=device) * sigmas[0]
    batch = x.shape[0]

    def slope(x: torch.Tensor, sigma: float) -> torch.Tensor:
        level = torch.full((batch,), sigma, device=x.device)
        return (x - edm.denoise(model, x, level, model_kwargs)) / sigma

    for i in progress_bar(range(len(sigmas) - 1), progress):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / steps, math.sqrt(2.0) - 1.0) if S_tmin <= sigma <= S_tmax else 0.0
        sigma_hat = sigma * (1.0 + gamma)
        if gamma > 0:
            z = randn(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * S_noise * z
        d = slope(x, sigma_hat)
        x_next = x + (sigma_next - sigma_hat) * d
        if second_order and sigma_next > 0:
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (d + slope(x_next, sigma_next))
        x = x_next
    return x


@dataclass(frozen=True)
class EDMSettings:
    """The keys of ``diffusion=edm``: training (sigma_data, P_mean, P_std), the rho schedule the samplers walk, and
    the stochastic sampler's churn (EDM's ImageNet-64 values). ``T`` scales c_noise for the backbone."""

    learn_sigma: bool = True
    T: int = 1000
    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    S_churn: float = 40.0
    S_tmin: float = 0.05
    S_tmax: float = 50.0
    S_noise: float = 1.003

    def __post_init__(self) -> None:
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")
        if not self.sigma_data > 0 or not self.P_std > 0:
            raise ValueError(f"sigma_data and P_std must be > 0, got {self.sigma_data}, {self.P_std}")
        edm_sigmas(2, self.sigma_min, self.sigma_max, self.rho)  # validates the schedule
        if self.S_churn < 0 or not self.S_noise > 0 or self.S_tmin > self.S_tmax:
            raise ValueError(
                f"need S_churn >= 0, S_noise > 0 and S_tmin <= S_tmax, got {self.S_churn}, {self.S_noise}, "
                f"{self.S_tmin}, {self.S_tmax}"
            )


@dataclass(frozen=True, eq=False)
class EDMObjective(Objective):
    """EDM: log-normal training sigmas, weighted denoising loss; Heun (deterministic), stochastic or Euler sampling."""

    edm: EDM
    settings: EDMSettings
    name = "edm"
    samplers = ("heun", "stochastic", "euler")
    default_sampler = "heun"
    Settings = EDMSettings

    @classmethod
    def from_settings(cls, settings: EDMSettings) -> EDMObjective:
        edm = EDM(settings.sigma_data, settings.P_mean, settings.P_std, settings.learn_sigma, float(settings.T))
        return cls(edm, settings)

    def draw_t(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Noise levels sigma [B] (EDM's time is its noise level)."""
        return self.edm.draw_sigma(batch, generator, device)

    def losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        return self.edm.training_losses(model, x0, t, noise, model_kwargs)

    def _run_sampler(
        self, sampler: str, model: Model, shape: tuple[int, ...], *, steps: int | str | None, **options: Any
    ) -> torch.Tensor:
        """``steps=None``: EDM's 18 levels. ``heun`` ignores the churn settings; ``stochastic`` uses them (each may
        be passed as an option); ``euler`` is first order."""
        s = self.settings
        if isinstance(steps, str) and not steps.isdigit():
            raise ValueError(f"diffusion=edm takes an integer number of noise levels as steps, got {steps!r}")
        schedule = {"sigma_min": s.sigma_min, "sigma_max": s.sigma_max, "rho": s.rho}
        churn = {"S_churn": 0.0}
        if sampler == "stochastic":
            churn = {"S_churn": s.S_churn, "S_tmin": s.S_tmin, "S_tmax": s.S_tmax, "S_noise": s.S_noise}
        settings = {**schedule, **churn, **{k: options.pop(k) for k in list(options) if k in (*schedule, *churn)}}
        return edm_sample(
            model, shape, edm=self.edm, steps=18 if steps is None else int(steps), second_order=sampler != "euler",
            **settings, **options,
        )
