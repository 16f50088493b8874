"""A PostgreSQL target applied in batches (apply --batch-size): each batch a transaction of its own, committed with
its record in emailsync.batches, so a busy database never waits on one long transaction and a rerun goes on at the
first batch not committed.

What each batch keeps of the one-transaction apply: its rows locked, judged against the plan, written by conditional
statements, read back and committed only if all is as planned (applier.py runs each batch as it runs a whole
target). What batching gives up: the database is consistent after each batch, not changed all at once; a rollback
plan made from the journals restores the batches that ran.

Between batches (engine/online.py): a pause asked for stops the run, --max-rate waits, --max-replica-lag waits for
the replicas; a batch that timed out on a lock is rolled back and tried again after a back-off.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Any, ClassVar, Protocol

import psycopg

from emailsync import progress
from emailsync.config import PostgresTarget
from emailsync.engine.online import Online, Rate, backoff, wait_for_lag
from emailsync.errors import UserError
from emailsync.plan import Store as StoreKind
from emailsync.stores.base import Journal
from emailsync.stores.ledger import NoLedger
from emailsync.stores.outcome import DONE, CompactOutcomes, Outcome, TargetResult, status_counts
from emailsync.stores.postgres.applier import PostgresApplier
from emailsync.stores.postgres.batches import Batches, BatchLines, digests, split, take, unbatchable
from emailsync.stores.postgres.catalog import TableMeta
from emailsync.stores.postgres.journaling import journal_records, status_records
from emailsync.stores.postgres.ledger import BatchRecord, PgLedger


class _Target(Protocol):
    """The PostgreSQL store (store.py) as a batched apply uses it."""

    name: str
    kind: ClassVar[StoreKind]
    target: PostgresTarget
    online: Online
    _metas: list[TableMeta]
    _others: list[TableMeta]
    _ledger: PgLedger | NoLedger
    _batch_size: int | None

    @property
    def conn(self) -> psycopg.Connection: ...

    def _timeouts(self) -> tuple[str | None, str | None]: ...


# Replay lag of the slowest replica, in seconds (0 without replicas; the role needs pg_monitor to see it).
REPLICA_LAG_SQL = "SELECT COALESCE(max(extract(epoch FROM replay_lag)), 0)::float8 FROM pg_catalog.pg_stat_replication"


def read_lag(conn: psycopg.Connection, target: PostgresTarget) -> float | None:
    """The replicas' lag in seconds (--max-replica-lag): the target's replica_lag_query, else the replay lag of
    pg_stat_replication. One clear error, naming the query, for a query that fails or reads no number."""
    q = target.replica_lag_query or REPLICA_LAG_SQL
    try:
        row = conn.execute(q).fetchone()  # the target's own SQL, from its file (never values of ours)
        value = None if not row or row[0] is None else float(row[0])
    except (psycopg.Error, TypeError, ValueError) as e:
        msg = (e.diag.message_primary or str(e)) if isinstance(e, psycopg.Error) else f"not a number: {e}"
        where = "replica_lag_query" if target.replica_lag_query else "the replay lag in pg_stat_replication"
        raise UserError(
            f"target {target.name!r}: reading {where} for --max-replica-lag failed ({msg.strip()}); it must return "
            "one number, the lag in seconds"
        ) from None
    finally:
        conn.rollback()
    return value


def resume_size(target: str, ledger: PgLedger, asked: int | None) -> tuple[int | None, list[BatchRecord]]:
    """The batch size of this run and the batches already committed: a plan whose apply was batched goes on at the
    size it started with (the batches are made from it)."""
    done = ledger.batches(asked is not None)
    if not done:
        return asked, []
    size = done[0].batch_size
    if asked is not None and asked != size:
        raise UserError(
            f"target {target!r}: this plan's apply was batched with --batch-size {size} and {len(done)} of its "
            f"{done[0].batches} batches are committed; run it again with --batch-size {size} (or without "
            "--batch-size) to go on where it stopped; nothing was written"
        )
    return size, done


def check_batchable(target: str, metas: list[TableMeta]) -> None:
    """Refuse batches where the way they are cut cannot keep colliding changes together (batches.unbatchable)."""
    for m in metas:
        why = unbatchable(m)
        if why is not None:
            raise UserError(
                f"target {target!r}: {m.display} cannot be applied in batches: its {why}, so two changes in "
                "different batches could collide; apply this target without --batch-size (one transaction), or "
                "apply the other targets in batches with --only-target; nothing was written"
            )


def cut(
    conn: psycopg.Connection,
    target: str,
    metas: list[TableMeta],
    size: int,
    done: list[BatchRecord],
    loaded: int,
    planned: int | None,
) -> Batches:
    """The target's loaded lines cut into batches, refused (nothing written) if the batches the ledger records as
    committed held other actions than these do now (the plan or emailsync changed under a paused apply)."""
    check_batchable(target, metas)
    if planned is not None and loaded != planned:
        # Never apply part of a target's plan without saying so: every action must have found its table.
        raise UserError(
            f"target {target!r}: {loaded} of its {planned} planned actions were loaded; nothing was written"
        )
    twice = conn.execute("SELECT id FROM _es_lines GROUP BY id HAVING count(*) > 1 LIMIT 1").fetchone()
    if twice is not None:
        conn.rollback()
        raise UserError(f"target {target!r}: two actions have the id {twice[0]!r} (the plan was edited)")
    batches = split(conn, size, metas)  # _es_lines becomes _es_all: each batch makes its own, dropped at its commit
    if done:
        now = digests(conn, [b.batch for b in done])
        changed = [b for b in done if b.batches != batches.count or now.get(b.batch) != b.ids_md5]
        if changed:
            b = changed[0]
            raise UserError(
                f"target {target!r}: batch {b.batch + 1} of this plan, committed by run {b.run_id}, held other "
                f"actions than batch {b.batch + 1} of the same plan does now ({len(changed)} batch(es) differ); "
                "the batches must not change while an apply is under way, so nothing was written. Finish it with "
                "the emailsync version that started it, or re-plan"
            )
    return batches


class BatchedApply:
    """One target's batched apply, run as the target's step of the PostgreSQL stage."""

    def __init__(self, store: _Target, batches: Batches, done: list[BatchRecord], on_stale: str, write: Journal):
        self.store = store
        self.batches = batches
        self.done = {b.batch: b for b in done}
        self.on_stale = on_stale
        self.write = write
        self.stopped = False
        self.conn = store.conn
        self.tables = [m.display for m in store._metas]
        self.outcomes = CompactOutcomes()
        self.committed_now = 0  # batches this run committed

    def _halted(self) -> bool:
        return self.stopped or self.store.online.pause.requested

    def stop(self) -> None:
        """A sibling target failed or Ctrl-C came twice: no batch starts after the one in flight, and a wait for a
        replica or the rate ends now (the pause they watch)."""
        self.stopped = True
        self.store.online.pause.request("stopped")

    def run(self) -> TargetResult:
        s, online = self.store, self.store.online
        with online.pause.graceful():  # a first signal now waits for the batch in flight
            return self._run(s, online)

    def _run(self, s: _Target, online: Online) -> TargetResult:
        res = TargetResult(s.name, self.outcomes)
        todo = [b for b in range(self.batches.count) if b not in self.done]
        ended = -1  # the last batch looked at
        lost = False  # the connection went while a batch ran
        counts: Counter[str] = Counter()
        for rec in self.done.values():
            counts.update(rec.counts)
        try:
            rows_todo = sum(self.batches.rows[b] for b in todo)
            done_rows = 0
            rate = Rate(online.max_rate, online.pause)
            with progress.task(f"apply {s.name} ({len(todo)} batches)", total=rows_todo) as bar:
                for b in range(self.batches.count):
                    ended = b
                    if b in self.done:
                        self._recorded(b, self.done[b])
                        continue
                    if online.max_replica_lag is not None and not self._halted():
                        try:
                            wait_for_lag(self._lag, online.max_replica_lag, online.pause, self._say_lag)
                        except UserError as e:
                            res.error = f"{e}; the {b} batch(es) before batch {b + 1} stay committed"
                            break
                    if self._halted():
                        res.paused = True
                        break
                    try:
                        one = self._batch(b)
                    except psycopg.OperationalError as e:
                        # The connection is gone: whether this batch committed is for its ledger row to say (a rerun
                        # reads it), and no outcome of it or of later batches can be read back now.
                        msg = (e.diag.message_primary or str(e)).strip()
                        res.error = (
                            f"the connection was lost during batch {b + 1} of {self.batches.count} ({msg}); the "
                            f"batches before it stay committed, and this batch's and later actions' outcomes are "
                            "not in this report. Apply the plan again to go on: the ledger records which batches "
                            "committed"
                        )
                        lost = True
                        break
                    if one.paused:  # asked to pause while the batch waited to be tried again
                        res.paused = True
                        break
                    self.committed_now += one.committed
                    for ids, _, st, _, _ in _statuses(one):
                        counts[st] += len(ids)
                    self._add(one)
                    if one.error:
                        res.error = (
                            f"batch {b + 1} of {self.batches.count}: {one.error}; the {b} batch(es) before it "
                            "stay committed and none after it ran"
                        )
                        break
                    rows = self.batches.rows[b]
                    bar.advance(rows)
                    rate.wrote(rows)
                    done_rows += rows
                    per_s = rate.per_s()
                    online.emit(
                        {
                            "event": "batch",
                            "target": s.name,
                            "batch": b + 1,
                            "batches": self.batches.count,
                            "rows": rows,
                            "rows_done": done_rows,
                            "rows_todo": rows_todo,
                            "rows_per_s": round(per_s, 1),
                            "eta_s": round((rows_todo - done_rows) / per_s, 1) if per_s else None,
                        }
                    )
            ran_through = not (res.paused or res.error)
            if (res.paused or res.error) and not lost:
                why = (
                    "paused before this batch; apply the plan again to go on"
                    if res.paused and not res.error
                    else "not run: an earlier batch failed"
                )
                start = ended if res.paused else ended + 1
                self._not_run(range(start, self.batches.count), "not-applied", why, skip_done=True)
        except BaseException:
            # Interrupted (a second Ctrl-C) or the connection lost: neither complete nor paused, whatever was counted.
            self._finish("incomplete", counts)
            raise
        self._finish(_status(res, counts, ran_through), counts)
        res.committed = self.committed_now > 0 and not res.error
        res.batches = {
            "batch_size": self.store._batch_size or 0,
            "batches": self.batches.count,
            "committed": len(self.done) + self.committed_now,
            "resumed": len(self.done),
        }
        return res

    # -- one batch ------------------------------------------------------------------------------------------

    def _batch(self, b: int) -> TargetResult:
        s, online = self.store, self.store.online
        ledger = s._ledger
        lock_timeout, statement_timeout = s._timeouts()
        entry = {"event": "write", "target": s.name, "store": s.kind, "op": "transaction", "batch": b + 1}
        attempt = 0
        while True:
            started = time.time()
            lines, md5 = take(self.conn, b)

            def record(outcomes: CompactOutcomes, b: int = b, md5: str = md5, started: float = started) -> None:
                if isinstance(ledger, PgLedger):
                    counts = status_counts(outcomes)
                    stale: dict[str, str] = {}
                    if any(n and st not in DONE for st, n in counts.items()):  # read the ids only then
                        for ids, _, st, _, _ in outcomes.blocks():
                            if st not in DONE:
                                stale.update(dict.fromkeys(ids, st))
                    ledger.record_batch(
                        BatchRecord(
                            b,
                            self.batches.count,
                            s._batch_size or 0,
                            md5,
                            self.batches.rows[b],
                            sum(self.batches.rows),
                            counts,
                            stale,
                            "",
                            started,
                        )
                    )

            applier = PostgresApplier(
                self.conn,
                s.name,
                s._metas,
                BatchLines(self.conn, b, self.tables),  # type: ignore[arg-type]  # id, table, kind: all it reads
                self.on_stale,
                lock_timeout,
                statement_timeout,
                before_commit=record,
                loaded=lambda ids: self.write(_journal_batch({**entry, "phase": "before"}, ids)),
                preloaded=lines,
                bars=False,
                others=s._others,
            )
            applier.scope = "batch"
            one = applier.run()
            with contextlib.suppress(psycopg.Error):
                self.conn.rollback()  # BatchLines may have read after a failure
            attempt += 1
            if not (applier.timed_out and retry_after(online, s.name, attempt, one.error, batched=True)):
                break
        if applier.timed_out and online.pause.requested:
            return TargetResult(s.name, paused=True)  # rolled back: the batch runs when the apply goes on
        after = {**entry, "phase": "after", "committed": one.committed, "error": one.error}
        if isinstance(one.outcomes, CompactOutcomes):
            self.write(status_records(after, one.outcomes))
        return one

    # -- outcomes and the ledger -----------------------------------------------------------------------------

    def _add(self, one: TargetResult) -> None:
        for ids, details, status, table, kind in _statuses(one):
            if details is None:
                self.outcomes.add_run(ids, status, table, kind)
            else:
                for aid, d in zip(ids, details, strict=True):
                    self.outcomes.add(aid, Outcome(status, d, table, kind))

    def _recorded(self, b: int, rec: BatchRecord) -> None:
        """A batch an earlier run committed: not run again; its actions come out as that run left them."""
        for line in BatchLines(self.conn, b, self.tables):
            st = rec.stale.get(line.id)
            if st is None:
                self.outcomes.add(line.id, Outcome("already-applied", None, line.table, line.kind))
            else:
                self.outcomes.add(
                    line.id, Outcome(st, f"{st} in batch {b + 1}, committed by run {rec.run_id}", line.table, line.kind)
                )
        self.conn.rollback()

    def _not_run(self, batches: range, status: str, why: str, skip_done: bool = False) -> None:
        for b in batches:
            if skip_done and b in self.done:
                self._recorded(b, self.done[b])
                continue
            for line in BatchLines(self.conn, b, self.tables):
                self.outcomes.add(line.id, Outcome(status, why, line.table, line.kind))
        with contextlib.suppress(psycopg.Error):
            self.conn.rollback()

    def _finish(self, status: str, counts: Counter[str]) -> None:
        ledger = self.store._ledger
        with contextlib.suppress(psycopg.Error):
            self.conn.rollback()
            ledger.finish(status, dict(counts))
            self.conn.commit()

    # -- throttles ---------------------------------------------------------------------------------------------

    def _lag(self) -> float | None:
        return read_lag(self.conn, self.store.target)

    def _say_lag(self, lag: float) -> None:
        online = self.store.online
        online.emit(
            {
                "event": "replica-lag",
                "target": self.store.name,
                "lag_s": round(lag, 1),
                "max_s": online.max_replica_lag,
                "message": f"waiting: replica lag {lag:.1f} s is above --max-replica-lag {online.max_replica_lag:g} s",
            }
        )


def retry_after(online: Online, target: str, attempt: int, error: str | None, *, batched: bool) -> bool:
    """After a transaction that timed out: wait the back-off and say so (True), or give up (False)."""
    if attempt > online.retries_for(batched) or online.pause.requested:
        return False
    wait = backoff(attempt)
    online.emit({"event": "retry", "target": target, "attempt": attempt, "wait_s": wait, "error": error})
    return not online.pause.sleep(wait)


def _status(res: TargetResult, counts: Counter[str], ran_through: bool) -> str:
    """The run's status for the ledger: complete only when every batch has run and every action is done."""
    if res.error:
        return "failed" if counts.get("failed") else "incomplete"
    if res.paused or not ran_through:
        return "paused"
    return "complete" if all(k in DONE for k, n in counts.items() if n) else "incomplete"


def _statuses(one: TargetResult) -> Any:
    if isinstance(one.outcomes, CompactOutcomes):
        return one.outcomes.blocks()
    return (([aid], [o.detail], o.status, o.table, o.kind) for aid, o in one.outcomes.items())


def _journal_batch(entry: dict[str, Any], ids: Any) -> Any:
    return journal_records(entry, ((aid, None) for aid in ids), "actions")
