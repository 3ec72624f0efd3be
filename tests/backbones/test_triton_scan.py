"""The Triton selective-scan kernels, run on CPU in Triton's interpreter, against a float64 loop.

The interpreter is slow (tens of milliseconds a program-step in the backward), so every case is tiny;
``chunk=`` is made small so that short sequences still cross several checkpoints.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from test_ssm import NAMES  # noqa: E402
from test_ssm import make_inputs as ssm_inputs  # noqa: E402

from backbones.ssm import selective_scan  # noqa: E402
from backbones.ssm import triton_scan as ts  # noqa: E402


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    """Kernels are decorated at first call, so setting the variable per test is enough."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def make_inputs(batch: int, d_inner: int, N: int, L: int, G: int = 1, **options) -> dict[str, torch.Tensor | None]:
    """test_ssm's inputs, grouped B/C (batch, G, N, L) by default and A kept fp32 as in Mamba."""
    return ssm_inputs(batch, d_inner, N, L, G, A_dtype=torch.float32, **options)


def loop_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Float64 per-timestep recurrence with the prologue/epilogue; returns (out, last state)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    per_group = u.shape[1] // B.shape[1]
    B, C = B.repeat_interleave(per_group, 1), C.repeat_interleave(per_group, 1)  # (batch, d_inner, N, L)
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(*u.shape[:2], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


def values_and_grads(fn, inputs: dict, seed: int = 1) -> list[torch.Tensor]:
    """out, last state, and the gradient of <out, w> + <last, v> w.r.t. every given input."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    out, last = fn(**leaves)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    v = torch.randn(last.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * w).sum() + (last.double() * v).sum(), list(leaves.values()))
    return [out.detach().double(), last.detach().double(), *(t.double() for t in grads)]


def kernel(chunk: int, softplus: bool):
    def fn(**k):
        return ts.triton_selective_scan(**k, delta_softplus=softplus, return_last_state=True, chunk=chunk)
    return fn


def assert_rel_close(actual: list[torch.Tensor], expected: list[torch.Tensor], rtol: float, what: str) -> float:
    """Normwise relative closeness (entries that cancel to ~0 make elementwise rtol meaningless)."""
    worst = 0.0
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert a.shape == e.shape, f"{what}: item {i} shape {tuple(a.shape)} != {tuple(e.shape)}"
        assert torch.isfinite(a).all(), f"{what}: item {i} has non-finite values"
        err = ((a - e).abs().max() / e.abs().max().clamp_min(1e-12)).item()
        assert err <= rtol, f"{what}: item {i} relative error {err:.2e} > {rtol:.0e}"
        worst = max(worst, err)
    return worst


CASES = {
    # name: (batch, d_inner, N, L, G, chunk, with_D, with_z, with_bias, softplus)
    "L1_all_options": (2, 5, 3, 1, 1, 4, True, True, True, True),
    "L5_bare_chunks_of_2": (1, 3, 3, 5, 1, 2, False, False, False, False),
    "L70_default_chunk": (1, 2, 2, 70, 1, ts.DEFAULT_CHUNK, True, True, True, True),
    "groups2_D_bias": (2, 6, 3, 9, 2, 4, True, False, True, True),
    "groups2_z_N16": (1, 4, 16, 7, 2, 3, False, True, False, False),
    "two_blocks_per_group": (1, 40, 4, 6, 1, 4, True, True, True, True),
    "groups2_two_blocks_each": (1, 72, 2, 3, 2, 2, True, False, False, True),
}


@pytest.mark.parametrize("case", CASES)
def test_values_and_grads_match_float64_loop(case):
    batch, d_inner, N, L, G, chunk, with_D, with_z, with_bias, softplus = CASES[case]
    x = make_inputs(batch, d_inner, N, L, G, seed=len(case), with_D=with_D, with_z=with_z, with_bias=with_bias)
    expected = values_and_grads(lambda **k: loop_scan(**k, delta_softplus=softplus), x)
    got = values_and_grads(kernel(chunk, softplus), x)
    assert_rel_close(got, expected, 1e-4, case)


def test_extreme_decay_is_finite_and_exact():
    # delta*A down to about -600: decays of e^-100 and far below underflow fp32.
    x = make_inputs(1, 3, 4, 24, seed=3, delta_scale=200.0, A_scale=1.5)
    x["delta"][:, :, ::3] *= 1e-3  # interleave ordinary steps so some state survives
    assert (x["delta"] * x["A"][None, :, :1]).min() < -100
    expected = values_and_grads(loop_scan, x)
    assert_rel_close(values_and_grads(kernel(8, False), x), expected, 1e-4, "extreme decay")


@pytest.mark.parametrize("bias", [60.0, -40.0])
def test_softplus_far_from_zero_is_finite_and_exact(bias):
    # +60: softplus' identity branch and decays of e^-60 .. e^-600; -40: softplus ~ e^-40, no decay at all.
    x = make_inputs(1, 2, 3, 10, seed=4, A_scale=4.0)
    x["delta_bias"] = torch.full((2,), bias)
    expected = values_and_grads(lambda **k: loop_scan(**k, delta_softplus=True), x)
    got = values_and_grads(kernel(4, True), x)
    assert_rel_close(got, expected, 1e-4, f"softplus bias {bias}")


def test_bf16_inputs_give_bf16_outputs_close_to_float64():
    x = make_inputs(1, 4, 3, 20, 2, seed=5, dtype=torch.bfloat16)
    got = values_and_grads(kernel(8, True), x)
    # The float64 truth of the same bf16-rounded inputs: only bf16 output/gradient rounding may differ.
    expected = values_and_grads(lambda **k: loop_scan(**k, delta_softplus=True), x)
    assert_rel_close(got, expected, 2e-2, "bf16")

    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    out, last = ts.triton_selective_scan(**leaves, delta_softplus=True, return_last_state=True, chunk=8)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert {k: t.grad.dtype for k, t in leaves.items()} == {k: t.dtype for k, t in leaves.items()}


def test_matches_the_fast_impl():
    torch.manual_seed(0)
    x = make_inputs(2, 4, 3, 37, seed=6)
    fast = {**x, "B": x["B"][:, 0], "C": x["C"][:, 0]}  # G = 1 is the ungrouped (batch, N, L) layout

    def run(fn, inputs):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        out = fn(**leaves)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
        (out * w).sum().backward()
        return [out.detach(), *(t.grad for t in leaves.values())]

    got = run(lambda **k: ts.triton_selective_scan(**k, delta_softplus=True, chunk=16), x)
    want = run(lambda **k: selective_scan(**k, delta_softplus=True, impl="fast"), fast)
    got[4:6] = [g[:, 0] for g in got[4:6]]  # dB, dC back to the ungrouped layout
    for name, a, e in zip(("out", *NAMES), got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_last_state_is_optional_and_matches_the_loop():
    x = make_inputs(1, 3, 2, 6, seed=8)
    out = ts.triton_selective_scan(**x, chunk=4)
    assert isinstance(out, torch.Tensor) and out.shape == x["u"].shape
    out2, last = ts.triton_selective_scan(**x, return_last_state=True, chunk=4)
    ref_out, ref_last = loop_scan(**x)
    assert torch.equal(out, out2)
    torch.testing.assert_close(last.double(), ref_last, rtol=1e-5, atol=1e-6)


def test_double_backward_is_a_clear_error():
    x = {k: v.requires_grad_() for k, v in make_inputs(1, 2, 2, 3, seed=9).items()}
    out = ts.triton_selective_scan(**x, chunk=2)
    (grad,) = torch.autograd.grad(out.sum(), x["u"], create_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only .* use impl='reference'"):
        grad.sum().backward()


def token_major(t: torch.Tensor) -> torch.Tensor:
    """The same values as a (batch, L, d_inner) buffer seen as (batch, d_inner, L), as the mixers pass them."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def test_token_major_views_give_the_same_results():
    x = make_inputs(2, 5, 3, 9, seed=11)
    views = {**x, "u": token_major(x["u"]), "z": token_major(x["z"])}
    wide = torch.zeros(2, 9, 12).transpose(1, 2)  # delta as a non-dense slice of a wider token buffer
    views["delta"] = wide[:, 3:8].copy_(x["delta"])
    got = values_and_grads(kernel(4, True), views)
    want = values_and_grads(kernel(4, True), x)
    for name, a, e in zip(("out", "last", *NAMES), got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")
    out = ts.triton_selective_scan(**views, chunk=4)
    assert out.stride() == views["u"].stride()  # returned in the caller's layout, nothing transposed back


@pytest.mark.parametrize("layout", ["all_options", "no_options", "token_major"])
def test_the_op_passes_opcheck(layout):
    optional = layout != "no_options"
    x = make_inputs(1, 2, 2, 5, seed=10, with_D=optional, with_z=optional, with_bias=optional)
    if layout == "token_major":
        x.update(u=token_major(x["u"]), delta=token_major(x["delta"]), z=token_major(x["z"]))
    args = [None if v is None else v.requires_grad_() for v in x.values()]
    torch.library.opcheck(ts.triton_scan, (*args, optional, 2),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_kernels_follow_the_variable_at_first_use():
    import triton
    from triton.runtime.interpreter import InterpretedFunction

    interpreted, compiled = ts._kernels(True), ts._kernels(False)
    assert all(isinstance(k, InterpretedFunction) for k in interpreted)
    assert all(isinstance(k, triton.runtime.JITFunction) for k in compiled)
    assert ts.triton_available() and ts.triton_usable(torch.device("cpu"))


@pytest.mark.parametrize("options", [True, False])
def test_kernels_compile_for_a_gpu_without_one(options):
    """The interpreter skips triton's compiler; compiling for sm_90 here catches compiled-only errors."""
    import inspect

    triton = pytest.importorskip("triton")
    pytest.importorskip("triton.backends.nvidia")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = dict(BLOCK_D=32, N_PAD=16, CHUNK=64, HAS_D=options, HAS_Z=options, HAS_BIAS=options, SOFTPLUS=options)
    for kern in ts._kernels(False):
        names = list(inspect.signature(kern.fn).parameters)
        sig = {n: "constexpr" if n in consts else "*bf16" if n.endswith("_ptr") else "i32" for n in names}
        src = ASTSource(kern, sig, constexprs={(names.index(k),): v for k, v in consts.items()})
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert ".entry" in compiled.asm["ptx"]


def test_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    x = make_inputs(1, 2, 2, 3)
    assert not ts.triton_usable(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="needs CUDA tensors, or TRITON_INTERPRET=1"):
        ts.triton_selective_scan(**x)
    with pytest.raises(RuntimeError, match="needs CUDA tensors, or TRITON_INTERPRET=1"):
        ts.triton_scan(*x.values(), False, 2)  # the op itself checks too


def test_missing_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ts, "triton_available", lambda: False)
    assert not ts.triton_usable(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="pip install triton"):
        ts.triton_selective_scan(**make_inputs(1, 2, 2, 3))
