"""Independent steps (one per target) run on a pool of threads: the I/O of several databases and tables overlaps,
while each step keeps its own order. dbt and SQLMesh run their steps the same way, the width set by the user."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from emailsync.errors import Refusal, UserError

T = TypeVar("T")
R = TypeVar("R")
T_co = TypeVar("T_co", covariant=True)


class Step(Protocol[T_co]):
    """One unit of work, stoppable from another thread."""

    def run(self) -> T_co: ...

    def cancel(self) -> None:
        """Stop soon (called from another thread when a sibling step failed, or on Ctrl-C); run() then raises."""
        ...


class Call(Generic[T]):
    """A step made of a function, stopped by `stop` (by default it cannot be stopped: it runs to its end)."""

    def __init__(self, fn: Callable[[], T], stop: Callable[[], None] | None = None) -> None:
        self._fn, self._stop = fn, stop

    def run(self) -> T:
        return self._fn()

    def cancel(self) -> None:
        if self._stop is not None:
            self._stop()


def default_width(steps: int) -> int:
    """The default --parallel: every step at once, up to 4."""
    return max(1, min(steps, 4))


def run_all(steps: Sequence[Step[T]], width: int) -> list[T]:
    """Every step's result, in the steps' order. With width 1, one after another in this thread. Otherwise on
    `width` threads: when one fails, or Ctrl-C arrives, the others are stopped and waited for (nothing is left
    running), then the first failure in the steps' order that was not caused by stopping it is raised (or the
    KeyboardInterrupt), so what is reported does not depend on timing. A Refusal (the data refuses the plan) stops
    nothing: the other steps go on, and if they fail only so, every refusal is raised as one (Refusal.combine)."""
    if width <= 1 or len(steps) <= 1:
        results: list[T] = []
        refused: list[UserError] = []
        for s in steps:
            try:
                results.append(s.run())
            except Refusal as refusal:
                refused.append(refusal)
        if refused:
            raise Refusal.combine(refused)
        return results
    pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="emailsync-step")
    futures: list[Future[T]] = [pool.submit(s.run) for s in steps]
    stopped: set[int] = set()
    try:
        pending: set[Future[T]] = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None and not isinstance(f.exception(), Refusal) for f in done):
                stopped = _stop(steps, futures)
                break
    except BaseException:  # KeyboardInterrupt while waiting: stop every worker, then let it through
        _stop(steps, futures)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    failed = [(i, e) for i, f in enumerate(futures) if not f.cancelled() and (e := f.exception()) is not None]
    if failed and all(isinstance(x, Refusal) for _, x in failed):
        raise Refusal.combine([x for _, x in failed if isinstance(x, Refusal)])
    if failed:  # a step's own failure before one caused by stopping it; then the steps' order
        raise min(failed, key=lambda ie: (ie[0] in stopped or isinstance(ie[1], Refusal), ie[0]))[1]
    return [f.result() for f in futures]


def _stop(steps: Sequence[Step[T]], futures: list[Future[T]]) -> set[int]:
    """Drop the steps not started; ask the running ones to stop. Returns those asked."""
    asked = set()
    for i, (s, f) in enumerate(zip(steps, futures, strict=True)):
        if not f.done() and not f.cancel():
            s.cancel()
            asked.add(i)
    return asked


DEFAULT_CONCURRENCY = 32  # requests in flight per target whose work is requests (--concurrency)


@dataclass(frozen=True)
class Pace:
    """How hard a store whose work is requests may press on a target: requests in flight (--concurrency), and
    capacity units a second per table (--max-rcu, --max-wcu; None: no cap)."""

    concurrency: int = DEFAULT_CONCURRENCY
    max_rcu: float | None = None
    max_wcu: float | None = None


DEFAULT_PACE = Pace()


class Workers:
    """A target's requests in flight: a store whose work is requests of a few milliseconds of network time each
    (DynamoDB) sends its independent ones (scan segments, batched reads, writes of distinct items) `width` at a
    time instead of one after another. The order that matters is kept by the callers: they hand over only work
    that may run in any order."""

    def __init__(self, width: int) -> None:
        if width < 1:
            raise ValueError(f"width must be at least 1, not {width}")
        self.width = width
        self._pool: ThreadPoolExecutor | None = None

    def each(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """fn(item) for every item, up to `width` at once; the results in the items' order, once all have ended.

        On a failure, work not yet started is cancelled and work under way is waited for (a write in flight is
        never left behind unjournaled), then the first failure is raised. Ctrl-C cancels what has not started."""
        work = list(items)
        if self.width == 1 or len(work) <= 1:
            return [fn(x) for x in work]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.width, thread_name_prefix="emailsync-requests")
        futures: list[Future[R]] = [self._pool.submit(fn, x) for x in work]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        failed = next((f for f in futures if f.done() and not f.cancelled() and f.exception() is not None), None)
        if failed is not None:
            for f in futures:
                f.cancel()
            wait(futures)
            exc = failed.exception()
            assert exc is not None
            raise exc
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
