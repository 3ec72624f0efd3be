"""Micro-benchmarks, one subcommand each: ``python -m archbench.bench scan|mixers [options]``
(``step``, a whole training step, is :mod:`archbench.training.step_bench`).

``mixers`` times each sequence mixer (attention, DiS's bidirectional Mamba, bidirectional Mamba-2) as a
layer on (batch, L, width) tokens: forward, forward+backward and peak memory per length, every
(mixer, L) in a fresh process, ``--rounds`` interleaved passes over all of them (median), with the
ratios to attention from the same run.

``scan`` times the selective-scan implementations on Mamba-sized inputs (defaults: batch 2,
d_inner 736, N 16) and reports forward time (no grad), forward+backward time (median of
``--repeats`` after one warm-up) and peak memory, then the ratios ``fast/pscan`` and
``fast/reference`` from the same run.

Each (impl, L) runs in a fresh spawned process. Peak memory is the growth over what is in use
after a warm-up call: the resident-set high-water mark on CPU (needs Linux's /proc), or
``torch.cuda.max_memory_allocated`` on CUDA. So allocator caches and lazily loaded library code
do not count, and nothing leaks between measurements.

The reference loop runs at every length by default: its autograd backward takes tens of seconds
at L=4097 on a 2-core CPU, so the full default run takes several minutes;
``--skip-reference-above L`` drops it for longer sequences.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch

from archbench.console import ArgumentParser

SCAN_BENCH_IMPLS = ("reference", "fast", "pscan", "triton", "mamba_ssm")


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
    threads: int
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
    """Runs in its own process: times forward and forward+backward, and their peak memory."""
    torch.set_num_threads(cfg.threads)
    fn = _scan_fn(impl)
    inputs = _scan_inputs(cfg.batch, cfg.d_inner, L, cfg.state, cfg.device)
    tiny = _scan_inputs(cfg.batch, cfg.d_inner, min(L, 8), cfg.state, cfg.device)

    def forward(xs: list) -> None:
        with torch.no_grad():
            fn(*xs)

    def forward_backward(xs: list) -> None:
        out = fn(*xs)
        torch.autograd.grad(out, xs, torch.ones_like(out))

    fwd, fwd_peak = _time_and_peak(forward, inputs, tiny, cfg)
    train, train_peak = _time_and_peak(forward_backward, inputs, tiny, cfg)
    return {"fwd": fwd, "train": train, "fwd_peak": fwd_peak, "train_peak": train_peak}


@dataclass(frozen=True)
class MixerConfig:
    """What one ``mixers`` measurement needs (the timing fields match ``ScanConfig``)."""

    batch: int
    width: int
    heads: int
    repeats: int
    device: str
    threads: int
    timer: str


MIXER_BENCH = ("attention", "bimamba", "mamba2")


def _measure_mixer(mixer: str, L: int, cfg: MixerConfig) -> dict[str, float]:
    """Runs in its own process: one mixer layer at sequence length L (one time token + patches)."""
    from backbones.layers.mixers import build_mixer

    torch.set_num_threads(cfg.threads)
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

    fwd, fwd_peak = _time_and_peak(forward, inputs, tiny, cfg)
    train, train_peak = _time_and_peak(forward_backward, inputs, tiny, cfg)
    return {"fwd": fwd, "train": train, "fwd_peak": fwd_peak, "train_peak": train_peak}


def cmd_mixers(args: argparse.Namespace) -> int:
    """Time every mixer at each length, interleaved, with ratios to attention."""
    cfg = MixerConfig(args.batch, args.width, args.heads, args.repeats, args.device, args.threads, args.timer)
    mixers = args.mixers or list(MIXER_BENCH)
    print(f"mixers: batch={cfg.batch} width={cfg.width} heads={cfg.heads} device={cfg.device} threads={cfg.threads} "
          f"timer={cfg.timer} (median of {cfg.repeats} after 1 warm-up, then of {args.rounds} interleaved rounds)")
    spawn = multiprocessing.get_context("spawn")
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.rounds):
        for L in args.lengths:
            for mixer in mixers:
                with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                    runs.setdefault((mixer, L), []).append(pool.submit(_measure_mixer, mixer, L, cfg).result())
    print(f"{'L':>6} {'mixer':>10} {'fwd ms':>10} {'fwd+bwd ms':>11} {'fwd MiB':>9} {'fwd+bwd MiB':>12} "
          f"{'fwd/attn':>9} {'fwd+bwd/attn':>13}")
    for L in args.lengths:
        medians = {m: {k: statistics.median(r[k] for r in runs[(m, L)]) for k in runs[(m, L)][0]} for m in mixers}
        base = medians.get("attention")
        for mixer, r in medians.items():
            print(f"{L:>6} {mixer:>10} {r['fwd'] * 1e3:>10.1f} {r['train'] * 1e3:>11.1f} "
                  f"{r['fwd_peak'] / 2**20:>9.1f} {r['train_peak'] / 2**20:>12.1f} "
                  f"{_ratio(r, base, 'fwd'):>9} {_ratio(r, base, 'train'):>13}")
    return 0


def _available_impls(device: str) -> list[str]:
    from backbones.ssm import mamba_ssm_available, triton_available

    impls = ["reference", "fast"]
    if _pscan_available():
        impls.append("pscan")
    # Triton only on CUDA: its CPU interpreter (TRITON_INTERPRET=1) is for tests, its timings meaningless.
    if device.startswith("cuda") and triton_available():
        impls.append("triton")
    if device.startswith("cuda") and mamba_ssm_available():
        impls.append("mamba_ssm")
    return impls


def _ratio(num: dict | None, den: dict | None, key: str) -> str:
    return f"{num[key] / den[key]:.3f}x" if num and den else "n/a"


def cmd_scan(args: argparse.Namespace) -> int:
    """Time every available selective-scan implementation at each length."""
    if args.timer == "cpu" and args.device.startswith("cuda"):
        raise SystemExit("--timer cpu measures host CPU time; use --timer wall on CUDA")
    cfg = ScanConfig(
        args.batch, args.d_inner, args.state, args.repeats, args.device, args.threads, args.timer
    )
    impls = [i for i in _available_impls(cfg.device) if not args.impls or i in args.impls]
    print(
        f"selective scan: batch={cfg.batch} d_inner={cfg.d_inner} N={cfg.state} device={cfg.device} "
        f"threads={cfg.threads} timer={cfg.timer} (median of {cfg.repeats} after 1 warm-up)"
    )
    print(f"{'L':>6} {'impl':>10} {'fwd ms':>10} {'fwd+bwd ms':>11} {'fwd MiB':>9} {'fwd+bwd MiB':>12}")
    spawn = multiprocessing.get_context("spawn")
    for L in args.lengths:
        results: dict[str, dict] = {}
        for impl in impls:
            too_long = args.skip_reference_above is not None and L > args.skip_reference_above
            if impl == "reference" and too_long:
                continue
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                r = results[impl] = pool.submit(_measure_scan, impl, L, cfg).result()
            print(
                f"{L:>6} {impl:>10} {r['fwd'] * 1e3:>10.1f} {r['train'] * 1e3:>11.1f} "
                f"{r['fwd_peak'] / 2**20:>9.1f} {r['train_peak'] / 2**20:>12.1f}",
                flush=True,
            )
        if "triton" in results and "mamba_ssm" in results:
            r = results
            print(f"{L:>6} triton/mamba_ssm: fwd {_ratio(r['triton'], r['mamba_ssm'], 'fwd')}, "
                  f"fwd+bwd {_ratio(r['triton'], r['mamba_ssm'], 'train')}")
        fast = results.get("fast")
        for other in ("pscan", "reference"):
            fwd = _ratio(fast, results.get(other), "fwd")
            print(f"{L:>6} fast/{other}: fwd {fwd}, fwd+bwd {_ratio(fast, results.get(other), 'train')}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m archbench.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan", help="selective-scan implementations: time and peak memory")
    scan.add_argument("--lengths", type=int, nargs="+", default=[257, 1025, 4097])
    scan.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    scan.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    scan.add_argument("--batch", type=int, default=2)
    scan.add_argument("--d-inner", type=int, default=736)
    scan.add_argument("--state", type=int, default=16, help="SSM state size N")
    scan.add_argument(
        "--skip-reference-above", type=int, default=None, metavar="L",
        help="skip the (slow) per-timestep reference loop for sequences longer than L (default: never)",
    )
    scan.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    scan.add_argument(
        "--timer", choices=("wall", "cpu"), default="wall",
        help="cpu: process CPU time, steadier than wall time on a busy machine (use with --threads 1)",
    )
    scan.add_argument("--impls", nargs="+", choices=SCAN_BENCH_IMPLS, help="subset to run (default: all)")
    scan.set_defaults(func=cmd_scan)
    mixers = sub.add_parser("mixers", help="sequence mixers as layers: time, peak memory, ratios to attention")
    mixers.add_argument("--lengths", type=int, nargs="+", default=[257, 1025, 4097])
    mixers.add_argument("--width", type=int, default=384)
    mixers.add_argument("--heads", type=int, default=6, help="attention heads (DiT-S's 6 at width 384)")
    mixers.add_argument("--batch", type=int, default=2)
    mixers.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median)")
    mixers.add_argument("--rounds", type=int, default=2, help="interleaved passes over every (mixer, L)")
    mixers.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    mixers.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    mixers.add_argument("--timer", choices=("wall", "cpu"), default="wall")
    mixers.add_argument("--mixers", nargs="+", choices=MIXER_BENCH, help="subset to run (default: all)")
    mixers.set_defaults(func=cmd_mixers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and dispatch to the subcommand's ``cmd_*`` function."""
    args = _parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
