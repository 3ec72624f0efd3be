"""The compiled CPU selective scan (impl="cpu"): values and every gradient against float64 truths, build fallback,
autocast, torch.compile.  The kernel is built on first use (about half a minute, once per machine and source)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ssm import (
    _grouped_truth,
    assert_rel_close,
    last_state_truth,
    make_inputs,
    truth,
    values_and_grads,
)

from backbones.ssm import cpu_kernel, resolve_impl, selective_scan

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def kernel():
    """Build (or load) the kernel once; without a working compiler the kernel tests skip, saying why."""
    if not cpu_kernel.cpu_available():
        pytest.skip(f"the CPU scan kernel is unavailable here: {cpu_kernel.cpu_unavailable_reason()}")
    return cpu_kernel.cpu_kernel()


@pytest.fixture
def chunk(monkeypatch):
    """Set the kernel's checkpoint interval (timesteps per recomputed chunk) for one test."""
    return lambda value: monkeypatch.setattr(cpu_kernel, "CHUNK", value)


def _stable(x: dict) -> dict:
    """delta + bias > 0 without softplus as well: no decay above 1, so wide fp32 cases cannot overflow."""
    if x["delta_bias"] is not None:
        x["delta_bias"] = x["delta_bias"].abs()
    return x


# test_ssm.py::test_impls_match_float64_truth runs this kernel on the other implementations' grid.


