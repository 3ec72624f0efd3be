"""Matching compute and size between arms: the arithmetic that makes a comparison like-for-like.

Training compute of one step is ``3 x forward MACs x batch`` (DESIGN.md section 7), so matching training
FLOPs between two arms matches ``steps x GMACs x batch``; the factor 3 cancels.  Wall-clock matching uses
measured seconds per step instead.  Parameter matching searches one size knob (width or depth) for the
value whose parameter count is nearest a target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from archbench.study.spec import StudyError

TOLERANCE = 0.02  # match_params: the nearest valid size must be within 2% of the target
WIDTH_KEYS = ("width", "base_channels")
DEPTH_KEYS = ("depth", "num_res_blocks")


def train_gflops(gmacs: float, batch_size: int, steps: int) -> float:
    """Training FLOPs (2 FLOPs per MAC, forward + backward = 3 forwards) of ``steps`` steps, in GFLOPs."""
    return 2 * 3 * gmacs * batch_size * steps


def matched_steps(ref_steps: int, ref_cost: float, cost: float) -> int:
    """Steps giving an arm whose step costs ``cost`` the compute of ``ref_steps`` steps at ``ref_cost``.

    ``cost`` is GMACs x batch for FLOP matching and seconds per step for wall-clock matching.
    """
    if cost <= 0 or ref_cost <= 0:
        raise StudyError(f"cannot match budgets with a non-positive cost per step ({ref_cost}, {cost})")
    return max(1, round(ref_steps * ref_cost / cost))


def eval_points(steps: int, ref_steps: int, every_ref: int | list[int]) -> tuple[list[int], int]:
    """Evaluation steps of an arm trained ``steps`` steps, at the same training compute as the reference's
    every ``every_ref`` steps (0 = only at the end) or at its listed steps; returns (points, the arm's
    checkpoint interval, which divides every point).

    A list is placed on a grid of the reference's greatest common interval scaled to the arm, so early points
    (e.g. 125, 250, 500, 1000) stay at the reference's compute fractions without checkpointing every step."""
    if isinstance(every_ref, list):
        listed = sorted({int(p) for p in every_ref if 0 < int(p) < ref_steps})
        if not listed:
            return [steps], steps
        unit = math.gcd(*listed)
        interval = max(1, round(unit * steps / ref_steps))
        points = sorted({(p // unit) * interval for p in listed if (p // unit) * interval < steps})
        return points + [steps], interval
    if not every_ref:
        return [steps], steps
    interval = max(1, round(every_ref * steps / ref_steps))
    between = math.ceil(ref_steps / every_ref) - 1  # the reference's evaluations before its last step
    points = [k * interval for k in range(1, between + 1) if k * interval < steps]
    return points + [steps], interval


def size_key(options: dict[str, Any], by: str) -> str:
    """The build option that sets an arm's width (or depth)."""
    keys = WIDTH_KEYS if by == "width" else DEPTH_KEYS
    for key in keys:
        if key in options:
            return key
    raise StudyError(f"match_by={by}: the backbone has none of the options {', '.join(keys)}")


def size_step(options: dict[str, Any], key: str) -> int:
    """Granularity of valid values: widths of models with heads (softmax or linear attention, or attention in a
    hybrid) divisible by the head count and 4, Mamba-2 widths by 4, other widths by 2, U-Net channels by the
    GroupNorm groups; depths by 1."""
    if key in DEPTH_KEYS:
        return 1
    if key == "base_channels":
        return int(options.get("norm_groups", 32))
    headed = options.get("mixer", "attention") in ("attention", "linear_attention") or options.get("attention_every")
    if "num_heads" in options and headed:
        return math.lcm(int(options["num_heads"]), 4)  # whole head dimensions; 2-D sin-cos tables need 4
    return 4 if options.get("mixer") == "mamba2" else 2  # Mamba-2 needs an inner width (2 x width) divisible by 8


def nearest_size(
    target: float, count: Callable[[int], int], step: int, start: int, limit: int = 4096
) -> tuple[int, int]:
    """The multiple of ``step`` whose ``count`` (monotone increasing) is nearest ``target``: (value, params)."""
    lo, hi = 1, max(1, start // step)
    while count(hi * step) < target and hi * step < limit:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(mid * step) < target:
            lo = mid
        else:
            hi = mid
    candidates = [(abs(count(k * step) - target), k * step) for k in {lo, hi}]
    best = min(candidates)[1]
    return best, count(best)


def match_params(name: str, options: dict[str, Any], target: float, by: str) -> tuple[str, int, int]:
    """(option key, value, parameter count) making backbone ``name`` hold ``target`` parameters within 2%."""
    from archbench.measure.flops import build_for_counting

    key = size_key(options, by)
    step = size_step(options, key)
    cache: dict[int, int] = {}

    def count(value: int) -> int:
        if value not in cache:
            try:
                model = build_for_counting(name, **{**options, key: value})
            except (ValueError, RuntimeError, AssertionError) as exc:
                raise StudyError(f"match_params: {name} with {key}={value} does not build: {exc}") from None
            cache[value] = sum(p.numel() for p in model.parameters())
        return cache[value]

    value, params = nearest_size(target, count, step, int(options[key]))
    off = abs(params - target) / target
    if off > TOLERANCE:
        other = "depth" if by == "width" else "width"
        raise StudyError(
            f"match_params={target:.4g} for {name}: the nearest valid {key} ({value}, a multiple of {step}) gives "
            f"{params:,} parameters, {100 * off:.1f}% off (more than {100 * TOLERANCE:.0f}%); "
            f"try match_by={other} or another target"
        )
    return key, value, params
