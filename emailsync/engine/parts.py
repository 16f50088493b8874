"""Each target's part of a plan, made in two phases: read the target, then (once the order of the mapping entries
is known from every target) make its actions and write them, sorted, as its part of the body (plan.Part).

A store whose planning is Python work (PostgreSQL's conflict analysis) is planned in a process of its own when
several are planned at once, so their work runs on every core instead of taking turns for one interpreter; the
others (DynamoDB's, waiting on requests) run on the executor's threads. Both kinds answer to the same two steps,
so the planner runs one path whatever the width.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from emailsync import progress
from emailsync.engine.executor import Call, Step
from emailsync.errors import Refusal, UserError
from emailsync.forking import die_with_parent
from emailsync.mappings import MappingSet
from emailsync.plan import SKIPPED_KIND, Action, Part, PartRun, Skipped, summary_column, write_part
from emailsync.stores.base import Store, TargetRead
from emailsync.stores.errors import store_errors

Counts = list[tuple[tuple[str, str, str, str], int]]


@dataclass
class Made:
    """What the second phase gives back for one target: its part's runs, and its counts and ids."""

    runs: list[PartRun]
    summary: Counts  # (target, table, column, kind) -> actions, in the order they were made
    skipped: Counts  # the same for its skipped changes
    ids: list[str]


def _make(store: Store, read: TargetRead, levels: dict[int, int], part: Part) -> Made:
    skipped: list[Skipped] = []
    summary: dict[tuple[str, str, str, str], int] = defaultdict(int)
    ids: list[str] = []

    def actions() -> Iterator[Action]:
        for a in store.actions(read, levels, skipped):
            ids.append(a.id)
            summary[(a.target, a.table, summary_column(a), a.kind)] += 1
            yield a

    try:
        sections = store.sections(read, levels)
        runs = write_part(part, actions(), skipped, sections)  # reads `skipped` after the last action is made
    finally:
        _release(read)
    for sec in sections:
        for column, n in sec.counts.items():
            summary[(sec.key[0], sec.key[1], column, sec.key[2])] += n
    # Table by table as targets.yaml lists them, whichever way each table's lines were made (sorted stably: within
    # a table, in the order they were made).
    rank = {t: i for i, t in enumerate(read.tables)}
    counted = sorted(summary.items(), key=lambda kv: rank.get(kv[0][1], len(rank)))
    skipped_counts: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for s in skipped:
        skipped_counts[(s.target, s.table, s.column, SKIPPED_KIND)] += 1
    return Made(runs, counted, list(skipped_counts.items()), ids)


def _release(read: TargetRead) -> None:
    """What the store holds open between reading and making (PostgreSQL: the snapshot its sections are read from)."""
    close = getattr(read.state, "close", None)
    if close is not None:
        close()


class InProcess:
    """A target planned in this process (on an executor thread when planning in parallel)."""

    def __init__(self, store: Store, mset: MappingSet, deflate: bool) -> None:
        self.store, self.mset, self.part = store, mset, Part(store.name, deflate)
        self._read: TargetRead | None = None

    def read(self) -> Step[TargetRead]:
        step = self.store.reader(self.mset)

        def run() -> TargetRead:
            self._read = step.run()
            return self._read

        return Call(run, step.cancel)

    def make(self, levels: dict[int, int]) -> Step[Made]:
        def run() -> Made:
            assert self._read is not None
            made = _make(self.store, self._read, levels, self.part)
            self._read = None  # the planned rows go once the part is written
            return made

        return Call(run)

    def close(self) -> None:
        if self._read is not None:
            _release(self._read)
        self._read = None


