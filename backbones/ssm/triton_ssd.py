"""The Mamba-2 SSD scan as a Triton kernel pair (forward + hand-written adjoint), runnable on CPU for tests.

Same layout and semantics as :mod:`backbones.ssm.ssd` (``mamba_chunk_scan_combined``'s layout)::

    x, z: (batch, L, heads, head_dim)   dt: (batch, L, heads)   A, dt_bias: (heads,)
    B, C: (batch, L, groups, state)     D: (heads,) or (heads, head_dim)

Unlike ``mamba_ssm``'s chunked matmul kernels, this is the sequential structure of Mamba-1's selective
scan applied to SSD: one program per (batch, head, block of head_dim rows) keeps its ``(BLOCK_P, state)``
fp32 state in registers and walks the sequence, with the ``dt_bias`` / softplus / ``dt_limit`` clamp
prologue and the ``D`` / ``silu(z)`` epilogue fused in. It starts from the initial state (or zero), saves
the state at every chunk start and writes the final state; the backward kernel starts its adjoint from the
final state's gradient and ends with the initial state's. The backward kernel walks
the chunks in reverse, recomputes each chunk's states forward from its checkpoint into a per-program
scratch buffer and runs the adjoint recurrence backwards. ``h_{t-1}`` is always recomputed, never
recovered by dividing by the decay, so large ``dt`` (decays of ``exp(-100)`` and below, which underflow
to zero) stays finite and exact.

Sums across programs (``dB``/``dC`` over a group's heads and head_dim blocks, ``dA``/``dD``/``d dt_bias``
over the batch) go to per-program partial buffers that torch sums afterwards: no atomics, so gradients
are deterministic.

Triton decides between the compiler and its numpy interpreter when ``triton.jit`` runs (it reads
``TRITON_INTERPRET``), so the kernels are jitted at first use, once per mode, and every call uses the
mode the variable selects at that moment: a test can set ``TRITON_INTERPRET=1`` (monkeypatch) at any
point of a pytest run. Importing this module never imports triton.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

DEFAULT_CHUNK = 64  # timesteps between saved states: backward scratch and saved states scale with it

# ``triton.language``, bound by :func:`_kernels` just before the kernel bodies below are jitted (they
# resolve ``tl`` from this module's globals), so that importing the module needs no triton.
tl: Any = None

# The kernels call only triton.language builtins, none of its own ``@triton.jit`` helpers (tl.sum,
# tl.zeros, tl.sigmoid): those are made compiled or interpreted once, when triton.language is first
# imported, so an interpreted kernel calling one fails wherever triton was imported before
# TRITON_INTERPRET=1 was set (e.g. by torch.compile earlier in the same pytest run). Hence sums are
# ``tl.reduce(v, axis, tl.standard._sum_combine)``, exactly what tl.sum does for floats: the combine
# function works in both modes, and the interpreter turns it into one numpy sum.


def _ssd_forward_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, states_ptr, final_ptr,
    L, H, P, G, N, HEADS_PER_GROUP, N_CHUNKS, dt_min, dt_max,
    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr,
):
    """One (batch, head, head_dim block): walk the sequence from the initial state (or zero), store y, the
    state at each chunk start and the final state."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p, mask_n = offs_p < P, offs_n < N
    mask_pn = mask_p[:, None] & mask_n[None, :]

    a = tl.load(A_ptr + h).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h).to(tl.float32)
    if HAS_D:
        d = tl.load(D_ptr + h * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
    # Offsets of token 0, advanced one token per step (fewer index ops than recomputing them).
    row = b * L * H + h  # in dt
    x_off = row * P + offs_p  # in x, z and y
    bc_off = (b * L * G + h // HEADS_PER_GROUP) * N + offs_n  # in B and C
    state_p = states_ptr + ((b * N_CHUNKS * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
    own = ((b * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]  # this program's tile in h0 and final
    if HAS_H0:  # masked loads give 0: padded rows/columns stay exactly zero
        state = tl.load(h0_ptr + own, mask=mask_pn, other=0.0).to(tl.float32)
    else:
        state = tl.full((BLOCK_P, BLOCK_N), 0.0, tl.float32)
    for c in range(0, N_CHUNKS):
        tl.store(state_p + c * H * P * N, state, mask=mask_pn)
        for _ in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, L)):
            u = tl.load(dt_ptr + row).to(tl.float32)
            if HAS_BIAS:
                u += bias
            if SOFTPLUS:  # log1p(exp(u)) by Goldberg's log1p trick (tl has no log1p); identity above 20
                e = tl.exp(tl.minimum(u, 20.0))
                w = 1.0 + e
                soft = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
                dt = tl.where(u > 20.0, u, soft)
            else:
                dt = u
            dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)  # mamba-ssm's dt_limit
            xt = tl.load(x_ptr + x_off, mask=mask_p, other=0.0).to(tl.float32)
            Bt = tl.load(B_ptr + bc_off, mask=mask_n, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + bc_off, mask=mask_n, other=0.0).to(tl.float32)
            state = state * tl.exp(dt * a) + (xt * dt)[:, None] * Bt[None, :]
            yt = tl.reduce(state * Ct[None, :], 1, tl.standard._sum_combine)
            if HAS_D:
                yt += d * xt
            if HAS_Z:  # silu written out (tl.sigmoid is a jit helper)
                zt = tl.load(z_ptr + x_off, mask=mask_p, other=0.0).to(tl.float32)
                yt = yt * zt / (1.0 + tl.exp(-zt))
            tl.store(y_ptr + x_off, yt.to(y_ptr.dtype.element_ty), mask=mask_p)
            row += H
            x_off += H * P
            bc_off += G * N
    tl.store(final_ptr + own, state, mask=mask_pn)


def _ssd_backward_kernel(
    gy_ptr, gfinal_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, states_ptr, scratch_ptr,
    dx_ptr, dz_ptr, ddt_ptr, dA_ptr, dD_ptr, dB_ptr, dC_ptr, dh0_ptr,
    L, H, P, G, N, HEADS_PER_GROUP, N_CHUNKS, dt_min, dt_max,
    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr,
):
    """Adjoint of the forward kernel for one program; cross-program sums are written as partials.

    With ``adj = dLoss/dh_t``: ``adj_t = gy_t C_t + exp(dt_{t+1} A) adj_{t+1}``, starting past the last
    token from the final state's gradient, and per token ``dB_t = adj^T (dt x)``, ``d(dt x) = adj B_t``,
    ``d(dt A) = <adj, h_{t-1}> exp(dt A)``; after the first token ``adj`` is the initial state's gradient.
    ``h0_ptr`` is not read: the first chunk's checkpoint holds the initial state.
    """
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pb = tl.program_id(2)
    n_pb = tl.num_programs(2)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p, mask_n = offs_p < P, offs_n < N
    mask_pn = mask_p[:, None] & mask_n[None, :]
    TILE: tl.constexpr = BLOCK_P * BLOCK_N

    a = tl.load(A_ptr + h).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h).to(tl.float32)
    if HAS_D:
        d = tl.load(D_ptr + h * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
    row0 = b * L * H + h  # (batch, token 0, head) in dt
    bc0 = (b * L * G + h // HEADS_PER_GROUP) * N + offs_n
    part0 = pb.to(tl.int64) * tl.num_programs(0) * L * H + row0  # (p block, batch, token 0, head) in partials
    state_p = states_ptr + ((b * N_CHUNKS * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
    # This program's scratch: CHUNK + 1 padded state tiles (slot k holds h_{t0 + k - 1}, slot 0 the chunk
    # start), then the chunk's effective dt and its derivative by the pre-activation (softplus' times the
    # clamp's 0/1).
    tiles = scratch_ptr + ((b * H + h) * n_pb + pb) * ((CHUNK + 1) * TILE + 2 * CHUNK)
    tile = tl.arange(0, BLOCK_P)[:, None] * BLOCK_N + offs_n[None, :]
    dts = tiles + (CHUNK + 1) * TILE
    dsofts = dts + CHUNK

    own = ((b * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]  # this program's tile in gfinal and dh0
    # carried: exp(dt_{t+1} A) dLoss/dh_{t+1}; past the last token, what the loss takes via the final state
    adj = tl.load(gfinal_ptr + own, mask=mask_pn, other=0.0).to(tl.float32)
    dA_acc = tl.full((BLOCK_N,), 0.0, tl.float32)
    dD_acc = tl.full((BLOCK_P,), 0.0, tl.float32)
    for ci in range(0, N_CHUNKS):
        c = N_CHUNKS - 1 - ci
        t0 = c * CHUNK
        T = tl.minimum(t0 + CHUNK, L) - t0
        # Recompute the chunk's states from its checkpoint, forward.
        state = tl.load(state_p + c * H * P * N, mask=mask_pn, other=0.0)
        tl.store(tiles + tile, state)
        row = row0 + t0 * H
        x_off = row * P + offs_p
        bc_off = bc0 + t0 * G * N
        for k in range(0, T):
            u = tl.load(dt_ptr + row).to(tl.float32)
            if HAS_BIAS:
                u += bias
            if SOFTPLUS:
                e = tl.exp(tl.minimum(u, 20.0))
                w = 1.0 + e
                soft = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
                dt = tl.where(u > 20.0, u, soft)
                dgate = tl.where(u > 20.0, 1.0, e / w)  # softplus' = sigmoid
            else:
                dt = u
                dgate = 1.0
            # mamba-ssm's dt_limit: no gradient where it clamps
            dgate = tl.where((dt < dt_min) | (dt > dt_max), 0.0, dgate)
            dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
            tl.store(dsofts + k, dgate)
            tl.store(dts + k, dt)
            xt = tl.load(x_ptr + x_off, mask=mask_p, other=0.0).to(tl.float32)
            Bt = tl.load(B_ptr + bc_off, mask=mask_n, other=0.0).to(tl.float32)
            state = state * tl.exp(dt * a) + (xt * dt)[:, None] * Bt[None, :]
            tl.store(tiles + (k + 1) * TILE + tile, state)
            row += H
            x_off += H * P
            bc_off += G * N
        tl.debug_barrier()  # the scratch written above is read back below, possibly by other threads

        # The adjoint, from the chunk's last token back to its first (offsets step backwards).
        x_off -= H * P  # token t0 + T - 1 in x, z, gy, dx and dz
        bc_off -= G * N
        part = part0 + (t0 + T - 1) * H
        for i in range(0, T):
            k = T - 1 - i
            dt = tl.load(dts + k)
            decay = tl.exp(dt * a)
            xt = tl.load(x_ptr + x_off, mask=mask_p, other=0.0).to(tl.float32)
            Bt = tl.load(B_ptr + bc_off, mask=mask_n, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + bc_off, mask=mask_n, other=0.0).to(tl.float32)
            gy = tl.load(gy_ptr + x_off, mask=mask_p, other=0.0).to(tl.float32)
            h_t = tl.load(tiles + (k + 1) * TILE + tile)
            h_prev = tl.load(tiles + k * TILE + tile)

            if HAS_Z:  # out = y * silu(z): dz needs the ungated y, recomputed from h_t
                zt = tl.load(z_ptr + x_off, mask=mask_p, other=0.0).to(tl.float32)
                y_pre = tl.reduce(h_t * Ct[None, :], 1, tl.standard._sum_combine)
                if HAS_D:
                    y_pre += d * xt
                sig = 1.0 / (1.0 + tl.exp(-zt))
                dz = gy * y_pre * sig * (1.0 + zt * (1.0 - sig))
                tl.store(dz_ptr + x_off, dz.to(dz_ptr.dtype.element_ty), mask=mask_p)
                gy = gy * zt * sig
            adj += gy[:, None] * Ct[None, :]  # now dLoss/dh_t
            dx = tl.reduce(adj * Bt[None, :], 1, tl.standard._sum_combine) * dt  # through the injection
            if HAS_D:
                dx += gy * d
                dD_acc += gy * xt
            tl.store(dx_ptr + x_off, dx.to(dx_ptr.dtype.element_ty), mask=mask_p)

            dC = tl.reduce(gy[:, None] * h_t, 0, tl.standard._sum_combine)
            tl.store(dC_ptr + part * N + offs_n, dC, mask=mask_n)
            # dB_t = dt adj_x, and the injection's part of dLoss/d dt is adj_x . B_t
            adj_x = tl.reduce(adj * xt[:, None], 0, tl.standard._sum_combine)
            tl.store(dB_ptr + part * N + offs_n, adj_x * dt, mask=mask_n)
            # dLoss/d(dt A), still split over the state
            d_log = tl.reduce(adj * h_prev, 0, tl.standard._sum_combine) * decay
            dA_acc += d_log * dt
            ddt = tl.reduce(adj_x * Bt + d_log * a, 0, tl.standard._sum_combine) * tl.load(dsofts + k)
            tl.store(ddt_ptr + part, ddt)
            adj = adj * decay
            x_off -= H * P
            bc_off -= G * N
            part -= H
        tl.debug_barrier()  # the next chunk overwrites the scratch read above

    if HAS_H0:
        tl.store(dh0_ptr + own, adj, mask=mask_pn)
    tl.store(dA_ptr + (b * H + h) * n_pb + pb, tl.reduce(dA_acc, 0, tl.standard._sum_combine))
    if HAS_D:
        tl.store(dD_ptr + (b * H + h) * P + offs_p, dD_acc, mask=mask_p)


@functools.lru_cache(maxsize=1)
def _triton_module() -> Any:
    """``triton``, or None where it does not import (cached: the import takes a while)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:  # ImportError, but also broken installs (OSError, RuntimeError)
        return None
    return triton


def _interpreting() -> bool:
    """Whether ``triton.jit`` would build interpreted kernels now (triton reads the env var at each access)."""
    knobs = getattr(_triton_module(), "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_ssd_usable(device: torch.device | str) -> bool:
    """Whether :func:`triton_ssd` can run on tensors on ``device``: triton imports and CUDA or the interpreter."""
    if _triton_module() is None:
        return False
    return _interpreting() or (torch.device(device).type == "cuda" and torch.cuda.is_available())


def _require_runnable(x: Tensor) -> None:
    """Refuse with an actionable message instead of a Triton stack trace."""
    if _triton_module() is None:
        raise RuntimeError(
            "impl='triton' needs the triton package, which does not import here; `pip install triton` "
            "(or `pip install archbench[gpu]`), or use impl='fast'"
        )
    if not x.is_cuda and not _interpreting():
        raise RuntimeError(
            "impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 to run the kernels on CPU in Triton's "
            f"interpreter (slow; for tests); got device {x.device}"
        )


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool) -> SimpleNamespace:
    """The jitted kernels for one mode (``interpret`` is the cache key: triton fixes the mode at jit time)."""
    global tl
    triton = _triton_module()
    tl = triton.language
    assert _interpreting() == interpret, "TRITON_INTERPRET changed while the kernels were being built"
    if not hasattr(tl.standard, "_sum_combine"):  # the kernels' sums; see the note above the kernels
        raise RuntimeError(f"triton_ssd: triton {triton.__version__} has no tl.standard._sum_combine")
    return SimpleNamespace(forward=triton.jit(_ssd_forward_kernel), backward=triton.jit(_ssd_backward_kernel))


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _block_p(head_dim: int, state: int, block_p: int) -> int:
    """Rows of head_dim per program (a power of 2); 0 picks the largest keeping the state tile <= 1024 values.

    The bound comes from ptxas on sm_90 at 4 warps: the backward kernel (state, adjoint and two reloaded
    state tiles live at once) fits 8 x 128 or 16 x 64 tiles in registers, and spills at 2048 values.
    """
    if block_p > 0:
        if block_p & (block_p - 1):
            raise ValueError(f"triton_ssd: block_p must be a power of 2, got {block_p}")
        return block_p
    return min(_next_pow2(head_dim), max(1024 // _next_pow2(state), 1))


def _kernel_args(x, dt, A, B, C, D, z, dt_bias, h0, chunk, block_p):
    """Contiguous tensors (D expanded to (heads, head_dim)), sizes, grid and constexprs shared by both kernels."""
    batch, L, H, P = x.shape
    G, N = B.shape[2:]
    x, dt, A, B, C = (t.contiguous() for t in (x, dt, A, B, C))
    D2 = None if D is None else (D[:, None] if D.dim() == 1 else D).expand(H, P).contiguous()
    z = None if z is None else z.contiguous()
    dt_bias = None if dt_bias is None else dt_bias.contiguous()
    h0 = None if h0 is None else h0.contiguous()
    BLOCK_P = _block_p(P, N, block_p)
    sizes = (L, H, P, G, N, H // G, _cdiv(L, chunk))
    grid = (batch, H, _cdiv(P, BLOCK_P))
    meta = {"CHUNK": chunk, "BLOCK_P": BLOCK_P, "BLOCK_N": _next_pow2(N), "HAS_D": D2 is not None,
            "HAS_Z": z is not None, "HAS_BIAS": dt_bias is not None, "HAS_H0": h0 is not None}
    # Absent optional tensors are never read (their constexpr flag is off); x stands in for the pointer.
    tensors = (x, dt, A, B, C, x if D2 is None else D2, x if z is None else z, x if dt_bias is None else dt_bias,
               x if h0 is None else h0)
    return tensors, sizes, grid, meta


def _on_device(x: Tensor) -> contextlib.AbstractContextManager:
    """Launch on x's GPU (Triton uses the current device); nothing to select on CPU."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _forward(x, dt, A, B, C, D, z, dt_bias, h0, dt_softplus, dt_min, dt_max, chunk, block_p
             ) -> tuple[Tensor, Tensor, Tensor]:
    _require_runnable(x)
    kernels = _kernels(_interpreting())
    tensors, sizes, grid, meta = _kernel_args(x, dt, A, B, C, D, z, dt_bias, h0, chunk, block_p)
    batch, L, H, P = x.shape
    new = torch.empty if x.numel() else torch.zeros  # the kernel writes every element unless there are none
    y = new(x.shape, dtype=x.dtype, device=x.device)
    states = new(batch, sizes[-1], H, P, B.shape[-1], dtype=torch.float32, device=x.device)
    final = new(batch, H, P, B.shape[-1], dtype=torch.float32, device=x.device)
    if not x.numel() and h0 is not None:  # nothing to scan: the final state is the initial one
        final = h0.float().clone()
    if x.numel():
        with _on_device(x):
            kernels.forward[grid](*tensors, y, states, final, *sizes, dt_min, dt_max, SOFTPLUS=dt_softplus, **meta)
    return y, states, final


def _backward(gy, g_final, x, dt, A, B, C, D, z, dt_bias, h0, states, dt_softplus, dt_min, dt_max, chunk, block_p
              ) -> list[Tensor]:
    _require_runnable(x)
    kernels = _kernels(_interpreting())
    tensors, sizes, grid, meta = _kernel_args(x, dt, A, B, C, D, z, dt_bias, h0, chunk, block_p)
    batch, L, H, P = x.shape
    G, N = B.shape[2:]
    n_pb = grid[2]
    new = torch.empty if x.numel() else torch.zeros
    f32 = {"dtype": torch.float32, "device": x.device}
    dx = new(x.shape, dtype=x.dtype, device=x.device)
    dz = dx if z is None else new(z.shape, dtype=z.dtype, device=z.device)  # dx stands in when there is no z
    ddt = new(n_pb, batch, L, H, **f32)  # per head_dim block: summed below
    dA, dD = new(batch, H, n_pb, **f32), new(batch, H, P, **f32)
    dB, dC = new(n_pb, batch, L, H, N, **f32), new(n_pb, batch, L, H, N, **f32)  # per head and block
    dh0 = dx if h0 is None else torch.empty(h0.shape, **f32)  # dx stands in when there is no h0
    tile = meta["BLOCK_P"] * meta["BLOCK_N"]
    scratch = torch.empty(batch * H * n_pb * ((chunk + 1) * tile + 2 * chunk), **f32)
    if x.numel():
        with _on_device(x):
            kernels.backward[grid](
                gy.contiguous(), g_final.float().contiguous(), *tensors, states.contiguous(), scratch,
                dx, dz, ddt, dA, dD, dB, dC, dh0, *sizes, dt_min, dt_max, SOFTPLUS=dt_softplus, **meta,
            )
    elif h0 is not None:
        dh0 = g_final.float().clone()
    # Deterministic cross-program sums (fixed-order torch reductions, no atomics).
    ddt = ddt.sum(0)
    per_group = (batch, L, G, H // G, N)
    grads = [dx, ddt.to(dt.dtype), dA.sum((0, 2)).to(A.dtype),
             dB.sum(0).view(per_group).sum(3).to(B.dtype), dC.sum(0).view(per_group).sum(3).to(C.dtype)]
    if D is not None:
        dD = dD.sum(0)
        grads.append((dD.sum(1) if D.dim() == 1 else dD).to(D.dtype))
    if z is not None:
        grads.append(dz)
    if dt_bias is not None:
        grads.append(ddt.sum((0, 1)).to(dt_bias.dtype))
    if h0 is not None:
        grads.append(dh0.to(h0.dtype))
    return grads


# Registered ops: opaque single nodes for torch.compile / torch.export (shape-only fake implementations),
# and for autograd, whose derivative is the adjoint kernel.
@torch.library.custom_op("backbones::triton_ssd", mutates_args=())
def triton_ssd_op(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    dt_bias: Tensor | None, initial_states: Tensor | None, dt_softplus: bool, dt_min: float, dt_max: float,
    chunk: int, block_p: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, chunk-start states, final state)``: states ``(batch, n_chunks, heads, head_dim, state)`` fp32, for
    the backward; the final state ``(batch, heads, head_dim, state)`` fp32."""
    return _forward(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_min, dt_max, chunk, block_p)


@triton_ssd_op.register_fake
def _triton_ssd_fake(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_min, dt_max, chunk, block_p):
    batch, L, H, P = x.shape
    N = B.shape[-1]
    return (x.new_empty(x.shape), x.new_empty((batch, _cdiv(L, chunk), H, P, N), dtype=torch.float32),
            x.new_empty((batch, H, P, N), dtype=torch.float32))


@torch.library.custom_op("backbones::triton_ssd_backward", mutates_args=())
def triton_ssd_backward_op(
    gy: Tensor, g_final: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
    z: Tensor | None, dt_bias: Tensor | None, initial_states: Tensor | None, states: Tensor, dt_softplus: bool,
    dt_min: float, dt_max: float, chunk: int, block_p: int,
) -> list[Tensor]:
    """Gradients of x, dt, A, B, C, then of those of D, z, dt_bias, initial_states that are given, each in its
    input's dtype; ``g_final`` is the final state's gradient."""
    return _backward(gy, g_final, x, dt, A, B, C, D, z, dt_bias, initial_states, states, dt_softplus, dt_min,
                     dt_max, chunk, block_p)


@triton_ssd_backward_op.register_fake
def _triton_ssd_backward_fake(gy, g_final, x, dt, A, B, C, D, z, dt_bias, initial_states, states, dt_softplus,
                              dt_min, dt_max, chunk, block_p):
    return [t.new_empty(t.shape) for t in (x, dt, A, B, C, D, z, dt_bias, initial_states) if t is not None]


def _setup_context(ctx, inputs, output) -> None:
    *tensors, dt_softplus, dt_min, dt_max, chunk, block_p = inputs
    ctx.save_for_backward(*tensors, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.options = (dt_softplus, dt_min, dt_max, chunk, block_p)


def _triton_ssd_grad(ctx, gy: Tensor, _g_states: Tensor, g_final: Tensor | None):
    x, dt, A, B, C, D, z, dt_bias, h0, states = ctx.saved_tensors
    if g_final is None:
        g_final = states.new_zeros(states.shape[:1] + states.shape[2:])
    grads = iter(triton_ssd_backward_op(gy, g_final, x, dt, A, B, C, D, z, dt_bias, h0, states, *ctx.options))
    inputs = (x, dt, A, B, C, D, z, dt_bias, h0)
    return (*(None if t is None else next(grads) for t in inputs), None, None, None, None, None)


def _no_double_backward(ctx, *grads: Tensor):
    raise RuntimeError(
        "ssd_scan(impl='triton') has first derivatives only (its backward is a hand-written adjoint kernel); "
        "for a double backward (e.g. a gradient penalty) use impl='reference'"
    )


triton_ssd_op.register_autograd(_triton_ssd_grad, setup_context=_setup_context)
triton_ssd_backward_op.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


def triton_ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    *,
    initial_states: Tensor | None = None,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    return_final_states: bool = False,
    chunk: int = DEFAULT_CHUNK,
    block_p: int = 0,
) -> Tensor | tuple[Tensor, Tensor]:
    """The SSD scan ``y`` (x's shape and dtype) by the Triton kernels; shapes are validated by the caller.

    Computes in fp32 whatever the fp32/bf16/fp16 inputs; float64 is refused rather than silently rounded
    (use impl='reference' or 'fast'). ``initial_states`` ``(batch, heads, head_dim, state)`` seeds the
    recurrence (differentiable); ``dt_limit`` clamps the effective dt as mamba-ssm does; with
    ``return_final_states`` also returns the state after the last token, fp32, differentiable.
    ``chunk`` spaces the saved states (the result does not depend on it); ``block_p`` (a power of 2,
    0 = automatic) sets the head_dim rows per program.
    """
    if not torch.compiler.is_compiling():  # traced, the op is opaque; its implementation checks when it runs
        _require_runnable(x)
    given = [t for t in (x, dt, A, B, C, D, z, dt_bias, initial_states) if t is not None]
    if any(t.dtype == torch.float64 for t in given):
        raise ValueError("triton_ssd computes in fp32 and would round float64 inputs; use impl='reference' or "
                         "impl='fast' for float64")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"triton_ssd: chunk must be a positive int, got {chunk!r}")
    y, _, final = triton_ssd_op(x, dt, A, B, C, D, z, dt_bias, initial_states, bool(dt_softplus),
                                float(dt_limit[0]), float(dt_limit[1]), chunk, block_p)
    return (y, final) if return_final_states else y
