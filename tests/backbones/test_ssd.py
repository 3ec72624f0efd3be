"""Mamba-2 SSD scan: every CPU impl against an independent float64 per-token loop, values and gradients."""

from __future__ import annotations

import math
from functools import partial
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from backbones.ssm import SSD_IMPLS, ssd_scan, ssd_scan_macs
from backbones.ssm import ssd as ssd_module

CPU_IMPLS = ("reference", "fast")


def make_inputs(
    batch: int, L: int, heads: int, head_dim: int, state: int, groups: int, *, seed: int = 0,
    D: str | None = "h", with_z: bool = True, with_bias: bool = True, softplus: bool = False,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor | None]:
    """Mamba-2-like inputs: dt > 0, A < 0; without softplus the bias is kept positive so dt + dt_bias > 0."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def uni(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    x = {
        "x": rnd(batch, L, heads, head_dim),
        "dt": uni(batch, L, heads) if not softplus else rnd(batch, L, heads) - 1.0,
        "A": -torch.exp(0.5 * rnd(heads)),
        "B": rnd(batch, L, groups, state),
        "C": rnd(batch, L, groups, state),
        "D": None if D is None else rnd(heads) if D == "h" else rnd(heads, head_dim),
        "z": rnd(batch, L, heads, head_dim) if with_z else None,
        "dt_bias": (0.3 * rnd(heads) if softplus else 0.3 * uni(heads)) if with_bias else None,
    }
    return {k: None if v is None else v.to(dtype) for k, v in x.items()}


def loop_truth(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, final=False, initial_states=None,
               dt_limit=None):
    """Float64 per-token loop, one head at a time, written from the recurrence alone: the state starts at
    ``initial_states`` (or zero); ``dt_limit`` clamps the effective dt (after bias and softplus)."""
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit is not None:
        dt = torch.minimum(torch.maximum(dt, torch.tensor(dt_limit[0])), torch.tensor(dt_limit[1]))
    batch, L, heads, head_dim = x.shape
    groups, N = B.shape[2:]
    outs, lasts = [], []
    for head in range(heads):
        grp = head // (heads // groups)
        h = torch.zeros(batch, head_dim, N, dtype=torch.float64)
        if initial_states is not None:
            h = initial_states[:, head].double()
        ys = []
        for t in range(L):
            a = torch.exp(dt[:, t, head] * A[head])  # (batch,)
            h = a[:, None, None] * h + dt[:, t, head, None, None] * x[:, t, head, :, None] * B[:, t, grp, None, :]
            ys.append((h * C[:, t, grp, None, :]).sum(-1))
        outs.append(torch.stack(ys, dim=1))  # (batch, L, head_dim)
        lasts.append(h)
    y = torch.stack(outs, dim=2)
    if D is not None:
        y = y + (D.double()[:, None] if D.dim() == 1 else D.double()) * x
    if z is not None:
        y = y * F.silu(z.double())
    return (y, torch.stack(lasts, dim=1)) if final else y


def values_and_grads(fn, inputs: dict, seed: int = 1) -> list[torch.Tensor]:
    """Outputs and the gradient of <outputs, w> w.r.t. every given input, for fixed random w."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    outs = fn(**leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return [*(o.detach().double() for o in outs), *(gr.double() for gr in grads)]


def rel_errors(actual: list[torch.Tensor], expected: list[torch.Tensor], what: str) -> list[float]:
    """Normwise relative errors (max |a - e| / max |e|); elementwise rtol is meaningless near zero."""
    errs = []
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert a.shape == e.shape, f"{what}: item {i} shape {tuple(a.shape)} != {tuple(e.shape)}"
        assert torch.isfinite(a).all(), f"{what}: item {i} has non-finite values"
        errs.append(((a - e).abs().max() / e.abs().max().clamp_min(1e-12)).item())
    return errs


def assert_rel_close(actual: list[torch.Tensor], expected: list[torch.Tensor], rtol: float, what: str) -> None:
    for i, err in enumerate(rel_errors(actual, expected, what)):
        assert err <= rtol, f"{what}: item {i} relative error {err:.2e} > {rtol:.0e}"


@st.composite
def shapes(draw) -> dict:
    heads = draw(st.integers(1, 4))
    return {
        "batch": draw(st.integers(1, 2)),
        "L": draw(st.one_of(st.sampled_from([1, 4, 16, 17, 63, 64, 65, 70]), st.integers(1, 70))),
        "heads": heads,
        "head_dim": draw(st.integers(1, 8)),
        "state": draw(st.integers(1, 16)),
        "groups": draw(st.sampled_from([g for g in range(1, heads + 1) if heads % g == 0])),
    }


