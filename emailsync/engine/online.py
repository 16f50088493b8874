"""Applying to a busy production store without stopping it: batches, throttles, pause and progress.

By default a PostgreSQL target is one transaction, which is right for a few thousand rows. With --batch-size the
store commits its changes in batches of related rows, each with its ledger record, and between batches this module
decides whether to go on: a pause asked for (SIGTERM, Ctrl-C), a rate cap, a replica lagging behind. GitLab's batched
background migrations and gh-ost pace themselves the same way. The engine and the stores share these objects; the
store decides what a batch is.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BATCH_LOCK_TIMEOUT = "2s"  # a batch waits this long for a row lock, then backs off and is retried
DEFAULT_RETRIES = 5
BACKOFF_FIRST_S = 1.0
BACKOFF_MOST_S = 30.0
LAG_POLL_S = 1.0
LAG_SAY_EVERY_S = 10.0

Events = Callable[[dict[str, Any]], None]


class Pause:
    """A request to stop at the next batch boundary (SIGTERM or a first Ctrl-C): the batch in flight finishes and
    commits, nothing more starts. Set from a signal handler, read by the threads that apply."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.why = ""
        self._batched = 0  # stores applying in batches now: only then does a first signal wait for a batch
        self._lock = threading.Lock()

    @property
    def batched(self) -> bool:
        return self._batched > 0

    @contextlib.contextmanager
    def graceful(self) -> Iterator[None]:
        """While a store applies in batches: a first signal waits for the batch in flight."""
        with self._lock:
            self._batched += 1
        try:
            yield
        finally:
            with self._lock:
                self._batched -= 1

    def request(self, why: str) -> None:
        self.why = why
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait up to `seconds`; True if a pause was asked for meanwhile (a throttle's wait is cut short by it)."""
        return self._event.wait(seconds) if seconds > 0 else self.requested


@dataclass(frozen=True)
class Online:
    """How an apply goes easy on a busy target (apply's --batch-size, --lock-timeout, --statement-timeout,
    --max-rate, --max-replica-lag, --retries)."""

    batch_size: int | None = None  # rows (items) per transaction; None: one transaction per database
    lock_timeout: str | None = None  # None: the target's own, or DEFAULT_BATCH_LOCK_TIMEOUT when batched
    statement_timeout: str | None = None  # None: the target's own
    max_rate: float | None = None  # rows a second per target, at most
    max_replica_lag: float | None = None  # seconds of replay lag the target's replicas may have before a batch
    retries: int | None = None  # a batch that times out is retried this often after a back-off; None: 5 batched, 0 not
    pause: Pause = field(default_factory=Pause, compare=False)
    events: Events | None = field(default=None, compare=False)  # progress events (apply --json: on stderr)

    def retries_for(self, batched: bool) -> int:
        if self.retries is not None:
            return self.retries
        return DEFAULT_RETRIES if batched else 0

    def emit(self, event: dict[str, Any]) -> None:
        if self.events is not None:
            self.events(event)


DEFAULT_ONLINE = Online()


def backoff(attempt: int) -> float:
    """Seconds to wait before retry `attempt` (1, 2, ...) of a batch that timed out: doubling, capped."""
    return float(min(BACKOFF_MOST_S, BACKOFF_FIRST_S * 2 ** (attempt - 1)))


class Rate:
    """Holds a target to --max-rate rows a second over the run: after each batch, wait until the rows written so far
    are no more than the rate allows (a batch is never cut in the middle)."""

    def __init__(self, rows_per_s: float | None, pause: Pause) -> None:
        self.cap = rows_per_s
        self.pause = pause
        self.start = time.monotonic()
        self.rows = 0

    def wrote(self, rows: int) -> None:
        self.rows += rows
        if not self.cap:
            return
        due = self.start + self.rows / self.cap - time.monotonic()
        if due > 0:
            self.pause.sleep(due)

    def per_s(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.rows / elapsed if elapsed > 0 else 0.0


def wait_for_lag(read_lag: Callable[[], float | None], most: float, pause: Pause, say: Callable[[float], None]) -> None:
    """Before a batch: wait while the replicas' lag is above `most` seconds, saying so (once, then every
    LAG_SAY_EVERY_S); a pause asked for meanwhile ends the wait."""
    said_at: float | None = None
    while True:
        lag = read_lag()
        if lag is None or lag <= most or pause.requested:
            return
        now = time.monotonic()
        if said_at is None or now - said_at >= LAG_SAY_EVERY_S:
            say(lag)
            said_at = now
        pause.sleep(LAG_POLL_S)
