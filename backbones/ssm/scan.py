"""The selective scan (the Mamba S6 recurrence): one entry point over interchangeable implementations.

Layout and signature follow ``mamba_ssm``'s ``selective_scan_fn`` so a backbone can switch between
the CUDA kernel and the pure-PyTorch paths without reshaping anything::

    u, delta: (batch, d_inner, L)    A: (d_inner, N)    B, C: (batch, N, L)
    D, delta_bias: (d_inner,)        z: (batch, d_inner, L)

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
  to zero instead of producing inf/nan.
* ``mamba_ssm``: the fused CUDA kernel, when installed and the tensors live on CUDA.
* ``auto``: ``mamba_ssm`` when usable, else ``fast``.

All paths accumulate in (at least) fp32 and return ``u``'s dtype, also under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from backbones.ssm.fast import DEFAULT_CHUNK, chunked_scan
from backbones.ssm.kernels import mamba_ssm_available, mamba_ssm_scan
from backbones.ssm.reference import reference_scan

SCAN_IMPLS = ("auto", "reference", "fast", "mamba_ssm")


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
) -> None:
    """Reject wrong shapes early with a message naming the tensor and the expected layout."""
    if u.dim() != 3:
        raise _shape_error("u", "(batch, d_inner, L)", u)
    batch, d_inner, L = u.shape
    if L == 0:
        raise _shape_error("u", "(batch, d_inner, L) with L >= 1", u)
    if delta.shape != u.shape:
        raise _shape_error("delta", f"(batch, d_inner, L) = {tuple(u.shape)} like u", delta)
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise _shape_error("A", f"(d_inner, N) with d_inner = {d_inner}", A)
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported, pass a real (d_inner, N) tensor")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (batch, N, L):
            raise _shape_error(name, f"(batch, N, L) = {(batch, N, L)} (input-dependent form)", t)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d_inner,):
            raise _shape_error(name, f"(d_inner,) = ({d_inner},)", t)
    if z is not None and z.shape != u.shape:
        raise _shape_error("z", f"(batch, d_inner, L) = {tuple(u.shape)} like u", z)


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
) -> Tensor:
    """Run the selective scan; see the module docstring for layouts and the recurrence.

    Returns a ``(batch, d_inner, L)`` tensor in ``u``'s dtype.
    """
    if impl not in SCAN_IMPLS:
        raise ValueError(f"selective_scan: unknown impl {impl!r}; valid choices are {SCAN_IMPLS}")
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if impl == "auto":
        impl = "mamba_ssm" if u.is_cuda and mamba_ssm_available() else "fast"
    if impl == "mamba_ssm":
        return mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    out_dtype = u.dtype
    # fp32 accumulation (fp64 stays fp64); autocast off so matmuls inside do not drop to bf16.
    compute = torch.promote_types(u.dtype, torch.float32)
    with torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
        # One layout for delta's elementwise prologue: under torch.compile, stride propagation through
        # softplus' backward differs from eager for a transposed delta (as the mixers make it) otherwise.
        delta = delta.contiguous()
        if delta_bias is not None:
            delta = delta + delta_bias.to(compute)[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        if impl == "reference":
            y = reference_scan(u, delta, A, B, C)
        else:
            y = chunked_scan(u, delta, A, B, C, DEFAULT_CHUNK)[0]
        # The cheap (batch, d_inner, L) epilogue is left to autograd; only the O(N) scan is hand-derived.
        if D is not None:
            y = y + D.to(compute)[:, None] * u
        if z is not None:
            y = y * F.silu(z.to(compute))
    return y.to(out_dtype)

