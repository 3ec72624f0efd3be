"""Training-step time, images/s and peak memory per backbone (``python -m archbench.bench step``, see
:mod:`archbench.commands.bench`).

Memory (``step MiB``) is the peak growth during the timed steps over the steady state after warm-up
(weights, optimiser state and allocator caches excluded): what one step's activations and gradients take.

One step is what the training loop does, through the loop's own loss path (per-example draws, then the
objective's loss; DDPM with learned sigma unless ``diffusion`` names another objective), the backward pass
and an AdamW update, under the requested precision, with ``torch.compile`` and activation
checkpointing on request.  Every (backbone, round) runs in a fresh spawned process (nothing leaks between
measurements), rounds are interleaved over the backbones (a busy machine slows them all alike), and the
ratios to the first backbone come from the medians of the same run.
"""
from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from archbench.console.args import arg
from archbench.console.errors import UsageError
from archbench.console.files import write_text_atomic
from archbench.console.threads import parse_threads, threads_for_timing
from archbench.measure.bench import PeakMemory
from backbones.registry import list_backbones


def _tiny_backbones() -> tuple[str, ...]:
    return tuple(list_backbones(tag="tiny"))


@dataclass(frozen=True, kw_only=True)
class StepConfig:
    """One ``bench step`` run; its fields are the command's keys. Picklable, so it crosses into the spawned
    measuring process."""

    backbones: tuple[str, ...] = arg(default_factory=_tiny_backbones, shown="tag tiny",
                                     doc="registry names, comma-separated (default: the tiny member of each family)")
    device: str = arg("cpu", doc="cpu or cuda")
    precision: Literal["fp32", "bf16"] = arg("fp32", doc="bf16: autocast the step to bfloat16")
    diffusion: str = arg("ddpm", doc="the objective whose loss the step computes")
    compile: bool = arg(False, doc="run the step through torch.compile")
    grad_checkpoint: bool = arg(False, doc="recompute every block in the backward pass")
    batch: int = arg(32, minimum=1, doc="images per step")
    image_size: int = arg(16, minimum=1, doc="input side in pixels")
    in_channels: int = arg(1, minimum=1, doc="input channels")
    num_classes: int = arg(10, minimum=0, doc="classes of the conditional model (0: unconditional)")
    threads: str = arg("auto", doc="CPU intra-op threads: auto (per backbone, the fastest of 1, 2, 4, ...; one "
                                   "thread with timer=cpu, the CPU default) or N")
    timed_steps: int = arg(5, minimum=1, aliases=("steps",),
                           doc="timed training steps per round, median (not sampling steps)")
    warmup: int = arg(2, minimum=0, doc="untimed steps first")
    rounds: int = arg(3, minimum=1, doc="interleaved rounds over the backbones, each in a fresh process")
    timer: Literal["cpu", "wall"] | None = arg(None, shown="cpu on CPU, wall on CUDA",
                                               doc="cpu: process CPU time, the steadier clock on a shared CPU")
    out: str = arg("", doc="also write the table as JSON there, next to a bar plot")

    def check(self) -> StepConfig:
        """Settings the types cannot check (registered names, the objective, a CUDA device); UsageError if bad."""
        known = set(list_backbones())
        unknown = [b for b in self.backbones if b not in known]
        if not self.backbones or unknown:
            raise UsageError(f"unknown backbones {unknown}; python -m archbench.zoo lists the registered names")
        from archbench.diffusion import OBJECTIVES

        if self.diffusion not in OBJECTIVES:
            raise UsageError(f"diffusion must be one of {', '.join(OBJECTIVES)}, got {self.diffusion!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("device=cuda but torch sees no CUDA device")
        if self.device.startswith("cuda") and self.timer == "cpu":
            raise UsageError("timer=cpu measures host CPU time; use timer=wall on CUDA")
        try:
            parse_threads(self.threads)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return self


def _training_step(name: str, cfg: StepConfig):
    """Model, objective, optimiser and one closure doing a full training step on fixed random data."""
    from archbench.diffusion import create_diffusion
    from archbench.training.noise import example_losses
    from backbones.registry import build

    torch.manual_seed(0)
    device = torch.device(cfg.device)
    model = build(name, image_size=cfg.image_size, in_channels=cfg.in_channels, num_classes=cfg.num_classes)
    model = model.to(device)
    if cfg.grad_checkpoint:
        model.set_grad_checkpointing(True)
    forward = torch.compile(model) if cfg.compile else model
    objective = create_diffusion(cfg.diffusion, learn_sigma=bool(getattr(model, "learn_sigma", True)))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    x = torch.randn(cfg.batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    y = torch.randint(0, max(1, cfg.num_classes), (cfg.batch,), device=device)
    kwargs = {"y": y} if cfg.num_classes else {}
    indices = torch.arange(cfg.batch)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    counter = iter(range(1 << 62))

    def step() -> float:
        # the Trainer's own loss path: per-example draws, then the objective's losses
        with autocast:
            losses = example_losses(objective, forward, x, indices, seed=0, step=next(counter), model_kwargs=kwargs)
            loss = losses["loss"].float().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    return step


def measure_step(name: str, cfg: StepConfig) -> dict[str, float]:
    """Runs in its own process: median step time over ``cfg.timed_steps`` after ``cfg.warmup`` steps, and peak
    memory, at the thread count ``cfg.threads`` gives (``auto`` settles it on this backbone's steps)."""
    cuda = cfg.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    timer = cfg.timer or ("wall" if cuda else "cpu")
    clock = time.perf_counter if timer == "wall" else time.process_time
    step = _training_step(name, cfg)
    threads = threads_for_timing(cfg.threads, step, timer=timer, device=cfg.device)
    started = time.perf_counter()
    for _ in range(max(1, cfg.warmup)):
        step()
    sync()
    warmup_s = time.perf_counter() - started
    # From here: growth over the steady state (weights, optimiser state, caches), i.e. what a step's
    # activations and gradients need, the part activation checkpointing reduces.
    memory = PeakMemory(cfg.device)
    times = []
    for _ in range(cfg.timed_steps):
        t0 = clock()
        loss = step()
        sync()
        times.append(clock() - t0)
    if loss != loss:
        raise RuntimeError(f"bench step: {name} produced a non-finite loss")
    return {"step_s": statistics.median(times), "peak_bytes": memory.peak(), "warmup_s": warmup_s,
            "threads": threads}


def run_step_bench(cfg: StepConfig) -> list[dict[str, Any]]:
    """Interleaved rounds over the backbones; one row per backbone with medians and ratios to the first."""
    spawn = multiprocessing.get_context("spawn")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in cfg.backbones}
    for _ in range(cfg.rounds):
        for name in cfg.backbones:
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                runs[name].append(pool.submit(measure_step, name, cfg).result())
    rows = []
    for name, results in runs.items():
        step_s = statistics.median(r["step_s"] for r in results)
        rows.append({
            "backbone": name,
            "step_ms": step_s * 1e3,
            "img_per_s": cfg.batch / step_s,
            "peak_mib": statistics.median(r["peak_bytes"] for r in results) / 2**20,
            "warmup_s": statistics.median(r["warmup_s"] for r in results),
            "threads": statistics.median(r["threads"] for r in results),
        })
    base = rows[0]
    for row in rows:
        row["time_ratio"] = row["step_ms"] / base["step_ms"]
        row["memory_ratio"] = row["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else float("nan")
    return rows


def format_rows(cfg: StepConfig, rows: list[dict[str, Any]]) -> str:
    timer = cfg.timer or ("wall" if cfg.device.startswith("cuda") else "cpu")
    lines = [
        f"training step: batch={cfg.batch} image={cfg.in_channels}x{cfg.image_size}x{cfg.image_size} "
        f"classes={cfg.num_classes} device={cfg.device} precision={cfg.precision} compile={cfg.compile} "
        f"grad_checkpoint={cfg.grad_checkpoint} threads={cfg.threads} timer={timer} "
        f"(median of {cfg.timed_steps} steps after {cfg.warmup} warm-up, then of {cfg.rounds} interleaved rounds)",
        f"{'backbone':>16} {'step ms':>9} {'img/s':>8} {'step MiB':>9} {'time/first':>11} {'mem/first':>10} "
        f"{'threads':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r['backbone']:>16} {r['step_ms']:>9.1f} {r['img_per_s']:>8.1f} {r['peak_mib']:>9.1f} "
            f"{r['time_ratio']:>10.2f}x {r['memory_ratio']:>9.2f}x {r['threads']:>8g}"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [r["backbone"] for r in rows]
    axes[0].bar(names, [r["step_ms"] for r in rows])
    axes[0].set_ylabel("training step (ms)")
    axes[1].bar(names, [r["peak_mib"] for r in rows])
    axes[1].set_ylabel("peak memory (MiB)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def save_results(cfg: StepConfig, rows: list[dict[str, Any]], out: str | Path) -> Path:
    """The settings and rows as JSON at ``out`` (atomically) and a bar plot beside it (``.png``)."""
    out = Path(out)
    if out.suffix != ".json":  # a table is JSON: say so in its name, and keep the plot beside it distinct
        out = out.with_name(out.name + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {**asdict(cfg), "timer": cfg.timer or ("wall" if cfg.device.startswith("cuda") else "cpu")}
    write_text_atomic(out, json.dumps({"config": settings, "rows": rows}, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"), format_rows(cfg, rows).splitlines()[0])
    return out
