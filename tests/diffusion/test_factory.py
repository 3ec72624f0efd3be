"""create_diffusion: option validation, training losses with self-drawn t, sampling by name, CFG plumbing."""

import pytest
import torch
from tiny_net import TinyNet

from archbench.diffusion import FlowObjective, GaussianObjective, create_diffusion


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_training_losses_are_finite_and_backprop(objective, learn_sigma):
    torch.manual_seed(0)
    diffusion = create_diffusion(objective, learn_sigma=learn_sigma)
    net = TinyNet(learn_sigma=learn_sigma)
    x0 = torch.rand(4, 2, 4, 4) * 2 - 1
    y = torch.tensor([0, 1, 2, 3])
    losses = diffusion.training_losses(net, x0, {"y": y}, generator=torch.Generator().manual_seed(0))
    expected = {"loss", "mse", "vb"} if objective == "ddpm" else {"loss", "mse"}
    assert set(losses) == expected
    assert all(v.shape == (4,) and torch.isfinite(v).all() for v in losses.values())
    losses["loss"].mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    again = diffusion.training_losses(net, x0, {"y": y}, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again["loss"], losses["loss"])


@pytest.mark.parametrize(
    "objective,sampler,steps",
    [("ddpm", "ddpm", 5), ("ddpm", "ddim", "ddim5"), ("ddpm", "dpm++2m", 5), ("flow", "euler", 4), ("flow", "heun", 3)],
)
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_sample_every_sampler(objective, sampler, steps, cfg_scale):
    diffusion = create_diffusion(objective, schedule="cosine", T=100)
    net = TinyNet()
    kwargs = {"y": torch.tensor([0, 2])}
    with torch.no_grad():
        a = diffusion.sample(
            net,
            (2, 2, 4, 4),
            sampler=sampler,
            steps=steps,
            cfg_scale=cfg_scale,
            null_class=3,
            model_kwargs=kwargs,
            generator=torch.Generator().manual_seed(1),
        )
        b = diffusion.sample(
            net,
            (2, 2, 4, 4),
            sampler=sampler,
            steps=steps,
            cfg_scale=cfg_scale,
            null_class=3,
            model_kwargs=kwargs,
            generator=torch.Generator().manual_seed(1),
        )
    assert a.shape == (2, 2, 4, 4) and torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_factory_types_and_time_scale():
    assert isinstance(create_diffusion("ddpm"), GaussianObjective)
    flow = create_diffusion("flow", T=500)
    assert isinstance(flow, FlowObjective) and flow.flow.time_scale == 500.0
    ddpm = create_diffusion("ddpm", schedule="cosine", prediction="v", learn_sigma=False, T=250)
    assert ddpm.diffusion.prediction == "v" and ddpm.num_timesteps == 250 and not ddpm.diffusion.learn_sigma


@pytest.mark.parametrize(
    "kwargs,choices",
    [
        ({"objective": "score"}, "ddpm, flow"),
        ({"schedule": "sigmoid"}, "linear, cosine"),
        ({"prediction": "score"}, "eps, v, x0"),
        ({"objective": "flow", "prediction": "eps"}, "velocity"),
        ({"fixed_variance": "medium"}, "large, small"),
    ],
)
def test_unknown_options_raise_with_choices(kwargs, choices):
    with pytest.raises(ValueError, match=choices):
        create_diffusion(**kwargs)


@pytest.mark.parametrize(
    "objective,bad,choices", [("ddpm", "euler", "ddpm, ddim, dpm\\+\\+2m"), ("flow", "ddim", "euler, heun")]
)
def test_unknown_sampler_raises_with_choices(objective, bad, choices):
    with pytest.raises(ValueError, match=choices):
        create_diffusion(objective).sample(TinyNet(), (1, 2, 2, 2), sampler=bad, steps=2)


def test_guidance_needs_labels_and_null_class():
    diffusion = create_diffusion("flow")
    with pytest.raises(ValueError, match="null_class"):
        diffusion.sample(TinyNet(), (1, 2, 2, 2), sampler="euler", steps=2, cfg_scale=2.0)


@pytest.mark.parametrize("objective,sampler", [("ddpm", "ddim"), ("flow", "heun")])
def test_progress_bar_does_not_change_result(objective, sampler):
    diffusion = create_diffusion(objective, T=50)
    net = TinyNet(learn_sigma=True)
    with torch.no_grad():
        runs = [
            diffusion.sample(
                net, (1, 2, 2, 2), sampler=sampler, steps=3, generator=torch.Generator().manual_seed(0), progress=p
            )
            for p in (False, True)
        ]
    assert torch.equal(*runs)


def test_guide_channels_guides_only_the_first_channels():
    """DiT's official sampler guides 3 of 4 latent channels: the rest follow the conditional prediction."""
    objective = create_diffusion("ddpm", learn_sigma=False)

    def model(x, t, y):  # eps depends on the label, channel by channel
        return x * 0 + (y.float()[:, None, None, None] - 0.5) * torch.tensor([1.0, 2.0])[None, :, None, None]

    kwargs = {"y": torch.tensor([1, 1])}
    common = dict(sampler="ddim", steps=3, cfg_scale=3.0, null_class=0, model_kwargs=kwargs)
    noise = torch.randn(2, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    all_guided = objective.sample(model, (2, 2, 2, 2), noise=noise, **common)
    first_only = objective.sample(model, (2, 2, 2, 2), noise=noise, guide_channels=1, **common)
    unguided = objective.sample(model, (2, 2, 2, 2), noise=noise, **{**common, "cfg_scale": 1.0})
    assert torch.equal(first_only[:, 0], all_guided[:, 0])
    assert torch.equal(first_only[:, 1], unguided[:, 1]) and not torch.equal(all_guided[:, 1], unguided[:, 1])
