"""The selective scan (the Mamba S6 recurrence): one entry point over interchangeable implementations.

Layout and signature follow ``mamba_ssm``'s ``selective_scan_fn`` so a backbone can switch between
the CUDA kernel and the pure-PyTorch paths without reshaping anything::

    u, delta: (batch, d_inner, L)    A: (d_inner, N)    B, C: (batch, N, L) or (batch, groups, N, L)
    D, delta_bias: (d_inner,)        z: (batch, d_inner, L)
    (grouped B/C: channel d reads group d // (d_inner // groups), as in mamba_ssm)

    delta <- softplus(delta + delta_bias)            (bias/softplus optional)
    h_t    = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t    = C_t . h_t + D * u_t
    out    = y * silu(z)                              (if z is given)

Implementations (``impl``):

* ``reference``: a per-timestep loop differentiated by autograd. Slow, but obviously correct.
* ``fast``: exact chunked scan with a hand-written adjoint (:func:`backbones.ssm.fast.chunked_scan`, a
  registered custom op). It never
  materialises a full ``(batch, L, d_inner, N)`` tensor: it walks the sequence in chunks that stay
  in cache, keeps only the state at each chunk start, and recomputes the chunk in the backward pass.
  Decays are only ever multiplied (never divided), so ``delta * A`` of -100 or less just underflows
  to zero instead of producing inf/nan.  It computes in the token layout ``(batch, L, d_inner)``: pass
  ``x.transpose(1, 2)`` views of token-layout tensors (as the mixers do) and nothing is transposed.
* ``cpu``: a compiled C++ kernel pair (:mod:`backbones.ssm.cpu_kernel`, source ``cpu_scan.cpp``), built
  on first use with ``torch.utils.cpp_extension`` and cached in torch's extension directory.  Same
  semantics and layout as ``fast`` (token layout, grouped B/C, decays only multiplied), with the
  softplus, ``D`` skip and ``silu(z)`` gate fused in; SIMD over channels, a state checkpoint every 64
  steps at most, recomputed in the backward pass, torch's intra-op threads over (batch x channel
  blocks).  It computes in fp32, or fp64 for fp64 inputs.  If the build fails (no compiler), or
  ``ARCHBENCH_NO_CPU_KERNEL=1`` is set, it is unavailable: ``auto`` then runs ``fast``, and an
  explicit ``impl="cpu"`` raises with the reason.
* ``triton``: the Triton kernel pair of :mod:`backbones.ssm.triton_scan` (CUDA; on CPU only under
  ``TRITON_INTERPRET=1``, for tests).
* ``mamba_ssm``: the fused CUDA kernel, when installed and the tensors live on CUDA.
* ``auto``: on CUDA ``mamba_ssm`` when it imports, else ``triton`` when it imports, else ``fast``; on
  CPU ``cpu`` when the kernel builds (or is cached), else ``fast``; elsewhere ``fast``.
  :func:`resolve_impl` says which one a call would run (``archbench.report`` shows it), and the first
  ``auto`` call logs its choice once.

``reverse=True`` scans from the last token to the first (the recurrence runs over ``t = L-1, ..., 0``; output in
token order, the last state the one after token 0): DiS's backward direction.  ``cpu`` does it in the kernel,
reading the inputs backwards; the other paths flip the inputs along L and the output back, with identical values.

``delta_proj`` (d_inner, R) makes ``delta`` Mamba's low-rank (batch, R, L) input of ``dt_proj``: the step is
``delta_proj @ delta`` (then ``delta_bias`` and the softplus).  ``cpu`` forms it inside the kernel (no (batch,
d_inner, L) step tensor, no small matmuls forward or backward); the other paths run the matmul first.

All paths accumulate in (at least) fp32 and return ``u``'s dtype, also under autocast.
``return_last_state=True`` also returns the state after the last step, ``(batch, d_inner, N)`` in fp32,
differentiable on every path but ``mamba_ssm``: the fused kernel ignores a gradient arriving through the
last state, so a backward pass that needs it raises instead of dropping it silently.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from backbones.ssm.cpu_kernel import cpu_available, cpu_selective_scan, cpu_unavailable_reason
from backbones.ssm.fast import auto_chunk, chunked_scan
from backbones.ssm.kernels import mamba_ssm_available, mamba_ssm_scan
from backbones.ssm.reference import reference_scan
from backbones.ssm.softplus import softplus
from backbones.ssm.triton_scan import triton_available, triton_selective_scan

SCAN_IMPLS = ("auto", "reference", "fast", "cpu", "triton", "mamba_ssm")
# Timesteps per chunk of the fast path; None sizes the chunk to the cache (backbones.ssm.fast.auto_chunk).
DEFAULT_CHUNK: int | None = None

log = logging.getLogger(__name__)
_announced: set[str] = set()


def selective_scan_macs(batch: int, d_inner: int, L: int, N: int, has_z: bool, has_D: bool) -> int:
    """Multiply-accumulate count of one selective scan, as a closed form for FLOP counters.

    Convention (exp, softplus and silu are transcendental and not counted):

    * per ``(b, d, l, n)`` element, 4 MACs: ``delta*A`` (1), ``(delta*u)*B`` (1),
      the state update ``dA*h + x`` (1), and the output contraction ``C . h`` (1);
    * per ``(b, d, l)`` element: ``delta*u`` (1), ``+ D*u`` (1 if ``has_D``), ``* silu(z)`` (1 if
      ``has_z``).
    """
    per_token = 4 * N + 1 + int(has_D) + int(has_z)
    return batch * d_inner * L * per_token


def _shape_error(name: str, expected: str, tensor: Tensor) -> ValueError:
    return ValueError(f"selective_scan: {name} must have shape {expected}, got {tuple(tensor.shape)}")


def _check_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_proj: Tensor | None = None,
) -> None:
    """Reject wrong shapes early with a message naming the tensor and the expected layout."""
    if u.dim() != 3:
        raise _shape_error("u", "(batch, d_inner, L)", u)
    batch, d_inner, L = u.shape
    if L == 0:
        raise _shape_error("u", "(batch, d_inner, L) with L >= 1", u)
    if delta_proj is not None:
        if delta_proj.dim() != 2 or delta_proj.shape[0] != d_inner:
            raise _shape_error("delta_proj", f"(d_inner, R) with d_inner = {d_inner}", delta_proj)
        if delta.shape != (batch, delta_proj.shape[1], L):
            raise _shape_error("delta", f"(batch, R, L) = {(batch, delta_proj.shape[1], L)} with delta_proj", delta)
    elif delta.shape != u.shape:
        raise _shape_error("delta", f"(batch, d_inner, L) = {tuple(u.shape)} like u", delta)
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise _shape_error("A", f"(d_inner, N) with d_inner = {d_inner}", A)
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported, pass a real (d_inner, N) tensor")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        grouped = t.dim() == 4 and t.shape[0] == batch and t.shape[2:] == (N, L) and d_inner % t.shape[1] == 0
        if t.shape != (batch, N, L) and not grouped:
            raise _shape_error(
                name, f"(batch, N, L) = {(batch, N, L)} or (batch, groups, N, L) with groups dividing "
                f"d_inner = {d_inner} (input-dependent form)", t,
            )
    if B.dim() == 4 and C.dim() == 4 and B.shape != C.shape:
        raise ValueError(
            f"selective_scan: B and C must have the same groups, got {tuple(B.shape)} and {tuple(C.shape)}"
        )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d_inner,):
            raise _shape_error(name, f"(d_inner,) = ({d_inner},)", t)
    if z is not None and z.shape != u.shape:
        raise _shape_error("z", f"(batch, d_inner, L) = {tuple(u.shape)} like u", z)


def _grouped(t: Tensor) -> Tensor:
    """(batch, N, L) -> (batch, 1, N, L); grouped tensors pass as they are."""
    return t[:, None] if t.dim() == 3 else t


def resolve_impl(impl: str, device: torch.device | str) -> str:
    """The implementation ``impl`` runs on ``device`` (``auto`` resolved; others as given)."""
    if impl not in SCAN_IMPLS:
        raise ValueError(f"selective_scan: unknown impl {impl!r}; valid choices are {SCAN_IMPLS}")
    if impl != "auto":
        return impl
    kind = torch.device(device).type
    if kind == "cpu":
        return "cpu" if cpu_available() else "fast"  # the first call builds the kernel (or loads it)
    if kind != "cuda":
        return "fast"
    return "mamba_ssm" if mamba_ssm_available() else "triton" if triton_available() else "fast"


def _announce(impl: str, device: torch.device) -> None:
    """Log the implementation ``auto`` picked, once per (impl, device type) and process."""
    key = f"{impl}@{device.type}"
    if key not in _announced and not torch.compiler.is_compiling():
        _announced.add(key)
        log.info("selective_scan(impl='auto') runs %r on %s", impl, device.type)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    impl: str = "auto",
    return_last_state: bool = False,
    reverse: bool = False,
    delta_proj: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the selective scan; see the module docstring for layouts and the recurrence.

    Returns a ``(batch, d_inner, L)`` tensor in ``u``'s dtype (and the last state if asked).
    """
    chosen = resolve_impl(impl, u.device)
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, delta_proj)
    if impl == "auto":
        _announce(chosen, u.device)
    if delta_proj is not None and chosen != "cpu":  # the step as its own matmul, then any path
        delta = F.linear(delta.transpose(1, 2), delta_proj).transpose(1, 2)
        delta_proj = None
    if reverse and chosen != "cpu":
        return _flipped_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chosen, return_last_state)
    if chosen == "mamba_ssm":
        out = mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        if return_last_state:
            y, last = out
            return y, _NoGradThroughKernelState.apply(last)
        return out
    if chosen == "triton":
        return triton_selective_scan(
            u, delta, A, _grouped(B), _grouped(C), D, z, delta_bias, delta_softplus, return_last_state
        )
    if chosen == "cpu":
        _require_cpu_kernel(u)
    out_dtype = u.dtype
    # fp32 accumulation (fp64 stays fp64); autocast off so matmuls inside do not drop to bf16.
    compute = torch.promote_types(u.dtype, torch.float32)
    with torch.autocast(device_type=u.device.type, enabled=False):
        if chosen == "cpu":
            y, last = cpu_selective_scan(
                u, delta, A, _grouped(B), _grouped(C), D, z, delta_bias, delta_softplus, compute, reverse, delta_proj
            )
        elif chosen == "reference":
            y, last = _reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, compute)
        else:
            y, last = _fast(u, delta, A, B, C, D, z, delta_bias, delta_softplus, compute)
    y = y.to(out_dtype)
    return (y, last.float()) if return_last_state else y


