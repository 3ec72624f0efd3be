"""The load this machine is under now: every published number says what else was running when it was measured.

One reading for every stage: training logs it with each metrics row (so a study can say what load its runs
trained under, not only what the load was when its summary was written), reports and study summaries print it.
"""

from __future__ import annotations

import os


def load_averages() -> tuple[float, float, float] | None:
    """The 1, 5 and 15-minute load averages, or None where the system has none (Windows)."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return None
    return one, five, fifteen


def load_1m() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    loads = load_averages()
    return None if loads is None else loads[0]
