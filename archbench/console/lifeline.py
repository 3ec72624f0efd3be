"""A worker process's tie to the process that started it: it dies with its parent, in every phase.

A local study worker (and the torchrun it may start) must not outlive the study process, even when that is
killed with ``kill -9``: an orphan would go on training or evaluating and keep its run locked.  Linux's
``prctl(PR_SET_PDEATHSIG)`` has the kernel send a signal to the worker when its parent dies; two races remain,
and are closed here:

* the parent can die *before* the worker arms the signal (a kill in the worker's first moments): the worker
  then compares ``os.getppid()`` with the parent it was started by and exits at once;
* a signal handler can swallow the signal (training turns SIGTERM into "save after this step"; if it lands
  after the last step the loop has nothing left to stop): the job calls :func:`exit_if_orphaned` between
  phases.

The kernel may send the signal more than once (each of the parent's threads passes the child on as it exits):
training takes a second SIGTERM as "stop now", after any checkpoint being written is complete.

This module imports only the standard library, so a spawned worker arms the signal before torch or any job
code is imported.  The kernel sends the signal when the *thread* that started the worker exits, so start
workers from a thread that lives as long as they do (the main thread, or ``ProcessPoolExecutor``'s own
manager thread, which outlives the workers it starts).  Elsewhere than Linux only the parent check applies.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
ORPHANED_EXIT = 128 + signal.SIGTERM  # as if the parent-death signal had ended it


def _find_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # libc's, already loaded: no dlopen after a fork
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _find_prctl()
_parent: int | None = None


def die_with_parent(parent: int | None = None, signum: int = signal.SIGTERM) -> None:
    """Arm ``signum`` for when this process's parent dies, then exit at once if ``parent`` (the PID of the
    process that started this one) is already gone.  The first thing a worker does, before any work."""
    global _parent
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signum))
    if parent is not None:
        _parent = int(parent)
        exit_if_orphaned()


def parent_gone() -> bool:
    """Whether the parent given to :func:`die_with_parent` has died (this process was re-parented)."""
    return _parent is not None and os.getppid() != _parent


def exit_if_orphaned() -> None:
    """End this process now if its parent is gone: nothing it would still do is wanted by anyone."""
    if parent_gone():
        os._exit(ORPHANED_EXIT)


def child_dies_with_us(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess`` that ties the child to this process (armed between fork and exec,
    so before the child runs any code of its own)."""
    parent = os.getpid()
    return lambda: die_with_parent(parent, signum)
