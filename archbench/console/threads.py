"""Intra-op threads that fit the machine as it is now: ``threads=auto`` times the real work at each count.

On a shared machine more busy threads than free cores make OpenMP's workers spin at every barrier, and a tiny
model has thousands of barriers per step: two threads beside two busy processes ran the default training 12x
slower than one thread did (issue 22).  No static rule knows the load, so ``auto`` measures: it runs the
work at 1, 2, 4, ... threads up to the cores this process may use (``os.sched_getaffinity``), keeps the
fastest, and measures again when steps become much slower than they were at the chosen count (the load
changed).  ``threads=N`` fixes the count and measures nothing.

An ``OMP_NUM_THREADS`` set in the environment is the standard way to pin OpenMP's threads, and scripts and
schedulers (SLURM job scripts, CI) set it on purpose: ``auto`` then takes that count and says so.

OpenMP's wait policy is left as the OpenMP runtime sets it: it is read once, when the runtime starts (before
any of this code can run), and the spinning it causes is what choosing one thread under load removes (one
thread has no barriers).  Set ``OMP_WAIT_POLICY=PASSIVE`` in the environment to make every count yield
instead of spinning, at some cost on an idle machine.

Thread counts can change the order of floating-point reductions, so a run that re-measures mid-way is not
bit-for-bit the run it would have been at a fixed count; ``threads=N`` is the setting for bit-exact reruns.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("archbench.threads")

AUTO = "auto"


def parse_threads(value: object, key: str = "threads") -> str | int:
    """``auto`` or a positive integer (also from a string); anything else is one clear error."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, bool):
        raise ValueError(f"{key} must be 'auto' or a positive integer, got {value!r}")
    try:
        count = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be 'auto' or a positive integer, got {value!r}") from None
    if count < 1 or count != value and not isinstance(value, str):
        raise ValueError(f"{key} must be 'auto' or a positive integer, got {value!r}")
    return count


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and job schedulers set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def candidate_counts(cores: int | None = None) -> list[int]:
    """1, 2, 4, ... up to the usable cores, and the core count itself when it is not a power of two."""
    cores = cores or usable_cores()
    counts, n = [], 1
    while n <= cores:
        counts.append(n)
        n *= 2
    if counts[-1] != cores:
        counts.append(cores)
    return counts


