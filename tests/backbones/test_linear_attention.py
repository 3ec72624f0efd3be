"""ReLU linear attention (Sana's LiteLA) as a mixer: the formula, no order, linear cost, bf16, every skeleton."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import archbench
from archbench.measure.flops import backbone_flops, count_flops
from backbones.layers import Attention, LinearAttention
from backbones.layers.mixers import build_mixer, check_mixer_options
from backbones.layers.scan_order import SCAN_ORDERS


def naive_linear_attention(layer: LinearAttention, x: torch.Tensor) -> torch.Tensor:
    """The formula itself, in float64: an explicit N x N kernel matrix relu(q_i).relu(k_j) per head, each row
    divided by its sum (+ eps), then the output projection."""
    x = x.double()
    w, b = layer.qkv.weight.double(), layer.qkv.bias.double() if layer.qkv.bias is not None else None
    q, k, v = torch.nn.functional.linear(x, w, b).chunk(3, dim=-1)
    batch, n, width = x.shape
    heads = layer.num_heads
    out = torch.empty(batch, n, width, dtype=torch.float64)
    size = width // heads
    for h in range(heads):
        cols = slice(h * size, (h + 1) * size)
        kernel = torch.relu(q[..., cols]) @ torch.relu(k[..., cols]).transpose(1, 2)  # (B, N, N)
        out[..., cols] = (kernel @ v[..., cols]) / (kernel.sum(dim=-1, keepdim=True) + layer.eps)
    return torch.nn.functional.linear(out, layer.proj.weight.double(), layer.proj.bias.double())


def _layer(width: int = 24, heads: int = 3, qkv_bias: bool = True, seed: int = 0) -> LinearAttention:
    torch.manual_seed(seed)
    layer = LinearAttention(width, heads, qkv_bias=qkv_bias)
    with torch.no_grad():  # non-zero biases, so a misplaced bias would show
        for p in layer.parameters():
            if p.ndim == 1:
                p.normal_(0, 0.3)
    return layer


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("tokens", [1, 7, 65])
def test_matches_the_naive_quadratic_formula(qkv_bias, tokens):
    layer = _layer(qkv_bias=qkv_bias)
    x = torch.randn(2, tokens, 24)
    with torch.no_grad():
        got = layer(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive_linear_attention(layer, x), atol=1e-5, rtol=1e-5)


def test_it_is_not_softmax_attention():
    """Same weights in a softmax attention layer give something else: the kernel, not a renamed Attention."""
    layer = _layer(qkv_bias=True)
    softmax = Attention(24, 3, qkv_bias=True)
    softmax.load_state_dict(layer.state_dict())
    x = torch.randn(2, 9, 24)
    with torch.no_grad():
        assert not torch.allclose(layer(x), softmax(x), atol=1e-3)


def test_a_query_without_positive_features_gets_zero_not_nan():
    """eps sits in the normaliser: relu(q) = 0 gives 0 / (0 + eps) = 0 before the output projection."""
    layer = _layer(width=8, heads=1, qkv_bias=True)
    with torch.no_grad():
        layer.qkv.weight.zero_()
        layer.qkv.bias.copy_(torch.cat([-torch.ones(8), torch.ones(8), torch.ones(8)]))  # q < 0 everywhere
        out = layer(torch.randn(1, 5, 8))
    torch.testing.assert_close(out, layer.proj.bias.expand(1, 5, 8))


def test_permutation_equivariant_over_tokens():
    layer = _layer()
    x = torch.randn(2, 33, 24)
    perm = torch.randperm(33, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(layer(x[:, perm]), layer(x)[:, perm], atol=1e-5, rtol=1e-5)


def test_kernel_products_cost_linear_in_tokens():
    """k^T [v, 1] and q (k^T [v, 1]): 2 N d (d + 1) MACs per head (d^2 each plus the normaliser column),
    doubling with N, where softmax attention's products quadruple."""
    batch, width, heads = 2, 32, 4
    d = width // heads
    linear_attention, softmax = LinearAttention(width, heads), Attention(width, heads)
    counts = {}
    for n in (50, 100):
        x = torch.randn(batch, n, width)
        report = count_flops(linear_attention, (x,))
        assert report.unsupported == {}
        assert report.by_operator["matmul"] == batch * heads * 2 * n * d * (d + 1)
        assert report.by_operator["linear"] == batch * n * 4 * width * width
        counts[n] = report.by_operator["matmul"], count_flops(softmax, (x,)).by_operator["scaled_dot_product_attention"]
    assert counts[100][0] == 2 * counts[50][0]
    assert counts[100][1] == 4 * counts[50][1]


