"""The Triton SSD kernels against ssd.py's float64 reference, on CPU in Triton's interpreter (TRITON_INTERPRET=1).

The interpreter runs every program of the grid one after the other in numpy, so sizes are tiny; a small
``chunk`` gives several chunks (and a shorter last one), ``block_p`` smaller than head_dim several
programs per head, whose partial sums the wrapper adds up.
"""

from __future__ import annotations

import math
import subprocess
import sys
from functools import partial

import pytest
import torch
from test_ssd import loop_truth, make_inputs, rel_errors, values_and_grads, with_initial_states

from backbones.ssm import ssd_scan

pytest.importorskip("triton")

from backbones.ssm import triton_ssd as mod  # noqa: E402  (after the skip: the module itself needs no triton)
from backbones.ssm.triton_ssd import (  # noqa: E402
    triton_ssd,
    triton_ssd_backward_op,
    triton_ssd_op,
    triton_ssd_usable,
)


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    """Kernels built in this mode stay cached beside any compiled ones, so other tests are unaffected."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def reference(x: dict, softplus: bool) -> list[torch.Tensor]:
    """Values and gradients of ssd.py's per-token loop on float64 copies of the inputs."""
    x64 = {k: None if v is None else v.double() for k, v in x.items()}
    return values_and_grads(partial(ssd_scan, dt_softplus=softplus, impl="reference"), x64)


def assert_close(got: list[torch.Tensor], expected: list[torch.Tensor], rtol: float, what: str) -> float:
    errs = rel_errors(got, expected, what)
    for i, err in enumerate(errs):
        assert err <= rtol, f"{what}: item {i} relative error {err:.2e} > {rtol:.0e}"
    return max(errs)


