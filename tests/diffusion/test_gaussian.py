"""Closed forms of the Gaussian diffusion and the training losses."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from archbench.diffusion import (
    DiffusionSchedule,
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    normal_kl,
)

SCHEDULES = {name: DiffusionSchedule.from_name(name, 1000) for name in ("linear", "cosine")}


def _diffusion(name="linear", **kw):
    return GaussianDiffusion(SCHEDULES[name], **kw)


def _t(i, n=1):
    return torch.full((n,), i, dtype=torch.long)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_moments_monte_carlo_match_formula(name):
    diff = _diffusion(name)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    for i in (0, 100, 600, 999):
        t = _t(i, n)
        xt = diff.q_sample(x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
        mean, var, log_var = diff.q_mean_variance(x0, t)
        abar = SCHEDULES[name].alphas_cumprod[i].item()
        assert mean[0].item() == pytest.approx(math.sqrt(abar) * 0.7)
        assert var[0].item() == pytest.approx(1 - abar)
        assert log_var[0].item() == pytest.approx(math.log(1 - abar))
        assert xt.mean().item() == pytest.approx(mean[0].item(), abs=5 * math.sqrt((1 - abar) / n) + 1e-12)
        assert xt.var().item() == pytest.approx(var[0].item(), rel=0.02)


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["linear", "cosine"]),
    i=st.integers(1, 999),
    x0=st.floats(-2, 2),
    xt=st.floats(-3, 3),
)
def test_posterior_matches_direct_bayes(name, i, x0, xt):
    # q(x_{t-1}|x_0) = N(sqrt(abar') x0, 1-abar'), q(x_t|x_{t-1}) = N(sqrt(alpha) x_{t-1}, beta):
    # multiply the two Gaussians in x_{t-1} (precisions add).
    s = SCHEDULES[name]
    beta = s.betas[i].item()
    abar_prev = s.alphas_cumprod[i - 1].item()
    prec = 1 / (1 - abar_prev) + (1 - beta) / beta
    var = 1 / prec
    mean = var * (math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(1 - beta) * xt / beta)
    diff = _diffusion(name)
    x0_t = torch.tensor([[x0]], dtype=torch.float64)
    xt_t = torch.tensor([[xt]], dtype=torch.float64)
    m, v, lv = diff.q_posterior_mean_variance(x0_t, xt_t, _t(i))
    assert m.item() == pytest.approx(mean, rel=1e-9, abs=1e-12)
    assert v.item() == pytest.approx(var, rel=1e-9)
    assert lv.item() == pytest.approx(math.log(var), rel=1e-9, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    m1=st.floats(-3, 3),
    m2=st.floats(-3, 3),
    lv1=st.floats(-4, 2),
    lv2=st.floats(-4, 2),
)
def test_normal_kl_matches_torch_distributions(m1, m2, lv1, lv2):
    args = [torch.tensor(v, dtype=torch.float64) for v in (m1, lv1, m2, lv2)]
    ours = normal_kl(*args).item()
    p = torch.distributions.Normal(args[0], (0.5 * args[1]).exp())
    q = torch.distributions.Normal(args[2], (0.5 * args[3]).exp())
    assert ours == pytest.approx(torch.distributions.kl_divergence(p, q).item(), rel=1e-9, abs=1e-12)
    assert normal_kl(args[0], args[1], args[0], args[1]).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("form", ["official", "exact"])
@pytest.mark.parametrize(
    "mean,log_scale", [(0.0, math.log(0.1)), (0.3, math.log(0.01)), (-0.95, math.log(0.5)), (0.9, -8.0)]
)
def test_discretized_likelihood_sums_to_one(mean, log_scale, form):
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    logp = discretized_gaussian_log_likelihood(
        x, means=torch.full_like(x, mean), log_scales=torch.full_like(x, log_scale), form=form
    )
    assert torch.isfinite(logp).all()
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("form", ["official", "exact"])
def test_discretized_likelihood_sharp_decoder_is_certain(form):
    x = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    logp = discretized_gaussian_log_likelihood(x, means=x, log_scales=torch.full_like(x, -10.0), form=form)
    assert torch.allclose(logp, torch.zeros_like(logp), atol=1e-9)


def _tanh_cdf(v: float) -> float:
    """Page's tanh approximation of the normal CDF, as in the DDPM/ADM decoder."""
    return 0.5 * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