def _flipped_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, impl, return_last_state):
    """``reverse`` on the paths without it built in: the forward scan of the inputs flipped along L, its output
    flipped back."""
    def flip(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.flip(-1)

    out = selective_scan(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z), delta_bias, delta_softplus,
                         impl=impl, return_last_state=return_last_state)
    return (out[0].flip(-1), out[1]) if return_last_state else out.flip(-1)


def _require_cpu_kernel(u: Tensor) -> None:
    if u.device.type != "cpu":
        raise RuntimeError(
            f"selective_scan(impl='cpu'): the compiled kernel needs CPU tensors, got device {u.device}; "
            "use impl='auto'"
        )
    if not cpu_available():
        raise RuntimeError(
            f"selective_scan(impl='cpu'): the compiled CPU kernel is unavailable ({cpu_unavailable_reason()}); "
            "use impl='fast' (or impl='auto', which falls back to it)"
        )


class _NoGradThroughKernelState(torch.autograd.Function):
    """Identity on mamba_ssm's last state whose backward refuses: that kernel's backward takes the output's
    gradient only, so a loss on the last state would otherwise lose its gradient without a word."""

    @staticmethod
    def forward(ctx, last: Tensor) -> Tensor:
        return last.view_as(last)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        raise RuntimeError(
            "selective_scan(impl='mamba_ssm', return_last_state=True): mamba_ssm's kernel does not "
            "differentiate through the last state; use impl='triton' or impl='fast', which do"
        )


