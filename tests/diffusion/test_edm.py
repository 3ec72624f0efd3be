"""EDM: preconditioning against its closed forms, the loss identity, training sigmas, the rho schedule, and the
Heun, stochastic and Euler samplers against the exact Gaussian-data denoiser."""

import math

import pytest
import torch
from torch import nn

from archbench.diffusion import EDM, create_diffusion, edm_sample, edm_sigmas
from archbench.diffusion.oracles import edm_oracle

SHAPE = (64, 1, 16, 16)  # 16384 independent scalar samples
SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 7.0, 80.0], dtype=torch.float64)


def standard_noise(shape, seed):
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return (z - z.mean()) / z.std()


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_preconditioning_matches_closed_forms(sigma_data):
    edm = EDM(sigma_data=sigma_data)
    for sigma in SIGMAS.tolist():
        sd = sigma_data
        s = torch.tensor(sigma, dtype=torch.float64)
        assert edm.c_skip(s).item() == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=1e-12)
        assert edm.c_out(s).item() == pytest.approx(sigma * sd / math.sqrt(sigma**2 + sd**2), rel=1e-12)
        assert edm.c_in(s).item() == pytest.approx(1 / math.sqrt(sd**2 + sigma**2), rel=1e-12)
        assert edm.c_noise(s).item() == pytest.approx(math.log(sigma) / 4, rel=1e-12)
        assert edm.loss_weight(s).item() == pytest.approx((sigma**2 + sd**2) / (sigma * sd) ** 2, rel=1e-12)


def test_preconditioning_gives_unit_variance_input_and_target():
    """EDM's design rules: Var[c_in x] = 1 and Var[(x_0 - c_skip x) / c_out] = 1 for data of std sigma_data."""
    edm = EDM(sigma_data=0.5)
    g = torch.Generator().manual_seed(0)
    x0 = 0.5 * torch.randn(200_000, generator=g, dtype=torch.float64)
    eps = torch.randn(200_000, generator=g, dtype=torch.float64)
    for sigma in (0.01, 0.3, 2.0, 40.0):
        s = torch.tensor(sigma, dtype=torch.float64)
        x = x0 + s * eps
        assert (edm.c_in(s) * x).var().item() == pytest.approx(1.0, rel=0.02)
        assert ((x0 - edm.c_skip(s) * x) / edm.c_out(s)).var().item() == pytest.approx(1.0, rel=0.02)


class Conv(nn.Module):
    def __init__(self, channels=2, out=4):
        super().__init__()
        self.conv = nn.Conv2d(channels, out, 1)
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append((x.detach().clone(), t.detach().clone()))
        return self.conv(x) + 1e-3 * t.view(-1, 1, 1, 1)


def test_model_sees_scaled_input_and_T_times_c_noise():
    torch.manual_seed(0)
    edm = EDM(time_scale=1000.0)
    net = Conv()
    x = torch.randn(2, 2, 4, 4)
    sigma = torch.tensor([0.1, 3.0])
    edm.denoise(net, x, sigma)
    x_in, t = net.seen[0]
    torch.testing.assert_close(x_in, x / torch.sqrt(sigma**2 + 0.25).view(-1, 1, 1, 1))
    torch.testing.assert_close(t, 1000.0 * torch.log(sigma) / 4)


def test_loss_is_lambda_times_denoising_error():
    """The loss, computed as |F - target|^2, equals EDM's lambda(sigma) |D - x_0|^2 at every noise level."""
    torch.manual_seed(0)
    edm = EDM(learn_sigma=True)
    net = Conv()
    x0, noise = torch.randn(6, 2, 4, 4), torch.randn(6, 2, 4, 4)
    sigma = torch.tensor([0.002, 0.03, 0.4, 1.5, 9.0, 80.0])
    out = edm.training_losses(net, x0, sigma, noise)
    denoised = edm.denoise(net, x0 + sigma.view(-1, 1, 1, 1) * noise, sigma)
    direct = edm.loss_weight(sigma) * ((denoised - x0) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out["loss"], direct, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(out["mse"], ((denoised - x0) ** 2).mean(dim=(1, 2, 3)), rtol=1e-4, atol=1e-7)
    out["loss"].mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_exact_denoiser_has_the_bayes_loss():
    """With the oracle, |D - x_0|^2 averages to the posterior variance s^2 sigma^2 / (s^2 + sigma^2)."""
    mu, s = 0.2, 0.6
    edm = EDM(learn_sigma=False)
    g = torch.Generator().manual_seed(1)
    x0 = mu + s * torch.randn(4, 1, 64, 64, generator=g)
    noise = torch.randn(4, 1, 64, 64, generator=g)
    sigma = torch.tensor([0.05, 0.5, 2.0, 20.0])
    mse = edm.training_losses(edm_oracle(edm, mu, s), x0, sigma, noise)["mse"]
    expected = s**2 * sigma**2 / (s**2 + sigma**2)
    torch.testing.assert_close(mse, expected, rtol=0.06, atol=0)


def test_training_sigmas_are_log_normal():
    objective = create_diffusion("edm", P_mean=-1.2, P_std=1.2)
    log_sigma = objective.draw_t(100_000, torch.Generator().manual_seed(0)).log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(1.2, rel=0.02)


def test_rho_schedule():
    sigmas = edm_sigmas(18, 0.002, 80.0, 7.0)
    assert len(sigmas) == 19 and sigmas[-1] == 0.0
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-2] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(sigmas, sigmas[1:], strict=False))
    # evenly spaced in sigma^(1/rho)
    roots = [x ** (1 / 7) for x in sigmas[:-1]]
    gaps = [a - b for a, b in zip(roots, roots[1:], strict=False)]
    assert max(gaps) == pytest.approx(min(gaps), rel=1e-9)