# Wider: several SIMD blocks, partial blocks, the N=16 specialisation, batch 3.
@settings(max_examples=20, deadline=None)
@given(
    batch=st.sampled_from([1, 3]),
    d_inner=st.sampled_from([5, 16, 17, 40]),
    N=st.sampled_from([3, 16]),
    L=st.sampled_from([1, 9, 33, 65]),
    K=st.sampled_from([4, 32]),
    with_D=st.booleans(),
    with_z=st.booleans(),
    with_bias=st.booleans(),
    softplus=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_float64_truth_wide(batch, d_inner, N, L, K, with_D, with_z, with_bias, softplus, seed):
    x = _stable(make_inputs(batch, d_inner, N, L, seed=seed, with_D=with_D, with_z=with_z, with_bias=with_bias))
    expected = values_and_grads(lambda **k: truth(**k, delta_softplus=softplus), x)
    with mock.patch.object(cpu_kernel, "CHUNK", K):
        got = values_and_grads(partial(selective_scan, delta_softplus=softplus, impl="cpu"), x)
    assert_rel_close(got, expected, 1e-4, f"cpu batch={batch} d={d_inner} N={N} L={L} chunk={K}")


@pytest.mark.parametrize(("batch", "d_inner", "N", "L"), [(1, 3, 4, 1), (3, 17, 16, 33), (2, 40, 5, 70)])
@pytest.mark.parametrize("softplus", [False, True])
def test_float64_matches_the_reference_loop_to_rounding(batch, d_inner, N, L, softplus, chunk):
    """fp64 runs in fp64 (C library exp/log1p): the kernel and the per-timestep reference loop agree to ~1e-13."""
    chunk(8)
    x = _stable(make_inputs(batch, d_inner, N, L, seed=L, dtype=torch.float64))
    expected = values_and_grads(partial(selective_scan, delta_softplus=softplus, impl="reference"), x)
    got = values_and_grads(partial(selective_scan, delta_softplus=softplus, impl="cpu"), x)
    assert all(g.dtype == torch.float64 for g in got)
    assert_rel_close(got, expected, 1e-12, f"cpu fp64 L={L}")


@pytest.mark.parametrize(("groups", "d_inner"), [(1, 6), (2, 6), (3, 6), (3, 48), (2, 40)])
@pytest.mark.parametrize("L", [1, 9, 40])
def test_grouped_B_C_match_the_float64_truth(groups, d_inner, L, chunk):
    chunk(4)
    x = make_inputs(2, d_inner, 3, L, seed=groups * 100 + L)
    g = torch.Generator().manual_seed(7)
    x["B"] = torch.randn(2, groups, 3, L, generator=g, dtype=torch.float64)
    x["C"] = torch.randn(2, groups, 3, L, generator=g, dtype=torch.float64)
    expected = values_and_grads(lambda **k: _grouped_truth(**k, delta_softplus=True), x)
    got = values_and_grads(partial(selective_scan, delta_softplus=True, impl="cpu"), x)
    assert_rel_close(got, expected, 1e-4, f"cpu groups={groups} d_inner={d_inner} L={L}")


@pytest.mark.parametrize("K", [4, 32])
@pytest.mark.parametrize(("batch", "d_inner", "N"), [(2, 3, 4), (1, 20, 16)])
def test_the_last_state_and_its_gradient(K, batch, d_inner, N, chunk):
    """A loss on y and on the last state (batch, d_inner, N) fp32: every gradient, across chunk boundaries."""
    chunk(K)
    x = make_inputs(batch, d_inner, N, 21, seed=8)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    g = torch.Generator().manual_seed(3)
    w_y = torch.randn(batch, d_inner, 21, generator=g, dtype=torch.float64)
    w_h = torch.randn(batch, d_inner, N, generator=g, dtype=torch.float64)
    y, last = selective_scan(**leaves, delta_softplus=True, impl="cpu", return_last_state=True)
    assert last.shape == (batch, d_inner, N) and last.dtype == torch.float32 and y.dtype == torch.float32
    got = torch.autograd.grad((y.double() * w_y).sum() + (last.double() * w_h).sum(), list(leaves.values()))
    truth_leaves = {k: v.double().clone().requires_grad_() for k, v in x.items()}
    h_true = last_state_truth(**truth_leaves, delta_softplus=True)
    loss = (truth(**truth_leaves, delta_softplus=True) * w_y).sum() + (h_true * w_h).sum()
    expected = torch.autograd.grad(loss, list(truth_leaves.values()))
    assert_rel_close([last.double()], [h_true.detach()], 1e-5, "cpu last state")
    assert_rel_close(list(got), list(expected), 1e-4, f"cpu gradients with the last state, chunk={K}")
    # the last state alone: its gradient reaches u, delta, A, B (C does not enter it)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    _, last = selective_scan(**leaves, delta_softplus=True, impl="cpu", return_last_state=True)
    last.sum().backward()
    assert all(leaves[k].grad.abs().sum() > 0 for k in ("u", "delta", "A", "B", "delta_bias"))
    assert leaves["C"].grad is None or leaves["C"].grad.abs().sum() == 0


def test_fp64_gradcheck_with_every_option():
    g = torch.Generator().manual_seed(0)
    b, d, N, L, G = 2, 4, 3, 7, 2

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    u, delta = rnd(b, d, L), rnd(b, d, L)
    A = (-torch.exp(0.5 * torch.randn(d, N, generator=g, dtype=torch.float64))).requires_grad_()
    B, C, z = rnd(b, G, N, L), rnd(b, G, N, L), rnd(b, d, L)
    D, bias = rnd(d), rnd(d)

    def fn(u, delta, A, B, C, D, z, bias):
        # (the last state is returned in fp32 whatever the inputs: its gradient is checked against the truth above)
        return selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, impl="cpu")

    with mock.patch.object(cpu_kernel, "CHUNK", 3):
        assert torch.autograd.gradcheck(fn, (u, delta, A, B, C, D, z, bias), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_extreme_decay_is_finite_and_exact():
    # delta*A spans roughly -0.5 .. -600: decays of e^-100 and far below underflow fp32.
    x = make_inputs(2, 20, 16, 40, seed=3, delta_scale=200.0, A_scale=1.5)
    x["delta"][:, :, ::3] *= 1e-3
    assert (x["delta"] * x["A"][None, :, :1]).min() < -100
    expected = values_and_grads(truth, x)
    got = values_and_grads(lambda **k: selective_scan(**k, impl="cpu"), x)
    assert_rel_close(got, expected, 1e-4, "cpu extreme decay")


def test_extreme_softplus_delta_is_finite():
    x = make_inputs(1, 2, 3, 20, seed=4, A_scale=4.0)
    x["delta_bias"] = torch.full((2,), 60.0)
    expected = values_and_grads(lambda **k: truth(**k, delta_softplus=True), x)
    got = values_and_grads(lambda **k: selective_scan(**k, delta_softplus=True, impl="cpu"), x)
    assert_rel_close(got, expected, 1e-4, "cpu softplus extreme")


def test_bf16_inputs_and_autocast():
    x = make_inputs(2, 20, 16, 50, seed=6)
    ref = values_and_grads(lambda **k: selective_scan(**k, delta_softplus=True, impl="cpu"), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same = values_and_grads(lambda **k: selective_scan(**k, delta_softplus=True, impl="cpu"), x)
        eye = torch.eye(x["u"].shape[-1])
        out = selective_scan(**{**x, "u": x["u"] @ eye}, delta_softplus=True, impl="cpu")
        assert out.dtype == torch.bfloat16  # bf16 u (an autocast matmul's output) returns bf16
        low = values_and_grads(
            lambda **k: selective_scan(**{**k, "u": k["u"] @ eye}, delta_softplus=True, impl="cpu"), x
        )
    assert_rel_close(same, ref, 1e-5, "cpu autocast, fp32 inputs")
    assert_rel_close(low, ref, 3e-2, "cpu autocast, bf16 u")
    leaves = {k: v.bfloat16().requires_grad_() for k, v in x.items()}
    out = selective_scan(**leaves, delta_softplus=True, impl="cpu")
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and all(t.grad.dtype == torch.bfloat16 for t in leaves.values())


def test_two_threads_split_a_group_into_slabs():
    """batch x groups below the thread count: the backward splits a group's channel blocks between threads."""
    x = _stable(make_inputs(1, 40, 16, 33, seed=9))
    expected = values_and_grads(lambda **k: truth(**k, delta_softplus=True), x)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = values_and_grads(lambda **k: selective_scan(**k, delta_softplus=True, impl="cpu"), x)
    finally:
        torch.set_num_threads(threads)
    assert_rel_close(got, expected, 1e-4, "cpu two threads")


def test_the_mixer_layout_matches_the_fast_path():
    """Through BiMamba: transposed views of projections (strided B, C, z), both directions, fp32."""
    from backbones.layers.mamba import BiMamba

    torch.manual_seed(0)
    layer = BiMamba(dim=24, d_state=16)
    x = torch.randn(3, 21, 24, requires_grad=True)
    results = []
    for impl in ("fast", "cpu"):
        layer.scan = impl
        out = layer(x)
        grads = torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])
        results.append([out.detach(), *grads])
    assert_rel_close(results[1], results[0], 1e-4, "BiMamba cpu vs fast")


