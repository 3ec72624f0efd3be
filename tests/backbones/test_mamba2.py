"""The Mamba-2 mixer's gated RMSNorm works per B/C group, as the official ``Mamba2`` does (issue 20)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.layers.mamba2 import BiMamba2, GroupRMSNorm


def per_group_rms_norm(x: torch.Tensor, weight: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    """Written out: split the channels into ``groups`` contiguous slices, divide each by its own RMS."""
    parts = []
    for part in x.chunk(groups, dim=-1):
        parts.append(part / torch.sqrt(part.pow(2).mean(-1, keepdim=True) + eps))
    return torch.cat(parts, dim=-1) * weight


def test_group_rms_norm_is_the_per_group_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 12) * torch.linspace(0.1, 10, 12)  # groups of very different scale
    norm = GroupRMSNorm(12, groups=3, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12))
        assert torch.allclose(norm(x), per_group_rms_norm(x, norm.weight, 3, 1e-5), atol=1e-6)
        whole = nn.RMSNorm(12, eps=1e-5)
        whole.weight.copy_(norm.weight)
        assert not torch.allclose(norm(x), whole(x), atol=1e-2)  # a whole-width norm is not the same
        one = GroupRMSNorm(12, groups=1, eps=1e-5)
        one.weight.copy_(norm.weight)
        assert torch.equal(one(x), whole(x))  # one group: exactly nn.RMSNorm
    with pytest.raises(ValueError, match="cannot split width 12 into 5"):
        GroupRMSNorm(12, groups=5)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_the_mixer_normalises_each_group_of_the_inner_width(groups):
    """Official: mamba_ssm/modules/mamba2.py builds ``RMSNormGated(d_ssm, group_size=d_ssm // ngroups,
    norm_before_gate=False)``, and ops/triton/layernorm_gated.py normalises ``... (g d) -> ... g d``:
    norm(y * silu(z)) with one RMS per group of ``d_inner / groups`` channels, then the output projection."""
    torch.manual_seed(1)
    mixer = BiMamba2(32, d_state=8, head_dim=8, groups=groups, chunk_size=4, scan="reference")
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    h = torch.randn(2, 9, 32)
    with torch.no_grad():
        z, xbc, dt = mixer.in_proj(h).split([mixer.d_inner, mixer.conv_dim, mixer.heads], dim=-1)
        forward = mixer.scan_direction(xbc, dt, "")
        backward = mixer.scan_direction(xbc.flip(1), dt.flip(1), "_b").flip(1)
        gated = (forward + backward) * F.silu(z)
        expected = mixer.out_proj(per_group_rms_norm(gated, mixer.norm.weight, groups, 1e-5))
        assert torch.allclose(mixer(h), expected, atol=1e-5)
        if groups > 1:
            whole = mixer.out_proj(F.rms_norm(gated, (mixer.d_inner,), mixer.norm.weight, 1e-5))
            assert not torch.allclose(mixer(h), whole, atol=1e-3)
