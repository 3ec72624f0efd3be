"""``python -m archbench.bench scan|mixers|step [key=value ...]``: micro-benchmarks.

``scan`` and ``mixers`` are :mod:`archbench.measure.bench`; ``step`` (a whole training step, which needs the
diffusion objective) is :mod:`archbench.training.step_bench`. This module parses, runs and prints the tables.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from archbench.console.args import arg, key_table, parse_args, split_command, wants_help
from archbench.console.errors import UsageError, fail, interruptible
from archbench.console.threads import parse_threads

PROGRAM = "archbench.bench"
ScanImpl = Literal["reference", "fast", "cpu", "pscan", "triton", "mamba_ssm"]
MixerName = Literal["attention", "bimamba", "mamba2", "linear_attention"]
ABOUT = {
    "scan": """\
Times the selective-scan implementations on Mamba-sized inputs: forward (no grad), forward+backward (median of
repeats after one warm-up) and peak memory, each (impl, L) in a fresh process, then the ratios fast/pscan and
fast/reference (and triton/mamba_ssm on CUDA) from the same run. The reference loop's backward takes tens of
seconds at L=4097 on a 2-core CPU; skip_reference_above=L drops it for longer sequences.""",
    "mixers": """\
Times each sequence mixer (attention, DiS's bidirectional Mamba, bidirectional Mamba-2, Sana's ReLU linear
attention) as one layer on (batch, L, width) tokens: forward, forward+backward and peak memory, every (mixer, L)
in a fresh process, rounds interleaved passes (median), with the ratios to attention from the same run.""",
    "step": """\
