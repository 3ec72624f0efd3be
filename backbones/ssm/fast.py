"""The exact chunked selective scan with a hand-written adjoint: the pure-PyTorch path used off-GPU.

It never materialises a full ``(batch, L, d_inner, N)`` tensor: it walks the sequence in chunks that
stay in cache, keeps only the state at each chunk start, and recomputes the chunk in the backward pass.
Decays are only ever multiplied (never divided), so ``delta * A`` of -100 or less just underflows to
zero instead of producing inf/nan.

It works in the token layout ``(batch, L, channels)`` the mixers' projections produce, so no full-size
transpose is ever made: each chunk is read and written through ``(T, batch, channels)`` views whose
innermost dimension stays contiguous.  B and C are grouped, ``(batch, L, groups, N)``: channel ``d``
reads group ``d // (d_inner // groups)`` (one group is Mamba's usual case).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Bytes of (T, batch, d_inner, N) fp32 work buffer one chunk may use. Per-step work is a few fused ops
# over a (batch, d_inner, N) slice, so a chunk should fit in the L2 cache: on the 2-core CPU, chunks of
# about 2 MiB were fastest (8 steps at batch 32 x d_inner 128, 16 at batch 2 x d_inner 736; twice or half
# that was 1.3-2x slower, one chunk over the whole sequence 3-4x slower).
CHUNK_BYTES = 2 * 2**20
MIN_CHUNK, MAX_CHUNK = 4, 64
LOG2E = math.log2(math.e)


def auto_chunk(batch: int, d_inner: int, N: int, itemsize: int = 4) -> int:
    """Timesteps per chunk: the largest power of two whose work buffer fits in ``CHUNK_BYTES``."""
    step_bytes = max(1, batch * d_inner * N * itemsize)
    chunk = MIN_CHUNK
    while chunk * 2 <= MAX_CHUNK and chunk * 2 * step_bytes <= CHUNK_BYTES:
        chunk *= 2
    return chunk


def _chunks(L: int, size: int) -> list[tuple[int, int]]:
    return [(t0, min(t0 + size, L)) for t0 in range(0, L, size)]


def _steps(x: Tensor, t0: int, t1: int) -> Tensor:
    """(batch, L, ...) -> the (T, batch, ...) view of timesteps t0..t1 (no copy)."""
    return x[:, t0:t1].transpose(0, 1)


class _Grouped:
    """Views that pair each group of channels with its group's B/C: bmm batches of (T*batch*G, ...)."""

    def __init__(self, groups: int, d_inner: int):
        self.G, self.dg = groups, d_inner // groups

    def rows(self, x: Tensor) -> Tensor:
        """(T, batch, d_inner) contiguous -> (T*batch*G, 1, dg)."""
        return x.view(-1, 1, self.dg)

    def mats(self, x: Tensor) -> Tensor:
        """(T, batch, d_inner, N) contiguous -> (T*batch*G, dg, N)."""
        return x.view(-1, self.dg, x.shape[-1])

    def spread(self, x: Tensor) -> Tensor:
        """(T, batch, d_inner) -> (T, batch, G, dg, 1), to broadcast against (T, batch, G, 1, N)."""
        return x.unflatten(-1, (self.G, self.dg))[..., None]


class _Workspace:
    """Chunk-sized time-major ``(T, batch, d_inner, N)`` buffers, reused for every chunk.

    Per-timestep views are built once: in the sequential loops, slicing would cost more than the
    one fused ``addcmul_`` each step does, and a contiguous step slice keeps that op cache-friendly.
    """

    def __init__(self, like: Tensor, chunk: int, N: int, groups: int, adjoint: bool = False) -> None:
        batch, _, d_inner = like.shape
        shape = (batch, d_inner, N)
        self.grp = _Grouped(groups, d_inner)
        self.decay = like.new_empty(chunk, *shape)
        self.states = like.new_empty(chunk + 1, *shape)  # [h_{t0-1}, h_{t0}, ..., h_{t1-1}]
        self.decay_steps, self.state_steps = self.decay.unbind(0), self.states.unbind(0)
        self.rows = like.new_empty(chunk, batch, d_inner)  # one chunk of a (T, batch, d_inner) result
        if adjoint:
            self.adj = like.new_empty(chunk, *shape)  # dLoss/dh_t
            self.adj_steps = self.adj.unbind(0)
            self.rows2 = like.new_empty(chunk, batch, d_inner)

    def scan(self, h0: Tensor, delta: Tensor, du: Tensor, A_log2: Tensor, B: Tensor) -> int:
        """Fill decays exp(delta_t A) and states for one chunk of (T, batch, ...) inputs; returns T.

        ``A_log2`` is ``A * log2(e)``: exp2 is about twice as fast as exp on CPU, for the same decay.
        """
        T = delta.shape[0]
        torch.mul(delta[..., None], A_log2, out=self.decay[:T]).exp2_()
        inject = self.states[1 : T + 1].unflatten(2, (self.grp.G, self.grp.dg))
        torch.mul(self.grp.spread(du), B[:, :, :, None, :], out=inject)
        self.states[0].copy_(h0)
        dec, st = self.decay_steps, self.state_steps
        for t in range(T):
            st[t + 1].addcmul_(dec[t], st[t])
        return T


