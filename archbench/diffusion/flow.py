"""Flow matching with the linear (rectified-flow) interpolant, and its ODE samplers.

Convention: t in [0, 1] with **t = 0 data and t = 1 noise**, x_t = (1 - t) x_0 + t eps, so the
velocity dx_t/dt = eps - x_0 and sampling integrates from t = 1 down to t = 0.
The backbone is called with ``t * time_scale`` (default 1000, as float32) so the timestep
embedding sees the same range as discrete diffusion's 0..T-1 and one backbone serves both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._sampling import initial_noise, progress_bar
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


FLOW_PREDICTIONS = ("velocity",)


@dataclass(frozen=True)
class FlowSettings:
    """The keys of ``diffusion=flow``. ``T`` only scales the time fed to the backbone (t * T), so both objectives
    share one timestep-embedding range."""

    prediction: str | None = None
    learn_sigma: bool = True
    T: int = 1000

    def __post_init__(self) -> None:
        check_choice("prediction for flow", self.prediction or "velocity", FLOW_PREDICTIONS)
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")


@dataclass(frozen=True, eq=False)
class FlowObjective(Objective):
    """Flow matching: uniform t in [0, 1]; Euler or Heun on the ODE."""

    flow: FlowMatching
    name = "flow"
    samplers = ("euler", "heun")
    default_sampler = "euler"
    Settings = FlowSettings

    @classmethod
    def from_settings(cls, settings: FlowSettings) -> FlowObjective:
        return cls(FlowMatching(learn_sigma=settings.learn_sigma, time_scale=float(settings.T)))

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
        self, sampler: str, model: Model, shape: tuple[int, ...], *, steps: int | None, **common: Any
    ) -> torch.Tensor:
        """``steps=None``: 50 ODE steps."""
        fn = euler_sample if sampler == "euler" else heun_sample
        return fn(model, shape, flow=self.flow, steps=50 if steps is None else steps, **common)
