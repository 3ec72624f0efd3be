"""The selective scan as a pair of Triton kernels (forward + hand-written adjoint), for CUDA tensors.

Layout follows ``mamba_ssm``'s ``selective_scan_fn`` with grouped input-dependent B/C::

    u, delta, z: (batch, d_inner, L)    A: (d_inner, N)    B, C: (batch, G, N, L)
    D, delta_bias: (d_inner,)           channel d reads group d // (d_inner // G)

One program owns one batch element and a block of channels of one group (grid ``(batch, G *
cdiv(d_inner / G, BLOCK_D))``, i.e. ``(batch, cdiv(d_inner, BLOCK_D))`` for G = 1), walks the sequence
with its ``(BLOCK_D, N)`` state in registers, and fuses the delta prologue (bias, softplus) and the
``D`` / ``silu(z)`` epilogue. Inputs are loaded in their dtype and computed in fp32; outputs and
gradients are stored in each input's dtype. The ``(batch, d_inner, L)`` tensors follow ``u``'s layout:
channel-major, or token-major views of ``(batch, L, d_inner)`` buffers as the mixers pass them.

The forward keeps only the state at every chunk start; the backward walks
the chunks from last to first, recomputes each chunk's states from its checkpoint into a small
per-program scratch buffer, and runs the adjoint recurrence. Decays are only multiplied, never
divided, so ``delta * A`` of -100 or less underflows to zero instead of giving inf/nan. Cross-program
reductions (dB/dC over a group's channels, dA/dD/d delta_bias over the batch) go through per-program
partial buffers summed by torch afterwards: deterministic, no atomics.

Interpretation: the kernels are decorated at first use (not at import), once per value of
``TRITON_INTERPRET`` read at that call, so setting ``TRITON_INTERPRET=1`` any time before a call runs
them in Triton's CPU interpreter, even if something imported triton earlier.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import torch
from torch import Tensor

# Timesteps between two saved states. The backward's scratch holds one chunk per program.
DEFAULT_CHUNK = 64
# Channels per program at most; with N = 16 a (32, 16) fp32 state is 4 registers a thread at 4 warps.
MAX_BLOCK_D = 32

# Bound by _kernels() at first use (importing this module stays cheap and works without triton).
# ``tl`` is triton.language: the interpreter looks it up in the kernels' module globals. ``_SUM`` is the
# combiner behind tl.sum: tl.sum / tl.zeros are triton's own jit functions, interpreted or compiled
# depending on TRITON_INTERPRET when *triton* was imported, so the kernels only use builtins
# (tl.full, tl.reduce with this combiner, which the interpreter maps to a numpy sum).
tl: Any = None
_SUM: Any = None

_INSTALL_HINT = "impl='triton' needs the triton package: pip install triton (or pip install archbench[gpu])"
_DEVICE_HINT = (
    "impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 to run the kernels on CPU in Triton's "
    "interpreter (slow; for tests)"
)


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether triton imports; True also on CPU-only machines (the interpreter needs no GPU)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_usable(device: torch.device) -> bool:
    """Whether the kernels can run on ``device``: CUDA, or CPU under ``TRITON_INTERPRET=1``."""
    device = torch.device(device)
    if not triton_available():
        return False
    return device.type == "cuda" or (device.type == "cpu" and _interpret())


def _require_triton(device: torch.device) -> None:
    if not triton_available():
        raise RuntimeError(_INSTALL_HINT)
    if not triton_usable(device):
        raise RuntimeError(f"{_DEVICE_HINT}; got tensors on {device}")


# --- kernels --------------------------------------------------------------------------------------
# Plain functions here, decorated by _kernels(). They call no helper functions (a helper would have to
# be a jit function in this module's globals at decoration time), so the prologue is written out
# wherever it is needed. Masked-off channels and state columns load zeros and so contribute nothing.


def _forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, starts_ptr, last_ptr,
    d_inner, L, n_state, n_groups, per_group, blocks_per_group, n_chunks, stride_b, stride_d, stride_l,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    grp = pid_d // blocks_per_group
    local = (pid_d % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = local < per_group
    chan = grp * per_group + local
    n = tl.arange(0, N_PAD)
    n_mask = n < n_state
    dn_mask = d_mask[:, None] & n_mask[None, :]
    state_off = chan[:, None] * n_state + n[None, :]

    A = tl.load(A_ptr + state_off, mask=dn_mask, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + chan, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + chan, mask=d_mask, other=0.0).to(tl.float32)
    row = pid_b * stride_b + chan * stride_d  # (BLOCK_D,) offsets into the (batch, d_inner, L) tensors
    bc = (pid_b * n_groups + grp) * n_state * L + n * L  # (N_PAD,) offsets of this group's B/C rows

    h = tl.full((BLOCK_D, N_PAD), 0.0, tl.float32)
    for c in range(n_chunks):
        tl.store(starts_ptr + (pid_b * n_chunks + c) * d_inner * n_state + state_off, h, mask=dn_mask)
        t0 = c * CHUNK
        t1 = tl.minimum(t0 + CHUNK, L)
        for t in range(t0, t1):
            u = tl.load(u_ptr + row + t * stride_l, mask=d_mask, other=0.0).to(tl.float32)
            dt = tl.load(delta_ptr + row + t * stride_l, mask=d_mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:  # torch's threshold: identity above 20; exp(x) ~ log1p(exp(x)) far below 0
                e = tl.exp(tl.minimum(dt, 20.0))
                dt = tl.where(dt > 20.0, dt, tl.where(dt < -15.0, e, tl.log(1.0 + e)))
            Bt = tl.load(B_ptr + bc + t, mask=n_mask, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + bc + t, mask=n_mask, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            y = tl.reduce(h * Ct[None, :], 1, _SUM)
            if HAS_D:
                y = y + Dv * u
            if HAS_Z:
                zt = tl.load(z_ptr + row + t * stride_l, mask=d_mask, other=0.0).to(tl.float32)
                y = y * zt / (1.0 + tl.exp(-zt))
            tl.store(out_ptr + row + t * stride_l, y.to(out_ptr.dtype.element_ty), mask=d_mask)
    tl.store(last_ptr + pid_b * d_inner * n_state + state_off, h, mask=dn_mask)


def _backward_kernel(
    gout_ptr, glast_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, starts_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    d_inner, L, n_state, n_groups, per_group, blocks_per_group, n_chunks, stride_b, stride_d, stride_l,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    grp = pid_d // blocks_per_group
    blk = pid_d % blocks_per_group
    local = blk * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = local < per_group
    chan = grp * per_group + local
    n = tl.arange(0, N_PAD)
    n_mask = n < n_state
    dn_mask = d_mask[:, None] & n_mask[None, :]
    state_off = chan[:, None] * n_state + n[None, :]

    A = tl.load(A_ptr + state_off, mask=dn_mask, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + chan, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + chan, mask=d_mask, other=0.0).to(tl.float32)
    row = pid_b * stride_b + chan * stride_d
    bc = (pid_b * n_groups + grp) * n_state * L + n * L
    # dB/dC partial sums of this program: (batch, G, blocks_per_group, N, L), summed over blocks later.
    part = ((pid_b * n_groups + grp) * blocks_per_group + blk) * n_state * L + n * L
    # This program's scratch: CHUNK + 1 padded states, slot i holding h_{t0 + i - 1}.
    prog = pid_b * tl.num_programs(1) + pid_d
    tile = tl.arange(0, BLOCK_D)[:, None] * N_PAD + n[None, :]
    scratch = scratch_ptr + prog * (CHUNK + 1) * BLOCK_D * N_PAD + tile

    # carry = decay_{t+1} * g_{t+1}: what dLoss/dh_t receives from the future; seeded by d last_state.
    carry = tl.load(glast_ptr + pid_b * d_inner * n_state + state_off, mask=dn_mask, other=0.0).to(tl.float32)
    acc_dA = tl.full((BLOCK_D, N_PAD), 0.0, tl.float32)
    acc_dD = tl.full((BLOCK_D,), 0.0, tl.float32)
    acc_dbias = tl.full((BLOCK_D,), 0.0, tl.float32)
    for k in range(n_chunks):
        c = n_chunks - 1 - k
        t0 = c * CHUNK
        steps = tl.minimum(CHUNK, L - t0)
        # Recompute the chunk's states from its checkpoint (exact: no division by the decay).
        start = starts_ptr + (pid_b * n_chunks + c) * d_inner * n_state + state_off
        h = tl.load(start, mask=dn_mask, other=0.0).to(tl.float32)
        tl.debug_barrier()  # the previous chunk's readers are done with the scratch
        tl.store(scratch, h)
        for i in range(steps):
            t = t0 + i
            u = tl.load(u_ptr + row + t * stride_l, mask=d_mask, other=0.0).to(tl.float32)
            dt = tl.load(delta_ptr + row + t * stride_l, mask=d_mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                e = tl.exp(tl.minimum(dt, 20.0))
                dt = tl.where(dt > 20.0, dt, tl.where(dt < -15.0, e, tl.log(1.0 + e)))
            Bt = tl.load(B_ptr + bc + t, mask=n_mask, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            tl.store(scratch + (i + 1) * BLOCK_D * N_PAD, h)
        tl.debug_barrier()  # make the recomputed states visible to every thread of the program

        for i in range(steps):
            j = steps - 1 - i
            t = t0 + j
            h_t = tl.load(scratch + (j + 1) * BLOCK_D * N_PAD)
            h_prev = tl.load(scratch + j * BLOCK_D * N_PAD)
            u = tl.load(u_ptr + row + t * stride_l, mask=d_mask, other=0.0).to(tl.float32)
            raw = tl.load(delta_ptr + row + t * stride_l, mask=d_mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                raw = raw + bias
            dt = raw
            if SOFTPLUS:
                e = tl.exp(tl.minimum(raw, 20.0))
                dt = tl.where(raw > 20.0, raw, tl.where(raw < -15.0, e, tl.log(1.0 + e)))
            Bt = tl.load(B_ptr + bc + t, mask=n_mask, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + bc + t, mask=n_mask, other=0.0).to(tl.float32)
            gy = tl.load(gout_ptr + row + t * stride_l, mask=d_mask, other=0.0).to(tl.float32)
            # Epilogue: out = (C_t . h_t + D u) * silu(z).
            du = tl.full((BLOCK_D,), 0.0, tl.float32)
            if HAS_Z:
                zt = tl.load(z_ptr + row + t * stride_l, mask=d_mask, other=0.0).to(tl.float32)
                sig = 1.0 / (1.0 + tl.exp(-zt))
                y = tl.reduce(h_t * Ct[None, :], 1, _SUM)
                if HAS_D:
                    y = y + Dv * u
                dz = gy * y * sig * (1.0 + zt * (1.0 - sig))
                tl.store(dz_ptr + row + t * stride_l, dz.to(dz_ptr.dtype.element_ty), mask=d_mask)
                gy = gy * zt * sig
            if HAS_D:
                acc_dD += gy * u
                du = gy * Dv
            # y_t = C_t . h_t  ->  dC_t = sum_d gy h_t;  adjoint g_t = C_t gy_t + decay_{t+1} g_{t+1}.
            tl.store(dC_ptr + part + t, tl.reduce(gy[:, None] * h_t, 0, _SUM), mask=n_mask)
            g = gy[:, None] * Ct[None, :] + carry
            decay = tl.exp(dt[:, None] * A)
            # h_t = decay_t h_{t-1} + dt u B_t  ->  dB_t = sum_d g dt u;  d(dt u) = sum_n g B_t.
            tl.store(dB_ptr + part + t, tl.reduce(g * (dt * u)[:, None], 0, _SUM), mask=n_mask)
            g_inject = tl.reduce(g * Bt[None, :], 1, _SUM)
            du += g_inject * dt
            # dLoss/d(dt A) = g decay h_{t-1}, then to dt (through A) and to A (through dt).
            g_log = g * decay * h_prev
            ddt = g_inject * u + tl.reduce(g_log * A, 1, _SUM)
            acc_dA += g_log * dt[:, None]
            carry = decay * g
            if SOFTPLUS:  # softplus' derivative sigmoid(raw), 1 above the threshold
                ddt = tl.where(raw > 20.0, ddt, ddt / (1.0 + tl.exp(-raw)))
            acc_dbias += ddt
            tl.store(du_ptr + row + t * stride_l, du.to(du_ptr.dtype.element_ty), mask=d_mask)
            tl.store(ddelta_ptr + row + t * stride_l, ddt.to(ddelta_ptr.dtype.element_ty), mask=d_mask)
    tl.store(dA_ptr + pid_b * d_inner * n_state + state_off, acc_dA, mask=dn_mask)
    tl.store(dD_ptr + pid_b * d_inner + chan, acc_dD, mask=d_mask)
    tl.store(dbias_ptr + pid_b * d_inner + chan, acc_dbias, mask=d_mask)


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """The two jit kernels, decorated now so triton's interpreted/compiled choice follows ``interpret``."""
    global tl, _SUM
    if not triton_available():
        raise RuntimeError(_INSTALL_HINT)
    import triton
    import triton.language

    tl, _SUM = triton.language, triton.language.standard._sum_combine
    with triton.knobs.runtime.scope():  # triton.jit reads the knob at decoration time
        triton.knobs.runtime.interpret = interpret
        return triton.jit(_forward_kernel), triton.jit(_backward_kernel)