def pinned_by_environment() -> int | None:
    """The count ``OMP_NUM_THREADS`` pins, if it is set to a positive integer."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def measurement_units(setting: str | int, rounds: int = 2) -> int:
    """How many units of work ``setting`` spends measuring before its count is fixed, at most (0 for a fixed or
    pinned count; fewer when a count is abandoned): what a timing run must skip to time the steps that follow."""
    counts = candidate_counts()
    if parse_threads(setting) != AUTO or pinned_by_environment() is not None or len(counts) == 1:
        return 0
    return 1 + rounds * len(counts)


def set_threads(count: int) -> None:
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


@dataclass
class ThreadTuner:
    """Chooses the thread count from timed units of the real work (training steps, sampler batches).

    Call :meth:`before` before each unit and :meth:`after` with its wall-clock seconds.  With ``auto``, the
    first unit warms up (allocation, caches), then every candidate runs ``rounds`` units in turn and the
    fastest median wins; afterwards, ``patience`` units in a row slower than ``slowdown`` x the winner's time
    start a new measurement (at most once per ``cooldown`` units).  A fixed count is set once and kept.

    A count whose unit took over ``abandon`` x the fastest unit measured so far (and over ``abandon_after``
    seconds, so that one noisy millisecond decides nothing) is not measured again, nor is any count larger
    than both it and the fastest one: on a loaded machine a unit at more threads than free cores costs 10-30x
    (a default-run step took 1954 ms at two threads against 77 ms at one beside two busy processes), so a
    second round there only spends seconds to confirm it.
    """

    setting: str | int = AUTO
    candidates: list[int] = field(default_factory=candidate_counts)
    rounds: int = 2
    slowdown: float = 2.0
    patience: int = 5
    cooldown: int = 200
    abandon: float = 3.0
    abandon_after: float = 0.1
    announce: Callable[[str], None] = log.info
    chosen: int | None = None
    _schedule: list[int] = field(default_factory=list)
    _timings: dict[int, list[float]] = field(default_factory=dict)
    _current: int | None = None
    _baseline: float | None = None
    _slow_streak: int = 0
    _since_choice: int = 0
    _warm: bool = False

    def __post_init__(self) -> None:
        self.setting = parse_threads(self.setting)
        pinned = pinned_by_environment() if self.setting == AUTO else None
        if pinned is not None:
            self.setting = self.chosen = pinned  # the user's own setting: nothing chosen, nothing to announce
            log.debug("threads=auto: OMP_NUM_THREADS=%d is set, so %d thread(s)", pinned, pinned)
        elif self.setting != AUTO:
            self.chosen = int(self.setting)
        elif len(self.candidates) == 1:
            self.chosen = self.candidates[0]
        else:
            self._start_measuring()

    @property
    def measuring(self) -> bool:
        """True until the count is chosen (and again while a re-measurement runs)."""
        return bool(self._schedule)

    def _start_measuring(self) -> None:
        self._schedule = [n for _ in range(self.rounds) for n in self.candidates]
        self._timings = {n: [] for n in self.candidates}

    def before(self) -> None:
        """Set the thread count the next unit runs at."""
        if not self._warm and self._schedule:
            self._current = 1  # the warm-up unit: one thread costs least when the machine is loaded
        elif self._schedule:
            self._current = self._schedule[0]
        else:
            self._current = self.chosen
        set_threads(self._current)  # type: ignore[arg-type]

    def after(self, seconds: float) -> None:
        """Record the unit just run; choose when the measurement is complete, re-measure when work slows."""
        if self.setting != AUTO or self.chosen is not None and not self._schedule and self._baseline is None:
            return
        if not self._warm:
            self._warm = True
            return
        if self._schedule:
            count = self._schedule.pop(0)
            self._timings[count].append(seconds)
            self._abandon_if_hopeless(count, seconds)
            if not self._schedule:
                self._choose()
            return
        self._since_choice += 1
        if self._baseline is not None and seconds > self.slowdown * self._baseline:
            self._slow_streak += 1
        else:
            self._slow_streak = 0
        if self._slow_streak >= self.patience and self._since_choice >= self.cooldown:
            self.announce(f"threads=auto: the last {self.patience} steps took over {self.slowdown:g}x the "
                          f"{self._baseline * 1e3:.0f} ms measured at {self.chosen} thread(s); measuring again")
            self._start_measuring()

    def _abandon_if_hopeless(self, count: int, seconds: float) -> None:
        """Drop the remaining units of ``count`` when it was far too slow, and those of every larger count when
        a smaller one was the fastest (more threads only spin more)."""
        fastest, at = min((t, n) for n, times in self._timings.items() for t in times)
        if seconds > self.abandon * fastest and seconds > self.abandon_after:
            self._schedule = [n for n in self._schedule if n != count and (n < count or at > count)]

    def _choose(self) -> None:
        medians = {n: statistics.median(ts) for n, ts in self._timings.items() if ts}
        self.chosen = min(medians, key=lambda n: (medians[n], n))
        self._baseline = medians[self.chosen]
        self._slow_streak = self._since_choice = 0
        timings = ", ".join(f"{n}: {medians[n] * 1e3:.0f} ms" for n in sorted(medians))
        self.announce(f"threads=auto: {self.chosen} of {self.candidates[-1]} usable core(s) "
                      f"(median time per step at each count: {timings})")
        set_threads(self.chosen)

    def run(self, unit: Callable[[], object]) -> object:
        """Run one unit of work at the count this tuner gives it, timing it."""
        self.before()
        started = time.perf_counter()
        result = unit()
        self.after(time.perf_counter() - started)
        return result


def choose_threads(setting: str | int, probe: Callable[[], object], announce: Callable[[str], None] = log.info
                   ) -> int:
    """Settle the thread count before work that has no natural repeated unit to measure on (sampling, scoring):
    ``auto`` runs ``probe`` (a small piece of the work) once to warm up and twice at each candidate count, keeps
    the fastest and sets it; a fixed count is set at once.  Returns the count."""
    tuner = ThreadTuner(setting, announce=announce)
    while tuner.measuring:
        tuner.run(probe)
    set_threads(tuner.chosen)  # type: ignore[arg-type]
    return tuner.chosen  # type: ignore[return-value]


def threads_for_timing(setting: str | int, probe: Callable[[], object], *, timer: str = "wall", device: str = "cpu",
                       announce: Callable[[str], None] = log.debug) -> int:
    """The count a benchmark times its work at.  A fixed count is set as given.  ``auto`` measures ``probe`` (one
    unit of the timed work) like :func:`choose_threads`, with two exceptions: under ``timer="cpu"`` it is one
    thread, because process CPU time adds up every thread's time and reads the same work as costlier at each
    added thread; off the CPU it keeps torch's count, as the timed work does not run on the CPU's threads."""
    import torch

    setting = parse_threads(setting)
    if setting == AUTO and not device.startswith("cpu"):
        return torch.get_num_threads()
    if setting == AUTO and timer == "cpu" and pinned_by_environment() is None:
        set_threads(1)
        return 1
    return choose_threads(setting, probe, announce=announce)
