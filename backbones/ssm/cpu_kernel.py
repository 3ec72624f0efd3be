"""The compiled CPU selective scan (``cpu_scan.cpp`` beside this file, with the causal conv + SiLU in front of it in
``cpu_conv.cpp`` and their shared vector math in ``cpu_vec.h``), built on first use, with a fallback.

The C++ source is compiled by ``torch.utils.cpp_extension.load`` the first time :func:`cpu_available` or the
kernel is asked for, into torch's extension cache (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``): later processes only load it (torch rebuilds when the source or flags change,
and its file lock makes concurrent first builds in several processes wait for one another).  The module is
named after the SIMD level ATen detects (``torch.backends.cpu.get_cpu_capability()``, which
``ATEN_CPU_CAPABILITY`` overrides) and the torch version, and compiled for exactly that level (``-mavx2 -mfma``,
or AVX-512 on top), never ``-march=native``: a cache shared between different machines then holds one build per
level, each safe wherever that level is reported.  If the build for the detected level fails, a plain one (no
ISA flags) is tried.

If the build fails (no compiler, no ninja, a compiler error) or ``ARCHBENCH_NO_CPU_KERNEL=1`` is set,
:func:`cpu_available` returns False, the reason is logged once (:func:`cpu_unavailable_reason` returns it),
and ``selective_scan(impl="auto")`` runs the pure-PyTorch ``fast`` path instead.  The environment variable is
read at the first use in a process.

The kernel is two registered custom ops, ``backbones::cpu_scan`` and ``backbones::cpu_scan_backward`` (opaque
nodes with shape-only fake implementations for torch.compile and torch.export), tied together by the
:class:`CPUSelectiveScan` autograd Function: a Function, not ``register_autograd``, because the FLOP counter
(``archbench.measure.flops``) recognises the scans by their Functions' names in the jit trace.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_scan.cpp")
CONV_SOURCE = Path(__file__).with_name("cpu_conv.cpp")  # the causal conv (+ SiLU) before the scan
HEADER = Path(__file__).with_name("cpu_vec.h")  # the vector math both use
DISABLE_ENV = "ARCHBENCH_NO_CPU_KERNEL"
# At most this many timesteps between the forward pass's state checkpoints, i.e. per chunk of the backward
# pass's recomputation (see cpu_scan.cpp; its buffers are about 4 CHUNK N W values per thread, 96 KiB at
# N=16 fp32 AVX-512).  The chunks of a sequence are balanced (L=66: three of 22, not 24 + 24 + 18), and a
# sequence of at most CHUNK steps stores none.  On the 2-core AVX-512 machine (one thread, a loaded machine:
# differences under 10% are noise), 16-24 was fastest at L=1025 (32: 15% slower, 61: 60% slower) and 22-33
# at DiS-T/2's L=66 (14: 10% slower).
CHUNK = 24


def chunk_size(L: int) -> int:
    """Timesteps per chunk for a sequence of ``L``: the fewest chunks of at most ``CHUNK``, equally long."""
    chunks = -(-L // CHUNK)
    return -(-L // chunks)


_AVX2 = ["-mavx", "-mavx2", "-mfma", "-mf16c"]
_ISA_FLAGS = {"AVX2": _AVX2, "AVX512": [*_AVX2, "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw"]}


class _Build:
    lock = threading.Lock()
    tried = False
    module = None
    reason: str | None = None
    seconds: float | None = None


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _capability() -> str:
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # an old or unusual build of torch
        return "DEFAULT"
    return capability if platform.machine().lower() in ("x86_64", "amd64") and capability in _ISA_FLAGS else "DEFAULT"


def _load(capability: str):
    # Importing cpp_extension on a machine with a CUDA toolkit but no GPU warns "No CUDA runtime is found"
    # in every process: noise for a CPU-only build, which needs no CUDA.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.cpp_extension import load

    flags = ["-O3", "-ffp-contract=fast", "-fopenmp", *_ISA_FLAGS.get(capability, [])]
    # torch's cache key covers the listed sources and the flags, not the shared header nor torch itself: a
    # digest of all three files and the torch version in the name keep a stale build from being loaded.  The
    # folder the sources live in is in the digest too: the build file names the sources by path, so two
    # checkouts sharing one build folder would rebuild it (about a minute) each time the other one loads it.
    version = re.sub(r"\W", "_", torch.__version__)
    contents = b"".join(path.read_bytes() for path in (SOURCE, CONV_SOURCE, HEADER))
    digest = hashlib.sha256(str(SOURCE.parent.resolve()).encode() + b"\0" + contents).hexdigest()
    return load(
        name=f"archbench_cpu_scan_{capability.lower()}_torch{version}_{digest[:10]}",
        sources=[str(SOURCE), str(CONV_SOURCE)],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def _summary(exc: Exception) -> str:
    """One short line for a failed build: torch's message holds the whole compiler output, commands included."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    head = lines[0].split(": [", 1)[0]  # "Error building extension 'name'" without the ninja log after it
    causes = [line for line in lines[1:] if any(w in line.lower() for w in ("error", "not found", "no such"))]
    cause = next((c for c in causes if not c.startswith(("FAILED", "ninja"))), None)
    text = f"{type(exc).__name__}: {head}" + (f" ({cause})" if cause else "")
    return text if len(text) <= 300 else text[:297] + "..."


