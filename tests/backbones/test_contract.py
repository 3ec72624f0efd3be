"""The forward contract, checked as a property over every family's tiny member."""

import copy

import pytest
import torch
from conftest import TINY_BACKBONES, TINY_VARIANTS
from hypothesis import given
from hypothesis import strategies as st

import archbench


@st.composite
def contract_cases(draw):
    name = draw(st.sampled_from(TINY_BACKBONES))
    if name == "unet_t":  # its attention sits at 16x16, so the input must reach that level
        image_size = draw(st.sampled_from([16, 32]))
    else:  # a multiple of what the patch grid (and, for the hourglass, each 2x2 merge) needs, 4 to 12
        config = archbench.backbone_config(name)
        multiple = config["patch_size"] * 2 ** (len(config.get("widths", [0])) - 1)
        image_size = multiple * draw(st.integers(max(1, 4 // multiple), 12 // multiple))
    return dict(
        name=name,
        batch=draw(st.integers(1, 3)),
        image_size=image_size,
        in_channels=draw(st.integers(1, 4)),
        num_classes=draw(st.sampled_from([0, 3])),
        learn_sigma=draw(st.booleans()),
    )


@given(contract_cases())
def test_forward_contract(case):
    check_contract(case)


@pytest.mark.parametrize("name", TINY_VARIANTS)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_forward_contract_of_every_variant(name, num_classes):
    """Each one-axis variant (scan order, mixer, hybrid, skeleton) keeps the contract, at a non-default size."""
    check_contract(dict(name=name, batch=2, image_size=12, in_channels=2, num_classes=num_classes, learn_sigma=True))


def check_contract(case):
    torch.manual_seed(0)
    b, size, channels = case["batch"], case["image_size"], case["in_channels"]
    model = archbench.build(
        case["name"],
        image_size=size,
        in_channels=channels,
        num_classes=case["num_classes"],
        learn_sigma=case["learn_sigma"],
    )
    x = torch.randn(b, channels, size, size)
    t = torch.randint(0, 1000, (b,))
    y = torch.randint(0, case["num_classes"], (b,)) if case["num_classes"] else None

    model.train()
    out = model(x, t, y)
    expected_channels = 2 * channels if case["learn_sigma"] else channels
    assert out.shape == (b, expected_channels, size, size)
    assert torch.isfinite(out).all()
    # DDP needs every trainable parameter in the graph; perturb so no zero-init output hides a path.
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"

    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, t, y), model(x, t, y))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, y)
    assert low.shape == out.shape and torch.isfinite(low.float()).all()


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_float_timesteps_accepted(name):
    model = archbench.build(name).eval()
    x = torch.randn(2, model.in_channels, 32, 32)
    out = model(x, torch.tensor([0.25, 999.5]), torch.tensor([1, 2]))
    assert torch.isfinite(out).all()


def test_dit_outputs_exactly_zero_at_init():
    model = archbench.build("dit_t2", learn_sigma=True)
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([3, 700]), torch.tensor([0, 9]))
    assert torch.count_nonzero(out) == 0


def first_patch_change(model, x, t) -> float:
    changed = x.clone()
    changed[..., -2:, -2:] += 1.0
    with torch.no_grad():
        return (model(x, t) - model(changed, t))[..., :2, :2].abs().max().item()


def test_dis_is_bidirectional(monkeypatch):
    """Changing the last patch changes the first patch's output; with the backward scan
    switched off (a causal model) the first patch must not move at all."""
    from backbones.layers.mamba import BiMamba

    torch.manual_seed(0)
    # Mamba's dt init in both directions: the official one starts the backward step at softplus(0) = 0.69, a
    # decay of at most 0.5 per token, so across 256 tokens the backward signal underflows fp32 at init.
    model = archbench.build("dis_t2", num_classes=0, backward_dt_init="mamba").eval()
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([10])
    assert first_patch_change(model, x, t) > 1e-8  # small at init: dt starts in [1e-3, 0.1]

    original = BiMamba.scan_direction

    def forward_only(self, x, z, backward=False, **options):
        out = original(self, x, z, backward, **options)
        return torch.zeros_like(out) if backward else out

    monkeypatch.setattr(BiMamba, "scan_direction", forward_only)
    assert first_patch_change(model, x, t) == 0.0


def test_backward_direction_is_forward_mixer_on_flipped_sequence():
    """Swap the two directions' parameters: the mixer must then act as its mirror image."""
    from backbones.layers.mamba import BiMamba

    torch.manual_seed(0)
    mixer = BiMamba(16, scan="reference")
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    swapped = copy.deepcopy(mixer)
    forward_keys = ["conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D"]
    backward_keys = ["conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight", "dt_proj_b.bias"]
    backward_keys += ["A_b_log", "D_b"]
    state = mixer.state_dict()
    renamed = dict(state)
    for f, b in zip(forward_keys, backward_keys, strict=True):
        renamed[f], renamed[b] = state[b], state[f]
    swapped.load_state_dict(renamed)
    h = torch.randn(2, 9, 16)
    with torch.no_grad():
        assert torch.allclose(swapped(h.flip(1)), mixer(h).flip(1), atol=1e-5)
        x, z = mixer.in_proj(h).transpose(1, 2).chunk(2, dim=1)
        backward = mixer.scan_direction(x.flip(-1), z.flip(-1), backward=True)
        forward_on_flipped = swapped.scan_direction(x.flip(-1), z.flip(-1), backward=False)
        assert torch.allclose(backward, forward_on_flipped, atol=1e-6)
        # What forward() runs: the unflipped sequence read backwards in place, output in token order.
        assert torch.equal(mixer.scan_direction(x, z, backward=True, reverse=True), backward.flip(-1))