def test_chunks_are_balanced_and_at_most_CHUNK():
    assert cpu_kernel.CHUNK == 24
    assert [cpu_kernel.chunk_size(L) for L in (1, 17, 24, 25, 66, 257, 1025)] == [1, 17, 24, 13, 22, 24, 24]


def test_auto_picks_cpu_and_explicit_cpu_off_cpu_raises():
    assert resolve_impl("auto", "cpu") == "cpu"
    x = make_inputs(1, 3, 2, 9)
    assert torch.equal(selective_scan(**x, impl="auto"), selective_scan(**x, impl="cpu"))
    if torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs CPU tensors"):
            selective_scan(**{k: v.cuda() for k, v in x.items()}, impl="cpu")


def test_double_backward_is_a_clear_error():
    x = make_inputs(1, 3, 2, 9)
    u = x["u"].clone().requires_grad_()
    y = selective_scan(**{**x, "u": u}, impl="cpu")
    (grad,) = torch.autograd.grad(y.sum(), u, create_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only .* use impl='reference'"):
        grad.sum().backward()


def test_the_ops_pass_opcheck():
    torch.manual_seed(0)
    b, L, d, G, N = 2, 37, 20, 2, 3  # the ops' token layout, two groups of B/C, a partial SIMD block
    u, delta, z = torch.randn(b, L, d), torch.rand(b, L, d), torch.randn(b, L, d)
    A, B, C = -torch.rand(d, N), torch.randn(b, L, G, N), torch.randn(b, L, G, N)
    D, bias = torch.randn(d), torch.randn(d)
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    dt, proj = torch.randn(b, L, 3), torch.randn(3, d)  # a low-rank step: (batch, L, R) and (R, d_inner)
    for reverse in (False, True):
        for step, P in ((delta, None), (dt, proj)):
            torch.library.opcheck(cpu_kernel.cpu_scan, (u, step, A, B, C, D, z, bias, P, True, 16, reverse),
                                  test_utils=utils)
            torch.library.opcheck(cpu_kernel.cpu_scan, (u, step, A, B, C, None, None, None, P, False, 4, reverse),
                                  test_utils=utils)
            _, _, checkpoints = cpu_kernel.cpu_scan(u, step, A, B, C, D, z, bias, P, True, 16, reverse)
            args = (torch.randn(b, L, d), torch.randn(b, d, N), u, step, A, B, C, D, z, bias, P, checkpoints, True,
                    16, reverse)
            torch.library.opcheck(cpu_kernel.cpu_scan_backward, args, test_utils=utils)


def test_torch_compile_fullgraph_matches_eager():
    x = make_inputs(2, 20, 16, 33, seed=11)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}

    def fn(**k):
        y, last = selective_scan(**k, delta_softplus=True, impl="auto", return_last_state=True)
        return y.square().sum() + last.sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    loss = compiled(**leaves)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    leaves2 = {k: v.clone().requires_grad_() for k, v in x.items()}
    loss2 = fn(**leaves2)
    grads2 = torch.autograd.grad(loss2, list(leaves2.values()))
    assert_rel_close([loss.detach(), *grads], [loss2.detach(), *grads2], 1e-6, "compiled vs eager")


