"""Shared diffusion core: schedules, Gaussian diffusion, flow matching, EDM, samplers, CFG and a factory.

Every objective follows :class:`Objective` (training times, per-example losses, samplers by name, settings);
code outside this package holds an ``Objective`` and never asks which one.

Backbone contract: ``model(x [B,C,H,W], t [B] float32, y=[B] long | None) -> [B, C_out, H, W]``
with C_out = 2C when learning sigma (first C: prediction, last C: variance value in [-1, 1]).
"""

from .ddpm import DDPMSettings, GaussianObjective
from .edm import EDM, EDMObjective, EDMSettings, edm_sample, edm_sigmas
from .factory import OBJECTIVES, create_diffusion, objective_class, objective_settings, samplers
from .flow import FlowMatching, FlowObjective, FlowSettings, euler_sample, heun_sample, sde_sample
from .gaussian import PREDICTIONS, GaussianDiffusion, PMeanVar
from .guidance import guided_model
from .likelihood import discretized_gaussian_log_likelihood, normal_kl
from .objective import Objective
from .samplers import ddim_invert, ddim_sample, ddim_step, ddpm_sample, dpmpp_2m_sample
from .schedules import (
    SCHEDULES,
    DiffusionSchedule,
    cosine_betas,
    linear_betas,
    make_betas,
    respace_betas,
    space_timesteps,
)

GAUSSIAN_SAMPLERS = GaussianObjective.samplers
FLOW_SAMPLERS = FlowObjective.samplers

__all__ = [
    "EDM",
    "FLOW_SAMPLERS",
    "GAUSSIAN_SAMPLERS",
    "OBJECTIVES",
    "PREDICTIONS",
    "SCHEDULES",
    "DDPMSettings",
    "DiffusionSchedule",
    "EDMObjective",
    "EDMSettings",
    "FlowMatching",
    "FlowObjective",
    "FlowSettings",
    "GaussianDiffusion",
    "GaussianObjective",
    "Objective",
    "PMeanVar",
    "cosine_betas",
    "create_diffusion",
    "ddim_invert",
    "ddim_sample",
    "ddim_step",
    "ddpm_sample",
    "discretized_gaussian_log_likelihood",
    "dpmpp_2m_sample",
    "edm_sample",
    "edm_sigmas",
    "euler_sample",
    "guided_model",
    "heun_sample",
    "linear_betas",
    "make_betas",
    "normal_kl",
    "objective_class",
    "objective_settings",
    "respace_betas",
    "samplers",
    "sde_sample",
    "space_timesteps",
]
