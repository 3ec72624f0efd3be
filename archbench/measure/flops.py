"""One FLOP counter for every backbone, so that compute comparisons are like-for-like.

Convention (fvcore's, the one the DiT paper's "Gflops" use): one fused multiply-add counts
as one, for a forward pass of one image.  ``gflops`` is simply ``2 * gmacs``.

fvcore traces the model and counts matmul-like ops (linear, matmul, bmm, einsum, conv) and
norms.  Two things it silently skips would bias the comparison, so they get handlers here:

* ``aten::scaled_dot_product_attention``: ``Q K^T`` and ``A V``, i.e.
  ``B*H*Lq*Lk*d + B*H*Lq*Lk*dv`` MACs (the softmax and the scale are elementwise, not counted).
  This is what fvcore counted for the official DiT, whose attention used explicit matmuls.
* the selective scan (a custom ``torch.autograd.Function``, a ``prim::PythonOp`` in the trace):
  ``backbones.ssm.selective_scan_macs`` with ``4N + 1`` MACs per ``(batch, channel, token)``:
  ``delta*A``, ``(delta*u)*B``, the state update and ``C.h`` per state element, plus ``delta*u``.
  The ``D*u`` skip and the ``silu(z)`` gate are elementwise epilogues and are not counted, whether
  or not a kernel fuses them, so the count does not depend on the scan implementation.

Elementwise ops (activations, residual adds, adaLN modulation, softmax, exp) count zero, as in
fvcore; they are registered as deliberately ignored so that the ``unsupported`` list only
shows ops nobody has decided about.  RMSNorm is counted like fvcore counts LayerNorm.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from backbones.registry import backbone_config, build

# The selective scan as the trace names it: the custom op of the fast scan, mamba-ssm's autograd Function.
SCAN_OPS = ("backbones::chunked_scan", "prim::PythonOp.SelectiveScanFn")
# Mamba-2's chunked SSD scan (backbones.ssm.ssd), counted at its chunked algorithm's cost.
SSD_OPS = ("prim::PythonOp.ChunkedSSD",)
ATTENTION_OPS = ("aten::scaled_dot_product_attention",)
# The Mamba mixers' depthwise causal conv (backbones.ssm.causal_conv), counted like a convolution.
CAUSAL_CONV_OPS = ("backbones::causal_conv1d",)

# Zero-MAC ops under fvcore's convention (elementwise math, lookups, data movement).
IGNORED_OPS = tuple(
    f"aten::{op}"
    for op in (
        "abs add add_ addcmul addcmul_ clamp_min cos cumsum div div_ erf exp exp_ gelu log log_softmax "
        "mean mul mul_ neg pow reciprocal relu rsqrt rsub sigmoid silu silu_ sin softmax softplus sqrt "
        "square sub sub_ sum tanh var where lt le ne logical_not "
        "embedding flip roll repeat repeat_interleave tile split split_with_sizes unbind stack pad "
        "zeros zeros_like ones ones_like new_zeros new_ones empty_like linspace lift_fresh clone "
        "type_as masked_fill_ fill_ index_select bernoulli_ floor_divide_ to lerp"
    ).split()
)

# Ops whose absence from a count would make it wrong by far more than rounding.
MATMUL_LIKE = ("matmul", "mm", "bmm", "baddbmm", "addmm", "linear", "einsum", "conv", "attention", "scan", "ssd")


def _shape(value: Any) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(value)
    if shape is None:
        raise ValueError("flop count: an operand of a counted op has no complete shape in the trace")
    return list(shape)


def sdpa_macs(q_shape: list[int], k_shape: list[int], v_shape: list[int]) -> int:
    """MACs of ``softmax(Q K^T) V``: every query against every key, once for scores, once for values."""
    *batch, lq, d = q_shape
    lk, dv = k_shape[-2], v_shape[-1]
    return math.prod(batch) * lq * lk * (d + dv)


def _sdpa_handle(inputs: list[Any], outputs: list[Any]) -> Counter:
    q, k, v = (_shape(inputs[i]) for i in range(3))
    return Counter({"scaled_dot_product_attention": sdpa_macs(q, k, v)})


def _scan_handle(inputs: list[Any], outputs: list[Any]) -> Counter:
    """The chunked op takes token-layout u (batch, L, d_inner); mamba_ssm's and the Triton op (batch, d_inner, L).
    The compiled CPU scan may form the step from Mamba's low-rank dt itself (a (batch, L, R) delta beside its
    ``delta_proj``): those MACs are dt_proj's, counted as the linear layer they replace."""
    from backbones.ssm import selective_scan_macs

    u, a = _shape(inputs[0]), _shape(inputs[2])  # A: (d_inner, N)
    if len(u) != 3 or len(a) != 2 or a[0] not in (u[1], u[2]):
        raise ValueError(f"flop count: unexpected selective-scan operands u{u}, A{a}")
    batch, length = u[0], (u[1] if a[0] == u[2] else u[2])
    macs = Counter({"selective_scan": selective_scan_macs(batch, a[0], length, a[1], has_z=False, has_D=False)})
    delta = _shape(inputs[1])
    if delta != u and len(delta) == 3 and delta[:2] == u[:2]:  # the CPU scan's low-rank (batch, L, R) step input
        macs["linear"] = batch * length * delta[2] * a[0]
    return macs


