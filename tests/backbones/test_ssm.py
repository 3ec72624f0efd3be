"""Selective scan: every impl against an independent float64 closed form, values and gradients."""

from __future__ import annotations

from functools import partial
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from backbones.ssm import SCAN_IMPLS, cpu_kernel, mamba_ssm_available, resolve_impl, selective_scan, selective_scan_macs
from backbones.ssm import scan as ssm_scan

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
CPU_IMPLS = ("reference", "fast")


def make_inputs(
    batch: int, d_inner: int, N: int, L: int, G: int = 0, *, seed: int = 0, delta_scale: float = 1.0,
    A_scale: float = 1.0, with_D: bool = True, with_z: bool = True, with_bias: bool = True,
    dtype: torch.dtype = torch.float32, A_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor | None]:
    """Mamba-like inputs: positive delta, negative A (A = -exp(A_log)); B/C (batch, N, L), or grouped
    (batch, G, N, L) for ``G >= 1``; every tensor in ``dtype`` except A in ``A_dtype`` (default ``dtype``)."""
    bc_shape = (batch, G, N, L) if G else (batch, N, L)
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x = {
        "u": rnd(batch, d_inner, L),
        "delta": delta_scale * torch.rand(batch, d_inner, L, generator=g, dtype=torch.float64),
        "A": -A_scale * torch.exp(0.5 * rnd(d_inner, N)),
        "B": rnd(*bc_shape),
        "C": rnd(*bc_shape),
        "D": rnd(d_inner) if with_D else None,
        "z": rnd(batch, d_inner, L) if with_z else None,
        "delta_bias": 0.5 * rnd(d_inner) if with_bias else None,
    }
    return {k: None if v is None else v.to(A_dtype or dtype if k == "A" else dtype) for k, v in x.items()}


