"""Measured cost against sequence length: does DiS's linear mixer beat attention, and from where?

For each backbone and resolution: tokens, counted GMACs, and measured time and peak memory per
image for a forward pass (eval, no grad: the sampling cost) and a forward+backward pass (train
mode, mean-square loss: the training cost, without optimizer state).

* Time: median of ``repeats`` timed passes after ``warmup`` untimed ones; the backbones are
  interleaved pass by pass (in a rotating order) so that load from other processes hits all alike.
* Peak memory on CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the pass.
  On CPU: each measurement runs in a fresh process (forked from a server that has only imported
  torch) that builds the model, runs one warm-up pass, returns glibc's free heap (``malloc_trim``),
  resets the kernel's resident-set high-water mark (``/proc/self/clear_refs``) and reports
  ``VmHWM - VmRSS`` over one more pass: activations, autograd buffers, parameter gradients and
  allocator overhead, not the weights or one-time library state.  Where the mark cannot be reset,
  ``ru_maxrss`` minus the resident set before the pass is used (then an upper bound).
* bf16 autocast on CUDA; fp32 on CPU.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import gc
import math
import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from archbench.console.threads import AUTO, threads_for_timing
from archbench.measure.flops import backbone_flops, example_inputs
from backbones.registry import backbone_config, build

MODES = ("fwd", "fwdbwd")
COLUMNS = (
    "backbone", "family", "resolution", "tokens", "params", "gmacs",
    "fwd_ms", "fwdbwd_ms", "fwd_mem_mb", "fwdbwd_mem_mb", "threads", "error",
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pass(model: nn.Module, inputs: tuple, mode: str, device: torch.device) -> None:
    """One forward (``fwd``) or forward+backward (``fwdbwd``) pass, as the measurements define it."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    if mode == "fwd":
        model.eval()
        with torch.no_grad(), autocast:
            model(*inputs)
        return
    model.train()
    with autocast:
        out = model(*inputs)
    out.float().square().mean().backward()


def _timed(model: nn.Module, inputs: tuple, mode: str, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    run_pass(model, inputs, mode, device)
    _sync(device)
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _release_free_heap() -> None:
    """Hand glibc's cached free heap back to the kernel, so the next pass must grow the RSS again."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def cpu_peak_bytes(name: str, overrides: dict[str, Any], mode: str, batch: int, threads: int | None) -> int:
    """Peak resident-set growth of one pass after a warm-up; meant for a fresh process (see module doc)."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cpu")
    model = build(name, **overrides)
    inputs = example_inputs(model, batch)
    run_pass(model, inputs, mode, device)  # warm-up: lazily loaded kernels and thread pools are not the model's
    model.zero_grad(set_to_none=True)
    gc.collect()
    _release_free_heap()
    reset = _reset_peak_rss()
    before = _proc_status_kib("VmRSS")
    if before is None:  # no /proc: fall back to the kernel's own accounting of this process
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_pass(model, inputs, mode, device)
    peak = _proc_status_kib("VmHWM") if reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return max(peak - before, 0) * 1024


def _memory_probe(conn: Any, name: str, overrides: dict, mode: str, batch: int, threads: int | None) -> None:
    """Child-process body: send back the peak bytes, or the error as one line."""
    try:
        conn.send(("ok", cpu_peak_bytes(name, overrides, mode, batch, threads)))
    except BaseException as error:  # noqa: B036 - everything must reach the parent as a message
        conn.send(("error", _one_line(error)))
    finally:
        conn.close()