def test_official_decoder_likelihood_follows_the_official_rule():
    # A middle level, a model error of 3 bins, std of 1 bin: the tanh CDF, not the exact one.
    x, mean, scale = 0.2, 0.2 + 6 / 255, 2 / 255
    x_t, m_t = torch.tensor([x], dtype=torch.float64), torch.tensor([mean], dtype=torch.float64)
    log_s = torch.tensor([math.log(scale)], dtype=torch.float64)
    upper, lower = (x - mean + 1 / 255) / scale, (x - mean - 1 / 255) / scale
    expected = math.log(_tanh_cdf(upper) - _tanh_cdf(lower))
    got = discretized_gaussian_log_likelihood(x_t, means=m_t, log_scales=log_s).item()
    assert got == pytest.approx(expected, rel=1e-12)
    exact = discretized_gaussian_log_likelihood(x_t, means=m_t, log_scales=log_s, form="exact").item()
    assert abs(exact - got) > 1e-3  # the two forms really differ here
    # Far in the tail of an edge bin the probability is clamped at 1e-12 before the log (log_ndtr is not).
    far = torch.tensor([1.0], dtype=torch.float64)
    far_args = {"means": torch.tensor([-0.5], dtype=torch.float64), "log_scales": torch.tensor([-6.0]).double()}
    assert discretized_gaussian_log_likelihood(far, **far_args).item() == pytest.approx(math.log(1e-12))
    assert discretized_gaussian_log_likelihood(far, **far_args, form="exact").item() < math.log(1e-12) - 100
    # Edge bins start at |x| > 0.999: x = -0.9985 is an interior bin officially, the edge bin in the exact form.
    edge_x = torch.tensor([-0.9985], dtype=torch.float64)
    f64 = torch.float64
    edge_args = {"means": torch.tensor([0.5], dtype=f64), "log_scales": torch.tensor([math.log(0.5)], dtype=f64)}
    u, low = (-0.9985 - 0.5 + 1 / 255) / 0.5, (-0.9985 - 0.5 - 1 / 255) / 0.5
    interior = math.log(_tanh_cdf(u) - _tanh_cdf(low))
    assert discretized_gaussian_log_likelihood(edge_x, **edge_args).item() == pytest.approx(interior, rel=1e-12)
    assert discretized_gaussian_log_likelihood(edge_x, **edge_args, form="exact").item() == pytest.approx(
        math.log(0.5 * math.erfc(-u / math.sqrt(2))), rel=1e-9
    )


def test_vb_term_uses_the_configured_decoder_form():
    diff_official = _diffusion("linear")
    diff_exact = dataclasses.replace(diff_official, decoder_likelihood="exact")
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 256, (4, 1, 4, 4), generator=g).double() / 127.5 - 1.0)
    xt = x0 + 0.01 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    output = torch.cat([x0 + 0.3, torch.zeros_like(x0)], dim=1)  # a large error at t=0
    t = torch.zeros(4, dtype=torch.long)
    official = diff_official.vb_terms_bpd(output, x0, xt, t)
    exact = diff_exact.vb_terms_bpd(output, x0, xt, t)
    assert not torch.allclose(official, exact, rtol=1e-3)
    with pytest.raises(ValueError, match="decoder_likelihood"):
        dataclasses.replace(diff_official, decoder_likelihood="tanh")