def _build() -> None:
    """Compile (or load from the cache) once per process; on failure remember and log why."""
    if _disabled():
        _Build.reason = f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
        log.info("selective_scan: the compiled CPU kernel is %s; impl='auto' runs 'fast' on CPU", _Build.reason)
        return
    start = time.perf_counter()
    capability = _capability()
    attempts = [capability, "DEFAULT"] if capability != "DEFAULT" else ["DEFAULT"]
    errors = []
    for level in attempts:
        try:
            _Build.module = _load(level)
        except Exception as exc:  # no compiler or ninja (RuntimeError, OSError), a compile error, ...
            errors.append(f"{level}: {_summary(exc)}")
            log.debug("selective_scan: building the CPU kernel for %s failed:\n%s", level, exc)
            continue
        _Build.seconds = time.perf_counter() - start
        log.info("selective_scan: CPU kernel ready (%s, %d-byte vectors) in %.1f s",
                 level, _Build.module.vector_bytes(), _Build.seconds)
        return
    _Build.reason = "build failed: " + "; ".join(errors)
    log.warning("selective_scan: the compiled CPU kernel is unavailable (%s); impl='auto' runs 'fast' on CPU",
                _Build.reason)


def cpu_kernel():
    """The compiled extension module, building it on the first call; None when unavailable."""
    if not _Build.tried:
        with _Build.lock:
            if not _Build.tried:
                try:
                    _build()
                finally:
                    _Build.tried = True
    return _Build.module


@torch.compiler.assume_constant_result
def cpu_available() -> bool:
    """Whether the compiled CPU scan can run here (builds it on the first call; the answer is cached)."""
    return cpu_kernel() is not None


def cpu_unavailable_reason() -> str | None:
    """Why the compiled CPU scan is unavailable (None when it is available)."""
    cpu_kernel()
    return _Build.reason


def _require():
    module = cpu_kernel()
    if module is None:
        raise RuntimeError(
            f"selective_scan(impl='cpu'): the compiled CPU kernel is unavailable ({_Build.reason}); "
            "use impl='fast' (or impl='auto', which falls back to it)"
        )
    return module


