"""Noise schedules for discrete-time Gaussian diffusion, and timestep respacing.

Everything here is computed once in float64 (the products of ~1000 alphas lose
precision in float32) and cast to the working dtype only when gathered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

SCHEDULES = ("linear", "cosine")


def linear_betas(num_timesteps: int) -> torch.Tensor:
    """DDPM's linear betas (1e-4 .. 0.02 at T=1000), rescaled so other T keep the same endpoints' SNR."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, max_beta: float = 0.999, offset: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2((t + s) / (1 + s) * pi / 2).

    Betas are clipped at ``max_beta`` because the last step would otherwise be 1 (infinite SNR gap).
    """

    def alpha_bar(u: float) -> float:
        return math.cos((u + offset) / (1.0 + offset) * math.pi / 2.0) ** 2

    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def make_betas(name: str, num_timesteps: int) -> torch.Tensor:
    """Betas for a named schedule; raises ValueError listing the valid names."""
    if name == "linear":
        return linear_betas(num_timesteps)
    if name == "cosine":
        return cosine_betas(num_timesteps)
    raise ValueError(f"unknown schedule {name!r}; valid choices: {', '.join(SCHEDULES)}")


@dataclass(frozen=True, eq=False)
class DiffusionSchedule:
    """Precomputed float64 quantities of a (possibly respaced) discrete diffusion.

    ``timestep_map[i]`` is the original timestep of schedule index ``i``; the model is
    always conditioned on original timesteps so a respaced sampler needs no retraining.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    alphas_cumprod_next: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    timestep_map: torch.Tensor

    @classmethod
    def from_betas(cls, betas: torch.Tensor, timestep_map: torch.Tensor | None = None) -> DiffusionSchedule:
        """Derive every schedule quantity from betas (float64, each in (0, 1])."""
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() == 0 or bool((betas <= 0).any()) or bool((betas > 1).any()):
            raise ValueError("betas must be non-empty and in (0, 1]")
        n = betas.numel()
        if timestep_map is None:
            timestep_map = torch.arange(n, dtype=torch.long)
        timestep_map = torch.as_tensor(timestep_map, dtype=torch.long).flatten()
        if timestep_map.numel() != n:
            raise ValueError("timestep_map must have one entry per beta")

        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        one = torch.ones(1, dtype=torch.float64)
        ac_prev = torch.cat([one, ac[:-1]])
        ac_next = torch.cat([ac[1:], torch.zeros(1, dtype=torch.float64)])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        # post_var[0] is 0 (x_0 is known exactly given x_1's posterior), so the log uses index 1 there.
        clip_from = post_var[1:2] if n > 1 else betas[:1]
        post_log_var = torch.log(torch.cat([clip_from, post_var[1:]]))
        return cls(
            betas=betas,
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            alphas_cumprod_next=ac_next,
            sqrt_alphas_cumprod=ac.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(),
            log_one_minus_alphas_cumprod=torch.log1p(-ac),
            sqrt_recip_alphas_cumprod=(1.0 / ac).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / ac - 1.0).sqrt(),
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_log_var,
            posterior_mean_coef1=betas * ac_prev.sqrt() / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
            timestep_map=timestep_map,
        )

    @classmethod
    def from_name(cls, name: str, num_timesteps: int = 1000) -> DiffusionSchedule:
        """Schedule for ``"linear"`` or ``"cosine"`` betas."""
        return cls.from_betas(make_betas(name, num_timesteps))

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.numel())

    def respaced(self, use_timesteps: Iterable[int]) -> DiffusionSchedule:
        """Schedule restricted to ``use_timesteps`` (indices into this schedule), same marginals there."""
        betas, index_map = respace_betas(self.betas, use_timesteps)
        return DiffusionSchedule.from_betas(betas, self.timestep_map[index_map])


def respace_betas(betas: torch.Tensor, use_timesteps: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Betas of the sub-chain that visits only ``use_timesteps``, and the kept original indices.

    New beta_i = 1 - abar[k_i] / abar[k_{i-1}] keeps q(x_k | x_0) identical at every kept k.
    """
    betas = torch.as_tensor(betas, dtype=torch.float64)
    kept = sorted({int(k) for k in use_timesteps})
    if not kept:
        raise ValueError("use_timesteps must not be empty")
    if kept[0] < 0 or kept[-1] >= betas.numel():
        raise ValueError(f"use_timesteps must lie in [0, {betas.numel() - 1}]")
    ac = torch.cumprod(1.0 - betas, dim=0)
    kept_t = torch.tensor(kept, dtype=torch.long)
    kept_ac = ac[kept_t]
    prev_ac = torch.cat([torch.ones(1, dtype=torch.float64), kept_ac[:-1]])
    return 1.0 - kept_ac / prev_ac, kept_t


def space_timesteps(num_timesteps: int, section_counts: str | int | Iterable[int]) -> set[int]:
    """Timesteps to keep, in improved-diffusion's respacing notation and with its exact rounding.

    ``"ddimN"`` keeps ``range(0, T, stride)`` with the stride giving exactly N steps (DDIM paper).
    ``"linspaceN"`` keeps ``round(linspace(0, T-1, N))`` (diffusers' "linspace" spacing, half to even).
    Otherwise the chain is cut into equal sections and each keeps the given number of evenly
    spaced steps, both section ends included: ``"50"`` or ``50`` spans 0..T-1 with 50 steps,
    ``"10,10,10"`` puts 10 steps in each third. Within a section the position is accumulated as a
    float (``cur += stride``) and rounded at each step, as the official code does; that differs from
    ``round(j * stride)`` by one step at some exact .5 ties (e.g. N=21 keeps 499, not 500).
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            return _fixed_stride_timesteps(num_timesteps, _count(spec[len("ddim") :], spec))
        if spec.startswith("linspace"):
            return _linspace_timesteps(num_timesteps, _count(spec[len("linspace") :], spec))
        counts = [_count(c, spec) for c in spec.split(",") if c.strip()]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"section counts must be positive integers, got {section_counts!r}")

    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    kept: set[int] = set()
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size} timesteps")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride
        start += size
    return kept


def _count(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"cannot read timestep respacing {spec!r}; use N, 'N,M,...' (sections), 'ddimN' or 'linspaceN'"
        ) from None


def _fixed_stride_timesteps(num_timesteps: int, desired: int) -> set[int]:
    """DDIM's ``range(0, T, stride)`` with the one integer stride that gives exactly ``desired`` steps."""
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
            return set(range(0, num_timesteps, stride))
    raise ValueError(f"cannot take exactly {desired} steps of {num_timesteps} with a fixed stride")


def _linspace_timesteps(num_timesteps: int, count: int) -> set[int]:
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"linspace{count}: the count must lie in [1, {num_timesteps}]")
    return {int(v) for v in np.round(np.linspace(0, num_timesteps - 1, count))}
