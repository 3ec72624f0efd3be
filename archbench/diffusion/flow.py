"""Flow matching with the linear (rectified-flow) interpolant, its ODE samplers and an SDE sampler.

Convention: t in [0, 1] with **t = 0 data and t = 1 noise**, x_t = (1 - t) x_0 + t eps, so the
velocity dx_t/dt = eps - x_0 and sampling integrates from t = 1 down to t = 0.
The backbone is called with ``t * time_scale`` (default 1000, as float32) so the timestep
embedding sees the same range as discrete diffusion's 0..T-1 and one backbone serves both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._sampling import initial_noise, progress_bar, randn
from .gaussian import check_choice
from .likelihood import mean_flat
from .objective import Objective

Model = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class FlowMatching:
    """Stateless flow-matching math. ``learn_sigma`` backbones return 2C channels; the extra C are
    ignored (but kept in the graph with zero weight, so DDP finds a gradient for every parameter)."""

    learn_sigma: bool = True
    time_scale: float = 1000.0

    def interpolate(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x_0 + t eps for t [B] in [0, 1]."""
        t = t.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        return (1.0 - t) * x0 + t * noise

    @staticmethod
    def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """d x_t / dt of the linear interpolant."""
        return noise - x0

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() * self.time_scale

    def split_output(self, output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(velocity channels, unused extra channels or None)."""
        expected = 2 * channels if self.learn_sigma else channels
        if output.shape[1] != expected:
            raise ValueError(f"expected {expected} output channels, got {output.shape[1]}")
        if self.learn_sigma:
            return output[:, :channels], output[:, channels:]
        return output, None

    def velocity(
        self, model: Model, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict[str, Any] | None = None
    ) -> torch.Tensor:
        """Predicted velocity at (x, t), t [B] in [0, 1]."""
        output = model(x, self.model_timesteps(t), **(model_kwargs or {}))
        return self.split_output(output, x.shape[1])[0]

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example ``loss`` = ``mse`` [B] between predicted and true velocity."""
        if noise is None:
            noise = torch.randn_like(x0)
        xt = self.interpolate(x0, t, noise)
        output = model(xt, self.model_timesteps(t), **(model_kwargs or {}))
        pred, extra = self.split_output(output, x0.shape[1])
        mse = mean_flat((self.velocity_target(x0, noise) - pred) ** 2)
        loss = mse if extra is None else mse + 0.0 * mean_flat(extra)
        return {"loss": loss, "mse": mse}


def _time_grid(steps: int, device: torch.device) -> torch.Tensor:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)