def truth(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Float64 closed form y_t = sum_{s<=t} C_t . exp(sum_{s<r<=t} delta_r A) delta_s B_s u_s.

    Deliberately not a recurrence: segment sums of log-decays (masked to -inf above the diagonal,
    so exp never sees a positive exponent) give an independent check of the scans.
    """
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    L = u.shape[-1]
    log_decay = delta[:, :, None, :] * A[None, :, :, None]  # (b, d, n, L)
    strict = torch.ones(L, L, dtype=torch.bool).tril(-1)
    rows = log_decay[..., :, None].expand(*log_decay.shape, L).masked_fill(~strict, 0.0)
    seg = rows.cumsum(dim=-2).masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    kernel = torch.exp(seg)  # (b, d, n, t, s)
    y = torch.einsum("bnt,bdnts,bns,bds->bdt", C, kernel, B, delta * u)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y


def values_and_grads(fn, inputs: dict, seed: int = 1) -> list[torch.Tensor]:
    """Output and the gradient of <out, w> w.r.t. every given input, for a fixed random w."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    out = fn(**leaves)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * w).sum(), list(leaves.values()))
    return [out.detach().double(), *(g.double() for g in grads)]


def assert_rel_close(actual: list[torch.Tensor], expected: list[torch.Tensor], rtol: float, what: str):
    """Normwise relative closeness: elementwise rtol is meaningless for entries that cancel to ~0."""
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert torch.isfinite(a).all(), f"{what}: item {i} has non-finite values"
        scale = e.abs().max().clamp_min(1e-12)
        err = (a - e).abs().max() / scale
        assert err <= rtol, f"{what}: item {i} relative error {err:.2e} > {rtol:.0e}"


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 2),
    d_inner=st.integers(1, 4),
    N=st.integers(1, 5),
    L=st.sampled_from([1, 2, 5, 31, 33, 64, 70]),
    chunk=st.sampled_from([1, 3, 32]),
    with_D=st.booleans(),
    with_z=st.booleans(),
    with_bias=st.booleans(),
    softplus=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_impls_match_float64_truth(batch, d_inner, N, L, chunk, with_D, with_z, with_bias, softplus, seed):
    x = make_inputs(batch, d_inner, N, L, seed=seed, with_D=with_D, with_z=with_z, with_bias=with_bias)
    expected = values_and_grads(lambda **k: truth(**k, delta_softplus=softplus), x)
    compiled = ("cpu",) if cpu_kernel.cpu_available() else ()  # the compiled CPU kernel, at the same chunk sizes
    with mock.patch.object(ssm_scan, "DEFAULT_CHUNK", chunk), mock.patch.object(cpu_kernel, "CHUNK", chunk):
        for impl in (*CPU_IMPLS, *compiled):
            got = values_and_grads(partial(selective_scan, delta_softplus=softplus, impl=impl), x)
            assert_rel_close(got, expected, 1e-4, f"{impl} L={L} chunk={chunk}")


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_extreme_decay_is_finite_and_exact(impl):
    # delta*A spans roughly -0.5 .. -600: decays of e^-100 and far below underflow fp32.
    x = make_inputs(2, 3, 4, 40, seed=3, delta_scale=200.0, A_scale=1.5)
    x["delta"][:, :, ::3] *= 1e-3  # interleave ordinary steps so some state survives
    assert (x["delta"] * x["A"][None, :, :1]).min() < -100
    expected = values_and_grads(truth, x)
    got = values_and_grads(lambda **k: selective_scan(**k, impl=impl), x)
    assert_rel_close(got, expected, 1e-4, f"{impl} extreme decay")


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_extreme_softplus_delta_is_finite(impl):
    x = make_inputs(1, 2, 3, 20, seed=4, A_scale=4.0)
    x["delta_bias"] = torch.full((2,), 60.0)  # softplus(delta + 60) ~ 60, times A ~ -4 .. -10
    expected = values_and_grads(lambda **k: truth(**k, delta_softplus=True), x)
    got = values_and_grads(lambda **k: selective_scan(**k, delta_softplus=True, impl=impl), x)
    assert_rel_close(got, expected, 1e-4, f"{impl} softplus extreme")


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_bf16_inputs_stay_close_to_fp32(impl):
    x = make_inputs(2, 8, 4, 50, seed=5, dtype=torch.bfloat16)
    out_bf16 = values_and_grads(lambda **k: selective_scan(**k, delta_softplus=True, impl=impl), x)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items() if v is not None}
    out = selective_scan(**leaves, delta_softplus=True, impl=impl)
    out.sum().backward()
    assert out.dtype == torch.bfloat16
    assert all(t.grad.dtype == torch.bfloat16 for t in leaves.values())
    # Same (already bf16-rounded) inputs in fp32: only output/grad rounding may differ.
    x32 = {k: v.float() for k, v in x.items()}
    ref = values_and_grads(lambda **k: selective_scan(**k, delta_softplus=True, impl=impl), x32)
    assert_rel_close(out_bf16, ref, 2e-2, f"{impl} bf16 inputs")


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_bf16_autocast(impl):
    x = make_inputs(2, 8, 4, 50, seed=6)
    ref = values_and_grads(lambda **k: selective_scan(**k, delta_softplus=True, impl=impl), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # fp32 inputs: the scan must not silently drop to bf16 inside.
        same = values_and_grads(lambda **k: selective_scan(**k, delta_softplus=True, impl=impl), x)
        # Inputs produced by an autocast matmul arrive as bf16, as in a real Mamba block.
        eye = torch.eye(x["u"].shape[-1])
        u_bf16 = x["u"] @ eye
        assert u_bf16.dtype == torch.bfloat16
        low = values_and_grads(
            lambda **k: selective_scan(**{**k, "u": k["u"] @ eye}, delta_softplus=True, impl=impl), x
        )
    assert_rel_close(same, ref, 1e-5, f"{impl} autocast, fp32 inputs")
    assert_rel_close(low, ref, 3e-2, f"{impl} autocast, bf16 u")


def test_auto_on_cpu_runs_what_resolve_impl_says():
    """The compiled CPU kernel when it builds here, else the fast path (tests/backbones/test_cpu_scan.py pins both)."""
    x = make_inputs(1, 3, 2, 9)
    chosen = resolve_impl("auto", "cpu")
    assert chosen in ("cpu", "fast")
    assert torch.equal(selective_scan(**x, impl="auto"), selective_scan(**x, impl=chosen))


def test_mamba_ssm_on_cpu_raises_runtime_error():
    x = make_inputs(1, 3, 2, 9)
    with pytest.raises(RuntimeError, match="impl='fast'"):
        selective_scan(**x, impl="mamba_ssm")


@pytest.mark.skipif(
    not (torch.cuda.is_available() and mamba_ssm_available()), reason="needs CUDA and mamba_ssm"
)
def test_mamba_ssm_matches_fast_on_cuda():
    x = {k: None if v is None else v.cuda() for k, v in make_inputs(2, 8, 4, 70, seed=7).items()}
    expected = values_and_grads(lambda **k: selective_scan(**k, delta_softplus=True, impl="fast"), x)
    got = values_and_grads(lambda **k: selective_scan(**k, delta_softplus=True, impl="mamba_ssm"), x)
    assert_rel_close(got, expected, 1e-3, "mamba_ssm vs fast")


def test_unknown_impl_lists_valid_choices():
    x = make_inputs(1, 2, 2, 3)
    with pytest.raises(ValueError, match="valid choices") as err:
        selective_scan(**x, impl="cuda")
    assert all(name in str(err.value) for name in SCAN_IMPLS)


@pytest.mark.parametrize(
    ("name", "bad", "expected"),
    [
        ("u", torch.zeros(2, 3), "(batch, d_inner, L)"),
        ("u", torch.zeros(1, 2, 0), "L >= 1"),
        ("delta", torch.zeros(1, 2, 4), "(1, 2, 3)"),
        ("A", torch.zeros(3, 2), "d_inner = 2"),
        ("B", torch.zeros(1, 2, 4), "(1, 2, 3)"),
        ("C", torch.zeros(2, 2), "(batch, N, L)"),
        ("D", torch.zeros(3), "(2,)"),
        ("z", torch.zeros(1, 3, 3), "(1, 2, 3)"),
        ("delta_bias", torch.zeros(2, 1), "(2,)"),
    ],
)
def test_bad_shapes_name_tensor_and_expectation(name, bad, expected):
    x = make_inputs(1, 2, 2, 3)
    x[name] = bad
    with pytest.raises(ValueError, match=rf"{name} must have shape") as err:
        selective_scan(**x, impl="fast")
    assert expected in str(err.value) and str(tuple(bad.shape)) in str(err.value)


def test_macs_closed_form():
    # 4 MACs per (b, d, l, n) element; 1 (delta*u) + D + gate per (b, d, l).
    assert selective_scan_macs(2, 3, 5, 4, has_z=False, has_D=False) == 2 * 3 * 5 * (16 + 1)
    assert selective_scan_macs(2, 3, 5, 4, has_z=True, has_D=True) == 2 * 3 * 5 * (16 + 3)
    assert selective_scan_macs(1, 1, 1, 16, has_z=True, has_D=False) == 66


def _grouped_truth(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Grouped B/C (batch, G, N, L) as G independent scans over the channel blocks that read each group."""
    G, dg = B.shape[1], u.shape[1] // B.shape[1]
    parts = []
    for g in range(G):
        sl = slice(g * dg, (g + 1) * dg)
        parts.append(truth(
            u[:, sl], delta[:, sl], A[sl], B[:, g], C[:, g], None if D is None else D[sl],
            None if z is None else z[:, sl], None if delta_bias is None else delta_bias[sl], delta_softplus,
        ))
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("L", [1, 9, 40])
def test_grouped_B_C_match_the_float64_truth(groups, L):
    x = make_inputs(2, 6, 3, L, seed=groups * 100 + L)
    g = torch.Generator().manual_seed(7)
    x["B"] = torch.randn(2, groups, 3, L, generator=g, dtype=torch.float64)
    x["C"] = torch.randn(2, groups, 3, L, generator=g, dtype=torch.float64)
    expected = values_and_grads(lambda **k: _grouped_truth(**k, delta_softplus=True), x)
    for impl in CPU_IMPLS:
        got = values_and_grads(partial(selective_scan, delta_softplus=True, impl=impl), x)
        assert_rel_close(got, expected, 1e-4, f"{impl} groups={groups} L={L}")


def test_two_directions_in_one_grouped_call_equal_two_calls():
    a, b = make_inputs(2, 4, 3, 21, seed=1), make_inputs(2, 4, 3, 21, seed=2)
    joint = {k: torch.cat([a[k], b[k]], dim=0 if a[k].dim() == 1 else 1) for k in ("u", "delta", "A", "D", "z")}
    joint["A"] = torch.cat([a["A"], b["A"]], dim=0)
    joint["delta_bias"] = torch.cat([a["delta_bias"], b["delta_bias"]])
    joint["B"], joint["C"] = torch.stack([a["B"], b["B"]], 1), torch.stack([a["C"], b["C"]], 1)
    one = selective_scan(**{k: v.float() for k, v in joint.items()}, delta_softplus=True, impl="fast")
    two = [selective_scan(**{k: v.float() for k, v in x.items()}, delta_softplus=True, impl="fast") for x in (a, b)]
    assert torch.allclose(one, torch.cat(two, dim=1), atol=1e-6)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_return_last_state_is_the_state_after_the_last_step(impl):
    x = make_inputs(2, 3, 4, 37, seed=5)
    y, state = selective_scan(**{k: v.float() for k, v in x.items()}, delta_softplus=True, impl=impl,
                              return_last_state=True)
    assert state.shape == (2, 3, 4) and state.dtype == torch.float32
    assert torch.allclose(y, selective_scan(**{k: v.float() for k, v in x.items()}, delta_softplus=True, impl=impl))
    delta = F.softplus(x["delta"] + x["delta_bias"][:, None])
    h = torch.zeros(2, 3, 4, dtype=torch.float64)
    for t in range(37):  # the float64 recurrence, written out
        inject = (delta[:, :, t] * x["u"][:, :, t])[..., None] * x["B"][:, None, :, t]
        h = torch.exp(delta[:, :, t, None] * x["A"]) * h + inject
    assert torch.allclose(state.double(), h, rtol=1e-4, atol=1e-5)


def test_shape_errors_name_the_grouped_layout():
    x = make_inputs(1, 4, 2, 5)
    x["B"] = torch.randn(1, 3, 2, 5, dtype=torch.float64)  # 3 groups do not divide d_inner = 4
    with pytest.raises(ValueError, match=r"B must have shape .*\(batch, groups, N, L\) with groups dividing"):
        selective_scan(**x)


def last_state_truth(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Float64 closed form of the state after the last step: h = sum_s exp(sum_{s<r<L} delta_r A) delta_s B_s u_s."""
    u, delta, A, B = (t.double() for t in (u, delta, A, B))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    log_decay = delta[:, :, None, :] * A[None, :, :, None]  # (b, d, n, L)
    after = log_decay.flip(-1).cumsum(-1).flip(-1) - log_decay  # sum over r > s
    return torch.einsum("bdns,bns,bds->bdn", torch.exp(after), B, delta * u)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("chunk", [4, None])
def test_the_last_state_carries_its_gradient(impl, chunk, monkeypatch):
    """A loss on y and on the last state: the fast path dropped the last state's share silently (issue 20)."""
    monkeypatch.setattr(ssm_scan, "DEFAULT_CHUNK", chunk)  # 4: the gradient must cross chunk boundaries
    x = make_inputs(2, 3, 4, 21, seed=8, dtype=torch.float64)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    g = torch.Generator().manual_seed(3)
    w_y, w_h = torch.randn(2, 3, 21, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, generator=g,
                                                                                      dtype=torch.float64)
    y, last = selective_scan(**leaves, delta_softplus=True, impl=impl, return_last_state=True)
    got = torch.autograd.grad((y * w_y).sum() + (last.double() * w_h).sum(), list(leaves.values()))
    truth_leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    loss = (truth(**truth_leaves, delta_softplus=True) * w_y).sum()
    loss = loss + (last_state_truth(**truth_leaves, delta_softplus=True) * w_h).sum()
    expected = torch.autograd.grad(loss, list(truth_leaves.values()))
    assert_rel_close(list(got), list(expected), 1e-5, f"{impl} gradients with the last state")
    # the last state alone: its gradient must reach u, delta, A and B (C does not enter it)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    _, last = selective_scan(**leaves, delta_softplus=True, impl=impl, return_last_state=True)
    last.sum().backward()
    assert all(leaves[k].grad is not None and leaves[k].grad.abs().sum() > 0 for k in ("u", "delta", "A", "B"))


def test_mamba_ssm_last_state_refuses_a_gradient_it_cannot_give():
    """mamba_ssm's kernel ignores the last state's gradient; the wrapper says so instead of dropping it."""
    state = torch.randn(2, 3, requires_grad=True)
    guarded = ssm_scan._NoGradThroughKernelState.apply(state)
    assert torch.equal(guarded, state)
    with pytest.raises(RuntimeError, match=r"does not differentiate through the last state; use impl='triton'"):
        guarded.sum().backward()


def _flipped(x: dict) -> dict:
    """The inputs read from the last token to the first: every (..., L) tensor flipped along L."""
    return {k: None if v is None else v.flip(-1) if v.dim() >= 3 else v for k, v in x.items()}


@pytest.mark.parametrize("impl", (*CPU_IMPLS, *(("cpu",) if cpu_kernel.cpu_available() else ())))
@pytest.mark.parametrize(("groups", "L", "chunk"), [(1, 1, 4), (1, 37, 4), (2, 66, 22), (1, 70, 32)])
def test_reverse_is_the_scan_of_the_flipped_sequence(impl, groups, L, chunk, monkeypatch):
    """reverse=True: the float64 truth of the flipped inputs, flipped back, in values, every gradient and the last
    state (the state after token 0); the compiled kernel reads backwards in place, the others flip."""
    monkeypatch.setattr(ssm_scan, "DEFAULT_CHUNK", chunk)
    monkeypatch.setattr(cpu_kernel, "CHUNK", chunk)
    x = make_inputs(2, 6, 4, L, G=groups, seed=L + groups)
    want = values_and_grads(lambda **k: _grouped_truth(**_flipped(k), delta_softplus=True).flip(-1), x)
    got = values_and_grads(partial(selective_scan, delta_softplus=True, impl=impl, reverse=True), x)
    assert_rel_close(got, want, 1e-4, f"{impl} reverse L={L}")
    _, last = selective_scan(**x, delta_softplus=True, impl=impl, reverse=True, return_last_state=True)
    expected_last = last_state_truth(**_flipped({**x, "B": x["B"][:, 0], "C": x["C"][:, 0]}), delta_softplus=True)
    if groups == 1:
        torch.testing.assert_close(last.double(), expected_last, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", (*CPU_IMPLS, *(("cpu",) if cpu_kernel.cpu_available() else ())))
@pytest.mark.parametrize(("groups", "L", "rank", "reverse"), [(1, 1, 1, False), (1, 37, 4, False), (2, 40, 3, True),
                                                              (1, 66, 20, True)])
def test_a_low_rank_step_is_the_scan_of_its_projection(impl, groups, L, rank, reverse, monkeypatch):
    """delta_proj (d_inner, R) with a (batch, R, L) delta: the float64 truth of the full step delta_proj @ delta, in
    values and every gradient, delta_proj's included (the compiled kernel forms the step itself, the others run
    the matmul first)."""
    monkeypatch.setattr(ssm_scan, "DEFAULT_CHUNK", 16)
    monkeypatch.setattr(cpu_kernel, "CHUNK", 16)
    x = make_inputs(2, 24, 4, L, G=groups, seed=L + rank)
    g = torch.Generator().manual_seed(rank)
    x["delta"] = torch.randn(2, rank, L, generator=g, dtype=torch.float64).float()
    x["delta_proj"] = (0.5 * torch.randn(24, rank, generator=g, dtype=torch.float64)).float()

    def full(**k):
        step = torch.einsum("dr,brl->bdl", k.pop("delta_proj").double(), k.pop("delta").double())
        ordered = (lambda t: t.flip(-1)) if reverse else (lambda t: t)
        flipped = {n: None if v is None else ordered(v) if v.dim() >= 3 else v for n, v in k.items()}
        return ordered(_grouped_truth(**flipped, delta=ordered(step), delta_softplus=True))

    want = values_and_grads(full, x)
    got = values_and_grads(partial(selective_scan, delta_softplus=True, impl=impl, reverse=reverse), x)
    assert_rel_close(got, want, 1e-4, f"{impl} low-rank step L={L} R={rank}")


def test_a_low_rank_step_of_the_wrong_shape_is_named():
    x = make_inputs(1, 6, 2, 5)
    x["delta"] = torch.rand(1, 3, 5)
    with pytest.raises(ValueError, match=r"delta_proj must have shape \(d_inner, R\) with d_inner = 6"):
        selective_scan(**x, delta_proj=torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"delta must have shape \(batch, R, L\) = \(1, 2, 5\) with delta_proj"):
        selective_scan(**x, delta_proj=torch.randn(6, 2))