def _probe_context() -> Any:
    """Fresh processes forked from a server that has imported torch once (saves seconds per probe)."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["torch", "archbench.measure.scaling", "backbones"])
    return ctx


def _cpu_peak_in_subprocess(
    name: str, overrides: dict[str, Any], mode: str, batch: int, threads: int | None
) -> int:
    ctx = _probe_context()
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_memory_probe, args=(child, name, overrides, mode, batch, threads))
    process.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError:  # killed (e.g. by the OOM killer) before it could answer
        status, value = "error", "memory probe process died"
    process.join()
    if status != "ok":
        raise RuntimeError(f"memory probe for {name} ({mode}) failed: {value}")
    return int(value)


def _cuda_peak_bytes(model: nn.Module, inputs: tuple, mode: str, device: torch.device) -> int:
    model.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run_pass(model, inputs, mode, device)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    model.zero_grad(set_to_none=True)
    return peak


def measure_scaling(
    backbones: Sequence[str],
    resolutions: Sequence[int],
    *,
    device: str = "cpu",
    batch: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    threads: str | int | None = None,
    memory: bool = True,
    overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """One row per (backbone, resolution); see the module docstring for what each column means.  ``threads``:
    a count, ``auto`` (settled per resolution on one forward+backward of every backbone, so all backbones at a
    size run at the same count) or None (torch's)."""
    previous_threads = torch.get_num_threads()
    if threads is not None and threads != AUTO:
        torch.set_num_threads(int(threads))
    try:
        return _measure(backbones, resolutions, torch.device(device), batch, repeats, warmup, threads, memory,
                        dict(overrides or {}), log)
    finally:
        torch.set_num_threads(previous_threads)


def _measure(
    backbones: Sequence[str],
    resolutions: Sequence[int],
    dev: torch.device,
    batch: int,
    repeats: int,
    warmup: int,
    threads: str | int | None,
    memory: bool,
    overrides: dict[str, Any],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    rows = []
    for resolution in resolutions:
        config = {**overrides, "image_size": resolution}
        models, row_of = {}, {}
        for name in backbones:
            row = {column: None for column in COLUMNS}
            row.update(backbone=name, family=backbone_config(name)["family"], resolution=resolution)
            rows.append(row)
            row_of[name] = row
            try:
                counted = backbone_flops(name, **config)
                row.update(tokens=counted["tokens"], params=counted["params"], gmacs=counted["gmacs"])
                torch.manual_seed(0)
                model = build(name, **config).to(dev)
                models[name] = (model, example_inputs(model, batch, dev))
            except (RuntimeError, ValueError) as error:
                row["error"] = _one_line(error)
                log(f"  {name} @ {resolution}: {row['error']}")
        count = _settle_threads(models, row_of, threads, dev, log, resolution)
        times: dict[tuple[str, str], list[float]] = {(n, m): [] for n in models for m in MODES}
        for name in list(models):
            for _ in range(warmup):
                for mode in MODES:
                    _guarded(models, row_of, name, log, _timed, mode, dev)
        for rep in range(repeats):
            shift = rep % max(len(models), 1)
            order = list(models)[shift:] + list(models)[:shift]
            for name in order:
                for mode in MODES:
                    seconds = _guarded(models, row_of, name, log, _timed, mode, dev)
                    if seconds is not None:
                        times[(name, mode)].append(seconds)
        for name in list(models):
            row = row_of[name]
            for mode in MODES:
                if times[(name, mode)]:
                    row[f"{mode}_ms"] = 1e3 * statistics.median(times[(name, mode)]) / batch
                if memory and dev.type == "cuda":
                    peak = _guarded(models, row_of, name, log, _cuda_peak_bytes, mode, dev)
                    if peak is not None:
                        row[f"{mode}_mem_mb"] = peak / batch / 2**20
        models.clear()
        gc.collect()
        if memory and dev.type == "cpu":
            for name in backbones:
                row = row_of[name]
                if row["error"]:
                    continue
                for mode in MODES:
                    try:
                        peak = _cpu_peak_in_subprocess(name, config, mode, batch, count)
                    except RuntimeError as error:
                        row["error"] = _one_line(error)
                        continue
                    row[f"{mode}_mem_mb"] = peak / batch / 2**20
        for name in backbones:
            log(_progress_line(row_of[name]))
    return rows


def _settle_threads(models: dict, row_of: dict, threads: str | int | None, dev: torch.device,
                    log: Callable[[str], None], resolution: int) -> int:
    """The count every backbone at this resolution is timed at (``auto``: measured on all of them together, one
    forward+backward each, so the comparison is at one count), recorded in each row."""
    def probe() -> None:
        for name in list(models):
            _guarded(models, row_of, name, log, _timed, "fwdbwd", dev)

    if threads == AUTO:
        count = threads_for_timing(AUTO, probe, device=dev.type,
                                   announce=lambda line: log(f"  resolution {resolution}: {line}"))
    else:
        count = torch.get_num_threads()
    for name in models:
        row_of[name]["threads"] = count
    return count


def _guarded(models: dict, row_of: dict, name: str, log: Callable[[str], None], fn: Callable, *args: Any) -> Any:
    """``fn(model, inputs, *args)``; a failure (e.g. out of memory) drops that backbone at this size."""
    if name not in models:
        return None
    model, inputs = models[name]
    try:
        return fn(model, inputs, *args)
    except RuntimeError as error:  # includes torch.OutOfMemoryError
        row_of[name]["error"] = _one_line(error)
        log(f"  {name}: {row_of[name]['error']}")
        models.pop(name, None)
        return None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def _progress_line(row: dict[str, Any]) -> str:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return (
        f"  {row['backbone']} @ {row['resolution']}: tokens {fmt(row['tokens'], 'd')}, "
        f"fwd {fmt(row['fwd_ms'], '.1f')} ms, fwd+bwd {fmt(row['fwdbwd_ms'], '.1f')} ms, "
        f"mem {fmt(row['fwd_mem_mb'], '.0f')}/{fmt(row['fwdbwd_mem_mb'], '.0f')} MiB"
    )


def _crossing(xs: list[float], ratios: list[float]) -> tuple[str, float | None]:
    """Where log(ratio) first turns negative, interpolated linearly in log(tokens)."""
    if ratios[0] < 1:
        return "faster throughout", None
    for i in range(1, len(ratios)):
        if ratios[i] < 1:
            x0, x1 = math.log(xs[i - 1]), math.log(xs[i])
            r0, r1 = math.log(ratios[i - 1]), math.log(ratios[i])
            return "crosses", math.exp(x0 + (x1 - x0) * r0 / (r0 - r1))
    return "none within range", None


def crossovers(rows: list[dict[str, Any]], mode: str = "fwd") -> list[dict[str, Any]]:
    """For each DiS backbone against each other backbone: the token count where DiS becomes faster.

    Both are compared at the same resolution (same image, same patch grid up to extra tokens);
    the x-axis is DiS's token count.  ``status`` is ``crosses``, ``faster throughout`` or
    ``none within range``; ``ratio_at_max`` is DiS time / other time at the largest resolution.
    """
    column = f"{mode}_ms"
    by_backbone: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        if row.get(column) is not None:
            by_backbone.setdefault(row["backbone"], {})[row["resolution"]] = row
    found = []
    for dis in (name for name, rs in by_backbone.items() if next(iter(rs.values()))["family"] == "dis"):
        for other in (name for name, rs in by_backbone.items() if next(iter(rs.values()))["family"] != "dis"):
            common = sorted(set(by_backbone[dis]) & set(by_backbone[other]))
            if not common:
                continue
            xs = [by_backbone[dis][r]["tokens"] for r in common]
            ratios = [by_backbone[dis][r][column] / by_backbone[other][r][column] for r in common]
            status, tokens = _crossing(xs, ratios)
            found.append(
                {"mode": mode, "dis": dis, "other": other, "status": status, "tokens": tokens,
                 "ratio_at_max": ratios[-1], "max_tokens": xs[-1]}
            )
    return found


def describe_crossover(item: dict[str, Any]) -> str:
    head = f"{item['mode']}: {item['dis']} vs {item['other']}: "
    if item["status"] == "crosses":
        return head + f"DiS becomes faster at ~{item['tokens']:.0f} tokens"
    if item["status"] == "faster throughout":
        return head + f"DiS is faster at every measured size (time ratio {item['ratio_at_max']:.2f} at the largest)"
    return head + (
        f"no crossover within range (DiS/other time ratio {item['ratio_at_max']:.2f} at {item['max_tokens']} tokens)"
    )


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS} for row in rows)


def plot(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Time and peak memory per image against token count, log-log, one colour per backbone."""
    try:
        import matplotlib
    except ImportError as error:
        raise RuntimeError("the scaling plot needs matplotlib: pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(dict.fromkeys(row["backbone"] for row in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        mine = sorted((r for r in rows if r["backbone"] == name and r["tokens"]), key=lambda r: r["tokens"])
        for mode, style in (("fwd", "-"), ("fwdbwd", "--")):
            label = f"{name} {'fwd' if mode == 'fwd' else 'fwd+bwd'}"
            for ax, column in zip(axes, (f"{mode}_ms", f"{mode}_mem_mb"), strict=True):
                points = [(r["tokens"], r[column]) for r in mine if r[column]]
                if points:
                    ax.plot(*zip(*points, strict=True), style, marker="o", color=colours[i % len(colours)], label=label)
    for ax, ylabel in zip(axes, ("time per image (ms)", "peak memory per image (MiB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
