"""One entry point that hides the objective: training losses with their own t-sampling, and sampling by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ._sampling import randn
from .flow import FlowMatching, euler_sample, heun_sample
from .gaussian import FIXED_VARIANCES, PREDICTIONS, GaussianDiffusion, Model, check_choice
from .guidance import guided_model
from .samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample
from .schedules import SCHEDULES, DiffusionSchedule

OBJECTIVES = ("ddpm", "flow")
GAUSSIAN_SAMPLERS = ("ddpm", "ddim", "dpm++2m")
FLOW_SAMPLERS = ("euler", "heun")
FLOW_PREDICTIONS = ("velocity",)


def _maybe_guided(model: Model, cfg_scale: float, null_class: int | None, model_kwargs: dict[str, Any] | None) -> Model:
    if cfg_scale == 1.0:
        return model
    if null_class is None or not model_kwargs or model_kwargs.get("y") is None:
        raise ValueError("cfg_scale != 1 needs null_class and model_kwargs['y']")
    return guided_model(model, cfg_scale, null_class)


@dataclass(frozen=True, eq=False)
class GaussianObjective:
    """Discrete DDPM objective: uniform integer t in [0, T), sampling by DDPM/DDIM/DPM-Solver++."""

    diffusion: GaussianDiffusion

    @property
    def num_timesteps(self) -> int:
        return self.diffusion.num_timesteps

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example ``loss``/``mse``/``vb`` [B] at uniformly drawn timesteps."""
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator, device=gen_device)
        noise = randn(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
        return self.diffusion.training_losses(model, x0, t.to(x0.device), noise, model_kwargs)

    def sample(
        self,
        model: Model,
        shape: tuple[int, ...],
        *,
        sampler: str = "ddpm",
        steps: int | str | None = None,
        cfg_scale: float = 1.0,
        null_class: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        eta: float = 0.0,
        clip_denoised: bool = False,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Samples x0 [shape]; ``steps=None`` means all T steps (20 for dpm++2m). ``eta`` is DDIM's."""
        check_choice("sampler", sampler, GAUSSIAN_SAMPLERS)
        model = _maybe_guided(model, cfg_scale, null_class, model_kwargs)
        common: dict[str, Any] = dict(
            diffusion=self.diffusion,
            generator=generator,
            noise=noise,
            model_kwargs=model_kwargs,
            clip_denoised=clip_denoised,
            device=device,
            progress=progress,
        )
        if sampler == "ddpm":
            return ddpm_sample(model, shape, steps=steps, **common)
        if sampler == "ddim":
            return ddim_sample(model, shape, steps=steps, eta=eta, **common)
        return dpmpp_2m_sample(model, shape, steps=20 if steps is None else steps, **common)


@dataclass(frozen=True, eq=False)
class FlowObjective:
    """Flow matching: uniform t in [0, 1], sampling by Euler or Heun ODE integration."""

    flow: FlowMatching

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example ``loss``/``mse`` [B] at uniformly drawn t."""
        gen_device = generator.device if generator is not None else x0.device
        t = torch.rand((x0.shape[0],), generator=generator, device=gen_device)
        noise = randn(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
        return self.flow.training_losses(model, x0, t.to(x0.device), noise, model_kwargs)

    def sample(
        self,
        model: Model,
        shape: tuple[int, ...],
        *,
        sampler: str = "euler",
        steps: int | None = None,
        cfg_scale: float = 1.0,
        null_class: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Samples x0 [shape]; ``steps=None`` means 50 ODE steps."""
        check_choice("sampler", sampler, FLOW_SAMPLERS)
        model = _maybe_guided(model, cfg_scale, null_class, model_kwargs)
        fn = euler_sample if sampler == "euler" else heun_sample
        return fn(
            model,
            shape,
            flow=self.flow,
            steps=50 if steps is None else steps,
            generator=generator,
            noise=noise,
            model_kwargs=model_kwargs,
            device=device,
            progress=progress,
        )


def create_diffusion(
    objective: str = "ddpm",
    schedule: str = "linear",
    prediction: str | None = None,
    learn_sigma: bool = True,
    T: int = 1000,
    fixed_variance: str = "large",
) -> GaussianObjective | FlowObjective:
    """Build a training/sampling objective by name; unknown names raise ValueError listing valid ones.

    ``prediction`` defaults to ``"eps"`` for ddpm (choices eps|v|x0) and ``"velocity"`` for flow
    (its only choice). For flow, ``schedule`` is validated but unused, and ``T`` only sets the
    time scale fed to the backbone (t * T), so both objectives share one timestep embedding range.
    """
    check_choice("objective", objective, OBJECTIVES)
    check_choice("schedule", schedule, SCHEDULES)
    check_choice("fixed_variance", fixed_variance, FIXED_VARIANCES)
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if objective == "flow":
        check_choice("prediction for flow", prediction or "velocity", FLOW_PREDICTIONS)
        return FlowObjective(FlowMatching(learn_sigma=learn_sigma, time_scale=float(T)))
    check_choice("prediction", prediction or "eps", PREDICTIONS)
    diffusion = GaussianDiffusion(
        DiffusionSchedule.from_name(schedule, T),
        prediction=prediction or "eps",
        learn_sigma=learn_sigma,
        fixed_variance=fixed_variance,
    )
    return GaussianObjective(diffusion)
