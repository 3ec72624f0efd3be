"""Discrete-time Gaussian diffusion (DDPM / improved DDPM) math on top of a :class:`DiffusionSchedule`.

Conventions: ``t`` is a long tensor [B] of *schedule indices*; with a respaced schedule the
model is called with ``schedule.timestep_map[t]`` (original timesteps, as float32).
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps; v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch

from .likelihood import DECODER_LIKELIHOODS, discretized_gaussian_log_likelihood, mean_flat, nats_to_bits, normal_kl
from .schedules import DiffusionSchedule, space_timesteps

PREDICTIONS = ("eps", "v", "x0")
FIXED_VARIANCES = ("large", "small")
LOSS_WEIGHTINGS = ("none", "min_snr")

Model = Callable[..., torch.Tensor]


def extract(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``arr[t]`` and shape it [B, 1, ..., 1] in ``like``'s dtype/device for broadcasting."""
    out = arr.to(t.device)[t].to(device=like.device, dtype=like.dtype)
    return out.view(-1, *([1] * (like.ndim - 1)))


class PMeanVar(NamedTuple):
    """Reverse-step Gaussian p(x_{t-1} | x_t) and the denoised estimates it came from."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_x0: torch.Tensor
    pred_eps: torch.Tensor


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """Return ``value`` if allowed, else raise ValueError listing the valid choices."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")
    return value