CASES = {  # shape (batch, L, heads, head_dim, state, groups), options, chunk, block_p
    "all-on": ((2, 10, 4, 6, 5, 2), {"D": "h", "with_z": True, "with_bias": True, "softplus": True}, 4, 4),
    "bare": ((1, 11, 2, 5, 3, 1), {"D": None, "with_z": False, "with_bias": False, "softplus": False}, 4, 0),
    "D-hp-softplus": ((1, 9, 2, 3, 7, 1), {"D": "hp", "with_z": True, "with_bias": False, "softplus": True}, 2, 2),
    "bias-no-softplus": ((2, 7, 2, 6, 5, 2), {"D": "hp", "with_z": False, "with_bias": True, "softplus": False},
                         64, 4),
    "one-token": ((1, 1, 2, 3, 4, 1), {"D": "h", "with_z": True, "with_bias": True, "softplus": True}, 4, 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_grads_match_float64_reference(case):
    shape, options, chunk, block_p = CASES[case]
    x = make_inputs(*shape, seed=len(case), **options)
    expected = reference(x, options["softplus"])
    got = values_and_grads(partial(triton_ssd, dt_softplus=options["softplus"], chunk=chunk, block_p=block_p), x)
    assert_close(got, expected, 1e-5, case)


def test_large_dt_is_finite_and_exact():
    # dt = 50 through softplus with A = -8: dt*A = -400 per token (decay exp(-400) = 0 in fp32), and dt*A
    # near -100 for the other head; dividing by a decay to step back a state would give inf or nan.
    x = make_inputs(1, 13, 2, 3, 4, 1, seed=3, softplus=True)
    x["dt"] = 0.5 * x["dt"] - 5.0
    x["dt"][:, [0, 1, 2, 5, 9, 12]] = 50.0
    x["A"] = torch.tensor([-8.0, -2.0])
    x["dt_bias"] = torch.zeros(2)
    expected = reference(x, True)
    got = values_and_grads(partial(triton_ssd, dt_softplus=True, chunk=4), x)
    assert_close(got, expected, 1e-5, "large dt")


def test_bf16_inputs_match_reference_of_rounded_inputs():
    # Mamba-2's mix: bf16 activations, fp32 parameters (A, D, dt_bias); gradients come back in each dtype.
    x = make_inputs(1, 10, 2, 5, 6, 1, seed=5, D="hp", softplus=True)
    x = {k: v if k in ("A", "D", "dt_bias") else v.to(torch.bfloat16) for k, v in x.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    y = triton_ssd(**leaves, dt_softplus=True, chunk=4)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    assert all(t.grad.dtype == t.dtype for t in leaves.values())
    got = values_and_grads(partial(triton_ssd, dt_softplus=True, chunk=4), x)
    assert_close(got, reference(x, True), 2e-2, "bf16")


def test_matches_fast_on_fp32_and_non_contiguous_inputs():
    x = make_inputs(2, 9, 2, 4, 5, 2, seed=7, D="h", softplus=True)
    # B and C as views with a stride, as Mamba-2 splits them out of one projection.
    BC = torch.cat([x["B"], x["C"]], dim=-1)
    x["B"], x["C"] = BC[..., :5], BC[..., 5:]
    assert not x["B"].is_contiguous()
    fast = values_and_grads(partial(ssd_scan, dt_softplus=True, chunk_size=4, impl="fast"), x)
    got = values_and_grads(partial(triton_ssd, dt_softplus=True, chunk=4, block_p=2), x)
    assert_close(got, fast, 1e-5, "triton vs fast")


def test_double_backward_says_use_reference():
    x = {k: v.requires_grad_() for k, v in make_inputs(1, 3, 2, 2, 2, 1, seed=1).items()}
    y = triton_ssd(**x, chunk=2)
    (gx,) = torch.autograd.grad(y.square().sum(), x["x"], create_graph=True)
    with pytest.raises(RuntimeError, match=r"first derivatives only.*impl='reference'"):
        gx.sum().backward()


def test_opcheck():
    x = make_inputs(1, 5, 2, 3, 4, 1, seed=2, D="hp", softplus=True)
    args = tuple(x[k].requires_grad_() for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias"))
    h0 = torch.randn(1, 2, 3, 4, requires_grad=True)
    limits = (0.0, math.inf)
    torch.library.opcheck(triton_ssd_op, (*args, h0, True, *limits, 2, 2))
    bare = (*args[:5], None, None, None, None, False, 0.1, 0.5, 4, 0)
    torch.library.opcheck(triton_ssd_op, bare, test_utils=("test_schema", "test_faketensor"))
    # The backward op alone, on tensors that do not require grad (its own derivative is the clear error).
    plain = tuple(t.detach() for t in args)
    y, states, final = triton_ssd_op(*plain, h0.detach(), True, *limits, 2, 2)
    backward_args = (torch.randn_like(y), torch.randn_like(final), *plain, h0.detach(), states, True, *limits, 2, 2)
    torch.library.opcheck(triton_ssd_backward_op, backward_args)


def test_fullgraph_compile_matches_eager():
    x = make_inputs(1, 5, 2, 3, 4, 1, seed=4, D="h", softplus=True)
    fn = partial(triton_ssd, dt_softplus=True, chunk=2)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")  # one opaque op for forward and backward
    assert_close(values_and_grads(compiled, x), values_and_grads(fn, x), 0.0, "compiled vs eager")


def test_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not triton_ssd_usable("cpu")
    x = make_inputs(1, 3, 2, 2, 2, 1)
    with pytest.raises(RuntimeError, match=r"needs CUDA tensors, or TRITON_INTERPRET=1 .*interpreter"):
        triton_ssd(**x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_ssd_usable("cpu")


def test_missing_triton_says_how(monkeypatch):
    monkeypatch.setattr(mod, "_triton_module", lambda: None)
    assert not triton_ssd_usable("cpu")
    with pytest.raises(RuntimeError, match=r"pip install triton.*pip install archbench\[gpu\]"):
        triton_ssd(**make_inputs(1, 3, 2, 2, 2, 1))


def test_module_imports_without_triton():
    # Loaded from its file alone (it imports only torch), skipping the backbones package's slow imports.
    code = ("import sys, importlib.util as u; sys.modules['triton'] = None\n"
            f"spec = u.spec_from_file_location('ssd_no_triton', {mod.__file__!r})\n"
            "m = u.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "assert m._triton_module() is None and not m.triton_ssd_usable('cpu')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bad_arguments():
    x = make_inputs(1, 3, 2, 2, 2, 1)
    with pytest.raises(ValueError, match="float64"):
        triton_ssd(**{**x, "A": x["A"].double()})
    with pytest.raises(ValueError, match="chunk must be a positive int, got 0"):
        triton_ssd(**x, chunk=0)
    with pytest.raises(ValueError, match="block_p must be a power of 2, got 3"):
        triton_ssd(**x, block_p=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the compiled kernels)")
def test_compiled_kernels_on_cuda(monkeypatch):
    # Mamba-2-like sizes, compiled kernels: against fast in fp32, deterministic gradients, bf16 in range.
    monkeypatch.delenv("TRITON_INTERPRET")

    def on_cpu(fn, **options):  # outputs back on CPU, where values_and_grads draws its weights
        return lambda **kw: fn(**kw, dt_softplus=True, **options).cpu()

    x = {k: v.cuda() for k, v in make_inputs(2, 200, 8, 64, 128, 2, seed=9, D="h", softplus=True).items()}
    fast = values_and_grads(on_cpu(ssd_scan, chunk_size=64, impl="fast"), x)
    got = values_and_grads(on_cpu(triton_ssd), x)
    assert_close(got, fast, 1e-4, "cuda triton vs fast")
    again = values_and_grads(on_cpu(triton_ssd), x)
    assert all(torch.equal(a, b) for a, b in zip(got, again, strict=True)), "gradients are not deterministic"
    x16 = {k: v if k in ("A", "D", "dt_bias") else v.to(torch.bfloat16) for k, v in x.items()}
    ref = values_and_grads(on_cpu(ssd_scan, impl="fast"), {k: v.double() for k, v in x16.items()})
    assert_close(values_and_grads(on_cpu(triton_ssd), x16), ref, 3e-2, "cuda bf16")


@pytest.mark.parametrize(("chunk", "block_p"), [(4, 2), (64, 0)])
def test_initial_and_final_states_match_the_float64_loop(chunk, block_p):
    # Values and gradients of y and of the final state, and the initial state's gradient (issue 20: the
    # Triton path returned no final state and took no initial one).
    x = with_initial_states(make_inputs(2, 10, 4, 6, 5, 2, seed=12, D="h", softplus=True))
    expected = values_and_grads(partial(loop_truth, dt_softplus=True, final=True), x)
    fn = partial(triton_ssd, dt_softplus=True, chunk=chunk, block_p=block_p, return_final_states=True)
    got = values_and_grads(fn, x)
    assert len(got) == len(expected) == 2 + 9
    assert_close(got, expected, 1e-5, "triton states")
    via_dispatch = partial(ssd_scan, dt_softplus=True, impl="triton", return_final_states=True)
    assert_close(values_and_grads(via_dispatch, x), expected, 1e-5, "ssd_scan(impl='triton')")


def test_final_state_alone_without_initial_state():
    x = make_inputs(1, 7, 2, 3, 4, 1, seed=13, D=None, with_z=False, softplus=True)
    expected = values_and_grads(partial(loop_truth, dt_softplus=True, final=True), x)
    got = values_and_grads(partial(triton_ssd, dt_softplus=True, chunk=4, return_final_states=True), x)
    assert_close(got, expected, 1e-5, "final state")


@pytest.mark.parametrize("softplus", [True, False])
def test_dt_limit_matches_the_float64_loop(softplus):
    x = make_inputs(2, 9, 2, 3, 4, 1, seed=14, softplus=softplus)
    limit = (0.2, 0.6)
    expected = values_and_grads(partial(loop_truth, dt_softplus=softplus, final=True, dt_limit=limit), x)
    fn = partial(triton_ssd, dt_softplus=softplus, chunk=4, dt_limit=limit, return_final_states=True)
    assert_close(values_and_grads(fn, x), expected, 1e-5, "dt_limit")
    x["dt"] = x["dt"] - 0.8  # negative effective dt without softplus: the default (0, inf) clamps it to 0
    clamp = (0.0, math.inf)
    expected = values_and_grads(partial(loop_truth, dt_softplus=softplus, dt_limit=clamp), x)
    assert_close(values_and_grads(partial(triton_ssd, dt_softplus=softplus, chunk=4), x), expected, 1e-5, "default")


@pytest.mark.parametrize("options", [True, False])
def test_kernels_compile_for_a_gpu_without_one(options, monkeypatch):
    """The interpreter skips triton's compiler; compiling for sm_90 here catches compiled-only errors (the
    initial/final state tiles and the dt_limit clamp included)."""
    import inspect

    monkeypatch.delenv("TRITON_INTERPRET")  # the compiled kernels, not the interpreted ones

    triton = pytest.importorskip("triton")
    pytest.importorskip("triton.backends.nvidia")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = dict(CHUNK=64, BLOCK_P=16, BLOCK_N=64, HAS_D=options, HAS_Z=options, HAS_BIAS=options,
                  SOFTPLUS=options, HAS_H0=options)
    kernels = mod._kernels(False)
    for kern in (kernels.forward, kernels.backward):
        names = list(inspect.signature(kern.fn).parameters)
        sig = {n: "constexpr" if n in consts else "*fp32" if n.endswith("_ptr") else
               "fp32" if n in ("dt_min", "dt_max") else "i32" for n in names}
        src = ASTSource(kern, sig, constexprs={(names.index(k),): v for k, v in consts.items()})
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert ".entry" in compiled.asm["ptx"]