Times a whole training step (the Trainer's loss path, backward, AdamW) per backbone: step ms, images/s and the
step's peak memory growth, each (backbone, round) in a fresh process, rounds interleaved, with ratios to the
first backbone. Note: steps= here is the older name of timed_steps (timed training steps), not sampling
steps.""",
}


THREADS_DOC = ("torch intra-op threads: auto (per measurement, the fastest of 1, 2, 4, ...; one thread with "
               "timer=cpu; OMP_NUM_THREADS pins it) or N")


@dataclass(frozen=True, kw_only=True)
class ScanArgs:
    lengths: tuple[int, ...] = arg((257, 1025, 4097), minimum=1, doc="sequence lengths L")
    repeats: int = arg(5, minimum=1, doc="timed repeats per measurement (median)")
    device: str | None = arg(None, shown="cuda if available", doc="cpu or cuda")
    batch: int = arg(2, minimum=1, doc="batch size")
    d_inner: int = arg(736, minimum=1, doc="channels of the scan (DiS-S/2's d_inner)")
    state: int = arg(16, minimum=1, doc="SSM state size N")
    skip_reference_above: int | None = arg(None, doc="skip the slow reference loop for sequences longer than L")
    threads: str = arg("auto", doc=THREADS_DOC)
    timer: Literal["wall", "cpu"] = arg("wall", doc="cpu: process CPU time, steadier on a busy machine (threads=1)")
    impls: tuple[ScanImpl, ...] | None = arg(None, shown="all available", doc="implementations to run")


@dataclass(frozen=True, kw_only=True)
class MixersArgs:
    lengths: tuple[int, ...] = arg((257, 1025, 4097), minimum=1, doc="sequence lengths L (one time token + patches)")
    width: int = arg(384, minimum=1, doc="token width")
    heads: int = arg(6, minimum=1, doc="attention heads (DiT-S's 6 at width 384)")
    batch: int = arg(2, minimum=1, doc="batch size")
    repeats: int = arg(3, minimum=1, doc="timed repeats per measurement (median)")
    rounds: int = arg(2, minimum=1, doc="interleaved passes over every (mixer, L)")
    device: str | None = arg(None, shown="cuda if available", doc="cpu or cuda")
    threads: str = arg("auto", doc=THREADS_DOC)
    timer: Literal["wall", "cpu"] = arg("wall", doc="cpu: process CPU time, steadier on a busy machine")
    mixers: tuple[MixerName, ...] | None = arg(None, shown="all", doc="mixers to run")


def _schemas() -> dict[str, type]:
    from archbench.training.step_bench import StepConfig

    return {"scan": ScanArgs, "mixers": MixersArgs, "step": StepConfig}


def usage(command: str | None = None) -> str:
    """The usage line, then what each subcommand measures and its keys."""
    schemas = _schemas()
    names = [command] if command else list(schemas)
    parts = [f"{name}: {ABOUT[name]}\n\n{name} keys (key=value; --key value also works):\n{key_table(schemas[name])}"
             for name in names]
    return "\n\n".join([f"usage: python -m {PROGRAM} scan|mixers|step [key=value ...]", *parts])


def _device_and_threads(device: str | None, threads: str, timer: str) -> tuple[str, str | int]:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if timer == "cpu" and device.startswith("cuda"):
        raise UsageError("timer=cpu measures host CPU time; use timer=wall on CUDA")
    try:
        return device, parse_threads(threads)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _ratio(num: dict | None, den: dict | None, key: str) -> str:
    return f"{num[key] / den[key]:.3f}x" if num and den else "n/a"


def scan(args: list[str]) -> int:
    """Time every available selective-scan implementation at each length, printing rows as they finish."""
    from archbench.measure.bench import ScanConfig, available_impls, scan_bench

    request = parse_args(ScanArgs, args)
    device, threads = _device_and_threads(request.device, request.threads, request.timer)
    cfg = ScanConfig(request.batch, request.d_inner, request.state, request.repeats, device, threads, request.timer)
    impls = [i for i in available_impls(device) if not request.impls or i in request.impls]
    print(f"selective scan: batch={cfg.batch} d_inner={cfg.d_inner} N={cfg.state} device={cfg.device} "
          f"threads={cfg.threads} timer={cfg.timer} (median of {cfg.repeats} after 1 warm-up)")
    print(f"{'L':>6} {'impl':>10} {'fwd ms':>10} {'fwd+bwd ms':>11} {'fwd MiB':>9} {'fwd+bwd MiB':>12} {'threads':>8}")
    for length in request.lengths:
        results: dict[str, dict] = {}
        for L, impl, r in scan_bench(cfg, [length], impls, request.skip_reference_above):
            results[impl] = r
            print(f"{L:>6} {impl:>10} {r['fwd'] * 1e3:>10.1f} {r['train'] * 1e3:>11.1f} "
                  f"{r['fwd_peak'] / 2**20:>9.1f} {r['train_peak'] / 2**20:>12.1f} {r['threads']:>8}", flush=True)
        _print_scan_ratios(length, results)
    return 0


def _print_scan_ratios(L: int, r: dict[str, dict]) -> None:
    if "triton" in r and "mamba_ssm" in r:
        print(f"{L:>6} triton/mamba_ssm: fwd {_ratio(r['triton'], r['mamba_ssm'], 'fwd')}, "
              f"fwd+bwd {_ratio(r['triton'], r['mamba_ssm'], 'train')}")
    fast = r.get("fast")
    for other in ("pscan", "reference"):
        print(f"{L:>6} fast/{other}: fwd {_ratio(fast, r.get(other), 'fwd')}, "
              f"fwd+bwd {_ratio(fast, r.get(other), 'train')}")


def mixers(args: list[str]) -> int:
    """Time every mixer at each length, interleaved, and print the table with ratios to attention."""
    from archbench.measure.bench import MIXER_BENCH, MixerConfig, mixer_bench

    request = parse_args(MixersArgs, args)
    device, threads = _device_and_threads(request.device, request.threads, request.timer)
    cfg = MixerConfig(request.batch, request.width, request.heads, request.repeats, device, threads, request.timer)
    names = list(request.mixers or MIXER_BENCH)
    print(f"mixers: batch={cfg.batch} width={cfg.width} heads={cfg.heads} device={cfg.device} threads={cfg.threads} "
          f"timer={cfg.timer} (median of {cfg.repeats} after 1 warm-up, then of {request.rounds} interleaved rounds)")
    medians = mixer_bench(cfg, request.lengths, names, request.rounds)
    print(f"{'L':>6} {'mixer':>16} {'fwd ms':>10} {'fwd+bwd ms':>11} {'fwd MiB':>9} {'fwd+bwd MiB':>12} "
          f"{'fwd/attn':>9} {'fwd+bwd/attn':>13} {'threads':>8}")
    for L, by_mixer in medians.items():
        base = by_mixer.get("attention")
        for mixer, r in by_mixer.items():
            print(f"{L:>6} {mixer:>16} {r['fwd'] * 1e3:>10.1f} {r['train'] * 1e3:>11.1f} "
                  f"{r['fwd_peak'] / 2**20:>9.1f} {r['train_peak'] / 2**20:>12.1f} "
                  f"{_ratio(r, base, 'fwd'):>9} {_ratio(r, base, 'train'):>13} {r['threads']:>8g}")
    return 0


def step(args: list[str]) -> int:
    """Time a training step per backbone; print the table (and write JSON + plot with out=)."""
    from archbench.training.step_bench import StepConfig, format_rows, run_step_bench, save_results

    cfg = parse_args(StepConfig, args).check()
    rows = run_step_bench(cfg)
    print(format_rows(cfg, rows))
    if cfg.out:
        written = save_results(cfg, rows, cfg.out)
        print(f"wrote {written} and {written.with_suffix('.png')}")
    return 0


@interruptible(PROGRAM)
def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the subcommand; a bad argument is one line and exit code 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (wants_help(args) and args[0] not in ("scan", "mixers", "step")):
        print(usage())
        return 0 if args else 1
    if wants_help(args):
        print(usage(args[0]))
        return 0
    try:
        command, rest = split_command(args, ["scan", "mixers", "step"])
        return {"scan": scan, "mixers": mixers, "step": step}[command](rest)
    except (UsageError, OSError) as exc:
        return fail(PROGRAM, exc)
