"""SIGTERM/SIGINT turn into a request to stop after the current step (and save), not an abrupt exit.

Preemptible schedulers send SIGTERM and wait a grace period; Ctrl-C sends SIGINT.  The first signal sets a
flag the training loop polls once per step; a second one restores the default handler and re-raises, so a
stuck run can still be killed.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager installing the handlers; ``signum`` holds the first signal received (None = keep going)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = HANDLED) -> None:
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: give up waiting for the step to finish
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # type: ignore[arg-type]
            signal.raise_signal(signum)
            return
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
