"""Flow's SDE sampler (Euler-Maruyama, SiT's sigma-form diffusion, mean last step) against exact Gaussian-data
velocities: the score it derives, what it converges to, and the closed form of its last step's bias."""

import math

import pytest
import torch

from archbench.diffusion import FlowMatching, create_diffusion, sde_sample
from archbench.diffusion.flow import score_from_velocity
from archbench.diffusion.oracles import flow_oracle

SHAPE = (64, 1, 16, 16)
FLOW = FlowMatching(learn_sigma=False)


def test_score_from_velocity_is_the_gaussian_score():
    """For x_0 ~ N(mu, s^2), p_t = N((1-t) mu, (1-t)^2 s^2 + t^2): its score from the exact velocity."""
    mu, s = 0.4, 0.7
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).view(-1, 1, 1, 1)
    for t in (0.05, 0.3, 0.8, 1.0):
        tt = torch.full((13,), t * 1000.0, dtype=torch.float64)
        velocity = flow_oracle(mu, s)(x, tt)
        var = (1 - t) ** 2 * s**2 + t**2
        expected = -(x - (1 - t) * mu) / var
        torch.testing.assert_close(score_from_velocity(x, torch.tensor(t, dtype=torch.float64), velocity), expected)


@pytest.mark.parametrize("mu,s", [(0.3, 0.5), (-0.5, 0.3), (0.0, 0.9)])
def test_sde_recovers_gaussian_data_with_a_short_last_step(mu, s):
    x = sde_sample(flow_oracle(mu, s), SHAPE, flow=FLOW, steps=400, last_step_size=0.004,
                   generator=torch.Generator().manual_seed(0))
    assert x.mean().item() == pytest.approx(mu, abs=0.02)
    assert x.var().item() == pytest.approx(s**2, rel=0.04)


@pytest.mark.parametrize("s", [0.3, 0.5, 0.9])
def test_mean_last_step_has_its_closed_form_bias(s):
    """SiT's default last step (drift only over t = 0.04 .. 0) scales x by k = 1 + t (a - b - t / V) for zero-mean
    data, where V = (1-t)^2 s^2 + t^2, a = (1-t) s^2 / V and b = t / V; so Var = k^2 V, below s^2 (5.5% at s=0.3)."""
    t = 0.04
    var_t = (1 - t) ** 2 * s**2 + t**2
    k = 1 + t * ((1 - t) * s**2 / var_t - t / var_t - t / var_t)
    x = sde_sample(flow_oracle(0.0, s), SHAPE, flow=FLOW, steps=400, generator=torch.Generator().manual_seed(1))
    assert x.var().item() == pytest.approx(k**2 * var_t, rel=0.025)


def test_zero_diffusion_is_the_deterministic_ode_on_the_same_grid():
    mu, s, steps, last = 0.2, 0.6, 20, 0.04
    model = flow_oracle(mu, s)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    runs = [
        sde_sample(model, SHAPE, flow=FLOW, steps=steps, diffusion_norm=0.0, noise=noise,
                   generator=torch.Generator().manual_seed(seed))
        for seed in (0, 1)
    ]
    assert torch.equal(*runs)
    x = noise.clone()
    ts = torch.linspace(1.0, last, steps, dtype=torch.float64).tolist() + [0.0]
    for t, t_next in zip(ts, ts[1:], strict=False):
        x = x + (t_next - t) * FLOW.velocity(model, x, torch.full((SHAPE[0],), t))
    torch.testing.assert_close(runs[0], x, rtol=1e-5, atol=1e-5)


def test_objective_offers_sde_with_settings_defaults_and_steps_model_calls():
    calls = []

    def model(x, t, y=None):
        calls.append(t[0].item())
        return torch.cat([x, x], dim=1)

    objective = create_diffusion("flow", sde_norm=0.5, sde_last_step=0.1)
    assert "sde" in objective.samplers
    objective.sample(model, (2, 1, 2, 2), sampler="sde", steps=7, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 7
    assert calls[0] == pytest.approx(1000.0) and calls[-1] == pytest.approx(100.0)
    a = objective.sample(model, (2, 1, 2, 2), sampler="sde", steps=5, generator=torch.Generator().manual_seed(3))
    b = objective.sample(model, (2, 1, 2, 2), sampler="sde", steps=5, generator=torch.Generator().manual_seed(3),
                         diffusion_norm=0.5, last_step_size=0.1)
    assert torch.equal(a, b)
    assert math.isfinite(a.sum().item())


def test_bad_sde_settings_are_refused():
    with pytest.raises(ValueError, match="steps >= 2"):
        sde_sample(flow_oracle(0, 1), (1, 1, 2, 2), flow=FLOW, steps=1)
    with pytest.raises(ValueError, match="sde_last_step"):
        create_diffusion("flow", sde_last_step=1.5)
