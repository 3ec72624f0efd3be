"""Micro-benchmarks of the backbones' building blocks (``python -m archbench.bench scan|mixers``, see
:mod:`archbench.commands.bench`; ``step``, a whole training step, is :mod:`archbench.training.step_bench`).

:func:`mixer_bench` times each sequence mixer (attention, DiS's bidirectional Mamba, bidirectional Mamba-2, Sana's
ReLU linear attention) as a layer on (batch, L, width) tokens: forward, forward+backward and peak memory per
length, every (mixer, L) in a fresh process, several interleaved rounds over all of them (median).

:func:`scan_bench` times the selective-scan implementations on Mamba-sized inputs (batch 2, d_inner 736, N 16
by default): forward time (no grad), forward+backward time (median of the repeats after one warm-up) and
peak memory.

Each measurement runs in a fresh spawned process. Peak memory is the growth over what is in use
after a warm-up call: the resident-set high-water mark on CPU (needs Linux's /proc), or
``torch.cuda.max_memory_allocated`` on CUDA. So allocator caches and lazily loaded library code
do not count, and nothing leaks between measurements.

The reference loop runs at every length by default: its autograd backward takes tens of seconds
at L=4097 on a 2-core CPU, so the full default run takes several minutes; ``skip_reference_above``
drops it for longer sequences.
"""
from __future__ import annotations

import ctypes
import gc
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch

from archbench.console.threads import threads_for_timing

SCAN_BENCH_IMPLS = ("reference", "fast", "cpu", "pscan", "triton", "mamba_ssm")


def _pscan_available() -> bool:
    try:
        from mambapy.pscan import pscan  # noqa: F401
    except ImportError:
        return False
    return True


def _pscan_scan(u, delta, A, B, C, D):
    """What a mambapy Mamba block computes around ``pscan`` (full (b, L, d, N) tensors)."""
    from mambapy.pscan import pscan

    dt = delta.transpose(1, 2)  # (b, L, d)
    decay = torch.exp(dt.unsqueeze(-1) * A)  # (b, L, d, N)
    inject = (dt * u.transpose(1, 2)).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)
    hs = pscan(decay, inject)
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1)  # (b, L, d)
    return y.transpose(1, 2) + D[:, None] * u


def _scan_fn(impl: str) -> Callable:
    if impl == "pscan":
        return _pscan_scan
    from backbones.ssm import selective_scan

    return lambda u, delta, A, B, C, D: selective_scan(u, delta, A, B, C, D, impl=impl)