@dataclass(frozen=True, eq=False)
class GaussianDiffusion:
    """Stateless DDPM math: forward process, posterior, parameterisation conversions, losses.

    ``learn_sigma``: the model returns 2C channels, the last C being v in [-1, 1] that
    interpolates log-variance between the clipped posterior variance and beta (improved DDPM).
    Otherwise the variance is fixed: ``"large"`` (beta_t) or ``"small"`` (posterior variance).
    ``decoder_likelihood``: the form of the t=0 decoder NLL in the VB term (see
    :func:`discretized_gaussian_log_likelihood`): ``"official"`` (the DDPM/ADM/DiT rule) or ``"exact"``.
    ``loss_weighting``: ``"none"`` (DDPM's simple loss) or ``"min_snr"`` (Hang et al., 2023: each
    timestep's mean loss weighted so that it equals ``min(SNR_t, min_snr_gamma)`` times the x0 error,
    which stops the many easy low-noise steps from dominating the gradient; see :meth:`loss_weight`).
    """

    schedule: DiffusionSchedule
    prediction: str = "eps"
    learn_sigma: bool = True
    fixed_variance: str = "large"
    decoder_likelihood: str = "official"
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0

    def __post_init__(self) -> None:
        check_choice("prediction", self.prediction, PREDICTIONS)
        check_choice("fixed_variance", self.fixed_variance, FIXED_VARIANCES)
        check_choice("decoder_likelihood", self.decoder_likelihood, DECODER_LIKELIHOODS)
        check_choice("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        if not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {self.min_snr_gamma}")

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def respaced(self, steps: int | str | Iterable[int] | None) -> GaussianDiffusion:
        """Same diffusion on a sub-sequence of timesteps (``steps`` as in :func:`space_timesteps`)."""
        if steps is None:
            return self
        kept = space_timesteps(self.num_timesteps, steps)
        return replace(self, schedule=self.schedule.respaced(kept))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original timesteps (float32) that the backbone is conditioned on."""
        return self.schedule.timestep_map.to(t.device)[t].float()

    # ----- forward process -------------------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        s = self.schedule
        mean = extract(s.sqrt_alphas_cumprod, t, x0) * x0
        var = extract(1.0 - s.alphas_cumprod, t, x0).expand_as(x0)
        log_var = extract(s.log_one_minus_alphas_cumprod, t, x0).expand_as(x0)
        return mean, var, log_var

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) with the given standard-normal ``noise``."""
        s = self.schedule
        return extract(s.sqrt_alphas_cumprod, t, x0) * x0 + extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        s = self.schedule
        mean = extract(s.posterior_mean_coef1, t, xt) * x0 + extract(s.posterior_mean_coef2, t, xt) * xt
        var = extract(s.posterior_variance, t, xt).expand_as(xt)
        log_var = extract(s.posterior_log_variance_clipped, t, xt).expand_as(xt)
        return mean, var, log_var

    # ----- parameterisation conversions ------------------------------------------------
    def x0_from_eps(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        s = self.schedule
        return extract(s.sqrt_recip_alphas_cumprod, t, xt) * xt - extract(s.sqrt_recipm1_alphas_cumprod, t, xt) * eps

    def eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        s = self.schedule
        return (extract(s.sqrt_recip_alphas_cumprod, t, xt) * xt - x0) / extract(s.sqrt_recipm1_alphas_cumprod, t, xt)

    def v_from_x0_eps(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        s = self.schedule
        return extract(s.sqrt_alphas_cumprod, t, x0) * eps - extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def x0_from_v(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s = self.schedule
        return extract(s.sqrt_alphas_cumprod, t, xt) * xt - extract(s.sqrt_one_minus_alphas_cumprod, t, xt) * v

    def eps_from_v(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s = self.schedule
        return extract(s.sqrt_one_minus_alphas_cumprod, t, xt) * xt + extract(s.sqrt_alphas_cumprod, t, xt) * v

    def x0_from_prediction(self, xt: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """x_0 estimate from the mean channels, whatever ``self.prediction`` is."""
        if self.prediction == "eps":
            return self.x0_from_eps(xt, t, pred)
        if self.prediction == "v":
            return self.x0_from_v(xt, t, pred)
        return pred

    def eps_from_prediction(self, xt: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """eps estimate from the mean channels, whatever ``self.prediction`` is."""
        if self.prediction == "eps":
            return pred
        if self.prediction == "v":
            return self.eps_from_v(xt, t, pred)
        return self.eps_from_x0(xt, t, pred)

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the mean channels regress onto."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "v":
            return self.v_from_x0_eps(x0, t, noise)
        return x0

    # ----- reverse process -------------------------------------------------------------
    def split_output(self, output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean-prediction channels, variance values or None) of a backbone output."""
        if self.learn_sigma:
            if output.shape[1] != 2 * channels:
                raise ValueError(f"learn_sigma expects {2 * channels} output channels, got {output.shape[1]}")
            return output[:, :channels], output[:, channels:]
        if output.shape[1] != channels:
            raise ValueError(f"expected {channels} output channels, got {output.shape[1]}")
        return output, None

    def call_model(
        self, model: Model, xt: torch.Tensor, t: torch.Tensor, model_kwargs: dict[str, Any] | None = None
    ) -> torch.Tensor:
        """Run the backbone at schedule indices ``t`` (it sees original timesteps)."""
        return model(xt, self.model_timesteps(t), **(model_kwargs or {}))

    def p_mean_variance_from_output(
        self, output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False
    ) -> PMeanVar:
        """p(x_{t-1} | x_t) implied by a backbone output (kept separate from the call for testing and for
        the hybrid loss, which feeds a partially detached output)."""
        pred, var_values = self.split_output(output, xt.shape[1])
        s = self.schedule
        if var_values is not None:
            min_log = extract(s.posterior_log_variance_clipped, t, xt)
            max_log = extract(torch.log(s.betas), t, xt)
            frac = (var_values + 1.0) / 2.0
            log_var = frac * max_log + (1.0 - frac) * min_log
            var = torch.exp(log_var)
        elif self.fixed_variance == "large":
            # beta_t, except at t=0 where the (tiny) posterior variance of step 1 is used as the decoder scale.
            large = torch.cat([s.posterior_variance[1:2], s.betas[1:]]) if s.betas.numel() > 1 else s.betas
            var = extract(large, t, xt).expand_as(xt)
            log_var = extract(torch.log(large), t, xt).expand_as(xt)
        else:
            var = extract(s.posterior_variance, t, xt).expand_as(xt)
            log_var = extract(s.posterior_log_variance_clipped, t, xt).expand_as(xt)

        pred_x0 = self.x0_from_prediction(xt, t, pred)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        pred_eps = pred if (self.prediction == "eps" and not clip_denoised) else self.eps_from_x0(xt, t, pred_x0)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, xt, t)
        return PMeanVar(mean=mean, variance=var, log_variance=log_var, pred_x0=pred_x0, pred_eps=pred_eps)

    def p_mean_variance(
        self,
        model: Model,
        xt: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = False,
    ) -> PMeanVar:
        """Call the model and return p(x_{t-1} | x_t)."""
        output = self.call_model(model, xt, t, model_kwargs)
        return self.p_mean_variance_from_output(output, xt, t, clip_denoised)

    # ----- losses ----------------------------------------------------------------------
    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-example weight [B] of the mean loss at timesteps ``t`` (float32; ones for ``"none"``).

        With ``SNR_t = abar_t / (1 - abar_t)`` the eps, v and x0 errors are ``SNR_t``, ``SNR_t + 1`` and 1
        times the x0 error, so min-SNR divides ``min(SNR_t, gamma)`` by that factor.
        """
        if self.loss_weighting == "none":
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        abar = self.schedule.alphas_cumprod.to(t.device)[t]
        snr = abar / (1.0 - abar)
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.prediction == "eps":
            clipped = clipped / snr
        elif self.prediction == "v":
            clipped = clipped / (snr + 1.0)
        return clipped.float()

    def vb_terms_bpd(self, output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-example VLB term in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p) for t>0, decoder NLL at t=0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, xt, t)
        out = self.p_mean_variance_from_output(output, xt, t)
        kl = nats_to_bits(mean_flat(normal_kl(true_mean, true_log_var, out.mean, out.log_variance)))
        nll = -discretized_gaussian_log_likelihood(
            x0, means=out.mean, log_scales=0.5 * out.log_variance, form=self.decoder_likelihood
        )
        nll = nats_to_bits(mean_flat(nll))
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example losses [B]: ``mse`` on the mean channels (weighted by :meth:`loss_weight`), ``vb`` and
        their sum ``loss``.

        With ``learn_sigma`` this is improved DDPM's hybrid loss: the VLB term sees the mean
        channels detached so it only trains the variance, and is scaled by T/1000 as the
        reference code does. Without it ``vb`` is zero. Callers take ``loss.mean()``.
        """
        if noise is None:
            noise = torch.randn_like(x0)
        xt = self.q_sample(x0, t, noise)
        output = self.call_model(model, xt, t, model_kwargs)
        pred, var_values = self.split_output(output, x0.shape[1])
        mse = mean_flat((self.training_target(x0, t, noise) - pred) ** 2)
        if self.loss_weighting != "none":
            mse = mse * self.loss_weight(t).to(mse.dtype)
        if var_values is None:
            vb = torch.zeros_like(mse)
        else:
            frozen = torch.cat([pred.detach(), var_values], dim=1)
            vb = self.vb_terms_bpd(frozen, x0, xt, t) * (self.num_timesteps / 1000.0)
        return {"loss": mse + vb, "mse": mse, "vb": vb}