def _causal_conv_handle(inputs: list[Any], outputs: list[Any]) -> Counter:
    from backbones.ssm.causal_conv import causal_conv1d_macs

    x, w = _shape(inputs[0]), _shape(inputs[1])  # x: (batch, L, channels); weight: (channels, K)
    if len(x) != 3 or len(w) != 2 or w[0] != x[2]:
        raise ValueError(f"flop count: unexpected causal-conv operands x{x}, weight{w}")
    return Counter({"conv": causal_conv1d_macs(x[0], x[1], x[2], w[1])})


def _ssd_handle(inputs: list[Any], outputs: list[Any]) -> Counter:
    """``ChunkedSSD(x*dt, dt*A, B, C)``: the chunk size is a Python constant the trace does not carry, so
    the count uses Mamba-2's default (every archbench mixer runs with it)."""
    from backbones.ssm import ssd_scan_macs
    from backbones.ssm.ssd import DEFAULT_SSD_CHUNK

    xdt, b = _shape(inputs[0]), _shape(inputs[2])  # (batch, L, groups, heads/group, P); (batch, L, groups, N)
    if len(xdt) != 5 or len(b) != 4 or xdt[2] != b[2]:
        raise ValueError(f"flop count: unexpected SSD-scan operands x{xdt}, B{b}")
    batch, length, groups, per_group, head_dim = xdt
    macs = ssd_scan_macs(batch, length, groups * per_group, head_dim, b[3], groups, DEFAULT_SSD_CHUNK,
                         has_z=False, has_D=False)
    return Counter({"ssd_scan": macs})


def _baddbmm_handle(inputs: list[Any], outputs: list[Any]) -> Counter:
    b, n, k = _shape(inputs[1])
    m = _shape(inputs[2])[-1]
    return Counter({"bmm": b * n * k * m})


def _scan_functions() -> list[type]:
    """The autograd Functions in the modules of ``backbones.ssm`` named like a scan (robust to a renamed class)."""
    import importlib
    import pkgutil

    from backbones import ssm

    found = []
    for info in pkgutil.iter_modules(ssm.__path__, prefix="backbones.ssm."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional kernel module whose dependency is missing
            continue
        found += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, torch.autograd.Function)
            and ("scan" in obj.__name__.lower() or "ssd" in obj.__name__.lower())
        ]
    return list(dict.fromkeys(found))


def _scan_op_names() -> tuple[str, ...]:
    names = {*SCAN_OPS, *(f"prim::PythonOp.{fn.__name__}" for fn in _scan_functions())}
    return tuple(sorted(names - set(SSD_OPS)))


