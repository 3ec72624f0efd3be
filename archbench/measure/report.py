"""Reports on registered backbones, all counted and measured the same way (``python -m archbench.report``,
see :mod:`archbench.commands.report`): FLOP tables, the DiT paper reproduction, torchinfo summaries, scaling
sweeps and which scan kernel ``auto`` runs.

Build overrides (``image_size``, ``in_channels``, ``num_classes``, ``learn_sigma``, ...) must be accepted by
every selected backbone (:func:`check_overrides`), so one report never mixes settings across backbones.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from archbench.console.errors import UsageError
from archbench.console.machine import load_1m
from archbench.console.progress import advance
from archbench.console.progress import progress as progress_bar
from backbones.registry import backbone_config, get_spec, list_backbones

FORMATS = ("md", "csv", "json")
PAPER_SETTING = {"image_size": 32, "in_channels": 4, "num_classes": 1000, "learn_sigma": True}
# DiT paper (Peebles & Xie, 2023), Table 4 / Fig. 2: Gflops in fvcore's MAC convention; exact params where published.
DIT_PAPER = {
    "dit_s2": (6.06, 32_963_360),
    "dit_b2": (23.01, None),
    "dit_l2": (80.71, None),
    "dit_xl2": (118.64, 675_129_632),
    "dit_xl4": (29.05, None),
    "dit_xl8": (7.39, None),
}
DIS_FAMILY = [f"dis_{size}{patch}" for size in "sbmlh" for patch in (2, 4)]

CONVENTION_NOTE = (
    "Counting: fvcore's convention, one multiply-add = 1 MAC, forward pass, one image; GFLOPs = 2 x GMACs. "
    "Counted: linear/matmul/bmm/einsum/conv, scaled_dot_product_attention (QK^T + AV), the selective scan "
    "(4N+1 MACs per channel and token), norms (as fvcore counts LayerNorm; RMSNorm alike). "
    "Not counted (fvcore convention): elementwise ops - activations, residual adds, adaLN modulation, softmax, "
    "the scan's D skip and silu(z) gate."
)
THOP_NOTE = (
    "thop x2 (the DiS repository's method): thop only sees nn.Linear/nn.Conv modules; the official DiS calls "
    "every Mamba projection and conv through raw weights and the scan is a function call, so thop sees the "
    "embeddings, long-skip linears and head only. The column estimates it from our trace (Linear/Conv MACs "
    "outside the Mamba mixers) x 2."
)


def resolve_backbones(spec: str) -> list[str]:
    """Comma-separated names or fnmatch patterns -> registered names, in the order given."""
    names: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if any(ch in item for ch in "*?["):
            matched = list_backbones(item)
            if not matched:
                raise UsageError(f"no registered backbone matches {item!r}")
        else:
            try:
                get_spec(item)
            except KeyError as error:
                raise UsageError(error.args[0]) from None
            matched = [item]
        names += [name for name in matched if name not in names]
    if not names:
        raise UsageError("no backbones given")
    return names


def build_keys(names: Sequence[str]) -> set[str]:
    """Build arguments every one of ``names`` accepts."""
    keys = [set(backbone_config(name)) - {"name", "family"} for name in names]
    return set.intersection(*keys) if keys else set()


def check_overrides(
    names: Sequence[str], overrides: dict[str, Any], own_keys: Sequence[str], exclude: dict[str, str] | None = None
) -> None:
    """Every override must be a build argument all of ``names`` accept; otherwise a UsageError naming the
    command's own keys (``own_keys``) and the build overrides that would work.

    ``exclude`` maps build keys the report sets itself to a hint on what to use instead.
    """
    exclude = exclude or {}
    allowed = build_keys(names) - set(exclude)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        fixed = [k for k in unknown if k in exclude]
        partial = [k for k in unknown if k not in exclude and any(k in build_keys([n]) for n in names)]
        why = f" ({', '.join(partial)}: not accepted by every selected backbone)" if partial else ""
        why += "".join(f" ({k}: {exclude[k]})" for k in fixed)
        raise UsageError(
            f"unknown key(s) {', '.join(unknown)}{why}; valid keys: "
            f"{', '.join(own_keys)}; build overrides: {', '.join(sorted(allowed)) or '(none)'}"
        )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k} x{v}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def format_rows(rows: list[dict[str, Any]], columns: Sequence[str], fmt: str, extra: dict | None = None) -> str:
    """Render rows as a markdown table, CSV (the given columns) or JSON (``{"rows": [...]}``, every field)."""
    if fmt == "json":
        return json.dumps({"rows": rows, **(extra or {})}, indent=2, default=str)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
        return buffer.getvalue().rstrip("\n")
    if fmt != "md":
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(k)) for k in columns) + " |" for row in rows]
    return "\n".join(lines)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict):
        return ";".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else value


FLOP_COLUMNS = ("name", "family", "params", "tokens", "gmacs", "gflops", "unsupported")


def flops_table(names: Sequence[str], overrides: dict[str, Any], fmt: str = "md", progress: bool = False) -> str:
    """FLOPs and parameters of each backbone at the given build overrides, as a table in ``fmt``; ``progress``:
    one bar over the backbones on stderr."""
    check_builds(names, overrides)
    return format_rows(count_rows(names, overrides, progress), FLOP_COLUMNS, fmt)


def count_rows(names: Sequence[str], overrides: dict[str, Any], progress: bool = False) -> list[dict[str, Any]]:
    """:func:`archbench.measure.flops.backbone_flops` of each backbone, in order; ``progress``: one bar over them,
    naming the one being counted."""
    from archbench.measure.flops import backbone_flops

    def doing(i: int) -> str:
        return f"counting FLOPs of {names[i]} ({i + 1}/{len(names)})"

    rows = []
    with progress_bar(len(names), doing(0) if names else "counting FLOPs", progress, unit="backbone") as bar:
        for i, name in enumerate(names):
            rows.append(_checked(backbone_flops, name, **overrides))
            advance(bar, desc=doing(i + 1) if i + 1 < len(names) else f"counted FLOPs of {len(names)} backbones")
    return rows


def _meta_build(name: str, **overrides: Any) -> None:
    import torch

    from backbones.registry import build

    try:
        with torch.device("meta"):
            build(name, **overrides)
    except (NotImplementedError, RuntimeError):  # a constructor that needs real tensors: its real build will tell
        pass


def check_builds(names: Sequence[str], overrides: dict[str, Any]) -> None:
    """Build every backbone on the meta device (no memory, milliseconds) so that a setting a constructor refuses
    (an image size that is not a multiple of the patch) fails in one line before any bar or measurement."""
    for name in names:
        _checked(_meta_build, name, **overrides)


def kernels_table() -> str:
    """What ``scan="auto"`` / ``impl="auto"`` picks on each device of this machine, and what is installed."""
    import torch

    from backbones.ssm import mamba_ssm_available, resolve_impl, resolve_ssd_impl, triton_available
    from backbones.ssm.ssd import ssd_kernel_available

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    lines = [
        "| scan | " + " | ".join(f"auto on {d}" for d in devices) + " |",
        "|---|" + "---|" * len(devices),
        "| selective scan (Mamba-1) | " + " | ".join(resolve_impl("auto", d) for d in devices) + " |",
        "| SSD scan (Mamba-2) | " + " | ".join(resolve_ssd_impl("auto", d) for d in devices) + " |",
        "",
        f"mamba_ssm selective-scan kernel importable: {mamba_ssm_available()}; SSD kernel: {ssd_kernel_available()}; "
        f"triton importable: {triton_available()}; CUDA device: {torch.cuda.is_available()}",
    ]
    if not torch.cuda.is_available():
        lines.append("(on a CUDA machine auto picks mamba_ssm when it imports, else triton, else fast)")
    return "\n".join(lines)


def _checked(fn: Any, name: str, **overrides: Any) -> Any:
    """Turn a backbone's own validation error (bad image size, ...) into a one-line UsageError."""
    try:
        return fn(name, **overrides)
    except (ValueError, TypeError) as error:
        raise UsageError(f"{name}: {error}") from None


