"""Selective scan (the Mamba S6 recurrence) with interchangeable implementations.

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
* ``fast``: exact chunked scan with a hand-written adjoint (:class:`_ChunkedScan`). It never
  materialises a full ``(batch, L, d_inner, N)`` tensor: it walks the sequence in chunks that stay
  in cache, keeps only the state at each chunk start, and recomputes the chunk in the backward pass.
  Decays are only ever multiplied (never divided), so ``delta * A`` of -100 or less just underflows
  to zero instead of producing inf/nan.
* ``mamba_ssm``: the fused CUDA kernel, when installed and the tensors live on CUDA.
* ``auto``: ``mamba_ssm`` when usable, else ``fast``.

All paths accumulate in (at least) fp32 and return ``u``'s dtype, also under autocast.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SCAN_IMPLS", "mamba_ssm_available", "selective_scan", "selective_scan_macs"]

SCAN_IMPLS = ("auto", "reference", "fast", "mamba_ssm")

# Timesteps per chunk of the fast path. Each (batch, d_inner, N) step is ~94 KiB at Mamba sizes, so
# 32 steps keep the work buffers cache-resident. On the 2-core CPU, 16-32 were fastest among 8..128;
# one chunk spanning the whole sequence (plain loop over views of full-length tensors) was 3-4x slower.
DEFAULT_CHUNK = 32


@functools.lru_cache(maxsize=1)
def mamba_ssm_available() -> bool:
    """Whether the ``mamba_ssm`` CUDA selective-scan kernel can be imported (cached: imports are slow)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception:  # ImportError, but also broken CUDA extension builds (OSError, RuntimeError)
        return False
    return True


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
        return _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    out_dtype = u.dtype
    # fp32 accumulation (fp64 stays fp64); autocast off so matmuls inside do not drop to bf16.
    compute = torch.promote_types(u.dtype, torch.float32)
    with torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
        if delta_bias is not None:
            delta = delta + delta_bias.to(compute)[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        if impl == "reference":
            y = _reference_scan(u, delta, A, B, C)
        else:
            y = _ChunkedScan.apply(u, delta, A, B, C, DEFAULT_CHUNK)
        # The cheap (batch, d_inner, L) epilogue is left to autograd; only the O(N) scan is hand-derived.
        if D is not None:
            y = y + D.to(compute)[:, None] * u
        if z is not None:
            y = y * F.silu(z.to(compute))
    return y.to(out_dtype)


def _mamba_ssm_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> Tensor:
    """Dispatch to the fused CUDA kernel, refusing with an actionable message when it cannot run."""
    if not mamba_ssm_available():
        raise RuntimeError(
            "selective_scan(impl='mamba_ssm'): the mamba_ssm package (with its CUDA extension) is not "
            "importable; install `mamba-ssm` on a CUDA machine or use impl='fast' / impl='auto'"
        )
    if not u.is_cuda:
        raise RuntimeError(
            f"selective_scan(impl='mamba_ssm'): the mamba_ssm kernel needs CUDA tensors, got device "
            f"{u.device}; use impl='fast' (or impl='auto', which picks it) off-GPU"
        )
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _reference_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Literal per-timestep recurrence; autograd provides the gradients."""
    batch, d_inner, L = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for t in range(L):
        decay = torch.exp(delta[:, :, t, None] * A)
        inject = (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        h = decay * h + inject
        ys.append((h * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=-1)


def _chunks(L: int, size: int) -> list[tuple[int, int]]:
    return [(t0, min(t0 + size, L)) for t0 in range(0, L, size)]


def _time_major(x: Tensor) -> Tensor:
    """(batch, K, L) -> contiguous (L, batch, K), so every chunk below is a contiguous slice.

    Done as a 2-D transpose of (batch*K, L): several times faster on CPU than the 3-D permute copy.
    """
    batch, K, L = x.shape
    return x.reshape(batch * K, L).t().contiguous().view(L, batch, K)


def _batch_major(x: Tensor) -> Tensor:
    """Inverse of :func:`_time_major`: (L, batch, K) -> contiguous (batch, K, L)."""
    L, batch, K = x.shape
    return x.view(L, batch * K).t().contiguous().view(batch, K, L)


def _rows(x: Tensor) -> Tensor:
    """(T, batch, K) -> (T*batch, 1, K): row vectors, the fast side of a batched mat-vec on CPU."""
    return x.view(-1, 1, x.shape[-1])


def _mats(x: Tensor) -> Tensor:
    """(T, batch, d_inner, N) -> (T*batch, d_inner, N)."""
    return x.view(-1, *x.shape[-2:])


class _Workspace:
    """Chunk-sized time-major ``(T, batch, d_inner, N)`` buffers, reused for every chunk.

    Per-timestep views are built once: in the sequential loops, slicing would cost more than the
    one fused ``addcmul_`` each step does, and a contiguous step slice keeps that op cache-friendly.
    """

    def __init__(self, like: Tensor, chunk: int, N: int, adjoint: bool = False) -> None:
        shape = (*like.shape[:2], N)  # (batch, d_inner, N)
        self.decay = like.new_empty(chunk, *shape)
        self.states = like.new_empty(chunk + 1, *shape)  # [h_{t0-1}, h_{t0}, ..., h_{t1-1}]
        self.decay_steps, self.state_steps = self.decay.unbind(0), self.states.unbind(0)
        if adjoint:
            self.adj = like.new_empty(chunk, *shape)  # dLoss/dh_t
            self.adj_steps = self.adj.unbind(0)

    def scan(self, h0: Tensor, delta: Tensor, du: Tensor, A: Tensor, B: Tensor) -> int:
        """Fill decays exp(delta_t A) and states for one chunk of time-major inputs; returns T."""
        T = delta.shape[0]
        torch.mul(delta[..., None], A, out=self.decay[:T]).exp_()
        torch.mul(du[..., None], B[:, :, None, :], out=self.states[1 : T + 1])
        self.states[0].copy_(h0)
        dec, st = self.decay_steps, self.state_steps
        for t in range(T):
            st[t + 1].addcmul_(dec[t], st[t])
        return T


class _ChunkedScan(torch.autograd.Function):
    """Exact chunked selective scan ``y = scan(u, delta, A, B, C)`` with a hand-written adjoint.

    Forward keeps only the state at each chunk start; backward walks the chunks in reverse,
    recomputes each chunk's decays and states from its checkpoint, and runs the adjoint recurrence
    ``g_t = C_t gy_t + exp(delta_{t+1} A) g_{t+1}`` where ``g_t = dLoss/dh_t``.
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int) -> Tensor:
        L, N = u.shape[-1], A.shape[1]
        spans = _chunks(L, chunk)
        delta_t, du_t = _time_major(delta), _time_major(delta * u)
        B_t, C_t = _time_major(B), _time_major(C)
        ws = _Workspace(u, chunk, N)
        starts = u.new_zeros(len(spans), *ws.states.shape[1:])
        y = u.new_empty(L, *u.shape[:2])
        for i, (t0, t1) in enumerate(spans):
            T = ws.scan(starts[i], delta_t[t0:t1], du_t[t0:t1], A, B_t[t0:t1])
            if i + 1 < len(spans):
                starts[i + 1].copy_(ws.states[T])
            # y_t = C_t . h_t
            hs = _mats(ws.states[1 : T + 1])
            torch.bmm(_rows(C_t[t0:t1]), hs.transpose(1, 2), out=_rows(y[t0:t1]))
        ctx.save_for_backward(u, delta, A, B, C, starts)
        ctx.chunk = chunk
        return _batch_major(y)

    @staticmethod
    def backward(ctx, gy: Tensor):
        u, delta, A, B, C, starts = ctx.saved_tensors
        with torch.autocast(device_type=gy.device.type, enabled=False):
            grads = _chunked_scan_backward(gy.to(u.dtype), u, delta, A, B, C, starts, ctx.chunk)
        return (*grads, None)