def test_whole_backbones_price_every_linear_attention_block():
    """uvit_t2: 5 blocks on 2 + 256 tokens, 3 heads of 32; the hybrid keeps softmax attention in blocks 1 and 3."""
    tokens, heads, d = 258, 3, 32
    per_block = 2 * heads * tokens * d * (d + 1)
    row = backbone_flops("uvit_t2", mixer="linear_attention")
    assert row["unsupported"] == {} and "scaled_dot_product_attention" not in row["by_operator"]
    assert row["by_operator"]["matmul"] == 5 * per_block
    hybrid = backbone_flops("uvit_t2", mixer="linear_attention", attention_every=2)
    assert hybrid["by_operator"]["matmul"] == 3 * per_block
    assert hybrid["by_operator"]["scaled_dot_product_attention"] == 2 * heads * tokens * tokens * 2 * d
    small = backbone_flops("uvit_t2", mixer="linear_attention", image_size=16)  # 2 + 64 tokens
    assert small["by_operator"]["matmul"] == 5 * 2 * heads * 66 * d * (d + 1)


def test_bf16_autocast_is_finite_and_close_to_fp32():
    layer = _layer(width=64, heads=2)
    x = torch.randn(2, 1025, 64) * 3
    with torch.no_grad():
        reference = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = layer(x)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    error = (low.float() - reference).norm() / reference.norm()
    assert error < 2e-2, f"relative error {error:.3g}"


class _MatmulDtypes(TorchDispatchMode):
    """Records the operand dtypes of the matrix products as they reach the kernels (below autocast)."""

    def __init__(self):
        super().__init__()
        self.seen: dict[str, set[torch.dtype]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm", "baddbmm"):
            self.seen.setdefault(name, set()).update(a.dtype for a in args if isinstance(a, torch.Tensor))
        return func(*args, **(kwargs or {}))


def test_under_autocast_the_kernel_products_run_in_float32():
    """The projections follow autocast (bf16 mm/addmm); the two kernel products (bmm) stay float32, as Sana's
    fp32_attention keeps them."""
    layer = _layer(width=16, heads=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), _MatmulDtypes() as record:
        layer(torch.randn(2, 9, 16))
    assert record.seen["bmm"] == {torch.float32}
    assert torch.bfloat16 in record.seen.get("mm", set()) | record.seen.get("addmm", set())


def test_gradients_reach_every_parameter():
    layer = _layer()
    x = torch.randn(2, 17, 24, requires_grad=True)
    layer(x).square().sum().backward()
    for name, p in [*layer.named_parameters(), ("input", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("order", [o for o in SCAN_ORDERS if o != "bidirectional"])
def test_a_scan_order_is_refused_in_one_line(order):
    for attempt in (
        lambda: check_mixer_options("linear_attention", order, 0),
        lambda: check_mixer_options("linear_attention", order, 2),
        lambda: build_mixer("linear_attention", 16, layer=0, grid=(2, 2), extras=1, num_heads=2, scan_order=order),
        lambda: archbench.build("dit_t2", mixer="linear_attention", scan_order=order),
    ):
        with pytest.raises(ValueError, match=f"scan_order='{order}' does not apply to mixer=linear_attention") as info:
            attempt()
        assert "\n" not in str(info.value)


def _mixers(model) -> list[str]:
    blocks = model.blocks if hasattr(model, "blocks") else [*model.in_blocks, model.mid_block, *model.out_blocks]
    return [type(getattr(block, "mixer", None) or block.attn).__name__ for block in blocks]


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("dit_t2", {}, ["LinearAttention"] * 4),
        ("uvit_t2", {}, ["LinearAttention"] * 5),
        ("dis_t2", {}, ["LinearAttention"] * 5),
        ("dis_t2", dict(attention_every=2), ["LinearAttention", "Attention"] * 2 + ["LinearAttention"]),
        ("dit_t2", dict(attention_every=2), ["LinearAttention", "Attention"] * 2),
    ],
)
def test_every_skeleton_takes_it_through_the_factory(name, options, expected):
    torch.manual_seed(0)
    model = archbench.build(name, mixer="linear_attention", image_size=8, **options)
    assert _mixers(model) == expected
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 10])
    out = model(x, t, y)
    assert out.shape == (2, 6 if model.learn_sigma else 3, 8, 8) and torch.isfinite(out).all()
    out.square().mean().backward()
    mixer_params = [p for m in model.modules() if isinstance(m, LinearAttention) for p in m.parameters()]
    assert mixer_params and all(p.grad is not None for p in mixer_params)


def test_softmax_attention_alone_still_cannot_host_a_hybrid_nor_fill_dis():
    with pytest.raises(ValueError, match="linear_attention"):
        check_mixer_options("attention", "bidirectional", 2)
    with pytest.raises(ValueError, match="DiS's blocks take an SSM mixer"):
        archbench.build("dis_t2", mixer="attention")