@contextlib.contextmanager
def _opaque_scan_bodies() -> Iterator[None]:
    """Keep the tracer out of the scan Functions' bodies while counting.

    The jit tracer records every op run inside an autograd Function's ``forward`` into the graph,
    beside the Function's own ``prim::PythonOp`` node: for the chunked scan that is a few ops per
    timestep, which makes tracing DiS ~10x slower, and any matmul among them would be counted a
    second time on top of the scan handler.  The bodies run untraced; the node itself stays.
    """
    if not hasattr(torch._C, "_get_tracing_state"):
        yield
        return
    originals = {fn: fn.__dict__["forward"] for fn in _scan_functions() if "forward" in fn.__dict__}

    def untraced(forward: Any) -> Any:
        @functools.wraps(forward)
        def run(ctx: Any, *args: Any, **kwargs: Any) -> Any:
            state = torch._C._get_tracing_state()
            torch._C._set_tracing_state(None)
            try:
                return forward(ctx, *args, **kwargs)
            finally:
                torch._C._set_tracing_state(state)

        return staticmethod(run)

    try:
        for fn, forward in originals.items():
            fn.forward = untraced(forward.__func__ if isinstance(forward, staticmethod) else forward)
        yield
    finally:
        for fn, forward in originals.items():
            fn.forward = forward


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tracing runs the forward once; the scan's many tiny ops are slower with OpenMP threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class FlopReport:
    """A forward-pass count: total MACs, MACs per operator, and ops the counter could not price."""

    macs: int
    by_operator: dict[str, int]
    unsupported: dict[str, int]
    by_module: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        return 2 * self.macs / 1e9


def count_flops(model: nn.Module, inputs: tuple) -> FlopReport:
    """Count ``model(*inputs)`` with fvcore plus the handlers above (trace is single-threaded)."""
    with warnings.catch_warnings():  # fvcore's import touches the deprecated torch.jit.script
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    handles: dict[str, Any] = {op: None for op in IGNORED_OPS}
    handles.update({op: _sdpa_handle for op in ATTENTION_OPS})
    handles.update({op: _scan_handle for op in _scan_op_names()})
    handles.update({op: _ssd_handle for op in SSD_OPS})
    handles.update({op: _causal_conv_handle for op in CAUSAL_CONV_OPS})
    handles["aten::baddbmm"] = _baddbmm_handle
    handles["aten::rms_norm"] = _norm_handle()
    analysis.set_op_handle(**handles)
    with warnings.catch_warnings(), torch.no_grad(), _one_thread(), _opaque_scan_bodies():
        warnings.simplefilter("ignore")
        total = analysis.total()
        by_operator = dict(analysis.by_operator())
        unsupported = dict(analysis.unsupported_ops())
        by_module = {name: dict(ops) for name, ops in analysis.by_module_and_operator().items()}
    return FlopReport(int(total), {k: int(v) for k, v in by_operator.items()}, unsupported, by_module)


def _norm_handle() -> Any:
    from fvcore.nn.jit_handles import norm_flop_counter

    return norm_flop_counter(2)  # rms_norm(input, normalized_shape, weight, eps): weight is argument 2


def suspicious_unsupported(report: FlopReport) -> list[str]:
    """Unsupported ops that look like real compute (matmul, conv, attention, scan)."""
    return [op for op in report.unsupported if any(word in op.lower() for word in MATMUL_LIKE)]


def thop_style_macs(model: nn.Module, report: FlopReport) -> int:
    """What thop would see in the official code: nn.Linear / nn.Conv layers called as modules.

    thop hooks modules, so functional attention products and the scan are invisible to it, and
    the official DiS (like mamba_ssm) calls the Mamba mixer's projections and conv through their
    raw weights, so everything inside a Mamba mixer is invisible too.  Norms are left out (thop
    does not know RMSNorm, and LayerNorm is negligible).
    """
    from backbones.layers.mamba import BiMamba

    def layers(ops: dict[str, int]) -> int:
        return ops.get("linear", 0) + ops.get("conv", 0)

    mixers = [name for name, module in model.named_modules() if isinstance(module, BiMamba)]
    hidden = sum(layers(report.by_module.get(name, {})) for name in mixers)
    return layers(report.by_module.get("", report.by_operator)) - hidden


