"""``summary.md``: the final table per arm and a ranking that says plainly what is within noise.

Intervals are Student-t 95% intervals over seeds (mean +- t * sd / sqrt(n)); two arms differ only when
Welch's 95% interval for the difference of their mean FDs excludes zero.  The ranked score (the metrics
table's headline, FD) and the other metric columns come from :data:`archbench.evaluation.metrics.METRICS`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from archbench.console.files import write_text_atomic
from archbench.evaluation.metrics import headline, summary_metrics
from archbench.study.stats import mean_interval, welch_interval

TINY_NOTE = (
    "Tiny-scale results (CPU, 16x16 Fashion-MNIST, a few hundred steps) show the mechanics and early learning "
    "speed of each backbone, not the papers' claims at scale."
)


def final_rows(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each label's rows at its last evaluated step (the end of training), one per seed."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    out = {}
    for label, group in by_label.items():
        last = max(r["step"] for r in group)
        out[label] = sorted((r for r in group if r["step"] == last), key=lambda r: r["seed"])
    return out


def _mean(values: list[Any]) -> float:
    numbers = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(numbers) / len(numbers) if numbers else math.nan


def arm_summary(group: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm's final rows (one per seed) summarised: the headline's mean, interval and per-seed values (as
    ``fd_mean``, ``fd_half``, ``fds``), and the mean of every other summary metric under its name."""
    fds = [r[headline().column] for r in group]
    mean, half = mean_interval(fds)
    first = group[0]
    return {
        "label": first["label"], "backbone": first["backbone"], "params": first["params"], "gmacs": first["gmacs"],
        "steps": first["step"], "train_pflops": first["train_gflops"] / 1e6,
        "wall_s": _mean([r["wall_s"] for r in group]),
        "fd_mean": mean, "fd_half": half, "seeds": len(group), "fds": fds,
        **{m.name: _mean([r.get(m.column) for r in group]) for m in summary_metrics()},
        "sweep": {k[len("sweep."):]: v for k, v in first.items() if k.startswith("sweep.")},
        "score_name": first["score_name"],
    }


def _fmt(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None or math.isnan(value) else f"{value:{fmt}}"


def _interval(s: dict[str, Any]) -> str:
    fmt = headline().table_fmt
    return f"{s['fd_mean']:{fmt}}" if math.isnan(s["fd_half"]) else f"{s['fd_mean']:{fmt}} +- {s['fd_half']:{fmt}}"


def ranking(summaries: list[dict[str, Any]]) -> list[str]:
    """Sentences ranking the arms by the headline's mean (lower FD is better), each neighbour pair tested with
    Welch's interval for the difference of their means."""
    lead = headline()
    fmt = lead.table_fmt
    ordered = sorted(summaries, key=lambda s: s["fd_mean"], reverse=not lead.lower_is_better)
    lines = [f"{i + 1}. **{s['label']}**: {_interval(s)}" for i, s in enumerate(ordered)]
    for better, worse in zip(ordered, ordered[1:], strict=False):
        # the difference is counted in the better direction, so a real gap is always positive
        first, second = (better, worse) if lead.lower_is_better else (worse, better)
        diff, low, high = welch_interval(first["fds"], second["fds"])
        what = f"{lead.label} difference {diff:{fmt}}, 95% Welch interval [{low:{fmt}}, {high:{fmt}}]"
        if math.isnan(low):
            lines.append(f"- {better['label']} vs {worse['label']}: {diff:{fmt}} apart, but with one seed there is "
                         "no interval: not tested (add seeds)")
        elif low > 0:
            lines.append(f"- {better['label']} is better than {worse['label']}: {what} excludes 0")
        else:
            lines.append(f"- {better['label']} and {worse['label']} are **within noise**: {what} includes 0")
    return lines


def render(spec: dict[str, Any], rows: list[dict[str, Any]], machine: str) -> str:
    """The whole summary.md: the settings, a row per arm (the headline's interval, then every summary metric of
    the metrics table) and the ranking at each sweep point."""
    finals = final_rows(rows)
    summaries = [arm_summary(group) for group in finals.values()]
    lead, others = headline(), summary_metrics()
    score = summaries[0]["score_name"] if summaries else lead.label
    budget = spec["budget"]
    ev = spec["eval"]
    lines = [
        f"# Study `{spec['name']}`",
        "",
        f"Recipe `{spec['recipe']}`, budget matched by **{budget['match']}** ({budget['steps']} steps of "
        f"`{budget['reference'] or spec['arms'][0]['name']}`), seeds {spec['seeds']}; {score} of "
        f"{ev['num_samples']} EMA samples ({ev['sampler']}, {ev['steps']} steps, cfg {ev['cfg_scale']}) against the "
        f"{ev['ref_split']} split. Machine: {machine}.",
        "",
        "| arm | params | GMACs | steps | train PFLOPs | wall-clock s | "
        f"{score} (mean +- 95% CI) | {''.join(f'{m.heading} | ' for m in others)}seeds |",
        "|---|" + "---:|" * (7 + len(others)),
    ]
    for s in sorted(summaries, key=lambda s: s["label"]):
        lines.append(
            f"| {s['label']} | {s['params']:,} | {s['gmacs']:.4f} | {s['steps']} | {s['train_pflops']:.4g} | "
            f"{_fmt(s['wall_s'], '.1f')} | {_interval(s)} | "
            f"{''.join(f'{_fmt(s[m.name], m.table_fmt)} | ' for m in others)}{s['seeds']} |"
        )
    lines += ["", "Training FLOPs = 3 x forward FLOPs x batch x steps (forward FLOPs = 2 x MACs, from "
              "archbench.measure.flops). Intervals: Student-t 95% over seeds.", ""]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        groups[", ".join(f"{k}={v}" for k, v in s["sweep"].items())].append(s)
    for point, members in sorted(groups.items()):
        lines.append(f"## Ranking{f' at {point}' if point else ''} ({'lower' if lead.lower_is_better else 'higher'} "
                     f"{score} is better)")
        lines.append("")
        lines += ranking(members)
        lines.append("")
    lines += [TINY_NOTE if "cpu" in machine.lower() or spec["recipe"] in ("ci_fid", "default") else "", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_summary(spec: dict[str, Any], rows: list[dict[str, Any]], path: str | Path, machine: str) -> Path:
    return write_text_atomic(path, render(spec, rows, machine))