class Forked:
    """A target planned in a process of its own, forked before any executor thread starts. The process holds the
    target's reading between the two phases and writes into the part's files, which this process made (so they go
    with it). Stopping it interrupts it: its query is cancelled, and it ends."""

    def __init__(self, store: Store, mset: MappingSet, deflate: bool) -> None:
        self.name, self.part = store.name, Part(store.name, deflate)
        ctx = multiprocessing.get_context("fork")
        self._pipe, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, args=(store, mset, self.part, child), daemon=True)
        self._proc.start()
        child.close()
        self._bars = _Bars()

    def read(self) -> Step[TargetRead]:
        return Call(lambda: self._ask(("read",)), self._stop)

    def make(self, levels: dict[int, int]) -> Step[Made]:
        return Call(lambda: self._ask(("make", levels)), self._stop)

    def _ask(self, message: tuple[Any, ...]) -> Any:
        try:
            self._pipe.send(message)
            while True:
                tag, value = self._pipe.recv()
                if tag != "progress":
                    break
                self._bars.draw(value)
        except (EOFError, OSError):  # the process is gone (killed, out of memory): said, not a traceback
            self._proc.join()
            raise UserError(
                f"target {self.name!r}: the process planning it ended unexpectedly (exit code {self._proc.exitcode})"
            ) from None
        if tag == "ok":
            return value
        if tag == "stopped":
            raise UserError(f"target {self.name!r}: planning stopped")
        text, problems, refusal = value
        raise (Refusal if refusal else UserError).as_reported(text, problems)

    def _stop(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()  # SIGTERM: a KeyboardInterrupt in the worker, which cancels its query

    def close(self) -> None:
        self._bars.close()
        if self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._pipe.send(("exit",))
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._pipe.close()


class _Relay:
    """The progress display of a worker: its bars' changes sent to the parent, which draws them. Advances are summed
    and sent at most ten times a second (a planner advances once per row)."""

    def __init__(self, pipe: Any, lock: threading.Lock) -> None:
        self._pipe, self._lock = pipe, lock
        self._ids = itertools.count()
        self._pending: dict[int, float] = {}
        self._sent = 0.0

    @contextmanager
    def task(self, description: str, total: float | None) -> Iterator[progress.Task]:
        tid = next(self._ids)
        self._send(("open", tid, description, total))
        t = progress.Task(self, tid)
        try:
            yield t
        finally:
            t._progress = None
            self._flush()
            self._send(("close", tid))

    def advance(self, tid: int, n: float) -> None:
        self._pending[tid] = self._pending.get(tid, 0) + n
        if time.monotonic() - self._sent > 0.1:
            self._flush()

    def update(self, tid: int, **fields: Any) -> None:
        self._flush()
        self._send(("update", tid, fields))

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for tid, n in pending.items():
            self._send(("advance", tid, n))
        self._sent = time.monotonic()

    def _send(self, change: tuple[Any, ...]) -> None:
        with self._lock:
            self._pipe.send(("progress", change))


class _Bars:
    """The parent's side of a worker's bars (drawn only when the display is on, like any other)."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[Any, progress.Task]] = {}

    def draw(self, change: tuple[Any, ...]) -> None:
        what, tid, *rest = change
        if what == "open":
            cm = progress.task(rest[0], rest[1])
            self._open[tid] = (cm, cm.__enter__())
        elif tid in self._open:
            task = self._open[tid][1]
            if what == "advance":
                task.advance(rest[0])
            elif what == "update":
                if "description" in rest[0]:
                    task.describe(rest[0]["description"])
                if "total" in rest[0]:
                    task.total(rest[0]["total"])
            elif what == "close":
                self._open.pop(tid)[0].__exit__(None, None, None)

    def close(self) -> None:
        for cm, _ in self._open.values():
            cm.__exit__(None, None, None)
        self._open.clear()


def _interrupt(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one would interrupt the query's cancelling
    raise KeyboardInterrupt


def _worker(store: Store, mset: MappingSet, part: Part, pipe: Any) -> None:
    """A planning process: reads its target when told, then makes and writes its part once given the levels."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops each worker (SIGTERM)
    die_with_parent()
    lock = threading.Lock()
    progress._display = _Relay(pipe, lock) if progress._display is not None else None  # type: ignore[assignment]
    read: TargetRead | None = None
    try:
        while True:
            message = pipe.recv()
            try:
                with store_errors("planning", "; nothing was written"):
                    if message[0] == "read":
                        read = store.reader(mset).run()
                        _send(pipe, lock, ("ok", replace(read, state=None)))  # what the parent needs; the rest stays
                    elif message[0] == "make" and read is not None:
                        made = _make(store, read, message[1], part)
                        read = None
                        _send(pipe, lock, ("ok", made))
                    else:
                        break
            except UserError as e:
                _send(pipe, lock, ("error", (str(e), e.problems, isinstance(e, Refusal))))
                break
            except KeyboardInterrupt:
                _send(pipe, lock, ("stopped", None))
                break
            except Exception:  # a bug: its traceback, for the parent to report
                _send(pipe, lock, ("error", (f"internal error while planning:\n{traceback.format_exc()}", [])))
                break
    except BaseException:  # noqa: S110  # the parent sees the pipe close and says so
        pass
    finally:
        os._exit(0)


def _send(pipe: Any, lock: threading.Lock, message: tuple[Any, ...]) -> None:
    with lock:
        pipe.send(message)
