"""``summary.md``: the final table per arm and rankings that say plainly what is within noise.

Intervals are Student-t 95% intervals over seeds (mean +- t * sd / sqrt(n)); two arms differ only when
Welch's 95% interval for the difference of their mean FDs excludes zero.  The ranked score (the metrics
table's headline, FD) and the other metric columns come from :data:`archbench.evaluation.metrics.METRICS`.
Each sweep point is ranked three times: at the end of training, at equal training FLOPs and at equal wall-clock
(:mod:`archbench.study.readings`), and arms whose conditional accuracy is not yet above chance are in no ranking.
Where a classifier scored the samples, the end of training is also ranked by conditional accuracy, read the same
way (Welch's interval over seeds): FD can tie while the arms condition differently.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from archbench.console.files import write_text_atomic
from archbench.evaluation.metrics import METRICS, Metric, headline, summary_metrics
from archbench.study.readings import (
    INTERPOLATION,
    SIZE_TOLERANCE,
    Learning,
    chance_level,
    learning,
    number,
    read_at_budget,
    size_matched,
    sweep_point,
)
from archbench.study.schema import StudySpec
from archbench.study.stats import mean_interval, welch_interval

TINY_NOTE = (
    "Tiny-scale results (CPU, 16x16 Fashion-MNIST, models of 0.05-1.4M parameters trained for minutes) answer "
    "what these backbones do at this scale; the papers' claims are about models 100-1000x larger trained for days."
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
        "label": first["label"], "arm": first.get("arm", first["label"]), "backbone": first["backbone"],
        "params": first["params"], "gmacs": first["gmacs"],
        "steps": first["step"], "train_pflops": first["train_gflops"] / 1e6,
        "wall_s": _mean([r["wall_s"] for r in group]),
        "fd_mean": mean, "fd_half": half, "seeds": len(group), "fds": fds,
        **{m.name: _mean([r.get(m.column) for r in group]) for m in summary_metrics()},
        "sweep": {k[len("sweep."):]: v for k, v in first.items() if k.startswith("sweep.")},
        "score_name": first["score_name"],
    }


def pretraining_arms(spec: StudySpec) -> set[str]:
    """Arms that another arm starts from (``init_from``): their runs are a stage of that arm's training, not a
    contender (and in a transfer study they are scored at another resolution)."""
    return {arm.init_from for arm in spec.arms if arm.init_from}


def _has_value(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _fmt(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None or math.isnan(value) else f"{value:{fmt}}"


def _format_interval(mean: float, half: float, fmt: str | None = None) -> str:
    fmt = fmt or headline().table_fmt
    return f"{mean:{fmt}}" if math.isnan(half) else f"{mean:{fmt}} +- {half:{fmt}}"


def _interval(s: dict[str, Any]) -> str:
    return _format_interval(s["fd_mean"], s["fd_half"])


ACCURACY = METRICS["cond_accuracy"]


def ranking(values: dict[str, list[float]], metric: Metric | None = None) -> list[str]:
    """Sentences ranking the arms by ``metric``'s mean over seeds (default the headline: lower FD is better), each
    neighbour pair tested with Welch's interval for the difference of their means; ``values`` is label -> per-seed
    scores, so the final scores and the readings at a common budget are ranked alike."""
    lead = metric or headline()
    fmt = lead.table_fmt or lead.fmt
    means = {label: mean_interval(scores) for label, scores in values.items()}
    ordered = sorted(values, key=lambda label: means[label][0], reverse=not lead.lower_is_better)
    lines = [f"{i + 1}. **{label}**: {_format_interval(*means[label], fmt)}" for i, label in enumerate(ordered)]
    for better, worse in zip(ordered, ordered[1:], strict=False):
        # the difference is counted in the better direction, so a real gap is always positive
        first, second = (better, worse) if lead.lower_is_better else (worse, better)
        diff, low, high = welch_interval(values[first], values[second])
        what = f"{lead.label} difference {diff:{fmt}}, 95% Welch interval [{low:{fmt}}, {high:{fmt}}]"
        if math.isnan(low):
            lines.append(f"- {better} vs {worse}: {diff:{fmt}} apart, but with one seed there is "
                         "no interval: not tested (add seeds)")
        elif low > 0:
            lines.append(f"- {better} is better than {worse}: {what} excludes 0")
        else:
            lines.append(f"- {better} and {worse} are **within noise**: {what} includes 0")
    return lines


def _ranked(values: dict[str, list[float]], learnings: dict[str, Learning | None],
            metric: Metric | None = None) -> list[str]:
    """:func:`ranking` of the arms that have learned, with one line naming the ones left out; one line instead of
    a ranking when none has."""
    out = [label for label in values if (seen := learnings.get(label)) is not None and not seen.learned]
    if out and len(out) == len(values):
        return [f"Nothing is ranked: no arm has learned yet (every arm's conditional accuracy interval includes "
                f"or lies below chance: {', '.join(out)})."]
    lines = []
    if out:
        lines.append(f"- Left out (not learned yet: conditional accuracy not above chance): {', '.join(out)}")
    return lines + ranking({label: scores for label, scores in values.items() if label not in out}, metric)


def _accuracy_ranking(members: list[dict[str, Any]], finals: dict[str, list[dict[str, Any]]],
                      learnings: dict[str, Learning | None]) -> list[str]:
    """The end-of-training ranking by conditional accuracy (higher is better), when every arm has it."""
    values = {}
    for s in sorted(members, key=lambda s: s["label"]):
        scores = [v for r in finals[s["label"]] if (v := number(r.get(ACCURACY.column))) is not None]
        if not scores:
            return []
        values[s["label"]] = scores
    return ["", f"By {ACCURACY.label} at the end of training (higher is better):", "",
            *_ranked(values, learnings, ACCURACY)]


def _parameters_line(members: list[dict[str, Any]]) -> str:
    params = sorted((s["params"], s["label"]) for s in members)
    if size_matched([p for p, _ in params]):
        return (f"Equal parameters: every arm has {params[0][0]:,}..{params[-1][0]:,} parameters (within "
                f"{SIZE_TOLERANCE:.0%}), so the final ranking is also the ranking at equal parameters.")
    listed = ", ".join(f"{label} {p:,}" for p, label in params)
    return (f"Parameters differ ({listed}; more than {SIZE_TOLERANCE:.0%} apart): no equal-parameter reading is "
            "made.")


BUDGETS = {  # x column -> (section title, what x is, how it is shown, the budget.match that already equalises it)
    "train_gflops": ("equal training FLOPs", "training compute", lambda x: f"{x / 1e6:.4g} PFLOPs", "train_flops"),
    "wall_s": ("equal wall-clock", "training wall-clock", lambda x: f"{x:.1f} s", "wall_clock"),
}


def _budget_section(spec: StudySpec, rows: list[dict[str, Any]], x_key: str,
                    learnings: dict[str, Learning | None], with_accuracy: bool) -> list[str]:
    """One sweep point's arms read at the largest ``x_key`` every seed reached, tabled and ranked."""
    title, what, show, match = BUDGETS[x_key]
    lead = headline()
    columns = [lead.column, *(["cond_accuracy"] if with_accuracy else [])]
    reading = read_at_budget(rows, x_key, columns)
    if reading.budget is None:
        return [f"### At {title}", "", f"No {x_key} recorded: no reading at {title}.", ""]
    budget = show(reading.budget)
    lines = [f"### At {title}: {budget}", "",
             f"The budget is the smallest final {what} over every arm's seeds, so every seed reached it."]
    if spec.budget.match == match:
        lines[-1] += (f" With budget.match={match} the arms were already trained to (nearly) this budget: this is "
                      "the end-of-training budget again, read where the shortest run ended.")
    lines += ["", f"| arm | {lead.label} at {budget} (mean +- 95% CI) | "
              f"{'cond. acc. | ' if with_accuracy else ''}seeds read |",
              "|---|---:|" + ("---:|" if with_accuracy else "") + "---:|"]
    for label, values in reading.values.items():
        scores = values[lead.column]
        accuracy = values.get("cond_accuracy", [])
        shown = _format_interval(*mean_interval(scores)) if scores else "not read"
        acc = f"{_fmt(sum(accuracy) / len(accuracy)) if accuracy else '-'} | " if with_accuracy else ""
        seeds = len(scores) + len(reading.unread[label])
        lines.append(f"| {label} | {shown} | {acc}{len(scores)} of {seeds} |")
    lines.append("")
    for label, firsts in reading.unread.items():
        if firsts:
            why = "; ".join(f"seed {seed}: " + ("nothing recorded" if first is None else
                                                f"its first evaluation is later, at {show(first)}")
                            for seed, first in firsts.items())
            lines.append(f"- {label} is not read at this budget (never extrapolated): {why}")
    unread = [label for label, values in reading.values.items() if not values[lead.column]]
    if unread:
        lines.append(f"- Left out (no seed read at this budget): {', '.join(unread)}")
    read = {label: values[lead.column] for label, values in reading.values.items() if label not in unread}
    if read:
        lines += _ranked(read, learnings)
    return lines + [""]


