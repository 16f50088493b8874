"""A PostgreSQL target behind the store protocol (stores/base.py): planned from one snapshot, applied in one
transaction with its ledger row inside it, verified without writing.

A target's actions are never held here: they stream from the plan file into the database's action table
(applier.py), and what comes back is read from there.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, ClassVar, Literal, TypedDict

import psycopg

from emailsync.config import LoadedTargets, PostgresTarget
from emailsync.engine.executor import Call, Step
from emailsync.engine.online import DEFAULT_BATCH_LOCK_TIMEOUT, DEFAULT_ONLINE, Online
from emailsync.engine.stages import Stage
from emailsync.errors import UserError
from emailsync.mappings import MappingSet
from emailsync.plan import Action, PostgresAction, Section, Skipped, Store, TargetFingerprint
from emailsync.stores.base import KEYS_KEPT, Journal, Progress, TargetRead, Warn, action_id
from emailsync.stores.ledger import NoLedger, PastRun, Run
from emailsync.stores.outcome import CompactOutcomes, TargetResult, counts_of, ledger_status, status_counts
from emailsync.stores.postgres.applier import PostgresApplier, load_lines
from emailsync.stores.postgres.batched import BatchedApply, check_batchable, cut, read_lag, resume_size, retry_after
from emailsync.stores.postgres.batches import Batches
from emailsync.stores.postgres.catalog import TableMeta, resolve_table
from emailsync.stores.postgres.connection import reached
from emailsync.stores.postgres.journaling import journal_records, status_records
from emailsync.stores.postgres.ledger import BatchRecord, PgLedger
from emailsync.stores.postgres.lines import load_levels, python_lines
from emailsync.stores.postgres.paths import path_list
from emailsync.stores.postgres.planner import PostgresPlanner, TablePlan, TargetPlan


class PostgresStore:
    kind: ClassVar[Store] = "postgres"
    plans_in_a_process: ClassVar[bool] = True  # conflict analysis and the actions' lines are Python work
    sql_lines: ClassVar[bool] = True  # PostgreSQL makes the lines of the tables that qualify (lines.way_of)
    plan_helpers: ClassVar[bool] = True  # and a second connection may make some of them at the same time
    loads_unchecked: ClassVar[bool] = True  # the lines go to the database as bytes (load_lines)

    def __init__(
        self,
        loaded: LoadedTargets,
        index: int,
        connect: Callable[[PostgresTarget], psycopg.Connection],
        online: Online = DEFAULT_ONLINE,
    ) -> None:
        self.target = loaded.config.postgres[index]
        self.online = online
        self._batch_size = online.batch_size  # or the size the ledger records for this plan (resume_size)
        self._done: list[BatchRecord] = []  # batches of this plan committed before (resume_size)
        self._batches: Batches | None = None  # the actions cut into batches (past_runs), when batched
        self.name = self.target.name
        self._loaded, self._index, self._connect = loaded, index, connect
        self._where = f"{loaded.path.name}: postgres[{index}]"
        self._conn: psycopg.Connection | None = None
        self._rows: Iterable[Action] = ()
        self._full = True
        self._metas: list[TableMeta] = []
        self._others: list[TableMeta] = []  # the target's other tables (where a unique group's delete may check)
        self._ledger: PgLedger | NoLedger = NoLedger()
        self._preloaded: int | None = None  # actions prepare() loaded into the session's _es_lines

    # -- plan ------------------------------------------------------------------------------------------------

    def reader(self, mset: MappingSet) -> Step[TargetRead]:
        planner = PostgresPlanner(
            self.target,
            self._where,
            mset.unscoped(f"PostgreSQL target {self.name!r} has no client column, so client_id is ignored there"),
            self._loaded.config.match,
            self._connect,
            self.sql_lines,
            self.plan_helpers,
            groups=tuple(
                (g.label(i), g)
                for i, g in enumerate(self._loaded.config.unique_groups)
                if g.members[0].target == self.name
            ),
        )

        def read() -> TargetRead:
            tp = planner.plan()
            return TargetRead(
                self.name,
                tp.reached,
                warnings=tp.warnings,
                notes=tp.notes,
                edges=tp.edges,
                state=tp,
                tables=tp.table_names,
            )

        return Call(read, planner.cancel)

    def actions(self, read: TargetRead, levels: dict[int, int], skipped: list[Skipped]) -> Iterator[Action]:
        tp: TargetPlan = read.state
        skipped.extend(tp.skipped)
        for tab in tp.tables:
            if not tab.analysed:  # an analysed table's actions went into its sections
                yield from _table_actions(tp, tab, levels, skipped)
            tab.rows = []  # let a table's planned rows go once its actions are made

    def sections(self, read: TargetRead, levels: dict[int, int]) -> list[Section]:
        tp: TargetPlan = read.state
        if tp.conn is None:
            return []
        load_levels(tp.conn, levels)
        for tab in tp.tables:
            if tab.analysed:  # the troubled rows' lines, for PostgreSQL to merge into the table's sections
                python_lines(tp.conn, tab.meta.index, _table_actions(tp, tab, levels, tp.skipped))
                tab.rows = []
        return tp.sections(levels)

    # -- apply and verify ------------------------------------------------------------------------------------

    def take(self, rows: Iterable[Action], planned: int, skip_live: bool) -> int:
        # Streamed into the action table by the applier (raw lines when the rows come from a plan file).
        self._rows = rows
        return planned

    def reach(self) -> TargetFingerprint:
        self._conn = self._connect(self.target)
        return TargetFingerprint(store=self.kind, **reached(self._conn))

    @property
    def conn(self) -> psycopg.Connection:
        assert self._conn is not None, "reach() first"
        return self._conn

    def prepare(self, columns: dict[str, set[str]], run: Run | None, warn: Warn) -> None:
        if run is not None:
            self._ledger = PgLedger(self.conn, self.target, run)
            self._ledger.lock()
        self._metas, self._others = _table_metas(self.conn, self._loaded, self._index, columns)
        self.conn.rollback()
        if run is not None and self.online.batch_size is not None:
            # Refused before the ledger is made ready: nothing written yet.
            check_batchable(self.name, self._metas)
            if self.online.max_replica_lag is not None:
                try:
                    read_lag(self.conn, self.target)
                except UserError as e:
                    raise UserError(f"{e}; nothing was written") from None
        if run is not None:
            # The lines go in now, while the plan's check may still run (loads_unchecked): a table of this session,
            # committed with nothing else, that the writing transaction reads. Nothing else is written before the
            # check has ended: the ledger is made ready by past_runs.
            _, statement_timeout = self._timeouts()
            if statement_timeout:
                self.conn.execute("SELECT set_config('statement_timeout', %s, true)", (statement_timeout,))
            self._preloaded = load_lines(self.conn, self.name, self._metas, self._rows, session=True)
            self.conn.commit()

    def past_runs(self) -> list[PastRun]:
        self._ledger.ensure()  # the first write to the target (its ledger table), once the plan's check has ended
        if isinstance(self._ledger, PgLedger):
            # A plan whose apply was batched goes on in batches of the same size (the ledger knows which are done).
            self._batch_size, self._done = resume_size(self.name, self._ledger, self.online.batch_size)
        if self._batch_size is not None:
            planned = len(self._rows) if isinstance(self._rows, Sized) else None
            self._batches = cut(
                self.conn, self.name, self._metas, self._batch_size, self._done, self._preloaded or 0, planned
            )
        return self._ledger.completed()

    def _timeouts(self) -> tuple[str | None, str | None]:
        """lock_timeout and statement_timeout for this run: apply's options, else the target's; a batched apply
        waits at most DEFAULT_BATCH_LOCK_TIMEOUT for a lock unless targets.yaml sets lock_timeout."""
        lock = self.online.lock_timeout or (
            self.target.lock_timeout
            if self._batch_size is None or "lock_timeout" in self.target.model_fields_set
            else DEFAULT_BATCH_LOCK_TIMEOUT
        )
        return lock, self.online.statement_timeout or self.target.statement_timeout

    def start_run(self) -> None:
        self._ledger.start()

    def live_actions(self) -> list[Action]:
        return []

    def step(self, stage: Stage, on_stale: str, write: Journal) -> Step[TargetResult] | None:
        if stage.store != self.kind or stage.live:
            return None
        conn = self.conn

        def stop() -> None:  # cancelling the statement in flight rolls the transaction back, and it reports so
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe()

        if self._batches is not None:
            batched = BatchedApply(self, self._batches, self._done, on_stale, write)

            def stop_batches() -> None:
                batched.stop()
                stop()

            return Call(batched.run, stop_batches)
        return Call(functools.partial(self._apply, on_stale, write), stop)

    def _apply(self, on_stale: str, write: Journal) -> TargetResult:
        """One database's transaction, journaled before and after; its ledger row commits with the changes. A
        transaction that timed out (a lock held elsewhere) is tried again after a back-off when --retries allows."""
        conn, ledger = self.conn, self._ledger
        entry = {"event": "write", "target": self.name, "store": self.kind, "op": "transaction"}
        lock_timeout, statement_timeout = self._timeouts()
        attempt = 0
        while True:
            applier = PostgresApplier(
                conn,
                self.name,
                self._metas,
                self._rows,
                on_stale,
                lock_timeout,
                statement_timeout,
                before_commit=lambda o: ledger.finish(ledger_status(c := status_counts(o), self._full), c),
                # Journaled once the actions are loaded (ids read back from the database, not from another pass
                # over the plan) and before anything is written.
                loaded=lambda ids: write(
                    journal_records({**entry, "phase": "before"}, ((aid, None) for aid in ids), "actions")
                ),
                preloaded=self._preloaded,
                others=self._others,
            )
            res = applier.run()
            attempt += 1
            if not (applier.timed_out and retry_after(self.online, self.name, attempt, res.error, batched=False)):
                break
        if not res.committed:
            with contextlib.suppress(psycopg.Error):
                failed = any(o.status == "failed" for o in res.outcomes.values())
                ledger.finish("failed" if failed else "incomplete", counts_of(res))
                conn.commit()
        # What committed, action by action: the journal alone then tells what a killed run did. A large
        # transaction's outcomes go in several "after" records of BATCH actions (one fsync for all), never one line.
        after = {**entry, "phase": "after", "committed": res.committed, "error": res.error}
        if isinstance(res.outcomes, CompactOutcomes):
            write(status_records(after, res.outcomes))
        else:
            write(journal_records(after, ((aid, o.status) for aid, o in res.outcomes.items()), "outcomes"))
        return res

    def finish(self, results: list[TargetResult]) -> None:
        pass  # the ledger row was written inside the transaction

    def classify(self) -> tuple[CompactOutcomes, dict[str, dict[str, Any]]]:
        applier = PostgresApplier(
            self.conn,
            self.name,
            self._metas,
            self._rows,
            "abort",
            None,
            self.target.statement_timeout,
            others=self._others,
        )
        found = applier.classify_only()
        return found, _keys_of_drifted(found, self._rows)

    def progress(self, plan_digest: str) -> Progress:
        self.reach()
        return PgLedger(self.conn, self.target, Run(plan_digest, None)).progress()

    def request_costs(self) -> list[dict[str, Any]]:
        return []  # one connection, a few statements: nothing paid by the request

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _table_metas(
    conn: psycopg.Connection, loaded: LoadedTargets, idx: int, columns: dict[str, set[str]]
) -> tuple[list[TableMeta], list[TableMeta]]:
    """The tables the plan changes, resolved now, each still listed with the columns the plan changes; and the
    target's other tables (a unique group's delete checks the row keeping the address in its own table)."""
    target = loaded.config.postgres[idx]
    metas = [
        resolve_table(conn, target, f"{loaded.path.name}: postgres[{idx}].tables[{i}]", i, t)
        for i, t in enumerate(target.tables)
    ]
    known = {m.display: m for m in metas}
    used = []
    for table, planned_columns in columns.items():
        m = known.get(table)
        if m is None:
            raise UserError(
                f"the plan changes {table!r} in target {target.name!r}, which {loaded.path.name} no longer lists; "
                "apply with the targets file the plan was made from"
            )
        missing = planned_columns - set(m.email_columns)
        if missing:
            raise UserError(
                f"the plan changes columns {sorted(missing)} of {table!r}, which {loaded.path.name} does not "
                "list for that table; apply with the targets file the plan was made from"
            )
        used.append(m)
    return used, [m for m in metas if m not in used]


def _keys_of_drifted(found: CompactOutcomes, rows: Iterable[Action]) -> dict[str, dict[str, Any]]:
    """The keys of the first KEYS_KEPT drifted (stale) actions, in one more pass over the target's actions."""
    want = set(itertools.islice((aid for aid, o in found.items() if o.status == "stale"), KEYS_KEPT))
    keys: dict[str, dict[str, Any]] = {}
    if want:
        for a in rows:
            if a.id in want:
                keys[a.id] = a.key
                if len(keys) == len(want):
                    break
    return keys