def test_the_flop_counter_sees_the_kernel():
    """archbench's FLOP counter finds the scans by their autograd Functions' names in the jit trace."""
    from archbench.measure.flops import _scan_op_names

    assert "prim::PythonOp.CPUSelectiveScan" in _scan_op_names()


def test_without_the_kernel_auto_falls_back_to_fast_and_cpu_says_why(tmp_path):
    script = textwrap.dedent("""
        import torch
        from backbones.ssm import resolve_impl, selective_scan
        from backbones.ssm.cpu_kernel import cpu_available, cpu_unavailable_reason
        assert resolve_impl("auto", "cpu") == "fast"
        assert not cpu_available() and "ARCHBENCH_NO_CPU_KERNEL" in cpu_unavailable_reason()
        x = [torch.randn(1, 3, 5), torch.rand(1, 3, 5), -torch.rand(3, 2), torch.randn(1, 2, 5), torch.randn(1, 2, 5)]
        assert torch.equal(selective_scan(*x), selective_scan(*x, impl="fast"))
        try:
            selective_scan(*x, impl="cpu")
        except RuntimeError as err:
            assert "unavailable (disabled by ARCHBENCH_NO_CPU_KERNEL=1)" in str(err), err
            assert "\\n" not in str(err)
        else:
            raise AssertionError("impl='cpu' ran without its kernel")

        # A failed build (here: no compiler, in an empty extension directory) falls back the same way.
        import os, sys
        from backbones.ssm import cpu_kernel
        del os.environ["ARCHBENCH_NO_CPU_KERNEL"]
        os.environ.update(CXX="/nonexistent/c++", TORCH_EXTENSIONS_DIR=sys.argv[1])
        cpu_kernel._Build.tried, cpu_kernel._Build.reason = False, None
        assert resolve_impl("auto", "cpu") == "fast"
        reason = cpu_unavailable_reason()
        assert reason.startswith("build failed: ") and "not found" in reason and len(reason) < 700, reason
        print("ok")
    """)
    env = {**os.environ, "ARCHBENCH_NO_CPU_KERNEL": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_softplus_matches_torch_over_its_range():
    """The kernel's vectorised softplus and sigmoid against F.softplus on fp32 (via delta with A = 0, u = 1:
    y_t = sum_s delta_s, so y_1 is softplus(delta_0 + bias) exactly once)."""
    xs = torch.cat([torch.linspace(-30, 30, 4001), torch.tensor([-87.0, -50.0, 19.99, 20.0, 20.01, 1e-8, -1e-8])])
    d = xs.numel()
    u = torch.ones(1, d, 1)
    A = torch.zeros(d, 1)
    B = C = torch.ones(1, 1, 1)
    delta = xs.view(1, d, 1).clone().requires_grad_()
    y = selective_scan(u, delta, A, B, C, delta_softplus=True, impl="cpu")
    (g,) = torch.autograd.grad(y.sum(), delta)
    ref = F.softplus(xs.double())
    assert torch.allclose(y.flatten().double(), ref, rtol=4e-7, atol=0)
    assert torch.allclose(g.flatten().double(), torch.sigmoid(xs.double()).where(xs <= 20, 1.0), rtol=4e-7, atol=1e-30)


@pytest.mark.parametrize(("L", "threads"), [(1, 1), (23, 1), (66, 1), (66, 2)])
def test_reverse_gives_the_bits_of_flipping_around_the_forward_scan(L, threads, monkeypatch):
    """The kernel's backwards read computes exactly what flipping every input, scanning and flipping back does:
    same operations in the same order, so DiS's backward direction is unchanged to the bit without the copies
    (two threads and batch 1: the backward pass splits the channel blocks into slabs)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    monkeypatch.setattr(cpu_kernel, "CHUNK", 24)
    try:
        _reverse_matches_flipping(L, batch=1 if threads > 1 else 3)
    finally:
        torch.set_num_threads(previous)


def _reverse_matches_flipping(L: int, batch: int) -> None:
    x = {k: None if v is None else v.float() for k, v in make_inputs(batch, 40, 16, L, seed=L).items()}
    leaves = {k: v.clone().requires_grad_() for k, v in x.items() if v is not None}

    def run(reverse: bool) -> list[torch.Tensor]:
        inputs = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
        if reverse:
            y = selective_scan(**inputs, delta_softplus=True, impl="cpu", reverse=True)
        else:
            flipped = {k: v.flip(-1) if v.dim() >= 3 else v for k, v in inputs.items()}
            y = selective_scan(**flipped, delta_softplus=True, impl="cpu").flip(-1)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
        return [y.detach(), *torch.autograd.grad((y * w).sum(), list(inputs.values()))]

    for got, want in zip(run(True), run(False), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("threads", [1, 2])
def test_fp64_gradcheck_of_a_low_rank_step(threads):
    """The step formed in the kernel from (batch, L, R) and delta_proj: gradcheck on every input, the projection's
    too, at one thread and at two (batch 1: the backward pass splits the channel blocks into slabs, whose partial
    sums of the low-rank input's gradient are added afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = make_inputs(1, 40, 3, 9, G=2, seed=3, dtype=torch.float64)
        x["delta"] = torch.randn(1, 2, 9, dtype=torch.float64)
        x["delta_proj"] = 0.5 * torch.randn(40, 2, dtype=torch.float64)
        names = list(x)
        leaves = [x[n].clone().requires_grad_() for n in names]

        def run(*tensors):
            return selective_scan(**dict(zip(names, tensors, strict=True)), delta_softplus=True, impl="cpu",
                                  reverse=True)

        assert torch.autograd.gradcheck(run, tuple(leaves))
    finally:
        torch.set_num_threads(previous)
