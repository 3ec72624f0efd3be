"""The exact chunked selective scan with a hand-written adjoint: the pure-PyTorch path used off-GPU.

It is an exact chunked scan with a hand-written adjoint (:class:`ChunkedScan`). It never
materialises a full ``(batch, L, d_inner, N)`` tensor: it walks the sequence in chunks that stay
in cache, keeps only the state at each chunk start, and recomputes the chunk in the backward pass.
Decays are only ever multiplied (never divided), so ``delta * A`` of -100 or less just underflows
to zero instead of producing inf/nan.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Timesteps per chunk of the fast path. Each (batch, d_inner, N) step is ~94 KiB at Mamba sizes, so
# 32 steps keep the work buffers cache-resident. On the 2-core CPU, 16-32 were fastest among 8..128;
# one chunk spanning the whole sequence (plain loop over views of full-length tensors) was 3-4x slower.
DEFAULT_CHUNK = 32


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


def chunked_scan_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int
                         ) -> tuple[Tensor, Tensor]:
    """Exact chunked selective scan ``y = scan(u, delta, A, B, C)``; returns y and the chunk-start states.

    Only the state at each chunk start is kept; the backward pass (:func:`_chunked_scan_backward`) walks
    the chunks in reverse, recomputes each chunk's decays and states from its checkpoint, and runs the
    adjoint recurrence ``g_t = C_t gy_t + exp(delta_{t+1} A) g_{t+1}`` where ``g_t = dLoss/dh_t``.
    """
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
    return _batch_major(y), starts


# The scan and its adjoint as PyTorch custom ops: opaque to torch.compile / torch.export (one node each,
# with shape-only fake implementations) and to autograd (the hand-written adjoint is the derivative).
@torch.library.custom_op("backbones::chunked_scan", mutates_args=())
def chunked_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """``(y, chunk-start states)`` of :func:`chunked_scan_forward`, as a registered op."""
    return chunked_scan_forward(u, delta, A, B, C, chunk)


@chunked_scan.register_fake
def _chunked_scan_fake(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int):
    chunks = -(-u.shape[-1] // chunk)
    return u.new_empty(u.shape), u.new_empty(chunks, u.shape[0], u.shape[1], A.shape[1])


@torch.library.custom_op("backbones::chunked_scan_backward", mutates_args=())
def chunked_scan_backward(
    gy: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, starts: Tensor, chunk: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of u, delta, A, B, C (the adjoint of :func:`chunked_scan`), as a registered op."""
    with torch.autocast(device_type=gy.device.type, enabled=False):
        return _chunked_scan_backward(gy.to(u.dtype).contiguous(), u, delta, A, B, C, starts, chunk)


@chunked_scan_backward.register_fake
def _chunked_scan_backward_fake(gy, u, delta, A, B, C, starts, chunk):
    return tuple(t.new_empty(t.shape) for t in (u, delta, A, B, C))  # contiguous, as the real gradients


def _setup_chunked_scan(ctx, inputs, output) -> None:
    u, delta, A, B, C, chunk = inputs
    ctx.save_for_backward(u, delta, A, B, C, output[1])
    ctx.chunk = chunk


def _chunked_scan_grad(ctx, gy: Tensor, _g_starts: Tensor):
    return (*chunked_scan_backward(gy, *ctx.saved_tensors, ctx.chunk), None)


def _no_double_backward(ctx, *grads: Tensor):
    raise RuntimeError(
        "selective_scan(impl='fast') has first derivatives only (its backward is a hand-written adjoint); "
        "for a double backward (e.g. a gradient penalty) use impl='reference'"
    )


chunked_scan.register_autograd(_chunked_scan_grad, setup_context=_setup_chunked_scan)
chunked_scan_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


def _chunked_scan_backward(
    gy: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, starts: Tensor, chunk: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Adjoint of :func:`chunked_scan_forward`, chunk by chunk from the end of the sequence."""
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
