"""Gaussian KL and discretised Gaussian likelihood, the pieces of the variational bound."""

from __future__ import annotations

import math

import torch


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats; arguments broadcast."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


DECODER_LIKELIHOODS = ("official", "exact")


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF that the DDPM/ADM decoder uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor,
    *,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    num_bins: int = 256,
    form: str = "official",
) -> torch.Tensor:
    """Elementwise log-probability of ``x`` (data in [-1, 1] on ``num_bins`` levels) under a binned Gaussian.

    Each level owns the interval of width 2/(num_bins-1) around it; the two edge bins extend to
    +-inf so the probabilities of all levels sum to one (the DDPM decoder L_0).

    ``form="official"`` (default) is the rule of the DDPM / improved-diffusion / ADM / DiT code, so the VB
    term at t=0 and the variance head's gradient match theirs: the tanh approximation of the normal CDF,
    edge bins chosen by ``x < -0.999`` / ``x > 0.999``, every probability clamped at 1e-12 before the log.
    ``form="exact"`` uses the exact CDF (``log_ndtr`` in the tails, the cancellation-free difference in
    the middle) and an edge threshold half a bin inside the last level.
    """
    if form not in DECODER_LIKELIHOODS:
        raise ValueError(f"unknown decoder likelihood form {form!r}; valid choices: {', '.join(DECODER_LIKELIHOODS)}")
    half_bin = 1.0 / (num_bins - 1)
    centered = x - means
    inv_std = torch.exp(-log_scales)
    upper = inv_std * (centered + half_bin)
    lower = inv_std * (centered - half_bin)
    if form == "official":
        cdf_upper, cdf_lower = approx_standard_normal_cdf(upper), approx_standard_normal_cdf(lower)
        log_cdf_upper = torch.log(cdf_upper.clamp(min=1e-12))
        log_one_minus_cdf_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
        log_mid = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
        edge = 0.999
    else:
        log_cdf_upper = torch.special.log_ndtr(upper)
        log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)
        # ndtr(upper) - ndtr(lower) loses everything to cancellation in the far tails; there
        # the symmetric form ndtr(-lower) - ndtr(-upper) is accurate, so use the better one.
        mid = torch.where(
            lower > 0,
            torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
            torch.special.ndtr(upper) - torch.special.ndtr(lower),
        )
        log_mid = torch.log(mid.clamp(min=1e-12))
        edge = 1.0 - 0.5 * half_bin  # any threshold strictly between the last two levels
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_one_minus_cdf_lower, log_mid))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def nats_to_bits(x: torch.Tensor) -> torch.Tensor:
    return x / math.log(2.0)
