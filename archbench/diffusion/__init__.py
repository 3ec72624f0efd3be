"""Shared diffusion core: schedules, Gaussian diffusion, flow matching, samplers, CFG and a factory.

Backbone contract: ``model(x [B,C,H,W], t [B] float32, y=[B] long | None) -> [B, C_out, H, W]``
with C_out = 2C when learning sigma (first C: prediction, last C: variance value in [-1, 1]).
"""

from .factory import (
    FLOW_SAMPLERS,
    GAUSSIAN_SAMPLERS,
    OBJECTIVES,
    FlowObjective,
    GaussianObjective,
    create_diffusion,
)
from .flow import FlowMatching, euler_sample, heun_sample
from .gaussian import PREDICTIONS, GaussianDiffusion, PMeanVar
from .guidance import guided_model
from .likelihood import discretized_gaussian_log_likelihood, normal_kl
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

__all__ = [
    "FLOW_SAMPLERS",
    "GAUSSIAN_SAMPLERS",
    "OBJECTIVES",
    "PREDICTIONS",
    "SCHEDULES",
    "DiffusionSchedule",
    "FlowMatching",
    "FlowObjective",
    "GaussianDiffusion",
    "GaussianObjective",
    "PMeanVar",
    "cosine_betas",
    "create_diffusion",
    "ddim_invert",
    "ddim_sample",
    "ddim_step",
    "ddpm_sample",
    "discretized_gaussian_log_likelihood",
    "dpmpp_2m_sample",
    "euler_sample",
    "guided_model",
    "heun_sample",
    "linear_betas",
    "make_betas",
    "normal_kl",
    "respace_betas",
    "space_timesteps",
]
