"""The ledger and lock of a PostgreSQL target: table emailsync.ledger in each database (created on first apply;
`ledger: false` turns it off) and a session-level advisory lock, which the server releases by itself when the
holder's session ends, so a killed apply never leaves it behind. The run's final ledger row is written inside the
apply transaction, so "complete" is recorded if and only if the changes committed.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from emailsync import __version__
from emailsync.config import PostgresTarget
from emailsync.errors import UserError
from emailsync.stores.base import Progress
from emailsync.stores.ledger import LOCK_WAIT_SECONDS, PastRun, Run, only_rechecked, who_text
from emailsync.stores.outcome import DONE

# pg_try_advisory_lock's two int4 keys: 'emsy' and the target's name hashed. Advisory locks are per database
# already; the name keeps two targets that share a database (different tables) from refusing each other.
_PG_LOCK_CLASS = 0x656D7379


def pg_lock_key(target_name: str) -> tuple[int, int]:
    return (_PG_LOCK_CLASS, zlib.crc32(target_name.encode()) & 0x7FFFFFFF)


LEDGER_SCHEMA = "emailsync"


class PgLedger:
    """The lock and ledger of one PostgreSQL target, on the connection that applies to it."""

    def __init__(self, conn: psycopg.Connection, target: PostgresTarget, run: Run) -> None:
        self.conn = conn
        self.target = target
        self.run = run
        self.started = False  # a run that only re-checks a completed target records nothing
        self._replaced = False  # --force: earlier runs' batch records removed (record_batch)

    def lock(self) -> None:
        """Take the database's apply lock (session level: a commit does not release it, a dead session does)."""
        conn = self.conn
        # Name the session so a second applier can say who holds the lock (63 bytes at most).
        conn.execute("SELECT set_config('application_name', %s, false)", (f"emailsync apply {self.run.run_id}",))
        # Polled for a few seconds: the session of an apply killed a moment ago is ended by the server as soon
        # as it notices, and a rerun should not be refused in that instant.
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", pg_lock_key(self.target.name)).fetchone()
            conn.commit()
            if got and got[0]:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        holder = conn.execute(
            """
            SELECT a.pid, a.application_name, a.usename, a.client_hostname, a.client_addr::text,
                   to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.classid = %s AND l.objid = %s AND l.objsubid = 2
            """,
            pg_lock_key(self.target.name),
        ).fetchone()
        conn.rollback()
        who = "another session"
        if holder:
            pid, app, usename, chost, caddr, since = holder
            where = chost or caddr or "local"
            who = f"{app or 'a session'} (database user {usename}, pid {pid}, from {where}, since {since})"
        raise UserError(
            f"target {self.target.name!r} is locked: another emailsync apply is running on this database: {who}. "
            "Wait for it to finish; PostgreSQL releases the lock by itself when that session ends"
        )

    def ensure(self) -> None:
        if not self.target.ledger:
            return
        # Created once (by the first apply, or by an administrator for a role without CREATE): not re-created,
        # since CREATE ... IF NOT EXISTS needs the privilege even when there is nothing to create. The batches table
        # came later than the ledger: a database may have the one without the other.
        found = self.conn.execute(
            "SELECT to_regclass(%s), to_regclass(%s)", (f"{LEDGER_SCHEMA}.ledger", f"{LEDGER_SCHEMA}.batches")
        ).fetchone()
        self.conn.rollback()
        if found and found[0] is not None and found[1] is not None:
            return
        try:
            self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(LEDGER_SCHEMA)))
            self.conn.execute(
                sql.SQL(
                    """
                    CREATE TABLE IF NOT EXISTS {}.ledger (
                        run_id text NOT NULL,
                        target text NOT NULL,  -- targets may share a database (different tables)
                        plan_digest text NOT NULL,
                        status text NOT NULL,
                        started_at timestamptz NOT NULL,
                        finished_at timestamptz,
                        applied_by text NOT NULL,
                        host text NOT NULL,
                        approver text,
                        tool_version text NOT NULL,
                        counts jsonb,
                        PRIMARY KEY (run_id, target)
                    )
                    """
                ).format(sql.Identifier(LEDGER_SCHEMA))
            )
            # One row per committed batch of a batched apply (--batch-size), written in the batch's transaction:
            # a rerun of the plan skips these batches, and `emailsync status` reads the progress here.
            self.conn.execute(
                sql.SQL(
                    """
                    CREATE TABLE IF NOT EXISTS {}.batches (
                        plan_digest text NOT NULL,
                        target text NOT NULL,
                        batch int NOT NULL,  -- from 0, in the order they run
                        batches int NOT NULL,  -- how many the target's actions make at this size
                        batch_size int NOT NULL,
                        ids_md5 text NOT NULL,  -- which actions the batch held
                        rows_in int NOT NULL,
                        rows_all int NOT NULL,  -- rows of all the target's batches
                        counts jsonb NOT NULL,  -- outcomes by status
                        stale jsonb NOT NULL,  -- id -> why, for each action not applied
                        run_id text NOT NULL,
                        started_at timestamptz NOT NULL,
                        committed_at timestamptz NOT NULL DEFAULT now(),
                        PRIMARY KEY (plan_digest, target, batch)
                    )
                    """
                ).format(sql.Identifier(LEDGER_SCHEMA))
            )
            self.conn.commit()
        except psycopg.Error as e:
            self.conn.rollback()
            if found and found[0] is not None:
                return  # a ledger an administrator made before batches came: batches() says what to grant
            msg = (e.diag.message_primary or str(e)).strip()
            raise UserError(
                f"target {self.target.name!r}: cannot create the ledger tables {LEDGER_SCHEMA}.ledger and "
                f"{LEDGER_SCHEMA}.batches ({msg}); grant the apply role CREATE on the database, create them once as "
                "an administrator, or set `ledger: false` for the target"
            ) from None

    def batches(self, batching: bool) -> list[BatchRecord]:
        """The committed batches of this plan on this target, by any run, in order. A role that may not read the
        batches table (its administrator granted the ledger table only) applies in one transaction, and is told
        what to grant when it asks for batches."""
        if not self.target.ledger or (self.run.force and not batching):
            return []
        # --force replaces the batches' records: DELETE too.
        may = self.conn.execute(
            "SELECT has_table_privilege(t, 'SELECT'), has_table_privilege(t, 'INSERT') "
            "AND (NOT %s OR has_table_privilege(t, 'DELETE')) FROM to_regclass(%s) t",
            (self.run.force, f"{LEDGER_SCHEMA}.batches"),
        ).fetchone()
        self.conn.rollback()
        if not (may and may[0] and (may[1] or not batching)):
            if not batching:
                return []
            raise UserError(
                f"target {self.target.name!r}: apply --batch-size records each batch in {LEDGER_SCHEMA}.batches, "
                f"which is missing or which this role may not read and write; create it (an apply by the database's "
                f"owner does) and grant SELECT, INSERT (and DELETE, for --force) on {LEDGER_SCHEMA}.batches, or apply "
                "without --batch-size; "
                "nothing was written"
            )
        rows = self.conn.execute(
            sql.SQL(
                "SELECT batch, batches, batch_size, ids_md5, rows_in, rows_all, counts, stale, run_id, "
                "extract(epoch FROM started_at)::float8 FROM {}.batches "
                "WHERE plan_digest = %s AND target = %s ORDER BY batch"
            ).format(sql.Identifier(LEDGER_SCHEMA)),
            (self.run.plan_digest, self.target.name),
        ).fetchall()
        self.conn.rollback()
        if self.run.force:
            return []  # --force: every batch runs again (its record is replaced when it commits)
        return [BatchRecord(*r) for r in rows]

    def progress(self) -> Progress:
        """This plan's applies on the target as the ledger records them (reads only, takes no lock)."""
        p = Progress(self.target.name, "postgres", "not started")
        if not self.target.ledger:
            p.state, p.note = "unknown", "the target keeps no ledger (ledger: false)"
            return p
        found = self.conn.execute(
            "SELECT to_regclass(%s), to_regclass(%s)", (f"{LEDGER_SCHEMA}.ledger", f"{LEDGER_SCHEMA}.batches")
        ).fetchone()
        if not found or found[0] is None:
            self.conn.rollback()
            return p
        runs = self.conn.execute(
            sql.SQL(
                "SELECT run_id, status, counts FROM {}.ledger WHERE plan_digest = %s AND target = %s "
                "ORDER BY started_at"
            ).format(sql.Identifier(LEDGER_SCHEMA)),
            (self.run.plan_digest, self.target.name),
        ).fetchall()
        p.runs = len(runs)
        if runs:
            p.state = runs[-1][1]
            counts = runs[-1][2] or {}
            p.rows_done = sum(int(counts.get(k, 0)) for k in DONE)
            p.stale = int(counts.get("stale", 0))
        readable = self.conn.execute("SELECT has_table_privilege(%s, 'SELECT')", (found[1],)).fetchone()
        if found[1] is not None and readable and readable[0]:
            b = self.conn.execute(
                sql.SQL(
                    "SELECT count(*), max(batches), sum(rows_in), max(rows_all), "
                    "sum(COALESCE((counts ->> 'stale')::int, 0)) FROM {}.batches WHERE plan_digest = %s AND target = %s"
                ).format(sql.Identifier(LEDGER_SCHEMA)),
                (self.run.plan_digest, self.target.name),
            ).fetchone()
            if b and b[0]:
                p.batches_done, p.batches, p.rows_done, p.rows_total, p.stale = (int(x or 0) for x in b)
                last = self.conn.execute(
                    sql.SQL(
                        "SELECT sum(rows_in), extract(epoch FROM max(committed_at) - min(started_at))::float8 "
                        "FROM {t}.batches WHERE plan_digest = %s AND target = %s AND run_id = (SELECT run_id FROM "
                        "{t}.batches WHERE plan_digest = %s AND target = %s ORDER BY committed_at DESC LIMIT 1)"
                    ).format(t=sql.Identifier(LEDGER_SCHEMA)),
                    (self.run.plan_digest, self.target.name) * 2,
                ).fetchone()
                if last and last[0] and last[1]:
                    p.rows_per_s = float(last[0]) / float(last[1])
        if p.state == "running":
            # Running now only while an apply holds the target's lock; otherwise it was killed.
            held = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) AND classid = %s AND objid = %s "
                "AND objsubid = 2)",
                pg_lock_key(self.target.name),
            ).fetchone()
            if not (held and held[0]):
                p.state, p.note = "stopped", "its last run ended without finishing (killed?); apply again to go on"
        self.conn.rollback()
        return p

    def record_batch(self, b: BatchRecord) -> None:
        """A batch's record, in the batch's transaction: committed with its changes or not at all."""
        if not self.target.ledger:
            return
        if self.run.force and not self._replaced:
            # --force runs the plan again whole: its batches replace those of earlier runs, with its first commit.
            self.conn.execute(
                sql.SQL("DELETE FROM {}.batches WHERE plan_digest = %s AND target = %s").format(
                    sql.Identifier(LEDGER_SCHEMA)
                ),
                (self.run.plan_digest, self.target.name),
            )
            self._replaced = True
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {}.batches (plan_digest, target, batch, batches, batch_size, ids_md5, rows_in, rows_all, "
                "counts, stale, run_id, started_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s))"
            ).format(sql.Identifier(LEDGER_SCHEMA)),
            (
                self.run.plan_digest,
                self.target.name,
                b.batch,
                b.batches,
                b.batch_size,
                b.ids_md5,
                b.rows,
                b.rows_all,
                Jsonb(b.counts),
                Jsonb(b.stale),
                self.run.run_id,
                b.started_at,
            ),
        )

    def completed(self) -> list[PastRun]:
        if not self.target.ledger:
            return []
        rows = self.conn.execute(
            sql.SQL(
                "SELECT status, started_at, finished_at, applied_by, host, approver, run_id FROM {}.ledger "
                "WHERE plan_digest = %s AND target = %s AND status = 'complete' ORDER BY finished_at"
            ).format(sql.Identifier(LEDGER_SCHEMA)),
            (self.run.plan_digest, self.target.name),
        ).fetchall()
        self.conn.rollback()
        return [
            PastRun(self.target.name, s, _ts(st), _ts(fin), who_text(u, h, ap), rid)
            for s, st, fin, u, h, ap, rid in rows
        ]

    def start(self) -> None:
        if not self.target.ledger:
            return
        self._insert_running()
        self.conn.commit()  # recorded even if the apply is killed
        self.started = True

    def _insert_running(self) -> None:
        r = self.run
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {}.ledger (run_id, target, plan_digest, status, started_at, applied_by, host, approver, "
                "tool_version) VALUES (%s, %s, %s, 'running', %s, %s, %s, %s, %s)"
            ).format(sql.Identifier(LEDGER_SCHEMA)),
            (r.run_id, self.target.name, r.plan_digest, r.started_at, r.user, r.host, r.approver, __version__),
        )

    def finish(self, status: str, counts: dict[str, int]) -> None:
        """Record the end of the run in the current transaction (the caller commits or rolls back with it).

        A run that was not started (it only re-checks a target the ledger records as complete) is recorded here,
        in the same transaction, if it found anything but already-applied actions: what it wrote, or what it found
        stale, belongs in the ledger; a pure re-check does not."""
        if not self.target.ledger or (not self.started and only_rechecked(counts)):
            return
        if not self.started:
            self._insert_running()
        self.conn.execute(
            sql.SQL(
                "UPDATE {}.ledger SET status = %s, finished_at = now(), counts = %s WHERE run_id = %s AND target = %s"
            ).format(sql.Identifier(LEDGER_SCHEMA)),
            (status, Jsonb(counts), self.run.run_id, self.target.name),
        )


@dataclass(frozen=True)
class BatchRecord:
    """A committed batch, as emailsync.batches keeps it."""

    batch: int
    batches: int
    batch_size: int
    ids_md5: str
    rows: int
    rows_all: int
    counts: dict[str, int]
    stale: dict[str, str]
    run_id: str
    started_at: float  # epoch seconds


def _ts(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(v)
