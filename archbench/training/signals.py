"""SIGTERM/SIGINT turn into a request to stop after the current step (and save), not an abrupt exit.

Preemptible schedulers send SIGTERM and wait a grace period; Ctrl-C sends SIGINT.  The first signal sets a
flag the training loop polls once per step; a second one restores the default handler and re-raises, so a
stuck run can still be killed.  While a checkpoint is written, both wait (:func:`signals_deferred`): a second
Ctrl-C then stops the run right after the file is complete, instead of cutting it in half.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
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


@contextlib.contextmanager
def signals_deferred(signals: tuple[signal.Signals, ...] = HANDLED) -> Iterator[None]:
    """Hold ``signals`` back for the ``with`` body, then deliver them, in the order they came, to the handlers
    that were in place (a :class:`StopRequest`, Python's KeyboardInterrupt, or the default action).

    For short writes that must not be cut in half: a second Ctrl-C during a checkpoint write would otherwise
    raise inside ``torch.save`` and lose the file; deferred, it stops the run once the checkpoint is in place.
    Only the main thread can change handlers: elsewhere the body runs as is; ignored signals stay ignored.

    Every delivery counts: Python runs a handler once for however many times its signal came while a long C call
    (``torch.save``, ``fsync``) held the interpreter, so two Ctrl-C during the write would reach ``hold`` once.
    The wakeup fd gets one byte per delivery, so the deliveries are read from it (two signals the kernel merges
    before delivering, as it does for a process inside an uninterruptible call, are one delivery).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous: dict[int, object] = {}

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    old_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    try:
        for sig in signals:
            handler = signal.getsignal(sig)
            if handler is None or handler == signal.SIG_IGN:  # set outside Python, or ignored: leave it alone
                continue
            previous[sig] = handler
            signal.signal(sig, hold)
        yield
    finally:
        signal.set_wakeup_fd(old_wakeup)
        delivered = [signum for signum in _drain(reader) if signum in previous]
        reader.close()
        writer.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        for signum in delivered if len(delivered) >= len(pending) else pending:
            signal.raise_signal(signum)  # runs the restored handler now (it may raise KeyboardInterrupt)


def _drain(sock: socket.socket) -> bytes:
    """Everything written to the non-blocking wakeup socket so far: one signal number per byte."""
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return data
        if not chunk:
            return data
        data += chunk
