"""The discrete DDPM objective (``diffusion=ddpm``): uniform integer t in [0, T), DDPM/DDIM/DPM-Solver++."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .gaussian import FIXED_VARIANCES, LOSS_WEIGHTINGS, PREDICTIONS, GaussianDiffusion, Model, check_choice
from .likelihood import DECODER_LIKELIHOODS
from .objective import Objective
from .samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample
from .schedules import SCHEDULES, DiffusionSchedule


@dataclass(frozen=True)
class DDPMSettings:
    """The keys of ``diffusion=ddpm``. ``prediction=None`` means eps; ``decoder_likelihood`` is the t=0 NLL form
    of the VB term (DDPM/ADM/DiT's tanh approximation, or ``exact``); ``loss_weighting=min_snr`` weights the
    mean loss by min-SNR-``min_snr_gamma`` (Hang et al. 2023)."""

    schedule: str = "linear"
    prediction: str | None = None
    learn_sigma: bool = True
    T: int = 1000
    fixed_variance: str = "large"
    decoder_likelihood: str = "official"
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0

    def __post_init__(self) -> None:
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("prediction", self.prediction or "eps", PREDICTIONS)
        check_choice("fixed_variance", self.fixed_variance, FIXED_VARIANCES)
        check_choice("decoder_likelihood", self.decoder_likelihood, DECODER_LIKELIHOODS)
        check_choice("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")
        if not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {self.min_snr_gamma}")


@dataclass(frozen=True, eq=False)
class GaussianObjective(Objective):
    """Discrete DDPM objective: uniform integer t in [0, T), sampling by DDPM/DDIM/DPM-Solver++."""

    diffusion: GaussianDiffusion
    name = "ddpm"
    samplers = ("ddpm", "ddim", "dpm++2m")
    default_sampler = "ddim"
    Settings = DDPMSettings

    @classmethod
    def from_settings(cls, settings: DDPMSettings) -> GaussianObjective:
        return cls(
            GaussianDiffusion(
                DiffusionSchedule.from_name(settings.schedule, settings.T),
                prediction=settings.prediction or "eps",
                learn_sigma=settings.learn_sigma,
                fixed_variance=settings.fixed_variance,
                decoder_likelihood=settings.decoder_likelihood,
                loss_weighting=settings.loss_weighting,
                min_snr_gamma=settings.min_snr_gamma,
            )
        )

    @property
    def num_timesteps(self) -> int:
        return self.diffusion.num_timesteps

    def draw_t(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=device)

    def losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``loss`` = ``mse`` (min-SNR weighted if asked) + ``vb`` (improved DDPM's hybrid term with learn_sigma)."""
        return self.diffusion.training_losses(model, x0, t, noise, model_kwargs)

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
