"""Discrete samplers against exact Gaussian-data oracles, DDIM inversion, determinism and CFG."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from archbench.diffusion import (
    DiffusionSchedule,
    GaussianDiffusion,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    dpmpp_2m_sample,
    guided_model,
)
from archbench.diffusion.oracles import gaussian_oracle

SCHEDULES = {name: DiffusionSchedule.from_name(name, 1000) for name in ("linear", "cosine")}
SHAPE = (64, 1, 16, 16)  # 16384 independent scalar samples
# Steps chosen so each sampler's discretisation error (and fixed-variance DDPM's bias) stays below
# ~4% of the variance for s in [0.3, 0.9]; measured: DPM-Solver++ at 25 steps on the linear schedule
# is still 17% low for s=0.3 (first-order jump into t=0), at 50 steps within 2.5%.
SAMPLERS = {"ddpm": (ddpm_sample, 250), "ddim": (ddim_sample, 250), "dpm++2m": (dpmpp_2m_sample, 50)}


def standard_noise(shape, seed):
    """Noise standardised to exact mean 0 / variance 1, so deterministic samplers show only their own error."""
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return (z - z.mean()) / z.std()


@settings(max_examples=10, deadline=None)
@given(
    name=st.sampled_from(["linear", "cosine"]),
    prediction=st.sampled_from(["eps", "v", "x0"]),
    learn_sigma=st.booleans(),
    sampler=st.sampled_from(sorted(SAMPLERS)),
    mu=st.floats(-0.8, 0.8),
    s=st.floats(0.3, 0.9),
)
def test_oracle_denoiser_recovers_gaussian_data(name, prediction, learn_sigma, sampler, mu, s):
    diff = GaussianDiffusion(SCHEDULES[name], prediction=prediction, learn_sigma=learn_sigma)
    fn, steps = SAMPLERS[sampler]
    if sampler == "ddpm" and learn_sigma:
        steps = 50  # exact variance: no discretisation bias to wash out
    oracle = gaussian_oracle(diff.respaced(steps), mu, s)
    g = torch.Generator().manual_seed(0)
    x = fn(oracle, SHAPE, diffusion=diff, steps=steps, generator=g, noise=standard_noise(SHAPE, 1))
    assert x.shape == SHAPE
    assert x.mean().item() == pytest.approx(mu, abs=0.03)  # >4 standard errors for DDPM's own noise
    assert x.var().item() == pytest.approx(s**2, rel=0.06)


def test_ddpm_with_exact_learned_variance_is_exact_even_with_few_steps():
    # For Gaussian data the true reverse kernel is Gaussian, so exact mean + exact (learned) variance
    # makes ancestral sampling exact at any spacing; a fixed variance would be visibly off at 10 steps.
    diff = GaussianDiffusion(SCHEDULES["cosine"], prediction="eps", learn_sigma=True)
    mu, s = -0.3, 0.6
    x = ddpm_sample(
        gaussian_oracle(diff.respaced(10), mu, s),
        SHAPE,
        diffusion=diff,
        steps=10,
        generator=torch.Generator().manual_seed(3),
    )
    assert x.mean().item() == pytest.approx(mu, abs=0.02)
    assert x.var().item() == pytest.approx(s**2, rel=0.04)


def _rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddim_eta0_is_deterministic_and_invertible(name):
    diff = GaussianDiffusion(SCHEDULES[name], prediction="eps", learn_sigma=False)
    shape = (4, 2, 8, 8)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x0 = 0.2 + 0.5 * torch.randn(shape, generator=torch.Generator().manual_seed(1))
    errors = {}
    for steps in (50, 100):
        oracle = gaussian_oracle(diff.respaced(steps), 0.2, 0.5)
        a = ddim_sample(oracle, shape, diffusion=diff, steps=steps, noise=x_T)
        b = ddim_sample(oracle, shape, diffusion=diff, steps=steps, noise=x_T.clone())
        assert torch.equal(a, b)
        latent = ddim_invert(oracle, x0, diffusion=diff, steps=steps)
        errors[steps] = (
            _rms(ddim_invert(oracle, a, diffusion=diff, steps=steps), x_T),  # sample -> invert gives the noise
            _rms(ddim_sample(oracle, shape, diffusion=diff, steps=steps, noise=latent), x0),  # and vice versa
        )
    noise_err, data_err = errors[100]
    assert noise_err < 0.07 and data_err < 0.035
    # The only mismatch is the first-order lag of inversion, so the error halves when steps double.
    for before, after in zip(errors[50], errors[100], strict=True):
        assert after == pytest.approx(before / 2, rel=0.2)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_samplers_are_reproducible_given_a_generator(sampler):
    diff = GaussianDiffusion(SCHEDULES["linear"], learn_sigma=True)
    fn = SAMPLERS[sampler][0]
    oracle = gaussian_oracle(diff.respaced(8), 0.0, 0.5)
    kwargs = dict(diffusion=diff, steps=8)
    if sampler == "ddim":
        kwargs["eta"] = 1.0  # the stochastic variant must be reproducible too
    a = fn(oracle, (2, 1, 4, 4), generator=torch.Generator().manual_seed(7), **kwargs)
    b = fn(oracle, (2, 1, 4, 4), generator=torch.Generator().manual_seed(7), **kwargs)
    c = fn(oracle, (2, 1, 4, 4), generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ddim_eta1_matches_ddpm_small_variance_statistics():
    diff = GaussianDiffusion(SCHEDULES["cosine"], learn_sigma=False, fixed_variance="small")
    oracle = gaussian_oracle(diff.respaced(100), 0.4, 0.5)
    g = torch.Generator().manual_seed(0)
    x = ddim_sample(oracle, SHAPE, diffusion=diff, steps=100, eta=1.0, generator=g)
    assert x.mean().item() == pytest.approx(0.4, abs=0.02)
    assert x.var().item() == pytest.approx(0.25, rel=0.08)


def test_model_sees_original_timesteps():
    seen = []

    def model(x, t, y=None):
        seen.append(t.clone())
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    diff = GaussianDiffusion(SCHEDULES["linear"], learn_sigma=True)
    ddim_sample(model, (2, 1, 2, 2), diffusion=diff, steps="ddim10", generator=torch.Generator().manual_seed(0))
    assert [int(t[0]) for t in seen] == list(range(900, -1, -100))
    assert all(t.dtype == torch.float32 for t in seen)


def _labelled_model(x, t, y=None):
    """Output depends on the label in every channel (2C channels, learned-sigma layout)."""
    scale = (y.float() + 1.0).view(-1, 1, 1, 1)
    return torch.cat([x * scale, x + scale], dim=1)


def test_cfg_scale_one_equals_conditional_output():
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5.0, 6.0, 7.0])
    y = torch.tensor([0, 1, 2])
    guided = guided_model(_labelled_model, 1.0, null_class=10)
    torch.testing.assert_close(guided(x, t, y=y), _labelled_model(x, t, y=y))


def test_cfg_guides_only_the_prediction_channels():
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(3)
    y = torch.tensor([0, 1, 2])
    null = torch.full_like(y, 10)
    out = guided_model(_labelled_model, 4.0, null_class=10)(x, t, y=y)
    cond, uncond = _labelled_model(x, t, y=y), _labelled_model(x, t, y=null)
    torch.testing.assert_close(out[:, :2], uncond[:, :2] + 4.0 * (cond[:, :2] - uncond[:, :2]))
    torch.testing.assert_close(out[:, 2:], cond[:, 2:])
    # guide_channels narrows guidance further (DiT guides 3 of 4 latent channels).
    partial = guided_model(_labelled_model, 4.0, null_class=10, guide_channels=1)(x, t, y=y)
    torch.testing.assert_close(partial[:, :1], out[:, :1])
    torch.testing.assert_close(partial[:, 1:], cond[:, 1:])


def test_cfg_calls_model_once_with_null_labels_appended():
    calls = []

    def model(x, t, y=None):
        calls.append(y.clone())
        return x

    guided_model(model, 2.0, null_class=7)(torch.zeros(2, 1, 1, 1), torch.zeros(2), y=torch.tensor([3, 4]))
    assert len(calls) == 1 and calls[0].tolist() == [3, 4, 7, 7]
    with pytest.raises(ValueError):
        guided_model(model, 2.0, null_class=7)(torch.zeros(2, 1, 1, 1), torch.zeros(2))


def test_noise_shape_is_checked():
    diff = GaussianDiffusion(SCHEDULES["linear"], learn_sigma=False)
    with pytest.raises(ValueError, match="noise has shape"):
        ddim_sample(lambda x, t: x, (1, 1, 2, 2), diffusion=diff, steps=2, noise=torch.zeros(1, 1, 3, 3))