def chunked_scan_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """Exact chunked scan of token-layout inputs; returns y (batch, L, d_inner), chunk-start states, last state.

    ``u, delta: (batch, L, d_inner)``, ``A: (d_inner, N)``, ``B, C: (batch, L, groups, N)``.  Only the
    state at each chunk start is kept; the backward pass (:func:`_chunked_scan_backward`) walks the chunks
    in reverse, recomputes each chunk's decays and states from its checkpoint, and runs the adjoint
    recurrence ``g_t = C_t gy_t + exp(delta_{t+1} A) g_{t+1}`` where ``g_t = dLoss/dh_t``.
    """
    L, N, G = u.shape[1], A.shape[1], B.shape[2]
    spans = _chunks(L, chunk)
    du = delta * u
    ws = _Workspace(u, chunk, N, G)
    grp = ws.grp
    starts = u.new_zeros(len(spans), *ws.states.shape[1:])
    y = u.new_empty(u.shape)
    T = 0
    A_log2 = A * LOG2E
    for i, (t0, t1) in enumerate(spans):
        T = ws.scan(starts[i], _steps(delta, t0, t1), _steps(du, t0, t1), A_log2, _steps(B, t0, t1))
        if i + 1 < len(spans):
            starts[i + 1].copy_(ws.states[T])
        # y_t = C_t . h_t, per group
        C_rows = _steps(C, t0, t1).contiguous().view(-1, 1, N)
        torch.bmm(C_rows, grp.mats(ws.states[1 : T + 1]).transpose(1, 2), out=grp.rows(ws.rows[:T]))
        _steps(y, t0, t1).copy_(ws.rows[:T])
    return y, starts, ws.states[T].clone()


# The scan and its adjoint as PyTorch custom ops: opaque to torch.compile / torch.export (one node each,
# with shape-only fake implementations) and to autograd (the hand-written adjoint is the derivative).
@torch.library.custom_op("backbones::chunked_scan", mutates_args=())
def chunked_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, chunk-start states, last state)`` of :func:`chunked_scan_forward`, as a registered op."""
    return chunked_scan_forward(u, delta, A, B, C, chunk)


@chunked_scan.register_fake
def _chunked_scan_fake(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int):
    batch, L, d_inner = u.shape
    chunks = -(-L // chunk)
    N = A.shape[1]
    return u.new_empty(u.shape), u.new_empty(chunks, batch, d_inner, N), u.new_empty(batch, d_inner, N)


@torch.library.custom_op("backbones::chunked_scan_backward", mutates_args=())
def chunked_scan_backward(
    gy: Tensor, g_last: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, starts: Tensor,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of u, delta, A, B, C (the adjoint of :func:`chunked_scan`) given those of y and of the last
    state, as a registered op."""
    with torch.autocast(device_type=gy.device.type, enabled=False):
        return _chunked_scan_backward(gy.to(u.dtype), g_last.to(u.dtype), u, delta, A, B, C, starts, chunk)


@chunked_scan_backward.register_fake
def _chunked_scan_backward_fake(gy, g_last, u, delta, A, B, C, starts, chunk):
    return tuple(t.new_empty(t.shape) for t in (u, delta, A, B, C))  # contiguous, as the real gradients


def _setup_chunked_scan(ctx, inputs, output) -> None:
    u, delta, A, B, C, chunk = inputs
    ctx.save_for_backward(u, delta, A, B, C, output[1])
    ctx.mark_non_differentiable(output[1])  # the checkpoints; the last state is differentiable
    ctx.chunk = chunk


def _chunked_scan_grad(ctx, gy: Tensor, _g_starts: Tensor, g_last: Tensor | None):
    """The last state's gradient seeds the adjoint recurrence at the end of the sequence (zeros if unused)."""
    u, delta, A, B, C, starts = ctx.saved_tensors
    if g_last is None:
        g_last = starts.new_zeros(starts.shape[1:])
    return (*chunked_scan_backward(gy, g_last, u, delta, A, B, C, starts, ctx.chunk), None)