def _reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, compute) -> tuple[Tensor, Tensor]:
    """The per-timestep loop in mamba layout, prologue and epilogue differentiated by autograd."""
    u, delta, A = (t.to(compute) for t in (u, delta, A))
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y, last = reference_scan(u, delta, A, _grouped(B).to(compute), _grouped(C).to(compute))
    if D is not None:
        y = y + D.to(compute)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y, last


def _token_layout(t: Tensor, compute: torch.dtype) -> Tensor:
    """(batch, K, L) -> contiguous (batch, L, K): free for ``x.transpose(1, 2)`` views of token-layout tensors."""
    return t.to(compute).transpose(1, 2).contiguous()


def _fast(u, delta, A, B, C, D, z, delta_bias, delta_softplus, compute) -> tuple[Tensor, Tensor]:
    """The chunked custom op in token layout; the cheap O(batch * L * d_inner) prologue and epilogue
    are left to autograd (contiguous, in one layout, so they vectorise); only the O(N) scan is hand-derived."""
    u, delta = _token_layout(u, compute), _token_layout(delta, compute)
    B, C = (_grouped(t).to(compute).permute(0, 3, 1, 2) for t in (B, C))  # (batch, L, groups, N) views
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)
    if delta_softplus:
        delta = softplus(delta)
    A = A.to(compute)
    chunk = DEFAULT_CHUNK or auto_chunk(u.shape[0], u.shape[2], A.shape[1], compute.itemsize)
    y, _, last = chunked_scan(u, delta, A, B, C, chunk)
    if D is not None:
        y = y + D.to(compute) * u
    if z is not None:
        y = y * F.silu(_token_layout(z, compute))
    return y.transpose(1, 2), last