class _Where(TypedDict):
    """The fields every action on one row shares."""

    store: Literal["postgres"]
    target: str
    table: str
    key: dict[str, Any]


def _table_actions(
    tp: TargetPlan, tab: TablePlan, levels: dict[int, int], skipped: list[Skipped]
) -> Iterator[PostgresAction]:
    """The actions of one planned table, in its rows' order; its skipped changes are added to `skipped`."""
    meta = tab.meta
    col_order = {c: n for n, c in enumerate(meta.email_columns)}
    for row in tab.rows:
        base: _Where = {"store": "postgres", "target": tp.target.name, "table": meta.display, "key": row.key}
        if row.fate == "skip":
            for ch in row.changes.values():
                skipped.append(
                    Skipped(
                        target=tp.target.name,
                        table=meta.display,
                        key=row.key,
                        column=ch.column,
                        old=ch.old,
                        new=ch.new,
                        reason=row.reason or "",
                    )
                )
            continue
        delete_step = None
        if row.fate == "delete":
            conflict_cols = row.conflict[0].columns if row.conflict else set()
            cause = [c for c in meta.email_columns if c in row.changes and c in conflict_cols]
            ch = row.changes[(cause or list(row.changes))[0]]
            if row.conflict_check is None or row.image is None:
                raise UserError(f"internal: no image for the row to delete in {meta.display} {row.keystr}")
            # Each level has three steps: deletes whose entries another row takes at that level, updates,
            # then the other deletes (after the rows referencing them have moved).
            delete_step = 3 * max(levels.get(e, 0) for e in row.delete_entries) + 2
            for other, cols in row.arrivals:
                arrive = 3 * max((levels.get(e, 0) for e in other.entries_for(cols)), default=0) + 1
                delete_step = min(delete_step, arrive - 1)
            yield (
                PostgresAction(
                    id=action_id("postgres", tp.target.name, meta.display, row.keystr, ch.column, "delete"),
                    kind="delete-on-conflict",
                    step=delete_step,
                    conflict=row.conflict_check,
                    column=ch.column,
                    old=ch.old,
                    new=ch.new,
                    mappings=list(ch.entries),
                    row=row.image,
                    reason=row.reason,
                    **base,
                )
            )
        for ch in sorted(row.kept_changes().values(), key=lambda c: col_order[c.column]):
            step = 3 * max((levels.get(e, 0) for e in ch.entries), default=0) + 1
            if delete_step is not None and step > delete_step:
                continue  # the row is deleted before this value moves: nothing to keep valid
            yield (
                PostgresAction(
                    id=action_id("postgres", tp.target.name, meta.display, row.keystr, ch.column, ch.kind),
                    kind=ch.kind,
                    step=step,
                    column=ch.column,
                    old=ch.old,
                    new=ch.new,
                    paths=path_list(meta.paths[ch.column]) if ch.column in meta.paths else None,
                    mappings=list(ch.entries),
                    row=row.image,
                    **base,
                )
            )
