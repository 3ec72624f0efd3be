"""DiS starts from the model the official code builds: every parameter checked against the official init rules.

The rules, read off the official DiS repository (``models_dis.py``'s ``_init_weights`` over mamba's
``mamba_simple.Mamba``): PyTorch's default Linear/Conv init everywhere, then every Linear bias zeroed except
the one marked ``_no_reinit`` (only the forward ``dt_proj.bias``, which carries Mamba's dt init), embeddings
N(0, 0.02), each mixer's ``out_proj.weight`` re-drawn from PyTorch's default and divided by sqrt(depth), the
position table zero, A = log(1..N), D = 1, norms one.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import archbench

WIDTH, DEPTH, DT_RANK, N = 96, 4, 6, 16


def _uniform(bound: float):
    def check(name: str, p: torch.Tensor) -> None:
        assert p.abs().max() <= bound * (1 + 1e-6), f"{name}: |w| exceeds the uniform bound {bound}"
        assert p.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15), f"{name}: not U(+-{bound})"

    return check


def _normal(std: float):
    def check(name: str, p: torch.Tensor) -> None:
        assert p.mean().abs() < 4 * std / math.sqrt(p.numel()) + 1e-3, name
        assert p.std().item() == pytest.approx(std, rel=0.15), f"{name}: not N(0, {std})"

    return check


def _constant(value: float):
    def check(name: str, p: torch.Tensor) -> None:
        assert torch.equal(p, torch.full_like(p, value)), f"{name}: expected all {value}"

    return check


def _mamba_dt_bias(name: str, p: torch.Tensor) -> None:
    dt = F.softplus(p)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4), f"{name}: softplus(bias) outside [1e-3, 0.1]"
    log_dt = dt.log()
    mid = 0.5 * (math.log(1e-3) + math.log(0.1))
    assert log_dt.mean().item() == pytest.approx(mid, abs=0.35), f"{name}: dt not log-uniform"


def _a_log(name: str, p: torch.Tensor) -> None:
    expected = torch.arange(1, N + 1, dtype=torch.float32).log().expand_as(p)
    assert torch.allclose(p, expected), f"{name}: A_log must be log(1..N) per channel"


def _rules(backward_dt_init: str) -> list[tuple[str, object]]:
    """(name suffix or exact name, check); the first rule whose suffix matches applies."""
    linear_default = {  # PyTorch's default Linear init: U(+-1/sqrt(fan_in))
        "mixer.in_proj.weight": WIDTH,
        "mixer.x_proj.weight": 2 * WIDTH,
        "mixer.x_proj_b.weight": 2 * WIDTH,
        "skip_linear.weight": 2 * WIDTH,
        "time_embed.mlp.0.weight": WIDTH,
        "time_embed.mlp.2.weight": 4 * WIDTH,
        "final_layer.linear.weight": WIDTH,
        "final_layer.adaLN_modulation.1.weight": WIDTH,
    }
    rules: list[tuple[str, object]] = [(k, _uniform(fan_in**-0.5)) for k, fan_in in linear_default.items()]
    rules += [
        ("mixer.dt_proj.weight", _uniform(DT_RANK**-0.5)),
        ("mixer.dt_proj_b.weight", _uniform(DT_RANK**-0.5)),
        ("mixer.dt_proj.bias", _mamba_dt_bias),
        ("mixer.dt_proj_b.bias", _constant(0.0) if backward_dt_init == "official" else _mamba_dt_bias),
        ("mixer.out_proj.weight", _uniform((2 * WIDTH) ** -0.5 / math.sqrt(DEPTH))),
        ("mixer.conv1d.weight", _uniform(0.5)),  # depthwise, kernel 4: fan_in 4
        ("mixer.conv1d_b.weight", _uniform(0.5)),
        ("mixer.conv1d.bias", _uniform(0.5)),  # conv biases are not zeroed (only Linear biases are)
        ("mixer.conv1d_b.bias", _uniform(0.5)),
        ("mixer.A_log", _a_log),
        ("mixer.A_b_log", _a_log),
        ("mixer.D", _constant(1.0)),
        ("mixer.D_b", _constant(1.0)),
        ("norm.weight", _constant(1.0)),
        ("norm_f.weight", _constant(1.0)),
        ("pos_embed", _constant(0.0)),
        ("label_embed.embedding_table.weight", _normal(0.02)),
        ("patch_embed.proj.weight", _uniform((4 * 4) ** -0.5)),  # conv 2x2 over 4 channels
        ("patch_embed.proj.bias", _uniform((4 * 4) ** -0.5)),
        (".bias", _constant(0.0)),  # every other Linear bias
    ]
    return rules


def _matches(name: str, key: str) -> bool:
    """``key`` names a parameter exactly or as the tail of its dotted path; a key starting with "." is a suffix."""
    return name.endswith(key) if key.startswith(".") else name == key or name.endswith("." + key)


@pytest.mark.parametrize("backward_dt_init", ["official", "mamba"])
def test_every_dis_parameter_follows_the_official_init_rules(backward_dt_init):
    torch.manual_seed(0)
    options = {"image_size": 8, "in_channels": 4, "num_classes": 10, "width": WIDTH, "depth": DEPTH}
    model = archbench.build("dis_s2", **options, backward_dt_init=backward_dt_init)
    rules = _rules(backward_dt_init)
    unmatched = []
    for name, param in model.named_parameters():
        rule = next((check for key, check in rules if _matches(name, key)), None)
        if rule is None:
            unmatched.append(name)
            continue
        rule(name, param.detach().float())
    assert not unmatched, f"parameters without an init rule: {unmatched}"


def test_official_backward_dt_starts_at_softplus_zero():
    model = archbench.build("dis_t2")
    mixer = model.in_blocks[0].mixer
    assert torch.equal(mixer.dt_proj_b.bias, torch.zeros_like(mixer.dt_proj_b.bias))
    assert F.softplus(mixer.dt_proj_b.bias).mean().item() == pytest.approx(math.log(2.0))
    assert mixer.dt_proj.bias.mean().item() < -3.0  # the forward one keeps Mamba's dt init (mean about -4.6)
    mamba = archbench.build("dis_t2", backward_dt_init="mamba").in_blocks[0].mixer
    assert mamba.dt_proj_b.bias.mean().item() < -3.0


def test_unknown_backward_dt_init_is_refused():
    with pytest.raises(ValueError, match="backward_dt_init.*official, mamba"):
        archbench.build("dis_t2", backward_dt_init="zero")
