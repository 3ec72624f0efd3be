"""Depthwise causal conv1d in the token layout, the short convolution in front of every Mamba scan.

``y[:, t] = bias + sum_k weight[:, k] * x[:, t - (K-1) + k]`` over ``x: (batch, L, channels)`` with zeros
before the sequence start: what ``nn.Conv1d(groups=channels, padding=K-1)`` cut to the first ``L`` outputs
computes (and mamba's ``causal_conv1d_fn``), written as K shifted multiply-adds.  On CPU this is several
times faster than the depthwise convolution (whose backward in particular is slow), and it needs no
transpose of the token-layout activations.  ``silu=True`` applies the SiLU that follows it in every Mamba
block inside the op.  With the compiled CPU kernel available (``cpu_kernel.py``; fp32/fp64 on the CPU) the op
runs ``cpu_conv.cpp``, one fused pass forward and one backward (the pre-activation recomputed, never stored);
otherwise the PyTorch ops below.  ``reverse=True`` convolves over the following tokens instead
(``x[:, t + (K-1) - k]``, zeros after the end): the causal conv of the flipped sequence, flipped back, which the
compiled kernel computes without copying anything (DiS's backward scan direction).  A registered custom op, so
the FLOP counter can price it (``causal_conv1d_macs``) and torch.compile / torch.export see one node.
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_conv1d_macs(batch: int, length: int, channels: int, kernel: int) -> int:
    """One multiply-accumulate per (token, channel, tap), as fvcore counts a convolution."""
    return batch * length * channels * kernel


def _check(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(
            f"causal_conv1d: expected x (batch, L, channels) and weight (channels, kernel), got x "
            f"{tuple(x.shape)} and weight {tuple(weight.shape)}"
        )
    if bias is not None and bias.shape != (x.shape[2],):
        raise ValueError(f"causal_conv1d: bias must have shape ({x.shape[2]},), got {tuple(bias.shape)}")


# Tap k of weight (channels, K) reaches back K-1-k tokens: y[:, t] += weight[:, k] * x[:, t-(K-1-k)].
# Weights are used as contiguous (K, channels) rows: a strided weight column makes every op several times slower.


def _compiled(x: Tensor):
    """The compiled kernel's module when it can run on ``x`` (fp32/fp64 on the CPU, unit stride along the
    channels), else None."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.stride(2) != 1:
        return None
    from backbones.ssm.cpu_kernel import cpu_kernel

    return cpu_kernel()


def _preactivation(x: Tensor, taps: Tensor, bias: Tensor | None) -> Tensor:
    L, K = x.shape[1], taps.shape[0]
    y = x * taps[K - 1]
    for shift in range(1, min(K, L)):
        y[:, shift:].addcmul_(x[:, : L - shift], taps[K - 1 - shift])
    return y if bias is None else y.add_(bias)


def _time_flipped(t: Tensor, reverse: bool) -> Tensor:
    """The PyTorch ops' route to ``reverse``: the causal conv of the flipped sequence, flipped back."""
    return t.flip(1) if reverse else t


@torch.library.custom_op("backbones::causal_conv1d", mutates_args=())
def _causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool, reverse: bool) -> Tensor:
    taps = weight.t().contiguous()
    module = _compiled(x)
    if module is not None:
        return module.conv_forward(x, taps, bias, silu, reverse)
    y = _preactivation(_time_flipped(x, reverse), taps, bias)
    return _time_flipped(torch.nn.functional.silu(y) if silu else y, reverse)


@_causal_conv1d.register_fake
def _causal_conv1d_fake(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool, reverse: bool) -> Tensor:
    return x.new_empty(x.shape)


@torch.library.custom_op("backbones::causal_conv1d_backward", mutates_args=())
def _causal_conv1d_backward(gy: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, has_bias: bool,
                            silu: bool, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of x, weight and bias (zeros when there is no bias); ``bias`` is needed only to recompute the
    pre-activation under ``silu``."""
    L, K = x.shape[1], weight.shape[1]
    taps = weight.t().contiguous()
    gy = gy.contiguous()
    module = _compiled(x)
    if module is not None:
        g_x, g_taps, g_b = module.conv_backward(gy, x, taps, bias, silu, reverse)
        g_b = g_b if has_bias else weight.new_zeros(weight.shape[0])
        return g_x, g_taps.t().contiguous().to(weight.dtype), g_b.to(weight.dtype)
    gy, x = _time_flipped(gy, reverse), _time_flipped(x, reverse)
    if silu:  # d silu(a) / da = s (1 + a (1 - s)), s = sigmoid(a), at the recomputed pre-activation a
        a = _preactivation(x, taps, bias)
        s = torch.sigmoid(a)
        gy = gy * s * (1 + a * (1 - s))
    g_x = gy * taps[K - 1]
    g_taps = [(x * gy).sum((0, 1))]  # tap K-1 (no shift) first
    for shift in range(1, K):
        if shift < L:
            g_x[:, : L - shift].addcmul_(gy[:, shift:], taps[K - 1 - shift])
            g_taps.append((x[:, : L - shift] * gy[:, shift:]).sum((0, 1)))
        else:
            g_taps.append(taps.new_zeros(taps.shape[1]))
    g_w = torch.stack(g_taps[::-1], dim=1)
    g_b = gy.sum((0, 1)) if has_bias else weight.new_zeros(weight.shape[0])
    return _time_flipped(g_x, reverse), g_w.to(weight.dtype), g_b.to(weight.dtype)


@_causal_conv1d_backward.register_fake
def _causal_conv1d_backward_fake(gy, x, weight, bias, has_bias, silu, reverse):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


def _setup(ctx, inputs, output) -> None:
    x, weight, bias, silu, reverse = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.has_bias, ctx.silu, ctx.reverse = bias is not None, silu, reverse


def _grad(ctx, gy: Tensor):
    x, weight, bias = ctx.saved_tensors
    g_x, g_w, g_b = _causal_conv1d_backward(gy, x, weight, bias, ctx.has_bias, ctx.silu, ctx.reverse)
    return g_x, g_w, g_b if ctx.has_bias else None, None, None


def _no_double_backward(ctx, *grads: Tensor):
    raise RuntimeError("causal_conv1d has first derivatives only (a hand-written backward)")


_causal_conv1d.register_autograd(_grad, setup_context=_setup)
_causal_conv1d_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = False,
                  reverse: bool = False) -> Tensor:
    """Depthwise causal convolution of token-layout ``x (batch, L, channels)`` with ``weight (channels, K)``,
    followed by a SiLU when ``silu``; ``reverse``: over the following tokens (the sequence read backwards).

    Computes in ``x``'s dtype promoted with the weight's (so under autocast a bf16 x meets fp32 weights
    in fp32), and returns that dtype.
    """
    _check(x, weight, bias)
    dtype = torch.promote_types(x.dtype, weight.dtype)
    return _causal_conv1d(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), silu, reverse)