def paper_rows(progress: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """DiT rows (ours vs the paper) and DiS family rows, all at the DiT paper's setting; ``progress``: one bar
    over the backbones counted."""
    counted = {row["name"]: row for row in count_rows([*DIT_PAPER, *DIS_FAMILY], PAPER_SETTING, progress)}
    dit = []
    for name, (paper_gmacs, paper_params) in DIT_PAPER.items():
        row = counted[name]
        dit.append(
            {"table": "dit", "model": get_spec(name).description, "name": name, "params": row["params"],
             "paper_params": paper_params, "gmacs": row["gmacs"], "paper_gmacs": paper_gmacs,
             "diff_pct": 100 * (row["gmacs"] / paper_gmacs - 1), "gflops": row["gflops"], "tokens": row["tokens"]}
        )
    dis = []
    for name in DIS_FAMILY:
        row = counted[name]
        dis.append(
            {"table": "dis", "model": get_spec(name).description, "name": name, "params": row["params"],
             "tokens": row["tokens"], "gmacs": row["gmacs"], "gflops": row["gflops"],
             "scan_gmacs": row["by_operator"].get("selective_scan", 0) / 1e9,
             "thop_x2_gflops": row["thop_x2_gflops"]}
        )
    return dit, dis


DIT_COLUMNS = ("model", "params", "paper_params", "gmacs", "paper_gmacs", "diff_pct", "gflops")
DIS_COLUMNS = ("model", "params", "tokens", "gmacs", "gflops", "scan_gmacs", "thop_x2_gflops")


def paper_report(fmt: str, progress: bool = False) -> str:
    dit, dis = paper_rows(progress)
    notes = [CONVENTION_NOTE, "DiT paper 'Gflops' are fvcore MACs: compare them with gmacs.", THOP_NOTE]
    pairs = _pairing_note(dit, dis)
    if pairs:
        notes.append(pairs)
    if fmt == "json":
        return format_rows(dit + dis, (), "json", {"notes": notes})
    if fmt == "csv":
        columns = list(dict.fromkeys(("table", "name", *DIT_COLUMNS, *DIS_COLUMNS)))
        return format_rows(dit + dis, columns, "csv")
    title = "32x32x4 latents (256x256 images), 1000 classes, learned sigma"
    return "\n\n".join(
        [
            f"DiT, ours vs paper ({title})",
            format_rows(dit, DIT_COLUMNS, "md"),
            f"DiS family, ours ({title})",
            format_rows(dis, DIS_COLUMNS, "md"),
            "\n".join(f"- {note}" for note in notes),
        ]
    )


def _pairing_note(dit: list[dict[str, Any]], dis: list[dict[str, Any]]) -> str:
    by_name = {row["name"]: row for row in dit + dis}
    if "dis_h2" not in by_name or "dit_xl2" not in by_name:
        return ""
    h2, xl2 = by_name["dis_h2"], by_name["dit_xl2"]
    return (
        f"One convention: DiS-H/2 {h2['gmacs']:.1f} GMACs = {h2['gmacs'] / xl2['gmacs']:.2f} x DiT-XL/2 "
        f"({xl2['gmacs']:.1f}); thop x2 would print {h2['thop_x2_gflops']:.1f} 'Gflops' for DiS-H/2, "
        f"a number not comparable with DiT's {xl2['paper_gmacs']}."
    )


def summary_table(name: str, overrides: dict[str, Any], depth: int = 3, batch: int = 1, progress: bool = False) -> str:
    """torchinfo's layer table of one backbone, then archbench's own FLOP count (torchinfo's is not one);
    ``progress``: one bar over the three phases (build, torchinfo's pass, the FLOP count) on stderr."""
    import torchinfo

    from archbench.measure.flops import backbone_flops, example_inputs
    from backbones.registry import build

    check_builds([name], overrides)
    with progress_bar(3, f"summary of {name}: building it", progress, unit="phase") as bar:
        model = _checked(build, name, **overrides).eval()
        x, t, y = example_inputs(model, batch)
        advance(bar, desc=f"summary of {name}: torchinfo's pass")
        stats = torchinfo.summary(
            model,
            input_data=[x, t] if y is None else [x, t, y],
            depth=depth,
            col_names=("output_size", "num_params", "mult_adds"),
            verbose=0,
            device="cpu",
        )
        advance(bar, desc=f"summary of {name}: counting FLOPs")
        counted = backbone_flops(name, **overrides)
        advance(bar, desc=f"summary of {name}")
    return "\n".join(
        [
            str(stats),
            "note: torchinfo's Mult-Adds are not a FLOP count: like thop it only sees nn.Module layers (no "
            "scaled_dot_product_attention, no selective scan), and it prices a Linear applied to a (B, L, D) "
            "token sequence as if L were 1. archbench's count (as `report flops`):",
            f"{name}: {counted['gmacs']:.3f} GMACs = {counted['gflops']:.3f} GFLOPs per image; by operator (GMACs): "
            + ", ".join(f"{op} {macs / 1e9:.4f}" for op, macs in counted["by_operator"].items()),
        ]
    )


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


SCALING_COLUMNS = (
    "backbone", "resolution", "tokens", "params", "gmacs", "fwd_ms", "fwdbwd_ms", "fwd_mem_mb", "fwdbwd_mem_mb",
    "threads", "error",
)


def scaling_report(
    names: Sequence[str],
    resolutions: Sequence[int],
    overrides: dict[str, Any],
    out: str | Path,
    device: str = "cpu",
    memory: bool = True,
    options: dict[str, int | str] | None = None,
    log: Callable[[str], None] = _stderr_log,
) -> str:
    """Time and memory per image over input sizes (``options``: batch, repeats, warmup, threads), written to
    ``out``/scaling.csv, crossover.csv and scaling.png; returns the table and the crossovers as text."""
    import torch

    from archbench.measure import scaling

    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise UsageError(f"device must be cpu or cuda (with a GPU present), got {device!r}")
    options = dict(options or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:  # fail on a bad override before any measurement, not halfway through
        _checked(backbone_config, name, **overrides)
    log(_scaling_header(device, options))
    rows = scaling.measure_scaling(
        names, list(resolutions), device=device, memory=memory, overrides=overrides, log=log, **options
    )
    scaling.write_csv(rows, out / "scaling.csv")
    found = [item for mode in scaling.MODES for item in scaling.crossovers(rows, mode)]
    _write_crossovers(found, out / "crossover.csv")
    scaling.plot(rows, out / "scaling.png", title=_scaling_header(device, options))
    lines = [format_rows(rows, SCALING_COLUMNS, "md"), ""]
    lines += ["Crossover (time per image, DiS vs each other backbone):"]
    lines += [f"- {scaling.describe_crossover(item)}" for item in found] or ["- no DiS/other pair measured"]
    lines += ["", f"wrote {out / 'scaling.csv'}, {out / 'crossover.csv'}, {out / 'scaling.png'}"]
    return "\n".join(lines)


def _write_crossovers(found: list[dict[str, Any]], path: Path) -> None:
    columns = ("mode", "dis", "other", "status", "tokens", "ratio_at_max", "max_tokens")
    path.write_text(format_rows(found, columns, "csv") + "\n")


def _scaling_header(device: str, options: dict[str, int | str]) -> str:
    import torch

    threads = options.get("threads") or torch.get_num_threads()
    threads_text = "threads=auto (per size: see the threads column)" if threads == "auto" else f"{threads} threads"
    load = load_1m()
    return (
        f"scaling on {device} (torch {torch.__version__}, {threads_text}, {os.cpu_count()} CPUs, load "
        f"{'n/a' if load is None else f'{load:.1f}'}); "
        f"batch {options.get('batch', 1)}, median of {options.get('repeats', 5)} after {options.get('warmup', 1)} "
        f"warm-up; {'bf16 autocast' if device == 'cuda' else 'fp32'}"
    )
