"""Min-SNR loss weighting: every prediction's weighted loss equals min(SNR_t, gamma) times the x0 error."""

import pytest
import torch

from archbench.diffusion import DiffusionSchedule, GaussianDiffusion, create_diffusion

SCHEDULE = DiffusionSchedule.from_name("linear", 1000)
GAMMA = 5.0


class FixedOutput(torch.nn.Module):
    """A 'model' whose prediction is a fixed tensor, so the loss's weighting can be checked in isolation."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output

    def forward(self, x, t, y=None):
        return self.output


def _snr(t: torch.Tensor) -> torch.Tensor:
    abar = torch.cumprod(1.0 - SCHEDULE.betas, dim=0)[t]  # from the betas, not the schedule's own table
    return abar / (1.0 - abar)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_weighted_loss_is_min_snr_times_the_x0_error(prediction):
    diff = GaussianDiffusion(SCHEDULE, prediction=prediction, learn_sigma=False,
                             loss_weighting="min_snr", min_snr_gamma=GAMMA)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 10, 50, 120, 300, 600, 999])  # SNR from ~1e4 down to ~4e-5: both sides of gamma
    x0 = torch.randn(len(t), 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    pred = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    mse = diff.training_losses(FixedOutput(pred), x0, t, noise=noise)["mse"]
    xt = diff.q_sample(x0, t, noise)
    x0_error = ((diff.x0_from_prediction(xt, t, pred) - x0) ** 2).mean(dim=(1, 2, 3))
    expected = _snr(t).clamp(max=GAMMA) * x0_error
    assert torch.allclose(mse, expected, rtol=1e-5, atol=0)


def test_eps_weight_is_one_where_snr_is_below_gamma_and_gamma_over_snr_above():
    diff = GaussianDiffusion(SCHEDULE, loss_weighting="min_snr", min_snr_gamma=GAMMA)
    t = torch.arange(1000)
    weight, snr = diff.loss_weight(t).double(), _snr(t)
    assert torch.allclose(weight[snr <= GAMMA], torch.ones((), dtype=torch.float64), atol=1e-6)
    assert torch.allclose(weight[snr > GAMMA], GAMMA / snr[snr > GAMMA], rtol=1e-6)
    assert (snr > GAMMA).any() and (snr <= GAMMA).any()


def test_none_leaves_the_simple_loss_unchanged():
    g = torch.Generator().manual_seed(1)
    x0, noise, pred = (torch.randn(3, 1, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([5, 400, 900])
    plain = GaussianDiffusion(SCHEDULE, learn_sigma=False)
    weighted = GaussianDiffusion(SCHEDULE, learn_sigma=False, loss_weighting="min_snr")
    simple = plain.training_losses(FixedOutput(pred), x0, t, noise=noise)["mse"]
    assert torch.equal(simple, ((noise - pred) ** 2).mean(dim=(1, 2, 3)))
    assert not torch.allclose(weighted.training_losses(FixedOutput(pred), x0, t, noise=noise)["mse"], simple)


def test_bad_settings_say_what_is_valid():
    with pytest.raises(ValueError, match="loss_weighting.*none, min_snr"):
        create_diffusion(loss_weighting="p2")
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        create_diffusion(loss_weighting="min_snr", min_snr_gamma=0.0)
    with pytest.raises(ValueError, match="loss_weighting"):
        create_diffusion("flow", loss_weighting="p2")


def test_flow_ignores_the_ddpm_weighting_so_one_recipe_serves_both_objectives():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 1, 4, 4, generator=g)
    net = torch.nn.Conv2d(1, 2, 1)
    losses = [
        create_diffusion("flow", loss_weighting=w).training_losses(
            lambda x, t, y=None: net(x), x0, generator=torch.Generator().manual_seed(3))["loss"]
        for w in ("none", "min_snr")
    ]
    assert torch.equal(losses[0], losses[1])
