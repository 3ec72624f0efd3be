"""One entry point that hides the objective: training losses with their own t-sampling, and sampling by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ._sampling import randn
from .flow import FlowMatching, euler_sample, heun_sample
from .gaussian import FIXED_VARIANCES, LOSS_WEIGHTINGS, PREDICTIONS, GaussianDiffusion, Model, check_choice
from .guidance import guided_model
from .samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample
from .schedules import SCHEDULES, DiffusionSchedule

OBJECTIVES = ("ddpm", "flow")
GAUSSIAN_SAMPLERS = ("ddpm", "ddim", "dpm++2m")
FLOW_SAMPLERS = ("euler", "heun")
FLOW_PREDICTIONS = ("velocity",)


def _maybe_guided(
    model: Model,
    cfg_scale: float,
    null_class: int | None,
    model_kwargs: dict[str, Any] | None,
    guide_channels: int | None,
) -> Model:
    if cfg_scale == 1.0:
        return model
    if null_class is None or not model_kwargs or model_kwargs.get("y") is None:
        raise ValueError("cfg_scale != 1 needs null_class and model_kwargs['y']")
    if guide_channels is not None and guide_channels < 1:
        raise ValueError(f"guide_channels must be a positive channel count (or None: all), got {guide_channels}")
    return guided_model(model, cfg_scale, null_class, guide_channels)


class _Objective:
    """What both objectives share: per-example losses at t drawn by the objective, and sampling by name.

    A subclass names its samplers (the first is the default) and supplies ``_draw_t``, its ``core``
    (the state-free diffusion or flow) and ``_run_sampler``.
    """

    samplers: tuple[str, ...] = ()

    def _draw_t(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def _run_sampler(self, sampler: str, model: Model, shape: tuple[int, ...], **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example losses [B] (``loss``, ``mse`` and for ddpm ``vb``) at t drawn by the objective."""
        gen_device = generator.device if generator is not None else x0.device
        t = self._draw_t(x0.shape[0], generator, gen_device)
        noise = randn(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
        return self.core.training_losses(model, x0, t.to(x0.device), noise, model_kwargs)

    def sample(
        self,
        model: Model,
        shape: tuple[int, ...],
        *,
        sampler: str | None = None,
        steps: int | str | None = None,
        cfg_scale: float = 1.0,
        null_class: int | None = None,
        guide_channels: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        **options: Any,
    ) -> torch.Tensor:
        """Samples x0 [shape] with the named sampler (default: the objective's first).

        ``cfg_scale != 1`` guides with the ``null_class``, on the first ``guide_channels`` output channels
        (None: all input channels; DiT's official sampler guides 3 of its 4 latent channels). ``options``
        are the sampler's own (``eta`` and ``clip_denoised`` for the Gaussian samplers).
        """
        sampler = sampler or self.samplers[0]
        check_choice("sampler", sampler, self.samplers)
        model = _maybe_guided(model, cfg_scale, null_class, model_kwargs, guide_channels)
        return self._run_sampler(
            sampler,
            model,
            shape,
            steps=steps,
            generator=generator,
            noise=noise,
            model_kwargs=model_kwargs,
            device=device,
            progress=progress,
            **options,
        )


@dataclass(frozen=True, eq=False)
class GaussianObjective(_Objective):
    """Discrete DDPM objective: uniform integer t in [0, T), sampling by DDPM/DDIM/DPM-Solver++."""

    diffusion: GaussianDiffusion
    samplers = GAUSSIAN_SAMPLERS

    @property
    def core(self) -> GaussianDiffusion:
        return self.diffusion

    @property
    def num_timesteps(self) -> int:
        return self.diffusion.num_timesteps

    def _draw_t(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=device)

    def _run_sampler(
        self,
        sampler: str,
        model: Model,
        shape: tuple[int, ...],
        *,
        steps: int | str | None,
        eta: float = 0.0,
        clip_denoised: bool = False,
        **common: Any,
    ) -> torch.Tensor:
        """``steps=None``: all T steps (20 for dpm++2m). ``eta`` is DDIM's."""
        common.update(diffusion=self.diffusion, clip_denoised=clip_denoised)
        if sampler == "ddpm":
            return ddpm_sample(model, shape, steps=steps, **common)
        if sampler == "ddim":
            return ddim_sample(model, shape, steps=steps, eta=eta, **common)
        return dpmpp_2m_sample(model, shape, steps=20 if steps is None else steps, **common)


@dataclass(frozen=True, eq=False)
class FlowObjective(_Objective):
    """Flow matching: uniform t in [0, 1], sampling by Euler or Heun ODE integration."""

    flow: FlowMatching
    samplers = FLOW_SAMPLERS

    @property
    def core(self) -> FlowMatching:
        return self.flow

    def _draw_t(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        return torch.rand((batch,), generator=generator, device=device)

    def _run_sampler(
        self, sampler: str, model: Model, shape: tuple[int, ...], *, steps: int | None, **common: Any
    ) -> torch.Tensor:
        """``steps=None``: 50 ODE steps."""
        fn = euler_sample if sampler == "euler" else heun_sample
        return fn(model, shape, flow=self.flow, steps=50 if steps is None else steps, **common)


def create_diffusion(
    objective: str = "ddpm",
    schedule: str = "linear",
    prediction: str | None = None,
    learn_sigma: bool = True,
    T: int = 1000,
    fixed_variance: str = "large",
    decoder_likelihood: str = "official",
    loss_weighting: str = "none",
    min_snr_gamma: float = 5.0,
) -> GaussianObjective | FlowObjective:
    """Build a training/sampling objective by name; unknown names raise ValueError listing valid ones.

    ``prediction`` defaults to ``"eps"`` for ddpm (choices eps|v|x0) and ``"velocity"`` for flow
    (its only choice). For flow, ``schedule`` is validated but unused, and ``T`` only sets the
    time scale fed to the backbone (t * T), so both objectives share one timestep embedding range.
    ``decoder_likelihood`` picks the t=0 decoder NLL of the VB term: ``"official"`` (DDPM/ADM/DiT's tanh
    approximation, the default) or ``"exact"``; flow ignores it.  ``loss_weighting="min_snr"`` weights
    the ddpm mean loss by min-SNR-``min_snr_gamma`` (:meth:`GaussianDiffusion.loss_weight`); flow validates
    and ignores it (as ``schedule``), so one recipe can name it and still run under ``diffusion=flow``.
    """
    check_choice("objective", objective, OBJECTIVES)
    check_choice("schedule", schedule, SCHEDULES)
    check_choice("fixed_variance", fixed_variance, FIXED_VARIANCES)
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    check_choice("loss_weighting", loss_weighting, LOSS_WEIGHTINGS)
    if objective == "flow":
        check_choice("prediction for flow", prediction or "velocity", FLOW_PREDICTIONS)
        return FlowObjective(FlowMatching(learn_sigma=learn_sigma, time_scale=float(T)))
    check_choice("prediction", prediction or "eps", PREDICTIONS)
    diffusion = GaussianDiffusion(
        DiffusionSchedule.from_name(schedule, T),
        prediction=prediction or "eps",
        learn_sigma=learn_sigma,
        fixed_variance=fixed_variance,
        decoder_likelihood=decoder_likelihood,
        loss_weighting=loss_weighting,
        min_snr_gamma=min_snr_gamma,
    )
    return GaussianObjective(diffusion)