def euler_sample(
    model: Model,
    shape: tuple[int, ...],
    *,
    flow: FlowMatching,
    steps: int = 50,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    model_kwargs: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Explicit Euler on the probability-flow ODE from t=1 (noise) to t=0; ``steps`` model calls."""
    x = initial_noise(shape, generator=generator, noise=noise, device=device)
    return _integrate(model, x, flow, steps, model_kwargs, progress, corrector=False)


def heun_sample(
    model: Model,
    shape: tuple[int, ...],
    *,
    flow: FlowMatching,
    steps: int = 50,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    model_kwargs: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Heun's second-order method (trapezoidal corrector), t=1 -> 0; 2 model calls per step.

    The corrector is applied on the last step too: unlike an eps-model, a velocity model is
    well defined at t = 0.
    """
    x = initial_noise(shape, generator=generator, noise=noise, device=device)
    return _integrate(model, x, flow, steps, model_kwargs, progress, corrector=True)


def _integrate(
    model: Model,
    x: torch.Tensor,
    flow: FlowMatching,
    steps: int,
    model_kwargs: dict[str, Any] | None,
    progress: bool,
    corrector: bool,
) -> torch.Tensor:
    """Walk the uniform time grid 1 -> 0 with Euler steps, each corrected by Heun's trapezoid if asked."""
    ts = _time_grid(steps, x.device)
    batch = x.shape[0]
    for i in progress_bar(range(steps), progress):
        dt = (ts[i + 1] - ts[i]).item()
        velocity = flow.velocity(model, x, torch.full((batch,), float(ts[i]), device=x.device), model_kwargs)
        if corrector:
            t_next = torch.full((batch,), float(ts[i + 1]), device=x.device)
            velocity_next = flow.velocity(model, x + dt * velocity, t_next, model_kwargs)
            velocity = 0.5 * (velocity + velocity_next)
        x = x + dt * velocity
    return x


def score_from_velocity(x: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """grad log p_t(x) of the linear interpolant from its velocity: E[eps | x_t] = x_t + (1 - t) v, score = -E[eps]/t.

    ``t`` broadcasts against ``x`` and must be > 0 (at t = 0 the data distribution has no smooth score).
    """
    return -(x + (1.0 - t) * velocity) / t


def sde_sample(
    model: Model,
    shape: tuple[int, ...],
    *,
    flow: FlowMatching,
    steps: int = 50,
    diffusion_norm: float = 1.0,
    last_step_size: float = 0.04,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    model_kwargs: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Euler-Maruyama on the reverse-time SDE with the flow's marginals, SiT's default choices.

    With u = 1 - t running from noise to data, dx = [-v + w s] du + sqrt(2 w) dW, where v is the velocity, s the
    score from it (:func:`score_from_velocity`) and w(t) = ``diffusion_norm`` * t the diffusion coefficient
    (SiT's ``sigma`` form: proportional to the noise level, so it vanishes at the data). ``steps - 1`` stochastic
    steps cover t = 1 .. ``last_step_size`` uniformly; the final step to t = 0 takes the drift only (SiT's
    ``Mean`` last step), so the sample ends on the mean and carries no fresh noise. ``steps`` model calls.
    """
    if steps < 2:
        raise ValueError(f"the SDE sampler needs steps >= 2 (steps - 1 stochastic steps and a mean step), got {steps}")
    if not 0.0 < last_step_size < 1.0:
        raise ValueError(f"last_step_size must lie in (0, 1), got {last_step_size}")
    if diffusion_norm < 0:
        raise ValueError(f"diffusion_norm must be >= 0, got {diffusion_norm}")
    x = initial_noise(shape, generator=generator, noise=noise, device=device)
    ts = torch.linspace(1.0, last_step_size, steps, dtype=torch.float64).tolist()
    batch = x.shape[0]

    def drift(x: torch.Tensor, t: float) -> torch.Tensor:
        velocity = flow.velocity(model, x, torch.full((batch,), t, device=x.device), model_kwargs)
        return -velocity + diffusion_norm * t * score_from_velocity(x, torch.tensor(t, dtype=x.dtype), velocity)

    for i in progress_bar(range(steps - 1), progress):
        du = ts[i] - ts[i + 1]
        z = randn(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
        x = x + drift(x, ts[i]) * du + math.sqrt(2.0 * diffusion_norm * ts[i] * du) * z
    return x + drift(x, ts[-1]) * last_step_size


FLOW_PREDICTIONS = ("velocity",)


@dataclass(frozen=True)
class FlowSettings:
    """The keys of ``diffusion=flow``. ``T`` only scales the time fed to the backbone (t * T), so both objectives
    share one timestep-embedding range; ``sde_norm`` and ``sde_last_step`` are the SDE sampler's defaults."""

    prediction: str | None = None
    learn_sigma: bool = True
    T: int = 1000
    sde_norm: float = 1.0
    sde_last_step: float = 0.04

    def __post_init__(self) -> None:
        check_choice("prediction for flow", self.prediction or "velocity", FLOW_PREDICTIONS)
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")
        if self.sde_norm < 0 or not 0 < self.sde_last_step < 1:
            raise ValueError(f"sde_norm must be >= 0 and sde_last_step in (0, 1), got {self.sde_norm}, "
                             f"{self.sde_last_step}")


@dataclass(frozen=True, eq=False)
class FlowObjective(Objective):
    """Flow matching: uniform t in [0, 1]; Euler or Heun on the ODE, Euler-Maruyama on the SDE."""

    flow: FlowMatching
    sde_norm: float = 1.0
    sde_last_step: float = 0.04
    name = "flow"
    samplers = ("euler", "heun", "sde")
    default_sampler = "euler"
    Settings = FlowSettings

    @classmethod
    def from_settings(cls, settings: FlowSettings) -> FlowObjective:
        flow = FlowMatching(learn_sigma=settings.learn_sigma, time_scale=float(settings.T))
        return cls(flow, sde_norm=settings.sde_norm, sde_last_step=settings.sde_last_step)

    def draw_t(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        return torch.rand((batch,), generator=generator, device=device)

    def losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        return self.flow.training_losses(model, x0, t, noise, model_kwargs)

    def _run_sampler(
        self,
        sampler: str,
        model: Model,
        shape: tuple[int, ...],
        *,
        steps: int | None,
        diffusion_norm: float | None = None,
        last_step_size: float | None = None,
        **common: Any,
    ) -> torch.Tensor:
        """``steps=None``: 50 steps. ``diffusion_norm`` / ``last_step_size`` (the SDE's) default to the settings."""
        steps = 50 if steps is None else int(steps)
        if sampler == "sde":
            norm = self.sde_norm if diffusion_norm is None else diffusion_norm
            last = self.sde_last_step if last_step_size is None else last_step_size
            return sde_sample(model, shape, flow=self.flow, steps=steps, diffusion_norm=norm, last_step_size=last,
                              **common)
        fn = euler_sample if sampler == "euler" else heun_sample
        return fn(model, shape, flow=self.flow, steps=steps, **common)