@settings(max_examples=10, deadline=None)
@given(name=st.sampled_from(["linear", "cosine"]), seed=st.integers(0, 2**16))
def test_prediction_conversions_round_trip(name, seed):
    diff = _diffusion(name)
    g = torch.Generator().manual_seed(seed)
    n = 64
    x0 = torch.randn(n, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 3, 2, 2, generator=g, dtype=torch.float64)
    # Stay below the cosine schedule's clipped tail, where abar ~ 1e-9 makes x0-from-eps ill-conditioned.
    t = torch.randint(0, 990, (n,), generator=g)
    xt = diff.q_sample(x0, t, eps)
    v = diff.v_from_x0_eps(x0, t, eps)
    torch.testing.assert_close(diff.x0_from_eps(xt, t, eps), x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(diff.eps_from_x0(xt, t, x0), eps, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(diff.x0_from_v(xt, t, v), x0)
    torch.testing.assert_close(diff.eps_from_v(xt, t, v), eps)
    for pred, value in (("eps", eps), ("v", v), ("x0", x0)):
        d = _diffusion(name, prediction=pred)
        torch.testing.assert_close(d.x0_from_prediction(xt, t, value), x0, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(d.eps_from_prediction(xt, t, value), eps, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(d.training_target(x0, t, eps), value)


def test_learned_range_variance_interpolates_between_bounds():
    diff = _diffusion("linear", learn_sigma=True)
    s = SCHEDULES["linear"]
    xt = torch.zeros(3, 1, 1, 1, dtype=torch.float64)
    t = _t(500, 3)
    var_values = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64).view(3, 1, 1, 1)
    out = diff.p_mean_variance_from_output(torch.cat([torch.zeros_like(xt), var_values], 1), xt, t)
    lo, hi = s.posterior_log_variance_clipped[500].item(), math.log(s.betas[500].item())
    assert out.log_variance.flatten().tolist() == pytest.approx([lo, 0.5 * (lo + hi), hi])
    fixed = _diffusion("linear", learn_sigma=False, fixed_variance="small")
    small = fixed.p_mean_variance_from_output(torch.zeros_like(xt), xt, t)
    assert small.log_variance.flatten().tolist() == pytest.approx([lo] * 3)
    large = _diffusion("linear", learn_sigma=False).p_mean_variance_from_output(torch.zeros_like(xt), xt, t)
    assert large.log_variance.flatten().tolist() == pytest.approx([hi] * 3)


def test_p_mean_is_posterior_mean_at_predicted_x0():
    diff = _diffusion("cosine", prediction="x0", learn_sigma=False)
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(4, 2, 3, 3, generator=g)
    x0 = torch.randn(4, 2, 3, 3, generator=g)
    t = torch.tensor([1, 10, 400, 999])
    out = diff.p_mean_variance_from_output(x0, xt, t)
    expected, _, _ = diff.q_posterior_mean_variance(x0, xt, t)
    torch.testing.assert_close(out.mean, expected)
    clipped = diff.p_mean_variance_from_output(3 * x0, xt, t, clip_denoised=True)
    assert clipped.pred_x0.abs().max() <= 1.0


class _Recorder(nn.Module):
    """1x1 conv backbone that keeps its last output so tests can inspect output gradients."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels, 1)
        self.last: torch.Tensor | None = None

    def forward(self, x, t, y=None):
        out = self.conv(x) + 1e-3 * t.view(-1, 1, 1, 1)
        out.retain_grad()
        self.last = out
        return out


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_training_losses_hybrid_vb_only_trains_variance(prediction):
    torch.manual_seed(0)
    C = 3
    diff = _diffusion("cosine", prediction=prediction, learn_sigma=True)
    model = _Recorder(C, 2 * C)
    x0 = torch.rand(4, C, 4, 4) * 2 - 1
    t = torch.tensor([0, 1, 500, 999])
    losses = diff.training_losses(model, x0, t, torch.randn_like(x0))
    assert set(losses) == {"loss", "mse", "vb"}
    for v in losses.values():
        assert v.shape == (4,) and torch.isfinite(v).all()
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])

    losses["vb"].sum().backward(retain_graph=True)
    grad = model.last.grad
    assert torch.count_nonzero(grad[:, :C]) == 0, "vb must not reach the mean channels"
    assert grad[:, C:].abs().sum() > 0, "vb must train the variance channels"

    model.zero_grad()
    model.last.grad = None
    losses["loss"].mean().backward()
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0


def test_training_losses_fixed_variance_has_zero_vb_and_matches_mse():
    torch.manual_seed(0)
    diff = _diffusion("linear", learn_sigma=False)
    model = _Recorder(2, 2)
    x0 = torch.randn(3, 2, 2, 2)
    noise = torch.randn_like(x0)
    t = torch.tensor([3, 30, 300])
    losses = diff.training_losses(model, x0, t, noise)
    assert torch.equal(losses["vb"], torch.zeros(3))
    pred = model(diff.q_sample(x0, t, noise), t.float())
    torch.testing.assert_close(losses["mse"], ((pred - noise) ** 2).mean(dim=(1, 2, 3)))


def test_vb_is_rescaled_by_num_timesteps():
    s = DiffusionSchedule.from_name("linear", 100)
    diff = GaussianDiffusion(s, learn_sigma=True)
    torch.manual_seed(0)
    model = _Recorder(1, 2)
    x0 = torch.rand(2, 1, 2, 2) * 2 - 1
    noise, t = torch.randn_like(x0), torch.tensor([0, 50])
    losses = diff.training_losses(model, x0, t, noise)
    out = model(diff.q_sample(x0, t, noise), t.float()).detach()
    torch.testing.assert_close(losses["vb"], diff.vb_terms_bpd(out, x0, diff.q_sample(x0, t, noise), t) * 0.1)


def test_wrong_channel_count_is_rejected():
    diff = _diffusion(learn_sigma=True)
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="6 output channels"):
        diff.p_mean_variance_from_output(x, x, _t(1))


@pytest.mark.parametrize(
    "kw,choices", [({"prediction": "score"}, "eps, v, x0"), ({"fixed_variance": "mid"}, "large, small")]
)
def test_unknown_options_list_choices(kw, choices):
    with pytest.raises(ValueError, match=choices):
        _diffusion(**kw)