def example_inputs(model: nn.Module, batch: int = 1, device: str | torch.device = "cpu") -> tuple:
    """``(x, t, y)`` matching a backbone's contract; ``y`` is None for unconditional models."""
    x = torch.randn(batch, model.in_channels, model.image_size, model.image_size, device=device)
    t = torch.full((batch,), 500.0, device=device)
    if hasattr(model, "example_condition"):
        return x, t, model.example_condition(batch, device)
    y = torch.zeros(batch, dtype=torch.long, device=device) if getattr(model, "conditional", False) else None
    return x, t, y


def token_count(model: nn.Module) -> int:
    """Sequence length the mixer sees: patches plus extra tokens; pixels for non-token backbones.

    With DiM's padding tokens (``scan_order="dim_pad"``) the state-space mixers scan the padded sequence,
    and that is the length counted (the trace prices their projections, conv and scan at it too).
    """
    from backbones.layers.scan_order import DIM_PAD_TOKENS, PADDED_ORDERS, padded_length

    patches = getattr(model, "num_patches", None)
    if patches is None:
        return model.image_size**2
    extras = int(getattr(model, "extras", 0))
    if getattr(model, "scan_order", None) in PADDED_ORDERS and getattr(model, "mixer_kind", None) != "attention":
        side = int(getattr(model, "grid_size", math.isqrt(int(patches))))
        return padded_length(side, side, extras, DIM_PAD_TOKENS)
    return int(patches) + extras + int(getattr(model, "extras_after", 0))


def build_for_counting(name: str, real_weights: bool = False, **overrides: Any) -> nn.Module:
    """Build for a count; by default with zeroed tensors instead of initialised ones.

    Initialising a billion parameters takes longer than counting them, and a count depends only
    on shapes.  ``real_weights`` builds normally (the fallback when a zeroed model cannot run).
    The scan implementation does not change the count either, so a backbone that takes ``scan``
    is built with the portable ``fast`` path, which is what a CPU trace shows.
    """
    if "scan" in backbone_config(name):
        overrides = {**overrides, "scan": "fast"}
    if not real_weights:
        try:
            with torch.device("meta"):
                model = build(name, **overrides)
            model = model.to_empty(device="cpu")
            with torch.no_grad():
                for tensor in [*model.parameters(), *model.buffers()]:
                    tensor.zero_()
            return model.eval()
        except (NotImplementedError, RuntimeError):  # a constructor that needs real tensors
            pass
    with torch.no_grad():
        return build(name, **overrides).eval()


def backbone_flops(name: str, **overrides: Any) -> dict[str, Any]:
    """One report row for a registered backbone: params, tokens, GMACs, GFLOPs, and the breakdown."""
    model = build_for_counting(name, **overrides)
    try:
        report = count_flops(model, example_inputs(model))
    except (RuntimeError, IndexError):  # value-dependent code that zeroed buffers upset: count a real build
        model = build_for_counting(name, real_weights=True, **overrides)
        report = count_flops(model, example_inputs(model))
    row = {
        "name": name,
        "family": backbone_config(name)["family"],
        "image_size": model.image_size,
        "in_channels": model.in_channels,
        "params": sum(p.numel() for p in model.parameters()),
        "tokens": token_count(model),
        "macs": report.macs,
        "gmacs": report.gmacs,
        "gflops": report.gflops,
        "thop_x2_gflops": 2 * thop_style_macs(model, report) / 1e9,
        "by_operator": report.by_operator,
        "unsupported": report.unsupported,
    }
    del model
    return row
