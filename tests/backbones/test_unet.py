"""U-Net family: the published DDPM size, the forward contract, conditioning paths and input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import backbones.unet  # noqa: F401  (registers the unet_* names)
from backbones.registry import backbone_config, build
from backbones.unet import UNet

TINY_ADM = dict(
    image_size=32,
    base_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(16,),
    num_head_channels=16,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomise_zero_layers(model: nn.Module) -> nn.Module:
    """Re-draw the zero-initialised weights, so outputs and gradients are not trivially zero."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0.0, 0.02)
    return model


def inputs(batch: int = 2, channels: int = 3, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(batch, channels, size, size), torch.randint(0, 1000, (batch,))


def test_ddpm_cifar10_parameter_count():
    with torch.device("meta"):  # the count needs the layers, not initialised weights
        model = build("unet_ddpm", image_size=32, in_channels=3)
    assert n_params(model) == 35_746_307
    assert model.family == "unet" and not model.fixed_size and model.spatial_multiple == 8


def test_config_is_json_and_round_trips():
    config = backbone_config("unet_adm")
    assert config["family"] == "unet" and config["scale_shift_norm"] and config["num_classes"] == 1000
    model = build("unet_t")
    assert model.channel_mult == [1, 2] and model.attention_resolutions == [16]


@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("num_classes", [0, 10])
@pytest.mark.parametrize("size", [32, 64])
def test_tiny_shapes_and_zero_output_at_init(learn_sigma, num_classes, size):
    model = build("unet_t", learn_sigma=learn_sigma, num_classes=num_classes)
    x, t = inputs(size=size)
    y = torch.tensor([3, 7]) if num_classes else None
    out = model(x, t, y)
    assert out.shape == (2, 6 if learn_sigma else 3, size, size)
    assert torch.equal(out, torch.zeros_like(out))  # final conv is zero-initialised, as in the official code
    if num_classes:
        assert model(x, t).shape == out.shape  # y=None -> null class


def test_tiny_gradients_reach_every_parameter():
    model = build("unet_t", num_classes=10).train()
    x, t = inputs()
    model(x, t, torch.tensor([1, 2])).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())

    model = randomise_zero_layers(build("unet_t", num_classes=10, class_dropout_prob=0.0)).train()
    model(x, t, torch.tensor([1, 2])).square().mean().backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead, f"no gradient reached: {dead}"


def test_tiny_eval_is_deterministic_and_finite():
    model = randomise_zero_layers(build("unet_t", num_classes=10)).eval()
    x, t = inputs()
    y = torch.tensor([0, 9])
    with torch.no_grad():
        a, b = model(x, t, y), model(x, t, y)
    assert torch.isfinite(a).all() and a.abs().sum() > 0
    assert torch.equal(a, b)


def test_tiny_timestep_and_label_change_the_output():
    model = randomise_zero_layers(build("unet_t", num_classes=10)).eval()
    x, t = inputs()
    with torch.no_grad():
        base = model(x, t, torch.tensor([0, 0]))
        assert not torch.allclose(base, model(x, t + 1, torch.tensor([0, 0])))
        assert not torch.allclose(base, model(x, t, torch.tensor([5, 5])))


def test_adm_tiny_class_conditional_scale_shift_learned_sigma():
    model = build("unet_adm", **TINY_ADM)
    assert model.learn_sigma and model.conditional and model.null_class == 1000
    block = model.input_blocks[1][0]
    assert block.scale_shift_norm and block.emb_proj.out_features == 2 * 32
    heads = [m.num_heads for m in model.modules() if m.__class__.__name__ == "AttentionBlock"]
    assert heads and set(heads) == {4}  # attention at 16x16 and in the middle: 64 channels, 16 per head
    randomise_zero_layers(model).eval()
    x, t = inputs()
    y = torch.tensor([3, 999])
    with torch.no_grad():
        out = model(x, t, y)
        guided = model.forward_with_cfg(x, t, y, cfg_scale=2.0)
    assert out.shape == (2, 6, 32, 32) and torch.isfinite(out).all()
    assert guided.shape == out.shape


def test_adm_default_builds_at_64():
    with torch.device("meta"):  # structure only: skip initialising 130M weights
        model = build("unet_adm")
    assert n_params(model) == 131_742_342
    assert model.image_size == 64 and model.spatial_multiple == 8 and model.out_channels == 6


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(image_size=36), "divisible by 8"),
        (dict(base_channels=48), "norm_groups"),
        (dict(num_heads=3), "num_heads"),
        (dict(num_head_channels=24), "num_head_channels"),
        (dict(attention_resolutions=(12,)), "attention_resolutions"),
        (dict(channel_mult=()), "channel_mult"),
    ],
)
def test_invalid_configs_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        UNet(**{"base_channels": 64, "channel_mult": (1, 2, 2, 2), **overrides})


def test_bad_inputs_raise():
    model = build("unet_t", num_classes=0)
    x, t = inputs()
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(2, 4, 32, 32), t)
    with pytest.raises(ValueError, match="multiple of 2"):
        model(torch.randn(2, 3, 33, 33), t)
    with pytest.raises(ValueError, match="unconditional"):
        model(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="multiple of 8"):
        build("unet_t", channel_mult=(1, 1, 1, 1))(torch.randn(1, 3, 20, 20), t[:1])
