"""The scans' CPU softplus against float64 truth: values, the threshold, gradients, double backward."""

import torch
import torch.nn.functional as F

from backbones.ssm.softplus import softplus


def _inputs() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    # Mamba's step sizes (-7..-2 before softplus), a sweep across the threshold, and edge values.
    return torch.cat([
        torch.randn(20000, generator=gen) * 3 - 4,
        torch.linspace(-87, 40, 50001),
        torch.tensor([0.0, -0.0, 19.999, 20.0, 20.001, -16.0, -17.0, 1e-8, -1e-8]),
    ])


def test_values_match_float64_to_a_few_ulps():
    x = _inputs()
    truth = F.softplus(x.double())
    rel = ((softplus(x).double() - truth) / truth).abs().max().item()
    assert rel < 4e-7, rel


def test_above_the_threshold_returns_the_input_exactly():
    x = torch.tensor([20.5, 25.0, 1e4])
    assert torch.equal(softplus(x), F.softplus(x))


def test_gradient_is_the_sigmoid():
    x = _inputs().requires_grad_()
    softplus(x).sum().backward()
    assert torch.allclose(x.grad.double(), torch.sigmoid(x.detach().double()), atol=1e-7, rtol=0)


def test_float64_gradcheck_and_double_backward():
    x = (torch.randn(16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 5).requires_grad_()
    assert torch.autograd.gradcheck(softplus, (x,))
    assert torch.autograd.gradgradcheck(softplus, (x,))


def test_traces_under_compile_fullgraph():
    x = torch.randn(8, 3)
    compiled = torch.compile(softplus, backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(x), F.softplus(x), atol=1e-7)
