"""torch.compile(fullgraph=True) and torch.export trace every family: the scans are registered custom ops."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_BACKBONES

import archbench
from backbones.ssm import resolve_impl, selective_scan
from backbones.ssm.fast import chunked_scan

COMPILED = [*TINY_BACKBONES, "uvit_bimamba_t2", "dis_mamba2_t2"]  # plus a mixer x skeleton cross


def _inputs():
    return torch.randn(2, 3, 32, 32), torch.tensor([1, 500]), torch.tensor([1, 2])


@pytest.mark.parametrize("name", COMPILED)
def test_fullgraph_compile_matches_eager_values_and_gradients(name):
    model = archbench.build(name)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # no graph break anywhere
    x, t, y = _inputs()
    torch.manual_seed(0)
    out = compiled(x, t, y)
    out.square().mean().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch.manual_seed(0)  # the same drop-path and label-dropout draws
    ref = model(x, t, y)
    ref.square().mean().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    for key, param in model.named_parameters():
        if param.grad is not None:
            assert torch.allclose(grads[key], param.grad, atol=1e-5, rtol=1e-4), key


def test_dis_exports():
    model = archbench.build("dis_t2").eval()
    x, t, y = _inputs()
    exported = torch.export.export(model, (x, t, y))
    # one opaque node per scan direction (inside the autocast-off region, a nested graph): the op auto runs on CPU
    op = {"cpu": "backbones.cpu_scan.default", "fast": "backbones.chunked_scan.default"}[resolve_impl("auto", "cpu")]
    assert exported.graph_module.print_readable(print_output=False).count(op) == 10
    with torch.no_grad():
        assert torch.allclose(exported.module()(x, t, y), model(x, t, y), atol=1e-5)


def test_label_range_is_still_checked_in_eager_mode():
    model = archbench.build("dit_t2")
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 10\]"):
        model(torch.randn(1, 3, 32, 32), torch.tensor([1]), torch.tensor([11]))


def _scan_inputs(requires_grad=True):
    torch.manual_seed(0)
    b, d, L, N = 2, 4, 37, 3
    tensors = [torch.randn(b, d, L), torch.rand(b, d, L), -torch.rand(d, N), torch.randn(b, N, L), torch.randn(b, N, L)]
    return [t.requires_grad_(requires_grad) for t in tensors]


def test_the_scan_op_passes_opcheck():
    torch.manual_seed(0)
    b, L, d, G, N = 2, 37, 4, 2, 3  # the op's token layout, two groups of B/C
    tensors = [torch.randn(b, L, d), torch.rand(b, L, d), -torch.rand(d, N)]
    tensors += [torch.randn(b, L, G, N), torch.randn(b, L, G, N)]
    torch.library.opcheck(chunked_scan, (*[t.requires_grad_() for t in tensors], 16),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_double_backward_is_a_clear_error():
    u, delta, A, B, C = _scan_inputs()
    y = selective_scan(u, delta, A, B, C, impl="fast")
    (grad,) = torch.autograd.grad(y.sum(), u, create_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only .* use impl='reference'"):
        grad.sum().backward()
    y = selective_scan(u, delta, A, B, C, impl="reference")  # the reference loop has every derivative
    (grad,) = torch.autograd.grad(y.sum(), delta, create_graph=True)
    grad.square().sum().backward()
    assert torch.isfinite(delta.grad).all() and delta.grad.abs().sum() > 0