def _chunked_scan_backward(
    gy: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, starts: Tensor, chunk: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Adjoint of :class:`_ChunkedScan`, chunk by chunk from the end of the sequence."""
    L, N = u.shape[-1], A.shape[1]
    u_t, delta_t, du_t = _time_major(u), _time_major(delta), _time_major(delta * u)
    B_t, C_t, gy_t = _time_major(B), _time_major(C), _time_major(gy)
    ws = _Workspace(u, chunk, N, adjoint=True)
    g_du, g_log_delta = torch.empty_like(du_t), torch.empty_like(du_t)
    g_B, g_C = torch.empty_like(B_t), torch.empty_like(C_t)
    g_A = torch.zeros_like(A)
    # dLoss/dh_{t1-1} contributed through h_{t1}: exp(delta_{t1} A) * g_{t1}, carried leftwards.
    carry = torch.zeros_like(starts[0])
    for i, (t0, t1) in reversed(list(enumerate(_chunks(L, chunk)))):
        T = ws.scan(starts[i], delta_t[t0:t1], du_t[t0:t1], A, B_t[t0:t1])
        dec, g, g_steps = ws.decay[:T], ws.adj[:T], ws.adj_steps
        h_prev, h = ws.states[:T], ws.states[1 : T + 1]

        # Adjoint recurrence g_t = C_t gy_t + decay_{t+1} g_{t+1}.
        torch.mul(gy_t[t0:t1, :, :, None], C_t[t0:t1, :, None, :], out=g)
        g_steps[T - 1].add_(carry)
        for t in range(T - 2, -1, -1):
            g_steps[t].addcmul_(ws.decay_steps[t + 1], g_steps[t + 1])
        carry = dec[0] * g[0]

        # y_t = C_t . h_t           ->  dC_t = sum_d gy_t h_t
        torch.bmm(_rows(gy_t[t0:t1]), _mats(h), out=_rows(g_C[t0:t1]))
        # h_t += du_t B_t           ->  dB_t = sum_d g_t du_t,  d(du_t) = sum_n g_t B_t
        torch.bmm(_rows(du_t[t0:t1]), _mats(g), out=_rows(g_B[t0:t1]))
        torch.bmm(_rows(B_t[t0:t1]), _mats(g).transpose(1, 2), out=_rows(g_du[t0:t1]))
        # h_t = decay_t h_{t-1} ... ->  dLoss/d(delta_t A) = g_t h_{t-1} decay_t  (in place over g)
        g_log = g.mul_(h_prev).mul_(dec)
        # sum_n g_log * A as a mat-vec with ones (decay is free now): faster than vecdot's reduction.
        g_log_A = torch.mul(g_log, A, out=dec).view(-1, N)
        torch.mv(g_log_A, A.new_ones(N), out=g_log_delta[t0:t1].view(-1))
        g_A += g_log.mul_(delta_t[t0:t1, :, :, None]).sum((0, 1))
    # du = delta * u; in place to keep the O(batch * d_inner * L) temporaries few.
    g_delta = _batch_major(g_log_delta.addcmul_(g_du, u_t))
    g_u = _batch_major(g_du.mul_(delta_t))
    return g_u, g_delta, g_A, _batch_major(g_B), _batch_major(g_C)
