"""The objective protocol, over every registered objective: settings, training times, losses, every sampler,
and the rule that no code outside ``archbench.diffusion`` asks which objective it holds."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from tiny_net import TinyNet

from archbench.diffusion import OBJECTIVES, Objective, create_diffusion, objective_class, objective_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", OBJECTIVES)
def test_settings_are_the_objectives_own_and_build_it(name):
    cls = objective_class(name)
    settings = objective_settings(name)
    assert settings == dataclasses.asdict(cls.Settings())
    objective = create_diffusion(name, **settings)
    assert isinstance(objective, Objective) and objective.name == name
    assert objective.default_sampler in objective.samplers and len(set(objective.samplers)) == len(objective.samplers)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_draw_t_is_reproducible_per_generator(name):
    objective = create_diffusion(name)
    a = objective.draw_t(8, torch.Generator().manual_seed(0))
    b = objective.draw_t(8, torch.Generator().manual_seed(0))
    assert a.shape == (8,) and torch.equal(a, b)
    # one draw of 1 from a fresh generator is the first element of a batch draw: per-example seeds rely on it
    assert torch.equal(objective.draw_t(1, torch.Generator().manual_seed(0)), a[:1])


@pytest.mark.parametrize("name", OBJECTIVES)
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_losses_train_every_parameter(name, learn_sigma):
    torch.manual_seed(0)
    objective = create_diffusion(name, learn_sigma=learn_sigma)
    net = TinyNet(learn_sigma=learn_sigma)
    x0 = torch.rand(4, 2, 4, 4) * 2 - 1
    t = objective.draw_t(4, torch.Generator().manual_seed(1))
    noise = torch.randn(4, 2, 4, 4)
    losses = objective.losses(net, x0, t, noise, {"y": torch.tensor([0, 1, 2, 3])})
    assert {"loss", "mse"} <= set(losses) and all(v.shape == (4,) for v in losses.values())
    losses["loss"].mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_sampler_runs_guided_and_reproducibly(name):
    objective = create_diffusion(name)
    net = TinyNet()
    kwargs = {"y": torch.tensor([0, 2])}
    for sampler in objective.samplers:
        common = dict(sampler=sampler, steps=4, cfg_scale=2.0, null_class=3, model_kwargs=kwargs)
        with torch.no_grad():
            a = objective.sample(net, (2, 2, 4, 4), generator=torch.Generator().manual_seed(1), **common)
            b = objective.sample(net, (2, 2, 4, 4), generator=torch.Generator().manual_seed(1), **common)
        assert a.shape == (2, 2, 4, 4) and torch.isfinite(a).all() and torch.equal(a, b), sampler


@pytest.mark.parametrize("name", OBJECTIVES)
def test_unknown_sampler_names_the_objective_and_its_samplers(name):
    objective = create_diffusion(name)
    valid = re.escape(", ".join(objective.samplers))
    with pytest.raises(ValueError, match=f"diffusion={name}; valid choices: {valid}"):
        objective.check_sampler("no_such_sampler")
    assert objective.check_sampler(None) == objective.default_sampler


def test_keys_of_another_objective_are_validated_then_ignored():
    flow = create_diffusion("flow", loss_weighting="min_snr", schedule="cosine", sigma_data=0.3)
    assert flow.name == "flow"
    with pytest.raises(ValueError, match="loss_weighting"):
        create_diffusion("flow", loss_weighting="p2")
    with pytest.raises(ValueError, match="sigma_data"):
        create_diffusion("ddpm", sigma_data=-1.0)
    with pytest.raises(ValueError, match="unknown setting 'bogus' for diffusion=edm; valid: "):
        create_diffusion("edm", bogus=1)


def test_no_code_outside_diffusion_names_an_objective_class():
    """Outside ``archbench/diffusion`` an objective is an ``Objective``: no concrete class, no isinstance test."""
    classes = [objective_class(name).__name__ for name in OBJECTIVES]
    pattern = re.compile(r"\b(" + "|".join(classes) + r")\b|isinstance\([^)]*objective", re.IGNORECASE)
    offenders = []
    for path in (ROOT / "archbench").rglob("*.py"):
        if "diffusion" in path.relative_to(ROOT / "archbench").parts[:1]:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