def _no_double_backward(ctx, *grads: Tensor):
    raise RuntimeError(
        "selective_scan(impl='fast') has first derivatives only (its backward is a hand-written adjoint); "
        "for a double backward (e.g. a gradient penalty) use impl='reference'"
    )


chunked_scan.register_autograd(_chunked_scan_grad, setup_context=_setup_chunked_scan)
chunked_scan_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


def _chunked_scan_backward(
    gy: Tensor, g_last: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, starts: Tensor,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Adjoint of :func:`chunked_scan_forward`, chunk by chunk from the end of the sequence.

    ``g_last`` (batch, d_inner, N) is dLoss/d(last state): the adjoint's value past the last step.
    """
    L, N, G = u.shape[1], A.shape[1], B.shape[2]
    du = delta * u
    ws = _Workspace(u, chunk, N, G, adjoint=True)
    grp = ws.grp
    g_du, g_log_delta = u.new_empty(u.shape), u.new_empty(u.shape)  # contiguous, as the fake promises
    g_B, g_C = B.new_empty(B.shape), C.new_empty(C.shape)
    g_A = A.new_zeros(A.shape)
    ones = A.new_ones(N)
    # dLoss/dh_{t1-1} contributed through h_{t1}: exp(delta_{t1} A) * g_{t1}, carried leftwards; at the
    # end of the sequence, what the loss takes through the returned last state.
    carry = g_last
    A_log2 = A * LOG2E
    for i, (t0, t1) in reversed(list(enumerate(_chunks(L, chunk)))):
        delta_c, du_c = _steps(delta, t0, t1), _steps(du, t0, t1)
        B_c, C_c = _steps(B, t0, t1), _steps(C, t0, t1)
        T = ws.scan(starts[i], delta_c, du_c, A_log2, B_c)
        dec, g, g_steps = ws.decay[:T], ws.adj[:T], ws.adj_steps
        h_prev, h = ws.states[:T], ws.states[1 : T + 1]
        gy_c = ws.rows[:T]
        gy_c.copy_(_steps(gy, t0, t1))

        # Adjoint recurrence g_t = C_t gy_t + decay_{t+1} g_{t+1}.
        torch.mul(grp.spread(gy_c), C_c[:, :, :, None, :], out=g.unflatten(2, (G, grp.dg)))
        g_steps[T - 1].add_(carry)
        for t in range(T - 2, -1, -1):
            g_steps[t].addcmul_(ws.decay_steps[t + 1], g_steps[t + 1])
        carry = dec[0] * g[0]

        # y_t = C_t . h_t           ->  dC_t = sum_{d in group} gy_t h_t
        bmm_rows = ws.rows2[:T]
        g_C_c = torch.bmm(grp.rows(gy_c), grp.mats(h)).view(T, -1, G, N)
        _steps(g_C, t0, t1).copy_(g_C_c)
        # h_t += du_t B_t           ->  dB_t = sum_{d in group} g_t du_t,  d(du_t) = sum_n g_t B_t
        bmm_rows.copy_(du_c)
        g_B_c = torch.bmm(grp.rows(bmm_rows), grp.mats(g)).view(T, -1, G, N)
        _steps(g_B, t0, t1).copy_(g_B_c)
        B_rows = B_c.contiguous().view(-1, 1, N)
        torch.bmm(B_rows, grp.mats(g).transpose(1, 2), out=grp.rows(bmm_rows))
        _steps(g_du, t0, t1).copy_(bmm_rows)
        # h_t = decay_t h_{t-1} ... ->  dLoss/d(delta_t A) = g_t h_{t-1} decay_t  (in place over g)
        g_log = g.mul_(h_prev).mul_(dec)
        # sum_n g_log * A as a mat-vec with ones (decay is free now): faster than vecdot's reduction.
        g_log_A = torch.mul(g_log, A, out=dec).view(-1, N)
        torch.mv(g_log_A, ones, out=bmm_rows.view(-1))
        _steps(g_log_delta, t0, t1).copy_(bmm_rows)
        g_A += g_log.mul_(delta_c[..., None]).sum((0, 1))
    # du = delta * u; in place to keep the O(batch * L * d_inner) temporaries few.
    g_delta = g_log_delta.addcmul_(g_du, u)
    g_u = g_du.mul_(delta)
    return g_u, g_delta, g_A, g_B, g_C