def _scan_inputs(batch: int, d_inner: int, L: int, N: int, device: str) -> list[torch.Tensor]:
    """Mamba-initialised inputs: A = -[1..N], delta in [1e-3, 0.1]."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, d_inner, L, generator=g)
    delta = 1e-3 + 0.099 * torch.rand(batch, d_inner, L, generator=g)
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(d_inner, 1)
    B = torch.randn(batch, N, L, generator=g)
    C = torch.randn(batch, N, L, generator=g)
    D = torch.ones(d_inner)
    return [t.to(device).requires_grad_() for t in (u, delta, A, B, C, D)]


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


class PeakMemory:
    """Peak memory growth in bytes from the moment of construction.

    CUDA: allocator statistics. CPU (Linux): the kernel's resident-set high-water mark (VmHWM),
    reset via ``/proc/self/clear_refs`` after glibc hands its free heap back (``malloc_trim``), so
    the baseline is memory really in use. ``ru_maxrss`` is no use here: it cannot be reset and a
    spawned child inherits its parent's value across exec.
    """

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: the baseline may include cached heap
            pass
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5" resets the peak-RSS counter to the current RSS
        self.base = _proc_status_bytes("VmRSS")

    def peak(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated() - self.base
        return _proc_status_bytes("VmHWM") - self.base


@dataclass(frozen=True)
class ScanConfig:
    """What one ``scan`` measurement needs; picklable so it can cross into the spawned process."""

    batch: int
    d_inner: int
    state: int
    repeats: int
    device: str
    threads: str | int
    timer: str


def _time_and_peak(
    fn: Callable[[list], object], inputs: list, tiny: list, cfg: ScanConfig
) -> tuple[float, int]:
    """Median time of ``cfg.repeats`` calls after one warm-up, and their peak memory growth.

    A call on ``tiny`` inputs first pages in the code and thread pools, which must not count as
    peak; the full-size warm-up then does count, as it is the same work as the timed calls.
    """
    sync = torch.cuda.synchronize if cfg.device.startswith("cuda") else (lambda: None)
    clock = time.process_time if cfg.timer == "cpu" else time.perf_counter
    fn(tiny)
    sync()
    memory = PeakMemory(cfg.device)
    fn(inputs)
    sync()
    times = []
    for _ in range(cfg.repeats):
        start = clock()
        fn(inputs)
        sync()
        times.append(clock() - start)
    return statistics.median(times), memory.peak()


def _measure_scan(impl: str, L: int, cfg: ScanConfig) -> dict[str, float]:
    """Runs in its own process: times forward and forward+backward, and their peak memory, at the thread count
    ``cfg.threads`` gives (``auto``: the fastest for forward+backward, chosen here)."""
    fn = _scan_fn(impl)
    inputs = _scan_inputs(cfg.batch, cfg.d_inner, L, cfg.state, cfg.device)
    tiny = _scan_inputs(cfg.batch, cfg.d_inner, min(L, 8), cfg.state, cfg.device)

    def forward(xs: list) -> None:
        with torch.no_grad():
            fn(*xs)

    def forward_backward(xs: list) -> None:
        out = fn(*xs)
        torch.autograd.grad(out, xs, torch.ones_like(out))

    return _timed_pair(forward, forward_backward, inputs, tiny, cfg)


def _timed_pair(forward: Callable[[list], object], forward_backward: Callable[[list], object], inputs: list,
                tiny: list, cfg: ScanConfig | MixerConfig) -> dict[str, float]:
    """Forward and forward+backward timed and measured at one thread count, settled on forward+backward."""
    threads = threads_for_timing(cfg.threads, lambda: forward_backward(inputs), timer=cfg.timer, device=cfg.device)
    fwd, fwd_peak = _time_and_peak(forward, inputs, tiny, cfg)
    train, train_peak = _time_and_peak(forward_backward, inputs, tiny, cfg)
    return {"fwd": fwd, "train": train, "fwd_peak": fwd_peak, "train_peak": train_peak, "threads": threads}


@dataclass(frozen=True)
class MixerConfig:
    """What one ``mixers`` measurement needs (the timing fields match ``ScanConfig``)."""

    batch: int
    width: int
    heads: int
    repeats: int
    device: str
    threads: str | int
    timer: str


MIXER_BENCH = ("attention", "bimamba", "mamba2", "linear_attention")


def _measure_mixer(mixer: str, L: int, cfg: MixerConfig) -> dict[str, float]:
    """Runs in its own process: one mixer layer at sequence length L (one time token + patches)."""
    from backbones.layers.mixers import build_mixer

    torch.manual_seed(0)
    side = max(1, round((L - 1) ** 0.5))
    layer = build_mixer(mixer, cfg.width, layer=0, grid=(side, side), extras=1, num_heads=cfg.heads).to(cfg.device)
    inputs = [torch.randn(cfg.batch, L, cfg.width, device=cfg.device, requires_grad=True)]
    tiny = [torch.randn(cfg.batch, min(L, 8), cfg.width, device=cfg.device, requires_grad=True)]

    def forward(xs: list) -> None:
        with torch.no_grad():
            layer(xs[0])

    def forward_backward(xs: list) -> None:
        out = layer(xs[0])
        torch.autograd.grad(out, [xs[0], *layer.parameters()], torch.ones_like(out))

    return _timed_pair(forward, forward_backward, inputs, tiny, cfg)


def mixer_bench(cfg: MixerConfig, lengths: Sequence[int], mixers: Sequence[str], rounds: int
                ) -> dict[int, dict[str, dict[str, float]]]:
    """Every (mixer, L) measured ``rounds`` times, interleaved, each in a fresh process: L -> mixer -> medians."""
    spawn = multiprocessing.get_context("spawn")
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(rounds):
        for L in lengths:
            for mixer in mixers:
                with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                    runs.setdefault((mixer, L), []).append(pool.submit(_measure_mixer, mixer, L, cfg).result())
    return {
        L: {m: {k: statistics.median(r[k] for r in runs[(m, L)]) for k in runs[(m, L)][0]} for m in mixers}
        for L in lengths
    }


def available_impls(device: str) -> list[str]:
    """The scan implementations worth timing on ``device`` with what is installed here."""
    from backbones.ssm import mamba_ssm_available, triton_available
    from backbones.ssm.cpu_kernel import cpu_available

    impls = ["reference", "fast", *(["cpu"] if device == "cpu" and cpu_available() else [])]
    if _pscan_available():
        impls.append("pscan")
    # Triton only on CUDA: its CPU interpreter (TRITON_INTERPRET=1) is for tests, its timings meaningless.
    if device.startswith("cuda") and triton_available():
        impls.append("triton")
    if device.startswith("cuda") and mamba_ssm_available():
        impls.append("mamba_ssm")
    return impls


def scan_bench(cfg: ScanConfig, lengths: Sequence[int], impls: Sequence[str],
               skip_reference_above: int | None = None) -> Iterator[tuple[int, str, dict[str, float]]]:
    """(L, impl, result) for every length and implementation, each measured in a fresh process, yielded as it
    finishes (a long run shows progress); the reference loop is skipped above ``skip_reference_above``."""
    spawn = multiprocessing.get_context("spawn")
    for L in lengths:
        for impl in impls:
            if impl == "reference" and skip_reference_above is not None and L > skip_reference_above:
                continue
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                yield L, impl, pool.submit(_measure_scan, impl, L, cfg).result()
