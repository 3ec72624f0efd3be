"""One progress display per long phase of a command: a tqdm bar on stderr that says what is being done, with an ETA.

* :func:`progress`: the bar of one phase, ``with progress(total, "counting FLOPs", enabled) as bar: ... bar.update()``;
  ``enabled=False`` (the commands' ``progress=false``, which studies and CI pass) prints nothing at all.
* :func:`advance`: move a bar on to a phase's next item, naming it (``counting FLOPs of dis_s2 (3/8)``).
* :func:`tracked`: iterate over batches, advancing a bar by each batch's size.
* :func:`shared_progress` and :func:`steps`: one bar over many inner loops. A draw runs the sampler once per batch
  and the sampler loops over its steps; inside ``with shared_progress("sampling 500 images", batches, enabled)``
  every sampler loop (wrapped by :func:`steps`) advances the same bar, so the draw shows one bar over batches x
  steps instead of a bar per batch that restarts at 0.

On a terminal the bar redraws ten times a second; when stderr is a file or a pipe (a log), at most every
:data:`LOG_MININTERVAL` seconds, so logs are not flooded. A bar left by an exception is cleared (on a terminal),
so the one-line error that follows stands alone. tqdm's ``TQDM_*`` environment variables apply as usual.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

TTY_MININTERVAL = 0.1
"""Seconds between redraws on a terminal (tqdm's default)."""
LOG_MININTERVAL = 5.0
"""Seconds between updates when stderr is not a terminal: a log gets a line every few seconds at most."""


class Bar(tqdm):
    """A tqdm bar on stderr that clears itself when its ``with`` block raises (so an error line stands alone)."""

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> Any:
        if exc_type is not None:
            self.leave = False
        return super().__exit__(exc_type, exc_value, traceback)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


def progress(total: float | None, desc: str, enabled: bool = True, *, unit: str = "it") -> Bar:
    """The bar of one phase: ``total`` units (None: unknown, no ETA), described by ``desc``, on stderr.

    ``enabled=False`` gives a disabled bar: every method works and nothing is printed. Use it as a context
    manager (or call ``close()``) so that the final state is printed once and the line ends.
    """
    stream = sys.stderr
    terminal = _is_terminal(stream)
    return Bar(
        total=total,
        desc=desc,
        unit=unit,
        file=stream,
        disable=not enabled,
        mininterval=TTY_MININTERVAL if terminal else LOG_MININTERVAL,
        dynamic_ncols=terminal,
        leave=True,
    )


def tracked(items: Iterable[T], bar: tqdm, size: Callable[[Any], float] = len) -> Iterator[T]:
    """``items`` unchanged, advancing ``bar`` by ``size(item)`` once the consumer is done with each item; the bar
    is closed when the items run out (so what the consumer does afterwards is not shown as part of the phase), and
    cleared when the consumer stops early (an error)."""
    with bar:
        for item in items:
            yield item
            bar.update(size(item))


def advance(bar: tqdm, n: float = 1, desc: str | None = None) -> None:
    """Advance ``bar`` by ``n`` and show it now with ``desc`` (the item a phase goes on to), printing once."""
    if desc is not None:
        bar.set_description_str(desc, refresh=False)
    printed = bar.last_print_n if hasattr(bar, "last_print_n") else None
    bar.update(n)
    finished = bar.total is not None and bar.n >= bar.total  # closing the bar shows its final state
    if printed is not None and bar.last_print_n == printed and not finished:  # update() skipped its redraw
        bar.refresh()


def _count(n: int, word: str) -> str:
    """``8 batches``, ``1 step``."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}{'es' if word.endswith(('s', 'x', 'ch', 'sh')) else 's'}"


class _Shared:
    """The bar of :func:`shared_progress`, opened by the first inner loop (when its length is known)."""

    def __init__(self, desc: str, loops: int, enabled: bool, loop_name: str, unit: str):
        self.desc, self.loops_left, self.enabled = desc, max(1, loops), enabled
        self.loops, self.loop_name, self.unit = self.loops_left, loop_name, unit
        self.bar: Bar | None = None

    def wrap(self, items: Sequence[T]) -> Iterator[T]:
        length = len(items)
        if self.bar is None:
            what = f"{_count(self.loops, self.loop_name)} x {_count(length, self.unit)}"
            self.bar = progress(length * self.loops, f"{self.desc} ({what})", self.enabled, unit=self.unit)
        else:  # exact when every loop has the same length (a draw's batches all run the same sampler)
            self.bar.total = self.bar.n + length * self.loops_left
        self.loops_left = max(1, self.loops_left - 1)
        bar = self.bar
        for item in items:
            yield item
            bar.update(1)


_ACTIVE: ContextVar[_Shared | None] = ContextVar("archbench_shared_progress", default=None)


@contextlib.contextmanager
def shared_progress(
    desc: str, loops: int, enabled: bool = True, *, loop_name: str = "batch", unit: str = "step"
) -> Iterator[None]:
    """One bar over the ``loops`` inner loops run inside this block, each wrapped by :func:`steps`: ``desc``, then
    ``(8 batches x 50 steps)``; its total is ``loops`` x the first loop's length. ``enabled=False`` silences the
    inner loops too (they never open bars of their own while a shared bar is active)."""
    shared = _Shared(desc, loops, enabled, loop_name, unit)
    token = _ACTIVE.set(shared)
    try:
        yield
    except BaseException:
        if shared.bar is not None:
            shared.bar.leave = False
        raise
    finally:
        _ACTIVE.reset(token)
        if shared.bar is not None:
            shared.bar.close()


def steps(items: Sequence[T], enabled: bool, desc: str = "sampling") -> Iterable[T]:
    """An inner loop's progress (a sampler's steps): it advances the enclosing :func:`shared_progress` bar when one
    is active, else (when ``enabled``) shows a bar of its own; ``enabled=False`` shows nothing."""
    if not enabled:
        return items
    shared = _ACTIVE.get()
    if shared is not None:
        return shared.wrap(items)
    return _own_bar(items, desc)


def _own_bar(items: Sequence[T], desc: str) -> Iterator[T]:
    with progress(len(items), desc, unit="step") as bar:
        for item in items:
            yield item
            bar.update(1)
