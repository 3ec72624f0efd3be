"""How every command reports an expected failure: one line on stderr and exit code 1, no traceback.

Exit codes, the same for every ``python -m archbench.X`` command: 0 success; 1 an expected failure (a bad
argument, a missing or unusable input, a failed check such as an FD regression); 128 + N when training was
stopped by signal N after writing its checkpoint (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_FAILURE = 0, 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT


class UsageError(ValueError):
    """A bad argument: an unknown key, a value of the wrong type, a missing or contradictory setting.

    The one exception every command and every stage raises for what the caller asked for (as opposed to a
    missing file or a failed run), so a command needs one ``except`` to turn it into one line and exit code 1.
    A ``ValueError``, so library callers that already catch ``ValueError`` keep working.
    """


def one_line(exc: BaseException | str) -> str:
    """The message of ``exc`` collapsed to a single line."""
    text = str(exc).strip() or (type(exc).__name__ if isinstance(exc, BaseException) else "")
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def fail(program: str, message: BaseException | str) -> int:
    """Print ``program: error: message`` to stderr and return the exit code to use (1)."""
    print(f"{program}: error: {one_line(message)}", file=sys.stderr)
    return EXIT_FAILURE


def _note_sigint(received: list[int]) -> Any:
    """In place of Python's default SIGINT handler, one that records the signal and raises KeyboardInterrupt as
    the default does; returns the handler it replaced, or None where it installed nothing (off the main thread,
    or when SIGINT is ignored or already handled by someone else)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None

    def on_sigint(signum: int, frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    return signal.signal(signal.SIGINT, on_sigint)


def interruptible(program: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's ``main`` so Ctrl-C outside the training loop (while importing, loading data,
    sampling) ends with one line and exit code 130 instead of a traceback (the loop itself checkpoints first)."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            received: list[int] = []
            previous = _note_sigint(received)
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt as exc:  # its message, when there is one, says what was kept
                detail = one_line(exc) if str(exc).strip() else ""
                print(f"{program}: interrupted (Ctrl-C)" + (f"; {detail}" if detail else ""), file=sys.stderr)
                return EXIT_INTERRUPTED
            except Exception:
                # Ctrl-C inside an import can leave a half-imported module that fails another way (numpy's lazy
                # attributes then recurse until RecursionError): after a Ctrl-C that error is the interruption.
                if not received:
                    raise
                print(f"{program}: interrupted (Ctrl-C)", file=sys.stderr)
                return EXIT_INTERRUPTED
            finally:
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)

        return run

    return wrap