@settings(max_examples=30, deadline=None)
@given(
    shape=shapes(),
    chunk=st.sampled_from([1, 4, 16, 64]),
    D=st.sampled_from([None, "h", "hp"]),
    with_z=st.booleans(),
    with_bias=st.booleans(),
    softplus=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_impls_match_float64_loop(shape, chunk, D, with_z, with_bias, softplus, seed):
    x = make_inputs(**shape, seed=seed, D=D, with_z=with_z, with_bias=with_bias, softplus=softplus)
    expected = values_and_grads(partial(loop_truth, dt_softplus=softplus, final=True), x)
    for impl in CPU_IMPLS:
        fn = partial(ssd_scan, dt_softplus=softplus, chunk_size=chunk, impl=impl, return_final_states=True)
        got = values_and_grads(fn, x)
        assert_rel_close(got, expected, 1e-4, f"{impl} {shape} chunk={chunk}")


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("chunk", [4, 16, 64])
def test_large_dt_is_finite_and_exact(impl, chunk):
    # dt = 50 through softplus with A = -8: dt*A = -400 per token, so the cumulative log-decay reaches
    # -3200 after a few such tokens, while ordinary tokens (dt ~ 0.007) keep a long memory. A decay taken
    # as the difference of two such cumulative sums loses ~1e-4 of every exponent in fp32 (that variant
    # of the fast path fails here at chunk 16 and 64 with errors up to 5e-4); segment sums must not.
    x = make_inputs(2, 70, 2, 4, 8, 1, seed=3, softplus=True)
    x["dt"] = 0.5 * x["dt"] - 5.0
    x["dt"][:, [0, 1, 2, 3, 4, 5, 40, 66]] = 50.0
    x["A"] = torch.tensor([-8.0, -0.5])
    x["dt_bias"] = torch.zeros(2)
    expected = values_and_grads(partial(loop_truth, dt_softplus=True, final=True), x)
    fn = partial(ssd_scan, dt_softplus=True, chunk_size=chunk, impl=impl, return_final_states=True)
    got = values_and_grads(fn, x)
    assert_rel_close(got, expected, 1e-4, f"{impl} large dt chunk={chunk}")


def test_bf16_autocast_fast_matches_reference():
    x32 = make_inputs(2, 50, 4, 8, 16, 2, seed=5, D="hp", softplus=True)
    x16 = {k: v.to(torch.bfloat16) for k, v in x32.items()}
    ref = values_and_grads(partial(ssd_scan, dt_softplus=True, impl="reference"), x16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = values_and_grads(partial(ssd_scan, dt_softplus=True, chunk_size=16, impl="fast"), x16)
        leaves = {k: v.clone().requires_grad_() for k, v in x16.items()}
        out = ssd_scan(**leaves, dt_softplus=True, chunk_size=16, impl="fast")
        out.float().sum().backward()
        # fp32 inputs under autocast: nothing inside may silently drop to bf16.
        same = values_and_grads(partial(ssd_scan, dt_softplus=True, chunk_size=16, impl="fast"), x32)
    assert out.dtype == torch.bfloat16 and all(t.grad.dtype == torch.bfloat16 for t in leaves.values())
    assert_rel_close(low, ref, 2e-2, "fast vs reference, bf16 inputs under autocast")
    exact = values_and_grads(partial(ssd_scan, dt_softplus=True, chunk_size=16, impl="fast"), x32)
    assert_rel_close(same, exact, 1e-5, "fast, fp32 inputs under autocast")


def test_auto_is_fast_on_cpu():
    x = make_inputs(1, 9, 2, 3, 4, 1)
    assert torch.equal(ssd_scan(**x, chunk_size=4, impl="auto"), ssd_scan(**x, chunk_size=4, impl="fast"))


def test_mamba_ssm_without_cuda_says_why():
    x = make_inputs(1, 9, 2, 3, 4, 1)
    with pytest.raises(ValueError, match=r"impl='mamba_ssm'.*impl='fast'"):
        ssd_scan(**x, impl="mamba_ssm")
    # Even where the kernel imports, CPU tensors are refused with the device named.
    with mock.patch.object(ssd_module, "ssd_kernel_available", return_value=True):
        with pytest.raises(ValueError, match=r"needs CUDA tensors, got device cpu"):
            ssd_scan(**x, impl="mamba_ssm")


@pytest.mark.skipif(
    not (torch.cuda.is_available() and ssd_module.ssd_kernel_available()), reason="needs CUDA and mamba_ssm"
)
def test_mamba_ssm_matches_fast_on_cuda():
    x = {k: v.cuda() for k, v in make_inputs(2, 70, 4, 8, 16, 2, seed=7, softplus=True).items()}
    fn = partial(ssd_scan, dt_softplus=True, chunk_size=16, return_final_states=True)
    expected = values_and_grads(partial(fn, impl="fast"), x)
    assert_rel_close(values_and_grads(partial(fn, impl="mamba_ssm"), x), expected, 1e-3, "mamba_ssm vs fast")


def test_unknown_impl_lists_valid_choices():
    x = make_inputs(1, 3, 2, 2, 2, 1)
    with pytest.raises(ValueError, match="valid choices") as err:
        ssd_scan(**x, impl="cuda_kernel")
    assert all(name in str(err.value) for name in SSD_IMPLS)


@pytest.mark.parametrize(
    ("name", "bad", "expected"),
    [
        ("x", torch.zeros(1, 3, 2), "(batch, length, heads, head_dim)"),
        ("x", torch.zeros(1, 0, 2, 2), "length >= 1"),
        ("dt", torch.zeros(1, 3, 3), "(1, 3, 2)"),
        ("A", torch.zeros(2, 2), "(2,)"),
        ("B", torch.zeros(1, 3, 3, 2), "groups dividing heads = 2"),
        ("B", torch.zeros(1, 4, 1, 2), "(1, 3, groups, state)"),
        ("C", torch.zeros(1, 3, 1, 5), "(1, 3, 1, 2) like B"),
        ("D", torch.zeros(3), "(heads, head_dim) = (2, 2)"),
        ("z", torch.zeros(1, 3, 2, 1), "(1, 3, 2, 2) like x"),
        ("dt_bias", torch.zeros(2, 1), "(2,)"),
    ],
)
def test_bad_shapes_name_tensor_and_expectation(name, bad, expected):
    x = make_inputs(1, 3, 2, 2, 2, 1)
    x[name] = bad
    with pytest.raises(ValueError, match=rf"^ssd_scan: {name} must have shape") as err:
        ssd_scan(**x, impl="fast")
    message = str(err.value)
    assert "\n" not in message and expected in message and f"got {tuple(bad.shape)}" in message


def test_bad_dtype_and_chunk_size():
    x = make_inputs(1, 3, 2, 2, 2, 1)
    with pytest.raises(ValueError, match="dt must be a real floating-point tensor, got dtype torch.int64"):
        ssd_scan(**{**x, "dt": torch.ones(1, 3, 2, dtype=torch.long)})
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        ssd_scan(**x, chunk_size=0)


def test_macs_hand_count():
    # batch 1, L 5, H 2 heads, G 1 group, P 3, N 4, chunks of 4 -> chunk lengths 4 and 1.
    per_token = 2 + 2 * 3 + 2 * 3 + 2 * 3  # dt*A, dt*x, D*x, gate
    chunk0 = 1 * 16 * 4 + 2 * 16 + 2 * 16 * 3 + 2 * 4 * 3 + 2 * 4 * 3 * 4  # CB, mask, scores@x, weight, B^T x
    chunk1 = 1 * 1 * 4 + 2 * 1 + 2 * 1 * 3 + 2 * 1 * 3 + 2 * 1 * 3 * 4
    passed = 2 * 3 * 4 + 2 * 1 * 3 * 4 + 2 * 1 * 3  # state in, C h, decay from chunk start (chunk 1 only)
    expected = 5 * per_token + chunk0 + chunk1 + passed
    assert expected == 5 * 20 + 312 + 42 + 54 == 508
    assert ssd_scan_macs(1, 5, 2, 3, 4, 1, 4, has_z=True, has_D=True) == expected
    assert ssd_scan_macs(3, 5, 2, 3, 4, 1, 4, has_z=False, has_D=False) == 3 * (expected - 5 * 12)


@pytest.mark.parametrize("L", [5, 64, 70])
def test_macs_match_the_contractions_fast_runs(L):
    # The closed form's matmul terms must be exactly what the fast path's contractions cost.
    b, H, P, N, G, Q = 2, 4, 3, 5, 2, 16
    x = make_inputs(b, L, H, P, N, G, D=None, with_z=False, with_bias=False)
    with FlopCounterMode(display=False) as counter:
        ssd_scan(**x, chunk_size=Q, impl="fast")
    elementwise = b * L * (H + H * P)  # dt*A, dt*x
    for i, T in enumerate(min(Q, L - t0) for t0 in range(0, L, Q)):
        elementwise += b * (H * T * T + H * T * P + (H * P * N + H * T * P if i else 0))
    macs = ssd_scan_macs(b, L, H, P, N, G, Q, has_z=False, has_D=False)
    assert counter.get_total_flops() == 2 * (macs - elementwise)


# --- initial / final states and dt_limit, as mamba-ssm's mamba_chunk_scan_combined offers them ---------------


def with_initial_states(x: dict, seed: int = 11) -> dict:
    batch, _, heads, head_dim = x["x"].shape
    g = torch.Generator().manual_seed(seed)
    h0 = torch.randn(batch, heads, head_dim, x["B"].shape[-1], generator=g, dtype=torch.float64)
    return {**x, "initial_states": h0.to(x["x"].dtype)}


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize(("L", "chunk"), [(1, 4), (9, 4), (16, 4), (23, 64)])
def test_initial_states_seed_the_recurrence_and_get_gradients(impl, L, chunk):
    x = with_initial_states(make_inputs(2, L, 4, 3, 5, 2, seed=L, D="h", softplus=True))
    expected = values_and_grads(partial(loop_truth, dt_softplus=True, final=True), x)  # includes d/d h0
    fn = partial(ssd_scan, dt_softplus=True, chunk_size=chunk, impl=impl, return_final_states=True)
    assert_rel_close(values_and_grads(fn, x), expected, 1e-4, f"{impl} with initial states, L={L}")


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_two_segments_chained_by_their_states_are_one_scan(impl):
    x = make_inputs(1, 21, 2, 3, 4, 1, seed=2, D="hp", softplus=True)
    fn = partial(ssd_scan, dt_softplus=True, chunk_size=4, impl=impl, return_final_states=True)
    whole, last = fn(**x)
    per_token = ("x", "dt", "B", "C", "z")
    first, mid = fn(**{k: v[:, :13] if k in per_token else v for k, v in x.items()})
    second, end = fn(**{k: v[:, 13:] if k in per_token else v for k, v in x.items()}, initial_states=mid)
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-5)
    assert torch.allclose(end, last, atol=1e-5)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("softplus", [True, False])
def test_dt_limit_clamps_the_effective_dt_and_its_gradient(impl, softplus):
    x = make_inputs(2, 19, 2, 3, 4, 1, seed=4, softplus=softplus)
    limit = (0.2, 0.6)
    expected = values_and_grads(partial(loop_truth, dt_softplus=softplus, final=True, dt_limit=limit), x)
    fn = partial(ssd_scan, dt_softplus=softplus, chunk_size=4, impl=impl, return_final_states=True, dt_limit=limit)
    got = values_and_grads(fn, x)
    assert_rel_close(got, expected, 1e-4, f"{impl} dt_limit")
    effective = x["dt"] + x["dt_bias"]
    effective = F.softplus(effective) if softplus else effective
    outside = (effective < limit[0]) | (effective > limit[1])
    assert outside.any() and (~outside).any()
    grad_dt = got[2 + list(k for k, v in x.items() if v is not None).index("dt")]
    assert torch.all(grad_dt[outside] == 0) and torch.all(grad_dt[~outside] != 0)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_default_dt_limit_turns_a_negative_dt_into_zero_as_mamba_ssm(impl):
    x = make_inputs(1, 12, 2, 3, 4, 1, seed=6, with_bias=False)
    x["dt"] = x["dt"] - 0.5  # some effective dt < 0: mamba-ssm's default (0, inf) clamps them to 0
    assert (x["dt"] < 0).any()
    clamped = {**x, "dt": x["dt"].clamp(min=0)}
    assert torch.allclose(ssd_scan(**x, impl=impl), ssd_scan(**clamped, impl=impl), atol=1e-6)
    unclamped = ssd_scan(**x, impl=impl, dt_limit=(-math.inf, math.inf))
    assert not torch.allclose(unclamped, ssd_scan(**x, impl=impl), atol=1e-3)


def test_bad_initial_states_and_dt_limit():
    x = make_inputs(1, 3, 2, 2, 2, 1)
    with pytest.raises(ValueError, match=r"initial_states must have shape \(batch, heads, head_dim, state\) "
                                         r"= \(1, 2, 2, 2\)"):
        ssd_scan(**x, initial_states=torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="dt_limit must be"):
        ssd_scan(**x, dt_limit=(1.0, 0.5))