@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("mu,s", [(0.0, 0.5), (-0.4, 0.3), (0.5, 0.9)])
def test_heun_recovers_gaussian_data(learn_sigma, mu, s):
    """Measured: at EDM's 18 levels the variance of N(0, 0.5^2) comes out 11% high (Heun approaches from above,
    Euler from below: 0.278 and 0.179 against 0.25), at 50 levels within 1.5%, at 200 within 0.1%."""
    edm = EDM(learn_sigma=learn_sigma)
    x = edm_sample(edm_oracle(edm, mu, s), SHAPE, edm=edm, steps=50, noise=standard_noise(SHAPE, 1))
    assert x.mean().item() == pytest.approx(mu, abs=0.01)
    assert x.var().item() == pytest.approx(s**2, rel=0.03)


def test_stochastic_sampler_recovers_gaussian_data():
    """Measured (mu 0.3, s 0.5): variance 0.317 at 18 levels, 0.274 at 40, 0.258 at 100, 0.251 at 256."""
    mu, s = 0.3, 0.5
    edm = EDM(learn_sigma=False)
    objective = create_diffusion("edm", learn_sigma=False)
    x = objective.sample(edm_oracle(edm, mu, s), SHAPE, sampler="stochastic", steps=100,
                         generator=torch.Generator().manual_seed(0))
    assert x.mean().item() == pytest.approx(mu, abs=0.02)
    assert x.var().item() == pytest.approx(s**2, rel=0.05)


def test_heun_converges_faster_than_euler():
    mu, s = 0.0, 0.5
    edm = EDM(learn_sigma=False)
    oracle = edm_oracle(edm, mu, s)
    noise = standard_noise(SHAPE, 2)
    heun = edm_sample(oracle, SHAPE, edm=edm, steps=50, noise=noise)
    euler = edm_sample(oracle, SHAPE, edm=edm, steps=50, noise=noise, second_order=False)
    assert 3 * abs(heun.var().item() - s**2) < abs(euler.var().item() - s**2)
    fine = edm_sample(oracle, SHAPE, edm=edm, steps=400, noise=noise, second_order=False)
    assert fine.var().item() == pytest.approx(s**2, rel=0.03)


def test_heun_calls_the_model_2n_minus_1_times_and_churn_draws_noise():
    calls = []

    def model(x, t, y=None):
        calls.append(t)
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    objective = create_diffusion("edm")
    objective.sample(model, (2, 1, 2, 2), steps=5, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 9
    noise = torch.randn(2, 1, 2, 2)
    runs = [
        objective.sample(model, (2, 1, 2, 2), sampler=sampler, steps=5, noise=noise,
                         generator=torch.Generator().manual_seed(seed))
        for sampler, seed in (("heun", 0), ("heun", 1), ("stochastic", 0), ("stochastic", 1))
    ]
    assert torch.equal(runs[0], runs[1])  # deterministic: the generator is never used
    assert not torch.equal(runs[2], runs[3])  # churn adds fresh noise


def test_stochastic_with_zero_churn_is_heun():
    edm = EDM(learn_sigma=False)
    oracle = edm_oracle(edm, 0.1, 0.4)
    objective = create_diffusion("edm", learn_sigma=False)
    noise = standard_noise((4, 1, 8, 8), 3)
    heun = objective.sample(oracle, (4, 1, 8, 8), sampler="heun", steps=12, noise=noise)
    still = objective.sample(oracle, (4, 1, 8, 8), sampler="stochastic", steps=12, noise=noise, S_churn=0.0)
    torch.testing.assert_close(heun, still, rtol=0, atol=0)


def test_classifier_free_guidance_runs_and_is_reproducible():
    net = Conv(channels=1, out=2)
    net.embed = nn.Embedding(4, 1)
    objective = create_diffusion("edm")
    kwargs = {"y": torch.tensor([0, 2])}
    common = dict(sampler="stochastic", steps=4, cfg_scale=3.0, null_class=3, model_kwargs=kwargs)
    with torch.no_grad():
        a = objective.sample(net, (2, 1, 4, 4), generator=torch.Generator().manual_seed(5), **common)
        b = objective.sample(net, (2, 1, 4, 4), generator=torch.Generator().manual_seed(5), **common)
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="sigma_min"):
        create_diffusion("edm", sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="S_churn"):
        create_diffusion("edm", S_churn=-1.0)
    with pytest.raises(ValueError, match="integer number of noise levels"):
        create_diffusion("edm").sample(Conv(1, 2), (1, 1, 2, 2), steps="ddim25")
