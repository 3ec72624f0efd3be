"""Flow matching: interpolant, loss with learned-sigma backbones, Euler/Heun against the exact velocity."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from archbench.diffusion import FlowMatching, euler_sample, heun_sample
from archbench.diffusion.oracles import flow_oracle

SHAPE = (64, 1, 16, 16)


def test_interpolant_endpoints_and_velocity():
    fm = FlowMatching(learn_sigma=False)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    torch.testing.assert_close(fm.interpolate(x0, torch.zeros(2), eps), x0)  # t=0 is data
    torch.testing.assert_close(fm.interpolate(x0, torch.ones(2), eps), eps)  # t=1 is noise
    t = torch.tensor([0.25, 0.6])
    dt = 1e-3
    finite_diff = (fm.interpolate(x0, t + dt, eps) - fm.interpolate(x0, t, eps)) / dt
    torch.testing.assert_close(finite_diff, fm.velocity_target(x0, eps), atol=1e-3, rtol=1e-3)


def test_model_sees_t_times_1000():
    seen = []

    def model(x, t, y=None):
        seen.append(t)
        return x

    fm = FlowMatching(learn_sigma=False)
    fm.training_losses(model, torch.zeros(2, 1, 2, 2), torch.tensor([0.0, 0.5]))
    assert seen[0].tolist() == [0.0, 500.0] and seen[0].dtype == torch.float32
    euler_sample(model, (1, 1, 2, 2), flow=fm, steps=4, generator=torch.Generator().manual_seed(0))
    assert [t.item() for t in seen[1:]] == [1000.0, 750.0, 500.0, 250.0]


class _Recorder(nn.Module):
    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels, 1)
        self.last: torch.Tensor | None = None

    def forward(self, x, t, y=None):
        out = self.conv(x)
        out.retain_grad()
        self.last = out
        return out


def test_loss_ignores_sigma_channels_but_keeps_them_in_graph():
    torch.manual_seed(0)
    C = 2
    fm = FlowMatching(learn_sigma=True)
    model = _Recorder(C, 2 * C)
    x0, noise = torch.randn(3, C, 4, 4), torch.randn(3, C, 4, 4)
    t = torch.tensor([0.1, 0.5, 0.9])
    losses = fm.training_losses(model, x0, t, noise)
    assert set(losses) == {"loss", "mse"}
    torch.testing.assert_close(losses["loss"], losses["mse"])
    pred = model.last[:, :C].detach()
    expected = ((noise - x0 - pred) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(losses["mse"], expected)
    losses["loss"].mean().backward()
    grad = model.last.grad
    assert grad is not None and grad[:, :C].abs().sum() > 0
    assert torch.count_nonzero(grad[:, C:]) == 0  # reached by autograd, contributes nothing
    assert torch.isfinite(model.conv.weight.grad).all()


def test_wrong_channel_count_is_rejected():
    with pytest.raises(ValueError, match="expected 4 output channels"):
        FlowMatching(learn_sigma=True).training_losses(lambda x, t: x, torch.zeros(1, 2, 2, 2), torch.zeros(1))


def _standard_noise(seed):
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    return (z - z.mean()) / z.std()


@settings(max_examples=8, deadline=None)
@given(
    sampler=st.sampled_from(["euler", "heun"]),
    learn_sigma=st.booleans(),
    mu=st.floats(-0.8, 0.8),
    s=st.floats(0.3, 1.2),
)
def test_oracle_velocity_recovers_gaussian_data(sampler, learn_sigma, mu, s):
    fn, steps = (euler_sample, 200) if sampler == "euler" else (heun_sample, 25)
    fm = FlowMatching(learn_sigma=learn_sigma)
    x = fn(flow_oracle(mu, s, learn_sigma=learn_sigma), SHAPE, flow=fm, steps=steps, noise=_standard_noise(2))
    assert x.mean().item() == pytest.approx(mu, abs=0.01)
    assert x.var().item() == pytest.approx(s**2, rel=0.04)


def test_heun_is_second_order():
    # Error of the final variance falls ~4x when steps double (Euler: ~2x), once in the asymptotic regime.
    mu, s = 0.3, 0.4
    fm = FlowMatching(learn_sigma=False)
    noise = _standard_noise(3)

    def err(fn, steps):
        return abs(fn(flow_oracle(mu, s), SHAPE, flow=fm, steps=steps, noise=noise).var().item() - s**2)

    assert err(heun_sample, 16) / err(heun_sample, 32) > 3.0
    assert 1.5 < err(euler_sample, 16) / err(euler_sample, 32) < 2.5


def test_flow_samplers_reproducible():
    fm = FlowMatching(learn_sigma=False)
    oracle = flow_oracle(0.0, 0.5)
    a = heun_sample(oracle, (2, 1, 4, 4), flow=fm, steps=3, generator=torch.Generator().manual_seed(5))
    b = heun_sample(oracle, (2, 1, 4, 4), flow=fm, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        euler_sample(oracle, (1, 1, 1, 1), flow=fm, steps=0)