@torch.library.custom_op("backbones::cpu_scan", mutates_args=())
def cpu_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_proj: Tensor | None, delta_softplus: bool, chunk: int, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(out, last state, checkpoints)`` of token-layout inputs: ``u, delta, z: (batch, L, d_inner)`` with unit
    stride along d_inner, ``A: (d_inner, N)``, ``B, C: (batch, L, groups, N)`` (any strides), ``D, delta_bias:
    (d_inner,)``; out ``(batch, L, d_inner)``, last ``(batch, d_inner, N)``, checkpoints ``(batch, channel
    blocks, chunks - 1, N, lanes)``: the states every ``chunk`` steps the backward pass restarts from (the
    first chunk starts from zeros).  ``reverse``: scan from the last token to the first (outputs in token order).
    ``delta_proj`` ``(R, d_inner)``: delta is the low-rank ``(batch, L, R)`` input of the step, which the kernel
    projects itself (``cpu_scan.cpp``'s header)."""
    out, last, checkpoints = _require().scan_forward(
        u, delta, A, B, C, D, z, delta_bias, delta_proj, delta_softplus, chunk, reverse
    )
    return out, last, checkpoints


def _lanes(dtype: torch.dtype) -> int:
    """Channels per SIMD vector of the kernel (the checkpoints' innermost dimension)."""
    module = cpu_kernel()
    return (module.vector_bytes() if module is not None else 64) // dtype.itemsize


@cpu_scan.register_fake
def _cpu_scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_proj, delta_softplus, chunk, reverse):
    batch, L, d_inner = u.shape
    N, groups, lanes = A.shape[1], B.shape[2], _lanes(u.dtype)
    blocks = groups * ((d_inner // groups + lanes - 1) // lanes)
    chunks = (L + chunk - 1) // chunk
    return (u.new_empty(batch, L, d_inner), u.new_empty(batch, d_inner, N),
            u.new_empty(batch, blocks, chunks - 1, N, lanes))


@torch.library.custom_op("backbones::cpu_scan_backward", mutates_args=())
def cpu_scan_backward(
    gout: Tensor, g_last: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
    z: Tensor | None, delta_bias: Tensor | None, delta_proj: Tensor | None, checkpoints: Tensor,
    delta_softplus: bool, chunk: int, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of u, delta, A, B, C, D, z, delta_bias, delta_proj (empty tensors for the absent optional ones)
    given those of the output and of the last state."""
    return tuple(_require().scan_backward(
        gout, g_last, u, delta, A, B, C, D, z, delta_bias, delta_proj, checkpoints, delta_softplus, chunk, reverse
    ))


@cpu_scan_backward.register_fake
def _cpu_scan_backward_fake(gout, g_last, u, delta, A, B, C, D, z, delta_bias, delta_proj, checkpoints,
                            delta_softplus, chunk, reverse):
    def optional(t: Tensor | None) -> Tensor:
        return u.new_empty(0) if t is None else t.new_empty(t.shape)

    return (u.new_empty(u.shape), delta.new_empty(delta.shape), A.new_empty(A.shape), B.new_empty(B.shape),
            C.new_empty(C.shape), optional(D), optional(z), optional(delta_bias), optional(delta_proj))


def _no_double_backward(ctx, *grads: Tensor):
    raise RuntimeError(
        "selective_scan(impl='cpu') has first derivatives only (its backward is a hand-written adjoint); "
        "for a double backward (e.g. a gradient penalty) use impl='reference'"
    )


cpu_scan_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


class CPUSelectiveScan(torch.autograd.Function):
    """The two ops as one differentiable scan: ``(out, last state)``; the checkpoints stay in the context."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_proj, delta_softplus: bool, chunk: int,
                reverse: bool):
        out, last, checkpoints = cpu_scan(u, delta, A, B, C, D, z, delta_bias, delta_proj, delta_softplus, chunk,
                                          reverse)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, delta_proj, checkpoints)
        ctx.delta_softplus, ctx.chunk, ctx.reverse = delta_softplus, chunk, reverse
        return out, last

    @staticmethod
    def backward(ctx, gout: Tensor, g_last: Tensor):
        u, delta, A, B, C, D, z, delta_bias, delta_proj, checkpoints = ctx.saved_tensors
        gout = gout.to(u.dtype)
        if gout.stride(-1) != 1:
            gout = gout.contiguous()
        g_last = g_last.to(u.dtype).contiguous()
        gu, gdelta, gA, gB, gC, gD, gz, gbias, gproj = cpu_scan_backward(
            gout, g_last, u, delta, A, B, C, D, z, delta_bias, delta_proj, checkpoints, ctx.delta_softplus,
            ctx.chunk, ctx.reverse,
        )
        return (gu, gdelta, gA, gB, gC, None if D is None else gD, None if z is None else gz,
                None if delta_bias is None else gbias, None if delta_proj is None else gproj, None, None, None)


def _token(t: Tensor, dtype: torch.dtype) -> Tensor:
    """(batch, K, L) -> (batch, L, K) with unit stride along K: free for transposed views of token-layout tensors."""
    t = t.to(dtype).transpose(1, 2)
    return t if t.stride(2) == 1 or t.shape[2] == 1 else t.contiguous()


def cpu_selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, compute: torch.dtype, reverse: bool = False,
    delta_proj: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The scan on ``selective_scan``'s (batch, d_inner, L) layout with grouped (batch, groups, N, L) B and C;
    returns ``y`` (batch, d_inner, L) in ``compute`` (a transposed view of the kernel's token-layout output)
    and the last state (batch, d_inner, N); ``reverse`` scans from the last token to the first; with
    ``delta_proj`` (d_inner, R), ``delta`` is (batch, R, L) and the kernel forms the step."""
    def vector(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(compute).contiguous()

    B, C = (t.to(compute).permute(0, 3, 1, 2) for t in (B, C))  # (batch, L, groups, N) views
    out, last = CPUSelectiveScan.apply(
        _token(u, compute), _token(delta, compute), A.to(compute), B, C, vector(D),
        None if z is None else _token(z, compute), vector(delta_bias),
        None if delta_proj is None else delta_proj.to(compute).t().contiguous(), delta_softplus,
        chunk_size(u.shape[-1]), reverse,
    )
    return out.transpose(1, 2), last
