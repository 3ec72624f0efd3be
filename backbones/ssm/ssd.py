"""The Mamba-2 SSD scan (state-space duality): one entry point over interchangeable implementations.

Layout follows ``mamba_ssm``'s ``mamba_chunk_scan_combined`` so a Mamba-2 mixer can switch between the
Triton kernel and the pure-PyTorch paths without reshaping anything::

    x, z: (batch, L, heads, head_dim)      dt: (batch, L, heads)      A, dt_bias: (heads,)
    B, C: (batch, L, groups, state)        D: (heads,) or (heads, head_dim)
    head h reads group h // (heads // groups) of B and C

    dt    <- softplus(dt + dt_bias)                     (bias/softplus optional)
    dt    <- clamp(dt, *dt_limit)                       (mamba-ssm's dt_limit, default (0, inf))
    h_t    = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T  (per head, h: head_dim x state; h_{-1} =
                                                          initial_states, or zero)
    y_t    = h_t C_t + D * x_t
    out    = y * silu(z)                                (if z is given; D is inside the gate)

Unlike Mamba-1's selective scan, the decay is one scalar per (token, head), which is what makes the
chunked "attention-like" form possible: inside a chunk of Q tokens the output is a masked matmul
``(C B^T o L) (dt x)`` with the decay matrix ``L[t, s] = exp(dt_{s+1} A + ... + dt_t A)`` (s <= t), and
only one state per chunk is passed on recurrently.

Implementations (``impl``):

* ``reference``: the per-token recurrence above, differentiated by autograd. Slow, obviously correct.
* ``fast``: the exact chunked SSD form in plain torch ops (:class:`ChunkedSSD`: the backward recomputes
  the forward with autocast off and differentiates it with autograd). Every decay is
  the exponential of a sum of ``dt * A`` over the segment it spans, accumulated from the segment's own
  start (never a difference of two long cumulative sums, which would cancel catastrophically in fp32
  once ``dt * A`` is large), so large ``dt`` underflows to zero instead of giving inf or NaN. Lengths
  need not be a multiple of ``chunk_size``: the last chunk is simply shorter.
* ``mamba_ssm``: ``mamba_chunk_scan_combined`` (Triton), when it imports and the tensors live on CUDA.
* ``triton``: the sequential Triton kernel pair of :mod:`backbones.ssm.triton_ssd` (CUDA, no mamba-ssm
  build needed; on CPU only under ``TRITON_INTERPRET=1``, for tests).
* ``auto``: on CUDA ``mamba_ssm`` when it imports, else ``triton`` when it imports, else ``fast``; off CUDA
  ``fast``.

Every implementation clamps the effective ``dt`` by ``dt_limit`` as mamba-ssm does (gradient zero where
it clamps; the default ``(0, inf)`` only turns a negative ``dt`` into 0), starts from ``initial_states``
when given (differentiable), and returns the final states with ``return_final_states``.

The PyTorch paths compute in (at least) fp32 with autocast off and return ``x``'s dtype.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from backbones.ssm.softplus import softplus

SSD_IMPLS = ("auto", "reference", "fast", "triton", "mamba_ssm")
DEFAULT_SSD_CHUNK = 64  # Mamba-2's default chunk size
DEFAULT_DT_LIMIT = (0.0, math.inf)  # mamba-ssm's default dt_limit: only a negative dt is clamped (to 0)


def _chunk_lengths(L: int, chunk_size: int) -> list[int]:
    """Lengths of the chunks the chunked form splits ``L`` tokens into (the last one may be shorter)."""
    return [min(chunk_size, L - t0) for t0 in range(0, L, chunk_size)]


def ssd_scan_macs(
    batch: int,
    length: int,
    heads: int,
    head_dim: int,
    state: int,
    groups: int,
    chunk_size: int,
    has_z: bool,
    has_D: bool,
) -> int:
    """Multiply-accumulate count of one chunked SSD scan (forward), as a closed form for FLOP counters.

    Counts what the chunked form computes, for chunks of ``T = chunk_size`` tokens (the last one
    ``length mod chunk_size`` if shorter; no padding is counted), dense (the causal half of a
    ``T x T`` block is not skipped). With H heads, G groups, P = head_dim, N = state, per batch element:

    * per token: ``dt * A`` (H) and ``dt * x`` (H P), plus ``D * x`` (H P, if ``has_D``) and the
      ``* silu(z)`` gate (H P, if ``has_z``);
    * per chunk: the scores ``C B^T`` (G T^2 N: B and C are shared by a group's heads), the decay
      mask applied to them (H T^2), ``scores @ (dt x)`` (H T^2 P), the decay-to-chunk-end weighting
      (H T P) and the chunk state ``B^T (dt x)`` (H T P N);
    * for every chunk but the first (the state entering the first one is zero: no ``initial_states``, as
      the mixers call it): the state passed in (``exp(sum dt A) * h + state``, H P N), its read-out
      ``C h`` (H T P N) and the decay-from-chunk-start scaling of that read-out (H T P).

    exp, softplus, silu, the cumulative sums of ``dt * A`` and plain additions are not counted, as in
    fvcore. This is the cost of the chunked algorithm, not of the per-token recurrence (``reference``).
    """
    H, G, P, N = heads, groups, head_dim, state
    per_token = H + H * P + (H * P if has_D else 0) + (H * P if has_z else 0)
    total = length * per_token
    for i, T in enumerate(_chunk_lengths(length, chunk_size)):
        total += G * T * T * N + H * T * T + H * T * T * P + H * T * P + H * T * P * N
        if i > 0:
            total += H * P * N + H * T * P * N + H * T * P
    return batch * total


@functools.lru_cache(maxsize=1)
def ssd_kernel_available() -> bool:
    """Whether ``mamba_ssm``'s Triton SSD kernel imports (cached: the import is slow)."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: F401
    except Exception:  # ImportError, but also broken triton / CUDA installs (OSError, RuntimeError)
        return False
    return True


def _shape_error(name: str, expected: str, tensor: Tensor) -> ValueError:
    return ValueError(f"ssd_scan: {name} must have shape {expected}, got {tuple(tensor.shape)}")


def _check_inputs(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    dt_bias: Tensor | None,
    chunk_size: int,
    initial_states: Tensor | None = None,
    dt_limit: tuple[float, float] = (0.0, math.inf),
) -> None:
    """Reject wrong shapes and dtypes early with one message naming the tensor and the expected layout."""
    named = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias,
             "initial_states": initial_states}
    for name, t in named.items():
        if t is not None and not t.is_floating_point():
            raise ValueError(f"ssd_scan: {name} must be a real floating-point tensor, got dtype {t.dtype}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"ssd_scan: chunk_size must be a positive int, got {chunk_size!r}")
    if (not isinstance(dt_limit, tuple | list) or len(dt_limit) != 2 or math.isnan(dt_limit[0])
            or math.isnan(dt_limit[1]) or dt_limit[0] > dt_limit[1]):
        raise ValueError(f"ssd_scan: dt_limit must be (low, high) with low <= high, got {dt_limit!r}")
    if x.dim() != 4:
        raise _shape_error("x", "(batch, length, heads, head_dim)", x)
    batch, L, heads, head_dim = x.shape
    if L == 0:
        raise _shape_error("x", "(batch, length, heads, head_dim) with length >= 1", x)
    if dt.shape != (batch, L, heads):
        raise _shape_error("dt", f"(batch, length, heads) = {(batch, L, heads)}", dt)
    if A.shape != (heads,):
        raise _shape_error("A", f"(heads,) = ({heads},) (one scalar decay per head)", A)
    if B.dim() != 4 or B.shape[:2] != (batch, L) or B.shape[2] < 1 or heads % B.shape[2] != 0:
        raise _shape_error("B", f"(batch, length, groups, state) = ({batch}, {L}, groups, state), groups dividing "
                           f"heads = {heads}", B)
    if C.shape != B.shape:
        raise _shape_error("C", f"(batch, length, groups, state) = {tuple(B.shape)} like B", C)
    if D is not None and D.shape not in ((heads,), (heads, head_dim)):
        raise _shape_error("D", f"(heads,) = ({heads},) or (heads, head_dim) = {(heads, head_dim)}", D)
    if z is not None and z.shape != x.shape:
        raise _shape_error("z", f"(batch, length, heads, head_dim) = {tuple(x.shape)} like x", z)
    if dt_bias is not None and dt_bias.shape != (heads,):
        raise _shape_error("dt_bias", f"(heads,) = ({heads},)", dt_bias)
    state_shape = (batch, heads, head_dim, B.shape[-1])
    if initial_states is not None and initial_states.shape != state_shape:
        raise _shape_error("initial_states", f"(batch, heads, head_dim, state) = {state_shape}", initial_states)


def _reference_ssd(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Literal per-token recurrence over (batch, heads, head_dim, state) states from ``h0`` (or zero);
    returns (y, last state)."""
    batch, L, heads, head_dim = x.shape
    per_group = heads // B.shape[2]
    B_h, C_h = B.repeat_interleave(per_group, dim=2), C.repeat_interleave(per_group, dim=2)
    h = x.new_zeros(batch, heads, head_dim, B.shape[-1]) if h0 is None else h0
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        inject = (dt[:, t, :, None] * x[:, t])[..., None] * B_h[:, t, :, None, :]
        h = decay * h + inject
        ys.append((h * C_h[:, t, :, None, :]).sum(-1))  # elementwise: autocast leaves it (and its grad) alone
    return torch.stack(ys, dim=1), h


def _segment_decay(a: Tensor) -> Tensor:
    """``out[..., t, s] = exp(a_{s+1} + ... + a_t)`` for ``s <= t``, zero above the diagonal; ``a: (..., T)``.

    Each entry sums only its own segment (a masked cumulative sum per column), so a large cumulative
    ``dt * A`` never cancels against another, and exp never sees anything but that segment's sum.
    """
    T = a.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=a.device)
    # rows[..., i, s] = a_i where i > s: summing down the rows up to t gives the segment (s, t].
    rows = a[..., :, None].expand(*a.shape, T).masked_fill(~ones.tril(-1), 0.0)
    return torch.exp(rows.cumsum(dim=-2)).masked_fill(~ones.tril(), 0.0)


def _chunk_terms(xdt: Tensor, a: Tensor, B: Tensor, C: Tensor, T: int) -> tuple[Tensor, ...]:
    """Everything one run of equal chunks of ``T`` tokens needs that does not depend on earlier chunks.

    Inputs are split into heads-per-group: ``xdt: (b, n*T, G, R, P)``, ``a: (b, n*T, G, R)``,
    ``B, C: (b, n*T, G, N)``. Returns the intra-chunk outputs ``(b, n, T, G, R, P)``, each chunk's own
    end state ``(b, n, G, R, P, N)``, its total log-decay ``(b, n, G, R)``, the decays from the chunk
    start to each token ``(b, n, G, R, T)`` and ``C`` chunked as ``(b, n, T, G, N)``.
    """
    b, length, G, R, P = xdt.shape
    n = length // T
    xs = xdt.reshape(b, n, T, G, R, P)
    Bs, Cs = B.reshape(b, n, T, G, -1), C.reshape(b, n, T, G, -1)
    log_a = a.reshape(b, n, T, G, R).permute(0, 1, 3, 4, 2)  # (b, n, G, R, T)
    decay = _segment_decay(log_a)  # (b, n, G, R, T, T)
    # Diagonal blocks: masked, decayed "attention" scores (C_t . B_s per group) times dt_s x_s.
    scores = torch.einsum("bclgn,bcsgn->bcgls", Cs, Bs)
    y_diag = torch.einsum("bcgrls,bcsgrp->bclgrp", scores[:, :, :, None] * decay, xs)
    # The chunk's own end state: inputs decayed to the chunk's last token, contracted with B.
    to_end = decay[..., T - 1, :].permute(0, 1, 4, 2, 3)[..., None]  # (b, n, T, G, R, 1)
    states = torch.einsum("bclgn,bclgrp->bcgrpn", Bs, xs * to_end)
    log_from_start = log_a.cumsum(dim=-1)  # a plain running sum from the chunk start: no cancellation
    return y_diag, states, log_from_start[..., -1], torch.exp(log_from_start), Cs


def _fast_ssd(
    xdt: Tensor, a: Tensor, B: Tensor, C: Tensor, h0: Tensor | None, chunk_size: int, final: bool
) -> tuple[Tensor, Tensor | None]:
    """Exact chunked SSD on heads-per-group inputs (see :func:`_chunk_terms`) from the state ``h0``
    ``(b, G, R, P, N)`` (None: zero); returns (y, last state)."""
    L = xdt.shape[1]
    T = min(chunk_size, L)
    n_full = L // T
    runs = [(0, n_full * T, T)]
    if L > n_full * T:
        runs.append((n_full * T, L, L - n_full * T))  # the ragged last chunk, on its own
    terms = [_chunk_terms(xdt[:, t0:t1], a[:, t0:t1], B[:, t0:t1], C[:, t0:t1], size) for t0, t1, size in runs]
    states = torch.cat([t[1] for t in terms], dim=1)
    log_totals = torch.cat([t[2] for t in terms], dim=1)
    n_chunks = states.shape[1]

    # Across chunks: h_in[k] is the state entering chunk k (None: zero, only possible for chunk 0).
    h_in: list[Tensor | None] = [h0]
    for k in range(1, n_chunks + int(final)):
        h_prev = states[:, k - 1]
        if h_in[-1] is not None:
            h_prev = h_prev + torch.exp(log_totals[:, k - 1])[..., None, None] * h_in[-1]
        h_in.append(h_prev)
    last = h_in.pop() if final else None  # the state "entering" the chunk after the last

    # Off-diagonal blocks: the incoming state read out by C, decayed from the chunk start.
    ys, k0 = [], 0
    for (y_diag, _, _, from_start, Cs), (t0, t1, _) in zip(terms, runs, strict=True):
        n = y_diag.shape[1]
        lo = k0 if h_in[k0] is not None else k0 + 1
        if lo < k0 + n:
            h = torch.stack(h_in[lo : k0 + n], dim=1)  # (b, m, G, R, P, N)
            y_off = torch.einsum("bclgn,bcgrpn->bclgrp", Cs[:, lo - k0 :], h)
            y_off = y_off * from_start[:, lo - k0 :].permute(0, 1, 4, 2, 3)[..., None]
            y_diag = torch.cat([y_diag[:, : lo - k0], y_diag[:, lo - k0 :] + y_off], dim=1)
        ys.append(y_diag.reshape(y_diag.shape[0], t1 - t0, *y_diag.shape[3:]))
        k0 += n
    return torch.cat(ys, dim=1), last


class ChunkedSSD(torch.autograd.Function):
    """:func:`_fast_ssd` with a backward that recomputes it with autocast off, then lets autograd differentiate.

    Two reasons not to leave it to plain autograd: a backward called inside a bf16 autocast region
    would run the matmuls' backward in bf16, and autograd would keep several ``(T x T)`` decay and score
    tensors per chunk alive until the backward. Like the Mamba-1 ``chunked_scan`` op, only the
    inputs are saved and the forward work is redone in the backward pass.
    """

    @staticmethod
    def forward(ctx, xdt: Tensor, a: Tensor, B: Tensor, C: Tensor, h0: Tensor | None, chunk_size: int, final: bool):
        y, last = _fast_ssd(xdt, a, B, C, h0, chunk_size, final)
        ctx.save_for_backward(xdt, a, B, C, h0)
        ctx.chunk_size, ctx.final = chunk_size, final
        return (y, last) if final else y

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_out: Tensor):
        inputs = [None if t is None else t.detach().requires_grad_() for t in ctx.saved_tensors]
        given = [t for t in inputs if t is not None]
        with torch.enable_grad(), torch.autocast(device_type=given[0].device.type, enabled=False):
            y, last = _fast_ssd(*inputs, ctx.chunk_size, ctx.final)
            outs = (y, last) if ctx.final else (y,)
            # Unused outputs arrive as zeros (materialize_grads), so every output has a gradient here.
            got = iter(torch.autograd.grad(outs, given, [g.to(o.dtype) for o, g in zip(outs, grad_out, strict=True)]))
        return (*(None if t is None else next(got) for t in inputs), None, None)


def _mamba_ssm_ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    dt_bias: Tensor | None,
    dt_softplus: bool,
    chunk_size: int,
    return_final_states: bool,
    initial_states: Tensor | None,
    dt_limit: tuple[float, float],
) -> Tensor | tuple[Tensor, Tensor]:
    """Dispatch to the Triton kernel, refusing with an actionable message when it cannot run."""
    if not ssd_kernel_available():
        raise ValueError(
            "ssd_scan(impl='mamba_ssm'): mamba_ssm.ops.triton.ssd_combined (mamba-ssm with triton) is not "
            "importable; install `mamba-ssm` on a CUDA machine or use impl='fast' / impl='auto'"
        )
    if not x.is_cuda:
        raise ValueError(
            f"ssd_scan(impl='mamba_ssm'): the mamba_ssm SSD kernel needs CUDA tensors, got device {x.device}; "
            "use impl='fast' (or impl='auto', which picks it) off-GPU"
        )
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
        dt_softplus=dt_softplus, dt_limit=tuple(dt_limit), return_final_states=return_final_states,
    )


def resolve_ssd_impl(impl: str, device: torch.device | str) -> str:
    """The implementation ``impl`` runs on ``device`` (``auto`` resolved; others as given)."""
    if impl != "auto":
        return impl
    if torch.device(device).type != "cuda":
        return "fast"
    from backbones.ssm.triton_scan import triton_available

    return "mamba_ssm" if ssd_kernel_available() else "triton" if triton_available() else "fast"


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    chunk_size: int = DEFAULT_SSD_CHUNK,
    impl: str = "auto",
    return_final_states: bool = False,
    initial_states: Tensor | None = None,
    dt_limit: tuple[float, float] = DEFAULT_DT_LIMIT,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the Mamba-2 SSD scan; see the module docstring for layouts and the recurrence.

    Returns ``y`` with ``x``'s shape and dtype, or ``(y, last_state)`` with ``return_final_states``,
    the state after the last token as ``(batch, heads, head_dim, state)`` in fp32 (fp64 for fp64
    inputs), ungated and without the ``D`` skip, ready to seed step-by-step decoding or the next segment
    (``initial_states``, same layout: the state before the first token; gradients flow into it).
    ``dt_limit``: the effective ``dt`` (after bias and softplus) is clamped to it, as mamba-ssm does.
    ``chunk_size`` only changes how ``fast`` and ``mamba_ssm`` split the work, never the result.
    """
    if impl not in SSD_IMPLS:
        raise ValueError(f"ssd_scan: unknown impl {impl!r}; valid choices are {SSD_IMPLS}")
    _check_inputs(x, dt, A, B, C, D, z, dt_bias, chunk_size, initial_states, dt_limit)
    dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
    if impl == "auto":
        impl = resolve_ssd_impl(impl, x.device)
    if impl == "triton":
        from backbones.ssm.triton_ssd import triton_ssd

        return triton_ssd(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_states=initial_states,
                          dt_limit=dt_limit, return_final_states=return_final_states)
    if impl == "mamba_ssm":
        return _mamba_ssm_ssd(x, dt, A, B, C, D, z, dt_bias, dt_softplus, chunk_size, return_final_states,
                              initial_states, dt_limit)

    out_dtype = x.dtype
    given = [t for t in (x, dt, A, B, C, D, z, dt_bias, initial_states) if t is not None]
    compute = functools.reduce(torch.promote_types, (t.dtype for t in given), torch.float32)
    batch, L, heads, head_dim = x.shape
    groups = B.shape[2]
    # Autocast off, so the matmuls inside stay in fp32 even when the caller runs under bf16 autocast.
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C = (t.to(compute) for t in (x, dt, A, B, C))
        h0 = None if initial_states is None else initial_states.to(compute)
        if dt_bias is not None:
            dt = dt + dt_bias.to(compute)
        if dt_softplus:
            dt = F.softplus(dt) if impl == "reference" else softplus(dt)
        dt = dt.clamp(*dt_limit)  # mamba-ssm's clamp; its gradient is zero where it clamps, as the kernel's
        if impl == "reference":
            y, last = _reference_ssd(x, dt, A, B, C, h0)
        else:
            split = (batch, L, groups, heads // groups)
            xdt = (x * dt[..., None]).view(*split, head_dim)
            h0 = None if h0 is None else h0.view(batch, groups, heads // groups, head_dim, -1)
            if torch.compiler.is_compiling():  # traced as plain ops: the compiler derives the backward itself
                out = _fast_ssd(xdt, (dt * A).view(split), B, C, h0, chunk_size, return_final_states)
                out = out if return_final_states else out[0]
            else:
                out = ChunkedSSD.apply(xdt, (dt * A).view(split), B, C, h0, chunk_size, return_final_states)
            y, last = out if return_final_states else (out, None)
            y = y.reshape(x.shape)
            if last is not None:
                last = last.reshape(batch, heads, head_dim, -1)
        if D is not None:
            y = y + (D.to(compute)[:, None] if D.dim() == 1 else D.to(compute)) * x
        if z is not None:
            y = y * F.silu(z.to(compute))
    y = y.to(out_dtype)
    return (y, last) if return_final_states else y