def test_uvit_mixer_is_swappable():
    attention = archbench.build("uvit_t2")
    mamba = archbench.build("uvit_t2", mixer="bimamba")
    assert type(attention.in_blocks[0].mixer).__name__ == "Attention"
    assert type(mamba.in_blocks[0].mixer).__name__ == "BiMamba"
    with pytest.raises(ValueError, match="attention, bimamba"):
        archbench.build("uvit_t2", mixer="conv")


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_classifier_free_guidance_helper(name):
    model = archbench.build(name).eval()
    x = torch.randn(2, model.in_channels, 32, 32)
    t = torch.tensor([5, 50])
    y = torch.tensor([1, 2])
    with torch.no_grad():
        cond = model(x, t, y)
        assert torch.allclose(model.forward_with_cfg(x, t, y, cfg_scale=1.0), cond, atol=1e-5)
        uncond = model(x, t, None)  # None -> null class
        guided = model.forward_with_cfg(x, t, y, cfg_scale=3.0)
    c = model.in_channels
    assert torch.allclose(guided[:, :c], uncond[:, :c] + 3.0 * (cond[:, :c] - uncond[:, :c]), atol=1e-4)
    assert torch.allclose(guided[:, c:], cond[:, c:], atol=1e-5)


class TestBadInput:
    @pytest.fixture(params=TINY_BACKBONES)
    def model(self, request):
        return archbench.build(request.param).eval()

    def test_wrong_rank(self, model):
        with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
            model(torch.randn(3, 32, 32), torch.tensor([1]), torch.tensor([1]))

    def test_wrong_channels(self, model):
        with pytest.raises(ValueError, match="input channels"):
            model(torch.randn(1, 5, 32, 32), torch.tensor([1]), torch.tensor([1]))

    def test_spatial_not_divisible(self, model):
        with pytest.raises(ValueError, match="multiple of"):
            model(torch.randn(1, 3, 31, 31), torch.tensor([1]), torch.tensor([1]))

    def test_label_out_of_range(self, model):
        with pytest.raises(ValueError, match=r"class labels must lie in \[0, 10\]"):
            model(torch.randn(1, 3, 32, 32), torch.tensor([1]), torch.tensor([11]))

    def test_labels_to_unconditional_model(self, model):
        name = model.backbone_name
        uncond = archbench.build(name, num_classes=0)
        with pytest.raises(ValueError, match="unconditional"):
            uncond(torch.randn(1, 3, 32, 32), torch.tensor([1]), torch.tensor([1]))

    def test_timestep_shape(self, model):
        with pytest.raises(ValueError, match="one timestep per image"):
            model(torch.randn(2, 3, 32, 32), torch.tensor([1]), torch.tensor([1, 2]))

    def test_inputs_on_another_device_are_one_line_naming_both(self, model):
        """x (or t, y) on another device than the weights, the meta device included: one ValueError naming
        both devices, not an error from deep inside torch."""
        x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), torch.tensor([1, 2])
        cases = [
            ((x.to("meta"), t.to("meta"), y.to("meta")), "x is on meta but the model's weights are on cpu"),
            ((x, t.to("meta"), y), "t is on meta but x is on cpu"),
            ((x, t, y.to("meta")), "y is on meta but x is on cpu"),
        ]
        for args, message in cases:
            with pytest.raises(ValueError, match=message) as info:
                model(*args)
            assert "\n" not in str(info.value)
        on_meta = copy.deepcopy(model).to("meta")  # weights on meta, inputs on the CPU
        with pytest.raises(ValueError, match="x is on cpu but the model's weights are on meta") as info:
            on_meta(x, t, y)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["dis_t2", "dit_t2", "uvit_t2"])
def test_token_backbone_rejects_other_size(name):
    model = archbench.build(name)
    with pytest.raises(ValueError, match="built for 32x32"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.tensor([1]))


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_plain_int_and_float_timesteps_are_one_per_image(name):
    model = archbench.build(name).eval()
    x = torch.randn(2, model.in_channels, model.image_size, model.image_size)
    y = torch.tensor([1, 2]) if model.num_classes else None
    with torch.no_grad():
        assert torch.equal(model(x, 7, y), model(x, torch.tensor([7, 7]), y))
        assert torch.equal(model(x, 0.5, y), model(x, torch.tensor([0.5, 0.5]), y))


@pytest.mark.parametrize(
    ("make_x", "fragment"),
    [
        (lambda m: torch.randn(1, m.in_channels, 32, 32, dtype=torch.float64), "x is torch.float64"),
        (lambda m: torch.zeros(1, m.in_channels, 32, 32, dtype=torch.long), "floating-point"),
    ],
)
def test_wrong_input_dtype_is_named(make_x, fragment):
    model = archbench.build("unet_t", num_classes=0)
    with pytest.raises(ValueError, match=fragment):
        model(make_x(model), torch.tensor([1]))


@pytest.mark.parametrize(
    ("name", "override", "fragment"),
    [
        ("dis_t2", {"depth": -1}, "depth must be a positive integer, got -1"),
        ("dis_t2", {"width": 0}, "width must be a positive integer, got 0"),
        ("dit_t2", {"num_heads": 0}, "num_heads must be a positive integer"),
        ("uvit_t2", {"mlp_ratio": -2.0}, "mlp_ratio must be a positive number"),
        ("unet_t", {"channel_mult": [1, 0]}, "channel_mult must hold positive integers"),
    ],
)
def test_bad_structural_sizes_name_the_argument(name, override, fragment):
    with pytest.raises(ValueError, match=fragment):
        archbench.build(name, **override)
