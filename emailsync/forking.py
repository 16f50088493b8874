"""Work forked into processes of its own (planning PostgreSQL targets, checking a large plan's lines): Python work
on every core instead of taking turns for one interpreter."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import signal

# Where processes cannot be forked (Windows), the work runs in this process, on threads or one after another.
CAN_FORK = "fork" in multiprocessing.get_all_start_methods()


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the one that forked it dies (even by kill -9), so a worker never works
    on alone; elsewhere it ends at its next message, when it finds the pipe closed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