def _training_load(finals: dict[str, list[dict[str, Any]]]) -> str:
    """The load the runs trained under (each run's mean 1-minute load average over its logged steps), the range
    over runs: the wall-clock readings depend on it, and the load when the summary was written says nothing of it.
    Empty for runs that did not log it."""
    loads = [v for group in finals.values() for r in group if (v := number(r.get("load_1m"))) is not None]
    if not loads:
        return ""
    return (f" While the runs trained, the load average was {min(loads):.1f}-{max(loads):.1f} (each run's mean "
            "1-minute load, lowest and highest run).")


def _learned_cell(seen: Learning | None) -> str:
    if seen is None:
        return "-"
    return f"{'yes' if seen.learned else '**not learned yet**'} [{seen.low:.3f}, {seen.high:.3f}]"


def render(spec: StudySpec, rows: list[dict[str, Any]], machine: str, chance: float | None = None,
           sections: list[str] | None = None) -> str:
    """The whole summary.md: the settings, a row per arm (the headline's interval, then every summary metric of
    the metrics table, then whether it has learned) and the rankings at each sweep point. ``chance`` is the
    conditional accuracy of a guess (default 1 / the dataset's classes)."""
    finals = final_rows(rows)
    summaries = [arm_summary(group) for group in finals.values()]
    sources = pretraining_arms(spec)
    ranked_rows = [row for row in rows if row["arm"] not in sources]
    level = chance_level(rows, chance)
    learnings = {label: learning(group, level) for label, group in finals.items()}
    with_accuracy = any(seen is not None for seen in learnings.values())
    lead = headline()
    others = [m for m in summary_metrics() if any(_has_value(s.get(m.name)) for s in summaries)]  # none: no column
    score = summaries[0]["score_name"] if summaries else lead.label
    budget = spec.budget
    ev = spec.eval
    lines = [
        f"# Study `{spec.name}`",
        "",
        f"Recipe `{spec.recipe}`, budget matched by **{budget.match}** ({budget.steps} steps of "
        f"`{budget.reference or spec.arms[0].name}`), seeds {spec.seeds}; {score} of "
        f"{ev.num_samples} EMA samples ({ev.sampler}, {ev.steps} steps, cfg {ev.cfg_scale}) against the "
        f"{ev.ref_split} split. Machine: {machine}.{_training_load(finals)}",
        "",
        "| arm | params | GMACs | steps | train PFLOPs | wall-clock s | "
        f"{score} (mean +- 95% CI) | {''.join(f'{m.heading} | ' for m in others)}seeds |"
        + (" learned (95% CI of cond. acc.) |" if with_accuracy else ""),
        "|---|" + "---:|" * (7 + len(others)) + ("---|" if with_accuracy else ""),
    ]
    for s in sorted(summaries, key=lambda s: s["label"]):
        lines.append(
            f"| {s['label']} | {s['params']:,} | {s['gmacs']:.4f} | {s['steps']} | {s['train_pflops']:.4g} | "
            f"{_fmt(s['wall_s'], '.1f')} | {_interval(s)} | "
            f"{''.join(f'{_fmt(s[m.name], m.table_fmt)} | ' for m in others)}{s['seeds']} |"
            + (f" {_learned_cell(learnings[s['label']])} |" if with_accuracy else "")
        )
    lines += ["", "Training FLOPs = 3 x forward FLOPs x batch x steps (forward FLOPs = 2 x MACs, from "
              "archbench.measure.flops). Intervals: Student-t 95% over seeds. At equal training FLOPs and at equal "
              f"wall-clock, {INTERPOLATION}."]
    if with_accuracy:
        lines.append(f"An arm is *not learned yet* when the 95% Clopper-Pearson interval of its final conditional "
                     f"accuracy (the seeds' samples pooled) is not wholly above chance ({level:.3f}); such arms are "
                     "left out of every ranking.")
    if sources:
        lines.append(f"Pre-training arms ({', '.join(sorted(sources))}: other arms start from their weights through "
                     "`init_from`) are shown for reference and left out of every ranking and budget; their training "
                     "FLOPs and wall-clock are counted in the arms that start from them.")
    lines.append("")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        if s["arm"] not in sources:
            groups[", ".join(f"{k}={v}" for k, v in s["sweep"].items())].append(s)
    point_rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in ranked_rows:
        point_rows[sweep_point(row)].append(row)
    for point, members in sorted(groups.items()):
        lines.append(f"## Ranking{f' at {point}' if point else ''} ({'lower' if lead.lower_is_better else 'higher'} "
                     f"{score} is better)")
        lines += ["", "### At the end of training", ""]
        lines += _ranked({s["label"]: s["fds"] for s in sorted(members, key=lambda s: s["label"])}, learnings)
        if with_accuracy:
            lines += _accuracy_ranking(members, finals, learnings)
        lines += ["", _parameters_line(members), ""]
        for x_key in BUDGETS:
            lines += _budget_section(spec, point_rows[point], x_key, learnings, with_accuracy)
    lines += sections or []
    lines += [TINY_NOTE if "cpu" in machine.lower() or spec.recipe in ("ci_fid", "default", "cpu_study") else "", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_summary(spec: StudySpec, rows: list[dict[str, Any]], path: str | Path, machine: str,
                  chance: float | None = None, sections: list[str] | None = None) -> Path:
    """summary.md; ``sections`` (Markdown lines, e.g. the tuning stage's) go before the closing note."""
    return write_text_atomic(path, render(spec, rows, machine, chance, sections))