# --- launches -------------------------------------------------------------------------------------


def _layout(u: Tensor, A: Tensor, B: Tensor, chunk: int) -> dict[str, int]:
    """Grid and block sizes: programs never straddle two groups, so dB/dC partials are per group."""
    batch, d_inner, L = u.shape
    n_groups, n_state = B.shape[1], A.shape[1]
    per_group = d_inner // n_groups
    block_d = min(MAX_BLOCK_D, 1 << (per_group - 1).bit_length())
    return dict(
        batch=batch, d_inner=d_inner, L=L, n_state=n_state, n_groups=n_groups, per_group=per_group,
        blocks_per_group=-(-per_group // block_d), n_chunks=-(-L // chunk), block_d=block_d,
        n_pad=1 << (n_state - 1).bit_length(),
    )


def _device_guard(t: Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device, so make it the tensors' one."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _or(t: Tensor | None, placeholder: Tensor) -> Tensor:
    """A tensor for a pointer argument; the placeholder is never read (its HAS_* flag is off)."""
    return placeholder if t is None else t


def _token_major(u: Tensor) -> bool:
    """Whether ``u`` is a ``(batch, L, d_inner)`` buffer seen as ``(batch, d_inner, L)``, as mixers pass it.

    Every ``(batch, d_inner, L)`` tensor of a call is brought to ``u``'s layout (one set of strides for the
    kernels); in this one a channel block is contiguous in memory, which coalesces the per-step loads.
    """
    return u.stride(1) == 1 and u.stride(2) != 1


def _in_layout(t: Tensor, token_major: bool) -> Tensor:
    """``t`` dense in the call's layout; no copy when it already is."""
    return t.transpose(1, 2).contiguous().transpose(1, 2) if token_major else t.contiguous()


def _new_in_layout(u: Tensor, token_major: bool, dtype: torch.dtype) -> Tensor:
    """An uninitialised ``u``-shaped tensor in the call's layout (shared by the real and fake ops)."""
    batch, d_inner, L = u.shape
    if token_major:
        return u.new_empty(batch, L, d_inner, dtype=dtype).transpose(1, 2)
    return u.new_empty(batch, d_inner, L, dtype=dtype)


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    _require_triton(u.device)
    fwd, _ = _kernels(_interpret())
    s = _layout(u, A, B, chunk)
    tm = _token_major(u)
    u, delta = _in_layout(u, tm), _in_layout(delta, tm)
    z = None if z is None else _in_layout(z, tm)
    A, B, C = A.contiguous(), B.contiguous(), C.contiguous()
    D, delta_bias = (None if t is None else t.contiguous() for t in (D, delta_bias))
    out = _new_in_layout(u, tm, u.dtype)
    starts = u.new_empty(s["batch"], s["n_chunks"], s["d_inner"], s["n_state"], dtype=torch.float32)
    last = u.new_empty(s["batch"], s["d_inner"], s["n_state"], dtype=torch.float32)
    grid = (s["batch"], s["n_groups"] * s["blocks_per_group"])
    with _device_guard(u):
        fwd[grid](
            u, delta, A, B, C, _or(D, u), _or(z, u), _or(delta_bias, u), out, starts, last,
            s["d_inner"], s["L"], s["n_state"], s["n_groups"], s["per_group"], s["blocks_per_group"], s["n_chunks"],
            *u.stride(),
            BLOCK_D=s["block_d"], N_PAD=s["n_pad"], CHUNK=chunk, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        )
    return out, last, starts


def _backward(gout, glast, u, delta, A, B, C, D, z, delta_bias, starts, delta_softplus: bool, chunk: int):
    _require_triton(u.device)
    _, bwd = _kernels(_interpret())
    s = _layout(u, A, B, chunk)
    tm = _token_major(u)
    u, delta, gout = (_in_layout(t, tm) for t in (u, delta, gout))
    z = None if z is None else _in_layout(z, tm)
    A, B, C = A.contiguous(), B.contiguous(), C.contiguous()
    D, delta_bias = (None if t is None else t.contiguous() for t in (D, delta_bias))
    glast = glast.to(torch.float32).contiguous()
    f32 = dict(dtype=torch.float32, device=u.device)
    batch, d_inner, n_state, L = s["batch"], s["d_inner"], s["n_state"], s["L"]
    programs = s["n_groups"] * s["blocks_per_group"]
    du, ddelta = _new_in_layout(u, tm, u.dtype), _new_in_layout(u, tm, delta.dtype)
    dz = u.new_empty(0) if z is None else _new_in_layout(u, tm, z.dtype)
    dB_part = torch.empty(batch, s["n_groups"], s["blocks_per_group"], n_state, L, **f32)
    dC_part = torch.empty_like(dB_part)
    dA_part = torch.empty(batch, d_inner, n_state, **f32)
    dD_part, dbias_part = torch.empty(batch, d_inner, **f32), torch.empty(batch, d_inner, **f32)
    scratch = torch.empty(batch * programs, chunk + 1, s["block_d"], s["n_pad"], **f32)
    with _device_guard(u):
        bwd[(batch, programs)](
            gout, glast, u, delta, A, B, C, _or(D, u), _or(z, u), _or(delta_bias, u), starts, scratch,
            du, ddelta, dz if z is not None else u, dB_part, dC_part, dA_part, dD_part, dbias_part,
            d_inner, L, n_state, s["n_groups"], s["per_group"], s["blocks_per_group"], s["n_chunks"], *u.stride(),
            BLOCK_D=s["block_d"], N_PAD=s["n_pad"], CHUNK=chunk, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        )
    # Absent optional inputs get their own empty tensors: a custom op's outputs may not alias each other.
    return (
        du, ddelta, dA_part.sum(0).to(A.dtype), dB_part.sum(2).to(B.dtype), dC_part.sum(2).to(C.dtype),
        dD_part.sum(0).to(D.dtype) if D is not None else u.new_empty(0), dz,
        dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else u.new_empty(0),
    )


# --- registered ops -------------------------------------------------------------------------------
# Opaque to torch.compile / torch.export (one node each, shape-only fake implementations, the kernel
# launch inside) and to autograd (the backward kernel is the derivative), like backbones.ssm.fast.


@torch.library.custom_op("backbones::triton_scan", mutates_args=())
def triton_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, chunk: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(out, last_state, chunk-start states)`` of the fused scan, as a registered op."""
    return _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk)


@triton_scan.register_fake
def _triton_scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk):
    batch, d_inner, L = u.shape
    n_state = A.shape[1]
    return (
        _new_in_layout(u, _token_major(u), u.dtype),
        u.new_empty(batch, d_inner, n_state, dtype=torch.float32),
        u.new_empty(batch, -(-L // chunk), d_inner, n_state, dtype=torch.float32),
    )


@torch.library.custom_op("backbones::triton_scan_backward", mutates_args=())
def triton_scan_backward(
    gout: Tensor, glast: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
    z: Tensor | None, delta_bias: Tensor | None, starts: Tensor, delta_softplus: bool, chunk: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of u, delta, A, B, C, D, z, delta_bias (empty for an absent optional input)."""
    return _backward(gout, glast, u, delta, A, B, C, D, z, delta_bias, starts, delta_softplus, chunk)


@triton_scan_backward.register_fake
def _triton_scan_backward_fake(gout, glast, u, delta, A, B, C, D, z, delta_bias, starts, delta_softplus, chunk):
    tm = _token_major(u)
    return (
        _new_in_layout(u, tm, u.dtype), _new_in_layout(u, tm, delta.dtype), A.new_empty(A.shape),
        B.new_empty(B.shape), C.new_empty(C.shape), u.new_empty(0) if D is None else D.new_empty(D.shape),
        u.new_empty(0) if z is None else _new_in_layout(u, tm, z.dtype),
        u.new_empty(0) if delta_bias is None else delta_bias.new_empty(delta_bias.shape),
    )


def _setup_triton_scan(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.delta_softplus, ctx.chunk = delta_softplus, chunk


def _triton_scan_grad(ctx, gout: Tensor, glast: Tensor | None, _g_starts: Tensor | None):
    u, delta, A, B, C, D, z, delta_bias, starts = ctx.saved_tensors
    if glast is None:
        glast = u.new_zeros(*u.shape[:2], A.shape[1], dtype=torch.float32)
    grads = triton_scan_backward(gout, glast, u, delta, A, B, C, D, z, delta_bias, starts, ctx.delta_softplus,
                                 ctx.chunk)
    optional = [None if t is None else g for t, g in zip((D, z, delta_bias), grads[5:], strict=True)]
    return (*grads[:5], *optional, None, None)


def _no_double_backward(ctx, *grads: Tensor):
    raise RuntimeError(
        "selective_scan(impl='triton') has first derivatives only (its backward is a hand-written adjoint); "
        "for a double backward (e.g. a gradient penalty) use impl='reference'"
    )


triton_scan.register_autograd(_triton_scan_grad, setup_context=_setup_triton_scan)
triton_scan_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


def triton_selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    chunk: int = DEFAULT_CHUNK,
) -> Tensor | tuple[Tensor, Tensor]:
    """The fused selective scan; shapes as in the module docstring, already checked by the caller.

    Returns ``out`` in ``u``'s dtype, and with ``return_last_state`` also the fp32 ``(batch, d_inner, N)``
    state after the last step. ``chunk`` is the checkpoint spacing (smaller: more checkpoints, less scratch).
    """
    assert B.dim() == 4 and C.shape == B.shape and u.shape[1] % B.shape[1] == 0, "B, C: (batch, G, N, L)"
    _require_triton(u.device)
    out, last, _ = triton_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk)
    return (out, last) if return_last_state else out
