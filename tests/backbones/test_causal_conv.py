"""The depthwise causal conv in front of every Mamba scan (backbones/ssm/causal_conv.py), with and without the
fused SiLU, read forwards and backwards: the compiled CPU kernel (cpu_conv.cpp) and the PyTorch fallback against
nn.functional.conv1d in values and every gradient, on the strided token-layout views the mixer passes, at every
thread count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backbones.ssm import causal_conv
from backbones.ssm.causal_conv import causal_conv1d
from backbones.ssm.cpu_kernel import cpu_available


def truth(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool,
          reverse: bool = False) -> torch.Tensor:
    """nn.Conv1d's depthwise convolution, padded by K-1 and cut to the first L outputs (``reverse``: of the
    flipped sequence, flipped back)."""
    if reverse:
        return truth(x.flip(1), weight, bias, silu).flip(1)
    channels, K = weight.shape
    y = F.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias, padding=K - 1, groups=channels)
    y = y[..., : x.shape[1]].transpose(1, 2)
    return F.silu(y) if silu else y


@pytest.fixture(params=["compiled", "pytorch"])
def path(request, monkeypatch):
    """Both implementations: the compiled kernel, and the PyTorch ops it replaces (the fallback)."""
    if request.param == "compiled" and not cpu_available():
        pytest.skip("the compiled CPU kernel is unavailable here")
    if request.param == "pytorch":
        monkeypatch.setattr(causal_conv, "_compiled", lambda x: None)
    return request.param


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(("L", "channels", "K"), [(1, 5, 4), (3, 23, 4), (37, 40, 4), (9, 17, 2)])
def test_values_and_gradients_match_conv1d(path, silu, with_bias, L, channels, K, reverse):
    torch.manual_seed(L * channels + K)
    wide = torch.randn(2, L, 2 * channels, dtype=torch.float64, requires_grad=True)
    x = wide[..., :channels]  # the mixer's x: one half of the input projection, strided along L
    weight = torch.randn(channels, K, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(channels, dtype=torch.float64, requires_grad=True) if with_bias else None
    inputs = [wide, weight, *([bias] if with_bias else [])]
    y = causal_conv1d(x, weight, bias, silu=silu, reverse=reverse)
    expected = truth(x, weight, bias, silu, reverse)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, inputs, g), torch.autograd.grad(expected, inputs, g), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_float32_is_within_rounding_of_float64(path):
    torch.manual_seed(0)
    x = torch.randn(3, 65, 128)
    weight, bias = torch.randn(128, 4), torch.randn(128)
    y = causal_conv1d(x, weight, bias, silu=True)
    torch.testing.assert_close(y.double(), truth(x.double(), weight.double(), bias.double(), True),
                               rtol=1e-5, atol=1e-5)


def test_gradcheck_with_the_fused_silu(path):
    torch.manual_seed(1)
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a, silu=True), (x, weight, bias))


@pytest.mark.skipif(not cpu_available(), reason="the compiled CPU kernel is unavailable here")
def test_the_compiled_kernel_gives_the_same_bits_at_every_thread_count():
    torch.manual_seed(2)
    x = torch.randn(4, 33, 64, requires_grad=True)
    weight = torch.randn(64, 4, requires_grad=True)
    bias = torch.randn(64, requires_grad=True)
    previous, results = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y = causal_conv1d(x, weight, bias, silu=True)
            results.append([y, *torch.autograd.grad(y, (x, weight, bias), torch.ones_like(y))])
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_the_op_passes_opcheck():
    x, weight, bias = torch.randn(2, 7, 5), torch.randn(5, 4), torch.randn(5)
    for silu in (False, True):
        for reverse in (False, True):
            torch.library.opcheck(causal_conv._causal_conv1d, (x, weight, bias, silu, reverse))
