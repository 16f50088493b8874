"""Jittered exponential back-off: the one place that decides how long to wait before trying again.

The wait after failed try number `attempt` (0 for the first try) is min(CAP, BASE * 2**attempt) seconds, scaled
by a random factor from 0.5 to 1.5: 0.025-0.075 s after the first try, never more than 1.5 * CAP = 3 s. The jitter
keeps clients that were throttled together (parallel scan segments, several applies) from retrying together.

Not tenacity: three call sites, a dozen lines, and one of them (a transaction retried with a shrinking batch)
counts its attempts across a loop that a decorator cannot express.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

BASE = 0.05  # seconds, before jitter, after the first failed try
CAP = 2.0  # seconds, before jitter: later waits stop growing here


def backoff_delay(attempt: int, *, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed try number `attempt` (0-based): min(CAP, BASE * 2**attempt) * 0.5 to 1.5."""
    return min(CAP, BASE * 2.0 ** min(attempt, 64)) * (0.5 + rand())


def backoff_sleep(attempt: int) -> None:
    """Wait backoff_delay(attempt) seconds."""
    time.sleep(backoff_delay(attempt))


def retry(fn: Callable[[], T], *, attempts: int, retryable: Callable[[Exception], bool]) -> T:
    """fn(), called again after backoff_sleep(n) while it raises an exception `retryable` accepts, `attempts` calls
    at most. An exception `retryable` refuses, or the one from the last call, is raised as it is."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    for n in range(attempts - 1):
        try:
            return fn()
        except Exception as e:
            if not retryable(e):
                raise
        backoff_sleep(n)
    return fn()
