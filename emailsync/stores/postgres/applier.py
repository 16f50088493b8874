"""Applying a plan's PostgreSQL actions to one database: one transaction, set-based, verified.

The sequence inside the transaction:
1. the target's actions are copied into a temporary table (one COPY, no per-row round trips);
2. every planned row is locked (FOR UPDATE; rows a delete depends on, FOR SHARE) and classified against the
   plan: pending (still holds the planned old value; for a delete, still equal to the whole planned row),
   already-applied, or stale;
3. steps run in order; each step is ONE statement (writable CTEs over every table) so foreign keys checked at
   the end of a statement see parents and children change together. Deletes run in steps of their own, each
   only while the row holding its entry still does (or is a planned row going ahead) and no row references it;
4. every touched row is read back and compared with its pre-write image plus the planned new values;
5. commit only if nothing is stale (or --on-stale skip) and everything verified; otherwise roll back.

A table whose actions are plain value changes (_plain_tables) skips the action table. If nothing in the database
can make its UPDATE change more than the columns it sets (no trigger, rule, policy, child table or deferred
constraint: _closed_tables), it is written first, by one UPDATE conditional on every planned old value, and kept only
if every planned row was found so (_write_closed); it is read back column by column (_verify_closed). Otherwise, or if
that write fell short, its rows are locked and imaged into _es_pre and judged there (_hold_plain), written by one
conditional UPDATE (_write_plain) and read back whole against their images (_verify_plain). Every other table is
locked and judged before any is written; one not all pending goes the way above, which reports each row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import psycopg
from psycopg import sql

from emailsync import progress
from emailsync.errors import UserError
from emailsync.plan import SKIPPED_KIND, Action, TargetRows, chunked, dumps, line_of
from emailsync.stores.outcome import CompactOutcomes, Outcome, TargetResult
from emailsync.stores.postgres.catalog import ForeignKey, TableMeta, foreign_keys, in_email_foreign_key
from emailsync.stores.postgres.paths import path_list, rebased


def _column_json(m: TableMeta, T: sql.Identifier) -> sql.Composable:
    """to_jsonb(T.*) -> a.col without rendering the whole row (a wide row, once per comparison): the planned
    column's own value, as to_jsonb renders it inside the row."""
    return sql.SQL("(CASE a.col {} END)").format(
        sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN to_jsonb({}.{})").format(sql.Literal(c), T, sql.Identifier(c))
            for c in m.email_columns
        )
    )


def _delete_premise(metas: list[TableMeta], m: TableMeta, W: sql.Identifier, i: int) -> sql.Composable:
    """Why a delete-on-conflict may go ahead: the row that takes its entry still holds it, or is a planned row whose
    move goes ahead; for a unique group's delete (its conflict names a table), the row keeping the address in that
    table still holds it. The same test at classification (so verify and --on-stale abort see it) and in the DELETE."""
    elsewhere = [
        sql.SQL(
            "WHEN {name} THEN EXISTS (SELECT 1 FROM {tbl} {H} WHERE {km} "
            "AND to_jsonb({H}.*) @> (a.conflict -> 'values'))"
        ).format(
            name=sql.Literal(x.display),
            tbl=x.ident,
            H=x.alias(f"h{j}"),
            km=x.key_match(x.alias(f"h{j}"), sql.SQL("(a.conflict -> 'key')")),
        )
        for j, x in enumerate(metas)
    ]
    return sql.SQL(
        "CASE WHEN a.conflict ? 'table' THEN CASE a.conflict ->> 'table' {elsewhere} ELSE false END "
        "WHEN a.conflict ? 'winner' THEN "
        "EXISTS (SELECT 1 FROM _es_act w WHERE w.tbl = {i} AND w.key = a.conflict -> 'winner' "
        "AND w.kind <> 'delete-on-conflict' AND w.status IN ('pending', 'applied', 'already-applied')) "
        "AND NOT EXISTS (SELECT 1 FROM _es_act w WHERE w.tbl = {i} "
        "AND w.key = a.conflict -> 'winner' AND w.status = 'stale') "
        "ELSE EXISTS (SELECT 1 FROM {tbl} {W} WHERE {kmw} AND to_jsonb({W}.*) @> (a.conflict -> 'values')) END"
    ).format(
        elsewhere=sql.SQL(" ").join(elsewhere),
        tbl=m.ident,
        W=W,
        kmw=m.key_match(W, sql.SQL("(a.conflict -> 'key')")),
        i=sql.Literal(i),
    )


# Each action's status once every step has run: a pending action left is one a step wrote (see _run_step).
_WRITTEN = "CASE status WHEN 'pending' THEN 'applied' ELSE status END"


def _working_memory(conn: psycopg.Connection) -> None:
    """Room to sort and hash the action table in memory, for this transaction only: with the default 4 MB a plan of
    100k actions sorts through temporary files at every step. (temp_buffers is not raised: PostgreSQL refuses to
    change it once the session has used a temporary table, which a pooled session may have.)"""
    conn.execute("SELECT set_config('work_mem', '64MB', true)")


class _Rollback(Exception):
    """Something the classification did not foresee happened during the writes: refuse to guess."""


def load_lines(
    conn: psycopg.Connection, target: str, metas: list[TableMeta], actions: Iterable[Action], *, session: bool = False
) -> int:
    """The target's plan lines, copied in and taken apart once by PostgreSQL into _es_lines (no parsing in Python: a
    line read from a file goes over as it is); how many actions it holds. `session`: the table outlives the
    transaction (loaded by prepare, while the plan's check still runs; used by the transaction that writes)."""
    drop = "" if session else " ON COMMIT DROP"
    # A line is canonical JSON, so it holds no tab, newline or carriage return: only backslashes need escaping for
    # COPY's text format.
    conn.execute(f"CREATE TEMP TABLE _es_raw (doc jsonb NOT NULL){drop}")  # LiteralString: constants only
    chunks = actions.chunks() if isinstance(actions, TargetRows) else chunked(map(line_of, actions))
    with conn.cursor().copy("COPY _es_raw (doc) FROM STDIN") as cp:
        for chunk in chunks:
            cp.write(chunk.replace(b"\\", b"\\\\"))
    # Lines of other targets or skipped changes (TargetRows.chunks may pass them) are left out here; old and new left
    # out of a line (null) stay JSON null, as the comparisons expect. k: the key's text, bytewise (cheaper to group
    # and sort than jsonb). n: the line's place in the plan file (one scan of the table as COPY filled it: a temporary
    # table is never read by parallel workers), the order batches.split keeps.
    loaded = conn.execute(
        f"CREATE TEMP TABLE _es_lines{drop} AS "  # LiteralString: constants only
        """
        SELECT row_number() OVER ()::int AS n, array_position(%s::text[], doc ->> 'table') - 1 AS tbl,
               (doc ->> 'step')::int AS step, doc ->> 'id' AS id, doc ->> 'kind' AS kind,
               COALESCE(doc ->> 'column', '') AS col, doc -> 'key' AS key,
               COALESCE(doc -> 'old', 'null') AS old, COALESCE(doc -> 'new', 'null') AS new,
               NULLIF(doc -> 'row', 'null') AS image, NULLIF(doc -> 'conflict', 'null') AS conflict,
               NULLIF(doc -> 'paths', 'null') AS paths,
               doc ->> 'kind' = 'insert-row' AS ins, (doc -> 'key')::text COLLATE "C" AS k
        FROM _es_raw
        WHERE doc ->> 'target' = %s AND doc ->> 'kind' <> %s AND doc ->> 'table' = ANY(%s::text[])
        """,
        ([m.display for m in metas], target, SKIPPED_KIND, [m.display for m in metas]),
    ).rowcount
    conn.execute("DROP TABLE _es_raw")
    return loaded


class PostgresApplier:
    def __init__(
        self,
        conn: psycopg.Connection,
        target: str,
        metas: list[TableMeta],
        actions: Iterable[Action],
        on_stale: str,
        lock_timeout: str | None,
        statement_timeout: str | None,
        before_commit: Callable[[CompactOutcomes], None] | None = None,
        loaded: Callable[[Iterator[str]], None] | None = None,
        preloaded: int | None = None,
        bars: bool = True,
        others: Sequence[TableMeta] = (),
    ) -> None:
        self.conn = conn
        self.others = list(others)  # the target's tables without actions: where a unique group's delete may check
        self.bars = bars  # its own progress bars (a batched apply draws one bar for all its batches instead)
        self.scope = "database"  # what one run() writes or rolls back (a batched apply: "batch")
        self.timed_out = False  # the run failed on lock_timeout or statement_timeout: worth retrying later
        self.preloaded = preloaded  # the actions load_lines put in _es_lines already (prepare), if it did
        self.before_commit = before_commit
        self.loaded = loaded  # told the ids of the actions once they are in the action table, before any write
        self.target = target
        self.metas = metas
        self.tbl_no = {m.display: i for i, m in enumerate(metas)}
        self.actions = actions
        self.on_stale = on_stale
        self.lock_timeout = lock_timeout
        self.statement_timeout = statement_timeout
        self.fks: list[ForeignKey] = []
        self._special: set[int] = set()  # tables whose actions look rows up by key (_load)
        self._plain: list[int] = []  # tables written by one conditional UPDATE each (_write_closed, _write_plain)
        self._closed: list[int] = []  # of those, the ones written first, without images (_write_closed)
        self._joinable = False
        self._found: dict[int, int] = {}  # plain table -> its rows held (_hold_plain)

    def run(self) -> TargetResult:
        res = TargetResult(self.target)
        conn = self.conn
        try:
            for name, value in (("lock_timeout", self.lock_timeout), ("statement_timeout", self.statement_timeout)):
                if value:
                    conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            _working_memory(conn)
            self.fks = foreign_keys(conn, [m.oid for m in self.metas])
            self._load_lines()
            plain = self._plain_tables()
            if plain:
                # Two actions with one id fail here, before anything is written (the action table's key does so for
                # the other tables' actions; a plain table's never enter it).
                # A hash of the ids, not a key: half the time of building a unique index that nothing looks up by.
                twice = conn.execute("SELECT id FROM _es_lines GROUP BY id HAVING count(*) > 1 LIMIT 1").fetchone()
                if twice is not None:
                    raise _Rollback(f"two actions have the id {twice[0]!r} (the plan was edited); nothing was written")
                conn.execute(
                    "CREATE TEMP TABLE _es_pre (tbl int NOT NULL, key jsonb NOT NULL, ids text[] NOT NULL, "
                    "old jsonb NOT NULL, new jsonb NOT NULL, img jsonb NOT NULL, pending bool NOT NULL) ON COMMIT DROP"
                )
            if self.loaded is not None:
                self.loaded(self._ids())
            # A closed table's write changes nothing any other table's judgement reads, so it goes first and alone.
            closed = self._closed_tables(plain)
            if closed:
                with self._task(f"apply {self.target}", total=sum(plain[i] for i in closed)) as bar:
                    for i in closed:
                        if self._write_closed(i, self.metas[i], plain[i]):
                            self._closed.append(i)
                        bar.advance(plain[i])
            # Every planned row of every other table is locked and judged before anything more is written, so no
            # table is judged on what this apply's own writes did (a trigger). A plain table whose rows all still
            # hold their planned values is written by one UPDATE below; any other goes the step-by-step way, which
            # says why.
            held = [i for i in sorted(plain) if i not in self._closed and self._hold_plain(i, self.metas[i], plain[i])]
            self._plain = sorted(self._closed + held)
            self._load([i for i in range(len(self.metas)) if i not in self._plain])
            for i, m in enumerate(self.metas):
                if i not in self._plain:
                    self._classify(i, m)
            details = self._stale_details()
            if details and self.on_stale == "abort":
                return self._abort(res, details, "stale rows and --on-stale abort")
            per_step = conn.execute("SELECT step, count(*) FROM _es_act GROUP BY step ORDER BY step").fetchall()
            written = sum(plain[i] for i in held)
            with self._task(f"apply {self.target}", total=written + sum(n for _, n in per_step)) as bar:
                for i in held:
                    self._write_plain(i, self.metas[i])
                bar.advance(written)
                for step, n in per_step:
                    self._run_step(step)
                    bar.advance(n)
            late = {k: v for k, v in self._stale_details().items() if k not in details}
            details.update(late)
            if late and self.on_stale == "abort":
                return self._abort(res, details, "stale rows and --on-stale abort")
            mismatches = self._verify()
            outcomes = CompactOutcomes()
            rows = self._every(_WRITTEN)
            if self._plain and self._joinable and not mismatches:
                # Every action of a plain table was applied: their ids in blocks, the other tables' row by row.
                names = [m.display for m in self.metas]
                for tbl, kind, ids in self._id_blocks(self._in_plain()):
                    outcomes.add_run(ids, "applied", names[tbl], kind)
                rows = f"SELECT id, {_WRITTEN}, tbl, kind FROM _es_act"
            run: list[str] = []  # ids of consecutive outcomes alike and without detail, added at once
            alike: tuple[str, str, str] | None = None
            for aid, status, table, kind in self._rows(rows):
                if aid in mismatches:
                    o = Outcome("failed", "verification mismatch: " + mismatches[aid], table, kind)
                elif mismatches and status != "stale":
                    o = Outcome("not-applied", "rolled back: verification failed", table, kind)
                elif status != "stale":
                    if (status, table, kind) != alike or len(run) >= 10_000:
                        if alike is not None:
                            outcomes.add_run(run, *alike)
                        run, alike = [], (status, table, kind)
                    run.append(aid)
                    continue
                else:
                    o = Outcome(status, details.get(aid), table, kind)
                if alike is not None:
                    outcomes.add_run(run, *alike)
                    run, alike = [], None
                outcomes.add(aid, o)
            if alike is not None:
                outcomes.add_run(run, *alike)
            res.outcomes = outcomes
            if mismatches:
                conn.rollback()
                res.error = f"{len(mismatches)} action(s) failed verification; the database was rolled back"
                return res
            if self.before_commit is not None:
                # The ledger's record commits with the changes, or not at all.
                self.before_commit(outcomes)
            conn.commit()
            res.committed = True
            return res
        except (psycopg.Error, _Rollback) as e:
            # If the connection is gone, the server has rolled the transaction back already.
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            msg = str(e) if isinstance(e, _Rollback) else (e.diag.message_primary or str(e)).strip()
            # Worth trying again later: a lock held elsewhere, a statement too slow now, a deadlock with another writer.
            self.timed_out = isinstance(e, psycopg.errors.LockNotAvailable | psycopg.errors.TransactionRollback) or (
                isinstance(e, psycopg.errors.QueryCanceled) and "statement timeout" in msg
            )
            res.error = f"database error, rolled back: {msg}"
            failed = CompactOutcomes()
            for a in self.actions:  # read again: the action table went with the transaction
                failed.add(a.id, Outcome("failed", res.error, a.table, a.kind))
            res.outcomes = failed
            return res

    def _task(self, description: str, total: int) -> contextlib.AbstractContextManager[progress.Task]:
        return progress.task(description, total) if self.bars else contextlib.nullcontext(progress.Task())

    def _ids(self) -> Iterator[str]:
        """Every action's id, streamed, in the action table's own order (the journal's readers take them as a set;
        sorting millions of ids cost a sort in the server for nothing)."""
        if self._joinable:
            for _, _, ids in self._id_blocks("true"):
                yield from ids
            return
        with self.conn.cursor(name="_es_ids") as cur:
            cur.itersize = 10_000
            cur.execute("SELECT id FROM _es_lines")
            for (aid,) in cur:
                yield aid

    def _id_blocks(self, where: str) -> Iterator[tuple[int, str, list[str]]]:
        """(table, kind, ids) of the lines `where` chooses, 10,000 ids at a time, each block one string joined by
        PostgreSQL: no work per id in Python but splitting (only when no id holds a newline, _joinable)."""
        with self.conn.cursor(name="_es_id_blocks") as cur:
            cur.itersize = 10
            cur.execute(
                "SELECT tbl, kind, string_agg(id, E'\\n') FROM (SELECT tbl, kind, id, "
                f"(row_number() OVER (PARTITION BY tbl, kind) - 1) / 10000 AS b FROM _es_lines WHERE {where}) s "
                "GROUP BY tbl, kind, b"  # LiteralString: `where` is built from constants and ints only
            )
            for tbl, kind, text in cur:
                yield tbl, kind, text.split("\n")

    def _rows(self, query: str) -> Iterator[tuple[str, str, str, str]]:
        """(id, status, table name, kind) of every action, streamed from a server-side cursor in batches: a
        target of millions of actions is never one result in memory."""
        names = [m.display for m in self.metas]
        with self.conn.cursor(name="_es_outcomes") as cur:
            cur.itersize = 10_000
            cur.execute(query)  # LiteralString: built from constants only
            for aid, status, tbl, kind in cur:
                yield aid, status, names[tbl], kind

    def classify_only(self) -> CompactOutcomes:
        """Each action's state without writing or locking anything (for `emailsync verify`): pending (the
        planned old value is there), already-applied, or stale. Everything runs in a transaction rolled back."""
        try:
            if self.statement_timeout:
                self.conn.execute("SELECT set_config('statement_timeout', %s, true)", (self.statement_timeout,))
            _working_memory(self.conn)
            self.fks = foreign_keys(self.conn, [m.oid for m in self.metas])
            self._load_lines(lock=False)
            self._load()
            for i, m in enumerate(self.metas):
                self._classify(i, m, lock=False)
            details = self._stale_details()
            found = CompactOutcomes()
            # Table by table, in about the plan file's order (kind, then key), so a report reads like the plan.
            query = 'SELECT id, status, tbl, kind FROM _es_act ORDER BY tbl, kind, key::text COLLATE "C", col, id'
            for aid, status, table, kind in self._rows(query):
                found.add(aid, Outcome(status, details.get(aid), table, kind))
            return found
        except _Rollback as e:  # the plan and the tables disagree in a way nothing checked before: say so, once
            raise UserError(f"target {self.target!r}: {e}; please report this with the plan") from None
        finally:
            self.conn.rollback()

    def _abort(self, res: TargetResult, details: dict[str, str], why: str) -> TargetResult:
        # Read before rolling back (the temporary table goes with the transaction): what was already applied
        # before this run stays reported as such, so the journal keeps the record a rollback relies on.
        outcomes = CompactOutcomes()
        for aid, status, table, kind in self._rows(self._every("status")):
            if aid in details:
                outcomes.add(aid, Outcome("stale", details[aid], table, kind))
            elif status == "already-applied":
                outcomes.add(aid, Outcome("already-applied", None, table, kind))
            else:
                outcomes.add(aid, Outcome("not-applied", f"rolled back: {why}", table, kind))
        self.conn.rollback()
        res.outcomes = outcomes
        res.error = f"{len(details)} stale action(s); nothing written to this {self.scope} (--on-stale abort)"
        return res

    # -- 1. load -------------------------------------------------------------------------------------------

    def _load_lines(self, lock: bool = True) -> None:
        loaded = self.preloaded
        if loaded is None:
            loaded = load_lines(self.conn, self.target, self.metas, self.actions)
        expected = len(self.actions) if isinstance(self.actions, Sized) else None
        if expected is not None and loaded != expected:
            # Never apply part of a target's plan without saying so: every action must have found its table.
            raise _Rollback(f"{loaded} of the target's {expected} planned actions were loaded; nothing was written")
        for i, m in enumerate(self.metas):
            for col, paths in m.paths.items():
                self._rebase(i, m, col, paths, lock)

    def _rebase(self, i: int, m: TableMeta, col: str, paths: tuple[tuple[str, ...], ...], lock: bool) -> None:
        """Path actions whose document changed since the plan, elsewhere than at their paths: planned again onto the
        document found (locked, so it stays so), as long as every path still holds its planned old value (old: the
        document found; new: it with the planned values at the paths), or already its planned new one (new: the
        document found, so the action reads as already applied). Any other is left to be judged stale. Only
        actions carrying the column's configured paths: anything else is compared whole, as planned."""
        T = m.alias("t")
        doc = sql.SQL("c.d")
        joins, same_old, same_new, written = rebased(doc, sql.SQL("c.old"), sql.SQL("c.new"), paths, m.prefix)
        self.conn.execute(
            sql.SQL(
                "WITH c AS MATERIALIZED (SELECT p.ctid AS pid, p.old, p.new, to_jsonb({T}.{c}) AS d "
                "FROM _es_lines p JOIN {tbl} {T} ON {km} WHERE p.tbl = {i} AND p.col = {lit} AND p.kind = 'update' "
                "AND p.paths = {paths}::jsonb AND to_jsonb({T}.{c}) IS DISTINCT FROM p.old{lock}), "
                "r AS (SELECT c.pid, CASE WHEN {same_old} THEN c.d END AS o, "
                "CASE WHEN {same_old} THEN {written} WHEN {same_new} THEN c.d END AS n FROM c{joins}) "
                "UPDATE _es_lines p SET old = COALESCE(r.o, p.old), new = r.n FROM r "
                "WHERE p.ctid = r.pid AND r.n IS NOT NULL"
            ).format(
                T=T,
                c=sql.Identifier(col),
                tbl=m.ident,
                km=m.key_match(T, sql.SQL("p.key")),
                i=sql.Literal(i),
                lit=sql.Literal(col),
                paths=sql.Literal(dumps(path_list(paths))),
                lock=sql.SQL(" FOR UPDATE OF {}").format(T) if lock else sql.SQL(""),
                same_old=same_old,
                same_new=same_new,
                written=written,
                joins=joins,
            )
        )

    def _plain_tables(self) -> dict[int, int]:
        """The tables whose actions can be written by one conditional UPDATE each, outside the steps: only plain
        value changes (no whole row, delete or insert), all in one step, no email column in the key (no chains
        through keys) and none in a foreign key (no order among tables). -> {table: its number of actions}."""
        out: dict[int, int] = {}
        stats = self.conn.execute(
            "SELECT tbl, count(*), min(step) = max(step), "
            "bool_and(kind IN ('update', 'array-replace') AND image IS NULL AND conflict IS NULL AND NOT key ? col), "
            "bool_or(strpos(id, E'\\n') > 0) FROM _es_lines GROUP BY tbl"
        ).fetchall()
        # Ids are read back joined by newlines (_id_blocks) unless one holds a newline (a plan edited by hand).
        self._joinable = not any(row[4] for row in stats)
        for tbl, n, one_step, plain, _ in stats:
            m = self.metas[tbl]
            if plain and one_step and not in_email_foreign_key(m, self.fks) and not set(m.email_columns) & set(m.key):
                out[tbl] = n
        return out

    def _load(self, tables: Iterable[int] | None = None) -> None:
        """The action table of the generic path, for these tables (None: all), from _es_lines."""
        self.conn.execute(
            """
            CREATE TEMP TABLE _es_act (
                id text NOT NULL, tbl int NOT NULL, rowid int NOT NULL, kind text NOT NULL,
                step int NOT NULL, col text NOT NULL, key jsonb NOT NULL, post_key jsonb NOT NULL,
                cur_key jsonb NOT NULL, old jsonb, new jsonb, image jsonb, rowcols text[] NOT NULL,
                conflict jsonb, status text, pre jsonb, detail text
            ) WITH (fillfactor = 30) ON COMMIT DROP
            """
        )
        chosen = None if tables is None else sorted(tables)
        if chosen == []:
            return
        # PostgreSQL groups the actions by row (rowid, the columns a row changes, the key it ends under): grouping
        # them in Python cost more per action than the load. A row is its table and key; a re-inserted row is never
        # the row another action moves away from that key.
        # post_key: the key the row ends under, once the plan's changes of its key columns are made.
        self.conn.execute(
            """
            INSERT INTO _es_act (id, tbl, rowid, kind, step, col, key, post_key, cur_key, old, new, image, rowcols,
                                 conflict)
            SELECT r.id, r.tbl, dense_rank() OVER (ORDER BY r.tbl, r.k, r.ins), r.kind, r.step, r.col, r.key,
                   r.key || COALESCE(jsonb_object_agg(r.col, r.new)
                                     FILTER (WHERE r.key ? r.col AND r.kind <> 'delete-on-conflict') OVER g, '{}'),
                   r.key, r.old, r.new, r.image, array_agg(r.col) OVER g, r.conflict
            FROM _es_lines r
            WHERE %(all)s OR r.tbl = ANY(%(chosen)s)
            WINDOW g AS (PARTITION BY r.tbl, r.k, r.ins)
            """,
            {"all": chosen is None, "chosen": chosen or []},
        )
        # The key made after the rows, in one sorted build: kept up row by row during the INSERT it cost a quarter
        # more than the INSERT itself (random ids). Two actions with one id fail here, before anything is written.
        self.conn.execute("ALTER TABLE _es_act ADD PRIMARY KEY (id)")
        self.conn.execute("CREATE INDEX ON _es_act (tbl, step)")
        self.conn.execute("CREATE INDEX ON _es_act (tbl, rowid)")
        # Lookups by a row's old or new key (chains on email keys, a delete's winner) must not scan every action.
        # They are made only for actions with a whole row, a delete or an insert, and only in their tables (queries
        # name the table as a constant, so the planner can use these partial indexes): building them over every
        # action of a large plan cost seconds (two jsonb sorts of all the actions) for tables that never look.
        special = [
            t
            for (t,) in self.conn.execute(
                "SELECT DISTINCT tbl FROM _es_act WHERE image IS NOT NULL OR conflict IS NOT NULL "
                "OR kind IN ('insert-row', 'delete-on-conflict') ORDER BY 1"
            )
        ]
        self._special = set(special)
        # PostgreSQL proves `tbl = 3` implies `tbl IN (...)` for lists of up to 100 values only: past that, whole.
        among = sql.SQL(" WHERE tbl IN ({})").format(sql.SQL(", ").join(map(sql.Literal, special)))
        where = among if len(special) <= 100 else sql.SQL("")
        if special:
            self.conn.execute(sql.SQL("CREATE INDEX ON _es_act (tbl, key){}").format(where))
            self.conn.execute(sql.SQL("CREATE INDEX ON _es_act (tbl, post_key){}").format(where))
        # Statistics only for what joins and filters use: sampling the wide jsonb columns cost more than the load.
        self.conn.execute("ANALYZE _es_act (tbl, rowid, kind, step, key, post_key)")

    def _in_plain(self) -> str:
        """SQL choosing the plain tables' lines (ints only, so safe to splice)."""
        return f"tbl IN ({', '.join(str(int(i)) for i in self._plain)})"

    def _every(self, status: str) -> str:
        """(id, status, tbl, kind) of every action: the generic path's, and the plain tables' (status 'pending':
        written, as a generic update once its step has run)."""
        rest = (
            f" UNION ALL SELECT id, {status}, tbl, kind FROM (SELECT id, 'pending' AS status, tbl, kind FROM "
            f"_es_lines WHERE {self._in_plain()}) p"
            if self._plain
            else ""
        )
        return f"SELECT id, {status}, tbl, kind FROM _es_act{rest}"  # LiteralString: constants and ints only

    # -- 2. plain tables: closed ones written at once; others locked, imaged, written by one UPDATE ---------

    def _closed_tables(self, plain: Mapping[int, int]) -> list[int]:
        """The plain tables nothing but their own UPDATE of their email columns can change in this apply: an
        ordinary table without child tables, row-level security or deferrable constraints (a unique one would fail
        at commit instead of at the write, where a shortfall is caught), while no table this apply can write (the
        target's tables and whatever their foreign keys cascade to) has a trigger of any kind or a rule (one could
        write the table from elsewhere, which only whole-row images would catch). None otherwise."""
        if not plain:
            return []
        row = self.conn.execute(
            "WITH RECURSIVE w(oid) AS (SELECT unnest(%s::oid[]) UNION SELECT k.conrelid FROM pg_constraint k "
            "JOIN w ON k.confrelid = w.oid WHERE k.contype = 'f' "
            "AND (k.confupdtype IN ('c', 'n', 'd') OR k.confdeltype IN ('c', 'n', 'd'))) "
            "SELECT EXISTS (SELECT 1 FROM w JOIN pg_class c ON c.oid = w.oid WHERE c.relhasrules OR c.relhassubclass "
            "OR EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = w.oid AND NOT g.tgisinternal))",
            ([m.oid for m in self.metas],),
        ).fetchone()
        if row is None or row[0]:
            return []
        by_oid = {self.metas[i].oid: i for i in plain}
        rows = self.conn.execute(
            "SELECT c.oid FROM pg_class c WHERE c.oid = ANY(%s) AND c.relkind = 'r' AND NOT c.relrowsecurity "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.condeferrable)",
            (list(by_oid),),
        ).fetchall()
        return sorted(by_oid[oid] for (oid,) in rows)

    def _write_closed(self, i: int, m: TableMeta, actions: int) -> bool:
        """A closed table written by one UPDATE, each row only where it still holds every planned old value; kept
        (True) only if every planned row was found so, each column once. Otherwise, or if the write breaks a
        constraint (a planned value taken since the plan), it is undone to its savepoint (False) and the table goes
        the way that judges each row and says why. No images are kept: nothing but the columns set can change."""
        T = m.alias("t")
        cols = m.email_columns
        self.conn.execute("SAVEPOINT _es_closed")
        try:
            if len(cols) == 1:
                # One column: the lines join the table directly. A second line for one row finds it written.
                c = cols[0]
                written = self.conn.execute(
                    sql.SQL(
                        "UPDATE {tbl} {T} SET {c} = {val} FROM _es_lines p WHERE p.tbl = {i} AND p.col = {lit} "
                        "AND {km} AND to_jsonb({T}.{c}) = p.old"
                    ).format(
                        tbl=m.ident,
                        T=T,
                        c=sql.Identifier(c),
                        val=_typed(m, c, sql.SQL("p.new")),
                        i=sql.Literal(i),
                        lit=sql.Literal(c),
                        km=m.key_match(T, sql.SQL("p.key")),
                    )
                ).rowcount
                ok = written == actions
            else:
                # Several columns: one row version per row, from its lines grouped (each column at most once).
                sets = sql.SQL(", ").join(
                    sql.SQL("{c} = CASE WHEN p.new ? {lit} THEN {val} ELSE {T}.{c} END").format(
                        c=sql.Identifier(c),
                        lit=sql.Literal(c),
                        val=_typed(m, c, sql.SQL("(p.new -> {})").format(sql.Literal(c))),
                        T=T,
                    )
                    for c in cols
                )
                _, conds = _sets_where_old(m, T)
                once = sql.SQL(", ").join(
                    sql.SQL("count(*) FILTER (WHERE col = {})").format(sql.Literal(c)) for c in cols
                )
                row = self.conn.execute(
                    sql.SQL(
                        "WITH p AS MATERIALIZED (SELECT (array_agg(key))[1] AS key, jsonb_object_agg(col, old) AS old, "
                        "jsonb_object_agg(col, new) AS new, count(*) AS n, greatest({once}) AS most, "
                        "count(*) FILTER (WHERE col <> ALL({names})) AS other FROM _es_lines WHERE tbl = {i} "
                        "GROUP BY k), "
                        "u AS (UPDATE {tbl} {T} SET {sets} FROM p WHERE {km} AND {conds} RETURNING 1) "
                        "SELECT (SELECT count(*) FROM p), (SELECT count(*) FROM u), (SELECT COALESCE(sum(n), 0) "
                        "FROM p), (SELECT COALESCE(max(most), 0) <= 1 AND COALESCE(sum(other), 0) = 0 FROM p)"
                    ).format(
                        once=once,
                        names=sql.Literal(list(cols)),
                        i=sql.Literal(i),
                        tbl=m.ident,
                        T=T,
                        sets=sets,
                        km=m.key_match(T, sql.SQL("p.key")),
                        conds=conds,
                    )
                ).fetchone()
                assert row is not None  # a SELECT without FROM returns one row
                groups, written, lines, once_each = row
                ok = groups == written and lines == actions and bool(once_each)
        except psycopg.errors.IntegrityError:
            ok = False
        if not ok:
            self.conn.execute("ROLLBACK TO SAVEPOINT _es_closed")
        self.conn.execute("RELEASE SAVEPOINT _es_closed")
        return ok

    def _hold_plain(self, i: int, m: TableMeta, actions: int) -> bool:
        """Lock a plain table's planned rows and keep their images (for the write's count and for verify). True when
        every action's row was found once and still holds every planned old value, and no row outside the plan
        holds a planned new value of a unique column: then one UPDATE writes the table (_write_plain). Otherwise the
        table goes the step-by-step way, which classifies and reports each row (its rows stay locked)."""
        T = m.alias("t")
        _, holds_old = _sets_where_old(m, T)
        row = self.conn.execute(
            sql.SQL(
                "WITH p AS MATERIALIZED (SELECT (array_agg(key))[1] AS key, array_agg(id) AS ids, "
                "jsonb_object_agg(col, old) AS old, jsonb_object_agg(col, new) AS new FROM _es_lines WHERE tbl = {i} "
                "GROUP BY k), "
                "held AS (INSERT INTO _es_pre (tbl, key, ids, old, new, img, pending) "
                "SELECT {i}, p.key, p.ids, p.old, p.new, to_jsonb({T}.*), COALESCE(({holds_old}), false) "
                "FROM {tbl} {T} JOIN p ON {km} FOR UPDATE OF {T} RETURNING ids, pending) "
                # rows found, the groups planned, the actions found, and whether every row holds its old values
                "SELECT (SELECT count(*) FROM held), (SELECT count(*) FROM p), "
                "(SELECT COALESCE(sum(cardinality(ids)), 0) FROM held), (SELECT COALESCE(bool_and(pending), true) "
                "FROM held)"
            ).format(i=sql.Literal(i), T=T, tbl=m.ident, km=m.key_match(T, sql.SQL("p.key")), holds_old=holds_old)
        ).fetchone()
        assert row is not None  # a SELECT without FROM returns one row
        found, groups, held, pending = row
        if not (found == groups and held == actions and pending):
            return False
        # A planned new value that a row outside the plan has taken since (a unique column): the steps report it
        # stale instead of failing the index (see _classify).
        R = m.alias("r")
        for col in self._unique_columns(m):
            taken = self.conn.execute(
                sql.SQL(
                    "SELECT EXISTS (SELECT 1 FROM _es_pre p JOIN {tbl} {R} ON {R}.{c} = (p.new ->> {lit})::{typ} "
                    "WHERE p.tbl = {i} AND p.new ? {lit} AND NOT EXISTS (SELECT 1 FROM _es_pre x "
                    "WHERE x.tbl = {i} AND x.new ? {lit} AND {kmx}))"
                ).format(
                    tbl=m.ident,
                    R=R,
                    c=sql.Identifier(col),
                    lit=sql.Literal(col),
                    typ=sql.SQL(m.columns[col].type_sql),
                    i=sql.Literal(i),
                    kmx=m.key_match(R, sql.SQL("x.key")),
                )
            ).fetchone()
            if taken is None or taken[0]:
                return False
        self._found[i] = found
        return True

    def _write_plain(self, i: int, m: TableMeta) -> None:
        """Every change of a held plain table by one UPDATE, each row only where it still holds the planned old
        values. Its rows were locked and found so, so a shortfall is something this apply's own writes did (a rule,
        a trigger): refuse to guess."""
        T = m.alias("t")
        sets, conds = _sets_where_old(m, T)
        written = self.conn.execute(
            sql.SQL("UPDATE {tbl} {T} SET {sets} FROM _es_pre p WHERE p.tbl = {i} AND {km} AND {conds}").format(
                tbl=m.ident, T=T, sets=sets, i=sql.Literal(i), km=m.key_match(T, sql.SQL("p.key")), conds=conds
            )
        ).rowcount
        if written != self._found[i]:
            raise _Rollback(
                f"{m.display}: {self._found[i] - written} locked row(s) were not written as planned; nothing committed"
            )

    # -- 2. lock and classify -----------------------------------------------------------------------------

    def _lock_rows(self, i: int, m: TableMeta) -> None:
        """Every planned row of the table, locked by a statement of its own (see _classify)."""
        T = m.alias("t")
        self.conn.execute(
            sql.SQL(
                "SELECT count(*) FROM (SELECT 1 FROM {tbl} {T} JOIN _es_act a ON a.tbl = %s AND {km} "
                "FOR UPDATE OF {T}) s"
            ).format(tbl=m.ident, T=T, km=m.key_match(T, sql.SQL("a.key"))),
            (i,),
        )

    def _lock_holders(self, i: int, m: TableMeta) -> None:
        """A delete relies on the row that holds its new value: keep that row from changing until commit. A unique
        group's delete names the holder's table: the holder is locked there."""
        self._lock_in(i, m, sql.SQL("NOT a.conflict ? 'table'"))
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM _es_act WHERE tbl = %s AND conflict ? 'table')", (i,)
        ).fetchone()
        if row is not None and row[0]:
            for x in {x.display: x for x in [*self.metas, *self.others]}.values():
                self._lock_in(i, x, sql.SQL("a.conflict ->> 'table' = {}").format(sql.Literal(x.display)))

    def _lock_in(self, i: int, x: TableMeta, which: sql.Composable) -> None:
        W = x.alias("w")
        self.conn.execute(
            sql.SQL(
                "SELECT count(*) FROM (SELECT 1 FROM {tbl} {W} JOIN _es_act a ON a.tbl = {i} "
                "AND a.conflict IS NOT NULL AND {which} AND {km} FOR SHARE OF {W}) s"
            ).format(
                tbl=x.ident, W=W, i=sql.Literal(i), which=which, km=x.key_match(W, sql.SQL("(a.conflict -> 'key')"))
            )
        )

    def _classify(self, i: int, m: TableMeta, lock: bool = True) -> None:
        T, W = m.alias("t"), m.alias("w")
        km = m.key_match(T, sql.SQL("a.key"))
        if lock and i in self._special:
            # Whole rows, deletes and inserts are judged with lookups of other rows by the classifying statement's
            # snapshot, which must then see the locked rows as they are: locked first, by a statement of its own.
            # A plain update is judged on its locked row alone, read and locked in the classifying statement itself.
            self._lock_rows(i, m)
        # Columns the database computes (generated, cascaded) or a trigger sets (verify_ignore) are left out
        # of whole-row comparisons: a rollback can only predict the rest of a row it moved.
        ign = self._ignored(m)
        # Where the email is part of the key, the row now under an action's key may be the result of another
        # action that already moved there (a chain a→b, b→c applied before): that row is not this action's.
        self.conn.execute(
            sql.SQL(
                """
                UPDATE _es_act a SET pre = r.img, status = CASE
                    WHEN a.kind = 'insert-row' THEN
                        -- columns added to the table since the image was taken hold their defaults: not compared
                        CASE WHEN ((SELECT jsonb_object_agg(k, v) FROM jsonb_each(r.img) e(k, v)
                                    WHERE a.image ? k) - %(ign)s::text[]) = (a.image - %(ign)s::text[])
                        THEN 'already-applied'
                        -- the row there now is one this plan moves away first (inserts run last)
                        WHEN EXISTS (SELECT 1 FROM _es_act x WHERE x.tbl = {i} AND x.key = a.key
                                     AND x.kind <> 'insert-row' AND x.post_key <> x.key)
                        THEN 'pending' ELSE 'stale' END
                    WHEN a.image IS NOT NULL THEN
                        CASE WHEN (r.img - %(ign)s::text[]) = (a.image - %(ign)s::text[]) AND NOT EXISTS (
                            SELECT 1 FROM _es_act x WHERE x.tbl = {i} AND x.post_key = a.key
                              AND x.rowid <> a.rowid AND NOT EXISTS (
                                SELECT 1 FROM {tbl} {W} WHERE {kmx}))
                        THEN 'pending' END  -- else decided below, by the post key
                    WHEN r.img -> a.col = a.old THEN 'pending'
                    WHEN r.img -> a.col = a.new THEN 'already-applied'
                    ELSE 'stale' END
                -- each planned row read as it is, and locked in the same pass (not for verify)
                FROM (SELECT a.id, to_jsonb({T}.*) AS img FROM {tbl} {T} JOIN _es_act a ON a.tbl = {i} AND {km}
                      {lock}) r
                WHERE a.id = r.id
                """
            ).format(
                tbl=m.ident,
                T=T,
                W=W,
                km=km,
                kmx=m.key_match(W, sql.SQL("x.key")),
                i=sql.Literal(i),
                lock=sql.SQL("FOR UPDATE OF {}").format(T) if lock else sql.SQL(""),
            ),
            {"i": i, "ign": ign},
        )
        if lock:
            self._lock_holders(i, m)
        # A row whose key holds a changed email is found under its new key once applied.
        self.conn.execute(
            sql.SQL(
                """
                UPDATE _es_act a SET pre = to_jsonb({T}.*), cur_key = a.post_key, status = CASE
                    WHEN {colj} = a.new
                         AND (to_jsonb({T}.*) - a.rowcols - %(ign)s::text[]) = (a.image - a.rowcols - %(ign)s::text[])
                    THEN 'already-applied' ELSE 'stale' END
                FROM {tbl} {T}
                WHERE a.tbl = %(i)s AND a.status IS NULL AND a.kind <> 'delete-on-conflict'
                  AND a.post_key <> a.key AND {km}
                """
            ).format(tbl=m.ident, T=T, km=m.key_match(T, sql.SQL("a.post_key")), colj=_column_json(m, T)),
            {"i": i, "ign": ign},
        )
        # Not found as planned. A delete already happened if its row is gone, or if the row now under its key
        # is one that another action of the plan has already moved there; anything else is stale.
        self.conn.execute(
            sql.SQL(
                """
                UPDATE _es_act a SET status = CASE WHEN a.kind = 'insert-row' THEN 'pending'
                    WHEN a.kind = 'delete-on-conflict' AND (a.pre IS NULL OR EXISTS (
                        SELECT 1 FROM _es_act x WHERE x.tbl = {i} AND x.post_key = a.key AND x.rowid <> a.rowid
                          AND x.status = 'already-applied'))
                    THEN 'already-applied' ELSE 'stale' END
                WHERE a.tbl = {i} AND a.status IS NULL
                """
            ).format(i=sql.Literal(i))
        )
        # A delete is planned because another row holds its new value: if that row no longer does (and is not a
        # planned row moving there), the delete has lost its reason. Judged here, not only when the step runs, so
        # `verify` (which runs no steps) and --on-stale abort see it before anything is written.
        self.conn.execute(
            sql.SQL(
                """
                UPDATE _es_act a SET status = 'stale', detail = 'not deleted: the row that was to hold ' || a.col
                    || ' = ' || (a.new #>> '{{}}') || ' no longer does'
                WHERE a.tbl = {i} AND a.status = 'pending' AND a.kind = 'delete-on-conflict' AND a.conflict IS NOT NULL
                  AND NOT {premise}
                """
            ).format(i=sql.Literal(i), premise=_delete_premise(self.metas + self.others, m, W, i)),
        )
        # A new value that a row outside the plan has taken since (a unique column): the update would fail the
        # index and roll the whole database back, so it is stale, like an item created at a move's new key.
        R = m.alias("r")
        for col in self._unique_columns(m):
            self.conn.execute(
                sql.SQL(
                    """
                    UPDATE _es_act a SET status = 'stale', detail = 'another row now holds ' || a.col || ' = '
                        || (a.new #>> '{{}}')
                    WHERE a.tbl = %s AND a.status = 'pending' AND a.kind = 'update' AND a.col = %s
                      AND EXISTS (SELECT 1 FROM {tbl} {R} WHERE {R}.{c} = (a.new #>> '{{}}')::{typ}
                        AND NOT EXISTS (SELECT 1 FROM _es_act x WHERE x.tbl = a.tbl AND {kmx}
                                        AND x.status IN ('pending', 'already-applied')
                                        AND (x.col = a.col OR x.kind = 'delete-on-conflict')))
                    """
                ).format(
                    tbl=m.ident,
                    R=R,
                    c=sql.Identifier(col),
                    typ=sql.SQL(m.columns[col].type_sql),
                    kmx=m.key_match(R, sql.SQL("x.key")),
                ),
                (i, col),
            )
        # Updates planned on a row that the plan then deletes: done if that delete is.
        self.conn.execute(
            """
            UPDATE _es_act a SET status = 'already-applied' WHERE a.tbl = %s AND a.status = 'stale'
              AND a.kind <> 'delete-on-conflict' AND EXISTS (
                SELECT 1 FROM _es_act d WHERE d.tbl = a.tbl AND d.rowid = a.rowid
                  AND d.kind = 'delete-on-conflict' AND d.status = 'already-applied')
            """,
            (i,),
        )

    def _verify_plain(self, i: int, m: TableMeta, ignore: list[str], out: dict[str, str]) -> None:
        """A plain table's rows, read back by one join with their images: each must be its image with the planned
        values set (the key never changes in a plain table)."""
        T = m.alias("t")
        q = sql.SQL(
            "SELECT p.ids, (p.img || p.new) - %(ign)s::text[], to_jsonb({T}.*) - %(ign)s::text[] "
            "FROM _es_pre p LEFT JOIN {tbl} {T} ON {km} WHERE p.tbl = {i} "
            "AND ({T}.ctid IS NULL OR (to_jsonb({T}.*) - %(ign)s::text[]) <> ((p.img || p.new) - %(ign)s::text[])) "
            "LIMIT 1000"
        ).format(T=T, tbl=m.ident, km=m.key_match(T, sql.SQL("p.key")), i=sql.Literal(i))
        for ids, expected, actual in self.conn.execute(q, {"ign": ignore}):
            why = _mismatch(m, expected, actual)
            for x in ids:
                out[x] = why

    def _verify_closed(self, i: int, m: TableMeta, out: dict[str, str]) -> None:
        """A closed table's lines, read back by one join: each planned column must hold its planned new value (no
        other column can have changed, see _closed_tables)."""
        T = m.alias("t")
        found = _column_json(m, T)  # over lines aliased a
        q = sql.SQL(
            "SELECT a.id, a.col, a.new, {found}, {T}.ctid IS NULL FROM _es_lines a LEFT JOIN {tbl} {T} ON {km} "
            "WHERE a.tbl = {i} AND ({T}.ctid IS NULL OR {found} IS DISTINCT FROM a.new) LIMIT 1000"
        ).format(found=found, T=T, tbl=m.ident, km=m.key_match(T, sql.SQL("a.key")), i=sql.Literal(i))
        for aid, col, new, actual, missing in self.conn.execute(q):
            out[aid] = _mismatch(m, {col: new}, None if missing else {col: actual})

    @staticmethod
    def _unique_columns(m: TableMeta) -> list[str]:
        """Email columns that a unique index covers alone, without a predicate: where a row outside the plan can
        take a planned new value since the plan."""
        out = []
        for u in m.unique_indexes:
            if u.predicate is None and len(u.exprs) == 1:
                for c in m.email_columns:
                    if m.columns[c].kind == "text" and u.exprs[0] in (c, '"' + c.replace('"', '""') + '"'):
                        out.append(c)
        return sorted(set(out))

    def _stale_details(self) -> dict[str, str]:
        rows = self.conn.execute("SELECT id, kind, col, pre, detail FROM _es_act WHERE status = 'stale'").fetchall()
        return {i: detail or _stale_text(kind, col, pre) for i, kind, col, pre, detail in rows}

    # -- 3. write --------------------------------------------------------------------------------------------

    def _run_step(self, step: int) -> None:
        ctes: list[sql.Composable] = []
        marked: list[sql.Composable] = []  # deletes and inserts
        written: list[sql.Composable] = []  # updates
        todo = self.conn.execute(
            "SELECT tbl, array_agg(DISTINCT kind), count(*) FILTER (WHERE kind NOT IN ('delete-on-conflict', "
            "'insert-row')) FROM _es_act WHERE step = %s AND status = 'pending' GROUP BY tbl",
            (step,),
        ).fetchall()
        kinds = {tbl: k for tbl, k, _ in todo}
        updates = sum(n for *_, n in todo)
        if not kinds:
            return
        for i, m in enumerate(self.metas):
            if i not in kinds:
                continue
            T, W = m.alias("t"), m.alias("w")
            if "delete-on-conflict" in kinds[i]:
                nm = sql.Identifier(f"d{i}")
                ctes.append(
                    sql.SQL(
                        "{nm} AS (DELETE FROM {tbl} {T} USING _es_act a WHERE a.tbl = {i} AND a.step = {s} "
                        "AND a.kind = 'delete-on-conflict' AND a.status = 'pending' AND {km} "
                        # the planned image, with this plan's own earlier updates of the row applied
                        "AND (to_jsonb({T}.*) - {ign}) = (a.image || COALESCE((SELECT jsonb_object_agg(x.col, x.new) "
                        "FROM _es_act x WHERE x.tbl = a.tbl AND x.rowid = a.rowid "
                        "AND x.kind NOT IN ('delete-on-conflict', 'insert-row') AND x.step < {s} "
                        "AND x.status = 'pending'), '{{}}')) - {ign} "
                        "AND {premise}{unreferenced} RETURNING ARRAY[a.id] AS ids)"
                    ).format(
                        nm=nm,
                        tbl=m.ident,
                        T=T,
                        W=W,
                        i=sql.Literal(i),
                        s=sql.Literal(step),
                        km=m.key_match(T, sql.SQL("a.cur_key")),
                        premise=_delete_premise(self.metas + self.others, m, W, i),
                        unreferenced=self._unreferenced(m, T),
                        # computed or trigger-set columns, changed by this plan's own earlier updates of the row
                        ign=sql.SQL("{}::text[]").format(sql.Literal(self._ignored(m))),
                    )
                )
                marked.append(nm)
            if "insert-row" in kinds[i]:
                ctes.append(self._insert_cte(i, m, step))
                marked.append(sql.Identifier(f"i{i}"))
            if set(kinds[i]) - {"delete-on-conflict", "insert-row"}:
                nm = sql.Identifier(f"u{i}")
                sets, conds = _sets_where_old(m, T)
                ctes.append(
                    sql.SQL(
                        "{nm} AS (UPDATE {tbl} {T} SET {sets} FROM ("
                        "SELECT cur_key, jsonb_object_agg(col, new) AS new, jsonb_object_agg(col, old) AS old, "
                        "array_agg(id) AS ids FROM _es_act WHERE tbl = {i} AND step = {s} "
                        "AND kind NOT IN ('delete-on-conflict', 'insert-row') AND status = 'pending' "
                        "GROUP BY cur_key) p "
                        "WHERE {km} AND {conds} RETURNING p.ids)"
                    ).format(
                        nm=nm,
                        tbl=m.ident,
                        T=T,
                        sets=sets,
                        i=sql.Literal(i),
                        s=sql.Literal(step),
                        km=m.key_match(T, sql.SQL("p.cur_key")),
                        conds=conds,
                    )
                )
                written.append(nm)
        # The writes and their record in one statement. Updates stay 'pending' once written (they are most of the
        # actions: marking each one 'applied' cost as much as writing it); a step's updates are all written or the
        # transaction is rolled back, so from here on a pending update of an earlier step is an applied one, and
        # status() says so. Deletes and inserts, which may also not happen, are marked here.
        ctes.append(
            sql.SQL(
                "_es_marked AS (UPDATE _es_act a SET status = 'applied' FROM ({}) d WHERE a.id = d.id RETURNING 1)"
            ).format(
                sql.SQL(" UNION ALL ").join(sql.SQL("SELECT unnest(ids) AS id FROM {}").format(n) for n in marked)
                if marked
                else sql.SQL("SELECT NULL::text AS id WHERE false")
            )
        )
        counted = (
            sql.SQL(" UNION ALL ").join(sql.SQL("SELECT ids FROM {}").format(n) for n in written)
            if written
            else sql.SQL("SELECT NULL::text[] AS ids WHERE false")
        )
        stmt = sql.SQL(
            "WITH {} SELECT (SELECT count(*) FROM _es_marked), (SELECT COALESCE(sum(cardinality(ids)), 0) FROM ({}) w)"
        ).format(sql.SQL(", ").join(ctes), counted)
        tally = self.conn.execute(stmt).fetchone()
        assert tally is not None  # a SELECT without FROM returns one row
        done = tally[1]
        if done != updates:
            # Every pending row was locked and checked, so something else (a rule, a trigger) changed them.
            raise _Rollback(
                f"step {step}: {updates - done} locked row(s) were not written as planned; nothing committed"
            )
        # A delete that did not happen: the row holding its new value changed, or rows still reference it.
        # Never delete on a stale premise; report it (the row was locked and equal to its image).
        self.conn.execute(
            "UPDATE _es_act SET status = 'stale', detail = 'not deleted: the row that was to hold ' || col || "
            "' = ' || (new #>> '{}') || ' no longer does, or other rows still reference this row' "
            "WHERE step = %s AND status = 'pending' AND kind = 'delete-on-conflict'",
            (step,),
        )
        # A row that could not be put back: a row with the same key or unique value exists now.
        self.conn.execute(
            "UPDATE _es_act SET status = 'stale', detail = 'not inserted: another row now holds its key or a unique "
            "value' WHERE step = %s AND status = 'pending' AND kind = 'insert-row'",
            (step,),
        )
        # Later steps find a row under its new key if this step changed a key column.
        self.conn.execute(
            """
            UPDATE _es_act x SET cur_key = x.cur_key || jsonb_build_object(a.col, a.new)
            FROM _es_act a
            WHERE a.step = %s AND a.status = 'pending' AND a.kind <> 'delete-on-conflict' AND a.key ? a.col
              AND a.tbl = x.tbl AND a.rowid = x.rowid
            """,
            (step,),
        )

    def _insert_cte(self, i: int, m: TableMeta, step: int) -> sql.Composable:
        """Put deleted rows back from their images (rollback plans): every column but the generated ones,
        identity values included, and never over a row that holds the key or a unique value now."""
        # Columns the images lack (added to the table since) are left to their defaults.
        candidates = [c for c in m.columns if c not in m.generated]
        if not candidates:
            raise _Rollback(f"{m.display}: every column is generated; a deleted row cannot be put back")
        has = self.conn.execute(
            sql.SQL("SELECT {} FROM _es_act WHERE tbl = %s AND step = %s AND kind = 'insert-row'").format(
                sql.SQL(", ").join(
                    sql.SQL("bool_and(COALESCE(image, '{{}}') ? {})").format(sql.Literal(c)) for c in candidates
                )
            ),
            (i, step),
        ).fetchone()
        cols = [c for c, ok in zip(candidates, has or (), strict=False) if ok is not False]
        R = m.alias("r")
        return sql.SQL(
            "{nm} AS (INSERT INTO {tbl} AS {T} ({cols}) OVERRIDING SYSTEM VALUE SELECT {rcols} FROM _es_act a, "
            "jsonb_populate_record(NULL::{tbl}, a.image) {R} WHERE a.tbl = {i} AND a.step = {s} "
            "AND a.kind = 'insert-row' AND a.status = 'pending' ON CONFLICT DO NOTHING "
            "RETURNING ARRAY(SELECT x.id FROM _es_act x WHERE x.tbl = {i} AND x.step = {s} "
            "AND x.kind = 'insert-row' AND to_jsonb({T}.*) @> x.key) AS ids)"
        ).format(
            nm=sql.Identifier(f"i{i}"),
            tbl=m.ident,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
            rcols=sql.SQL(", ").join(sql.SQL("{}.{}").format(R, sql.Identifier(c)) for c in cols),
            R=R,
            T=m.alias("t"),
            i=sql.Literal(i),
            s=sql.Literal(step),
        )

    def _unreferenced(self, m: TableMeta, T: sql.Identifier) -> sql.Composable:
        """No row anywhere references the row about to be deleted (so no cascade or SET NULL can fire)."""
        parts = []
        for fk in self.fks:
            if fk.parent_oid != m.oid:
                continue
            c = sql.Identifier(m.prefix + "ref")
            on = sql.SQL(" AND ").join(
                sql.SQL("{c}.{cc} = {T}.{pc}").format(c=c, cc=sql.Identifier(cc), T=T, pc=sql.Identifier(pc))
                for cc, pc in zip(fk.child_cols, fk.parent_cols, strict=True)
            )
            self_row = sql.SQL(" AND {c}.ctid <> {T}.ctid").format(c=c, T=T) if fk.child_oid == m.oid else sql.SQL("")
            parts.append(
                sql.SQL(" AND NOT EXISTS (SELECT 1 FROM {child} {c} WHERE {on}{self_row})").format(
                    child=sql.SQL(fk.child_name), c=c, on=on, self_row=self_row
                )
            )
        return sql.SQL("").join(parts)

    # -- 4. verify -------------------------------------------------------------------------------------------

    def _ignored(self, m: TableMeta) -> list[str]:
        """Columns not compared: configured, generated (recomputed by the database), or moved by an
        ON UPDATE CASCADE from a planned parent column (the plan's warning lists them)."""
        ignore = set(m.cfg.verify_ignore) | set(m.generated)
        planned = {x.oid: set(x.email_columns) for x in self.metas}
        for fk in self.fks:
            cascaded = fk.on_update == "c" and set(fk.parent_cols) & planned.get(fk.parent_oid, set())
            if fk.child_oid == m.oid and cascaded:
                ignore |= set(fk.child_cols) - set(m.email_columns)
        return sorted(ignore)

    def _verify(self) -> dict[str, str]:
        """Every touched row, read back, must equal its pre-write image with the planned values set."""
        out: dict[str, str] = {}
        for i, m in enumerate(self.metas):
            T = m.alias("t")
            ignore = self._ignored(m)
            if i in self._closed:
                self._verify_closed(i, m, out)
                continue
            if i in self._plain:
                self._verify_plain(i, m, ignore, out)
                continue
            q = sql.SQL(
                """
                WITH r AS (
                    SELECT rowid, (array_agg(cur_key))[1] AS k, (array_agg(pre) FILTER (WHERE pre IS NOT NULL))[1]
                           AS pre, bool_or(kind = 'delete-on-conflict') AS deleted,
                           (array_agg(image) FILTER (WHERE kind = 'delete-on-conflict'))[1] AS image,
                           COALESCE(jsonb_object_agg(col, new)
                                    FILTER (WHERE kind NOT IN ('delete-on-conflict', 'insert-row')), '{{}}') AS newvals,
                           (array_agg(image) FILTER (WHERE kind = 'insert-row'))[1] AS inserted,
                           array_agg(id) AS ids
                    FROM _es_act WHERE tbl = %s AND status IN ('pending', 'applied', 'already-applied')
                    GROUP BY rowid
                )
                SELECT r.ids, r.deleted, COALESCE(r.inserted, r.pre || r.newvals) - %s::text[],
                       CASE WHEN r.inserted IS NULL THEN to_jsonb({T}.*) ELSE (
                           SELECT jsonb_object_agg(k, v) FROM jsonb_each(to_jsonb({T}.*)) e(k, v) WHERE r.inserted ? k)
                       END - %s::text[]
                FROM r LEFT JOIN {tbl} {T} ON {km}
                WHERE CASE WHEN r.deleted THEN to_jsonb({T}.*) = r.image
                           WHEN {T} IS NULL THEN true
                           -- a re-inserted row: compared on the image's columns (newer ones hold their defaults)
                           WHEN r.inserted IS NOT NULL THEN ((
                               SELECT jsonb_object_agg(k, v) FROM jsonb_each(to_jsonb({T}.*)) e(k, v)
                               WHERE r.inserted ? k) - %s::text[]) <> (r.inserted - %s::text[])
                           ELSE (to_jsonb({T}.*) - %s::text[]) <> ((r.pre || r.newvals) - %s::text[]) END
                LIMIT 1000
                """
            ).format(tbl=m.ident, T=T, km=m.key_match(T, sql.SQL("r.k")))
            params = (i, ignore, ignore, ignore, ignore, ignore, ignore)
            for ids, deleted, expected, actual in self.conn.execute(q, params):
                if deleted:
                    why = f"{m.display}: the row should be deleted but still exists: {dumps(actual)}"
                else:
                    why = _mismatch(m, expected, actual)
                for x in ids:
                    out[x] = why
        for i, m in enumerate(self.metas):
            self._verify_generated(i, m, out)
        return out

    def _verify_generated(self, i: int, m: TableMeta, out: dict[str, str]) -> None:
        """A generated column computed from a planned column is never written, it follows: each row written must
        hold the column's expression computed over the row as it now is."""
        T, S = m.alias("t"), m.alias("s")
        for g, deps in m.generated_from.items():
            cols = [d for d in deps if d in m.email_columns]
            if not cols:
                continue
            # In the column's own type, as PostgreSQL stores it (char(n) padded, numeric(p,s) rounded).
            expected = sql.SQL(
                "to_jsonb(CAST((SELECT ({e}) FROM jsonb_populate_record(NULL::{tbl}, to_jsonb({T}.*)) {S}) AS {typ}))"
            ).format(e=sql.SQL(m.generated[g]), tbl=m.ident, T=T, S=S, typ=sql.SQL(m.columns[g].type_sql))
            q = sql.SQL(
                "SELECT a.id, {exp}, to_jsonb({T}.{g}) FROM _es_lines a JOIN {tbl} {T} ON {km} WHERE a.tbl = {i} "
                "AND a.col = ANY({cols}) AND a.kind IN ('update', 'array-replace') "
                "AND to_jsonb({T}.{g}) IS DISTINCT FROM {exp} LIMIT 1000"
            ).format(
                exp=expected,
                T=T,
                g=sql.Identifier(g),
                tbl=m.ident,
                km=m.key_match(T, sql.SQL("a.key")),
                i=sql.Literal(i),
                cols=sql.Literal(cols),
            )
            for aid, want, got in self.conn.execute(q):
                out[aid] = (
                    f"{m.display}.{g} is generated from {', '.join(cols)} and should now hold {dumps(want)}, "
                    f"but holds {dumps(got)}"
                )


def _typed(m: TableMeta, c: str, value: sql.Composable) -> sql.Composable:
    """A planned value (jsonb) as column c takes it: a text column by assignment (so varchar(n) or a domain checks
    it as any write would), a text array element by element, jsonb as it is."""
    kind = m.columns[c].kind
    if kind == "text":
        return sql.SQL("({} #>> '{{}}')").format(value)
    if kind == "array":
        return sql.SQL("ARRAY(SELECT jsonb_array_elements_text({}))").format(value)
    if kind == "jsonb":
        return value
    # Not an email-capable type (a plan edited by hand): PostgreSQL's own conversion, which refuses what does not fit.
    return sql.SQL("(jsonb_populate_record(NULL::{tbl}, jsonb_build_object({lit}, {v}))).{c}").format(
        tbl=m.ident, lit=sql.Literal(c), v=value, c=sql.Identifier(c)
    )


def _sets_where_old(m: TableMeta, T: sql.Identifier) -> tuple[sql.Composable, sql.Composable]:
    """An UPDATE's SET of the planned new values (p.new, by column) and its condition that each planned column still
    holds its planned old value (p.old): what every write of a planned row is conditional on."""
    sets = sql.SQL(", ").join(
        sql.SQL("{c} = (jsonb_populate_record({T}, p.new)).{c}").format(c=sql.Identifier(c), T=T)
        for c in m.email_columns
    )
    conds = sql.SQL(" AND ").join(
        sql.SQL("(NOT p.old ? {lit} OR to_jsonb({T}.{c}) = p.old -> {lit})").format(
            lit=sql.Literal(c), c=sql.Identifier(c), T=T
        )
        for c in m.email_columns
    )
    return sets, conds


def _mismatch(m: TableMeta, expected: Any, actual: Any) -> str:
    """Why a row read back differs from its pre-write image with the planned values set."""
    if actual is None:
        return f"{m.display}: the row is missing after the update"
    return f"{m.display}: " + _describe(expected, actual)


def _describe(expected: Any, actual: Any) -> str:
    from deepdiff import DeepDiff  # 0.15 s to import; needed only to explain a failed verification

    diff = DeepDiff(expected, actual, verbose_level=2)
    parts = []
    for change in ("values_changed", "type_changes"):
        for path, d in diff.get(change, {}).items():
            parts.append(f"{path}: expected {d.get('old_value')!r}, found {d.get('new_value')!r}")
    for change in ("dictionary_item_added", "dictionary_item_removed", "iterable_item_added", "iterable_item_removed"):
        for path in diff.get(change, {}):
            parts.append(f"{path}: {change.replace('_', ' ')}")
    return "; ".join(parts) or str(diff)


def _stale_text(kind: str, col: str, current: dict[str, Any] | None) -> str:
    if kind == "insert-row":
        return f"a different row holds its key now: {dumps(current)}"
    if current is None:
        return "the row no longer exists"
    if kind == "delete-on-conflict":
        return f"the row changed since the plan; it now reads {dumps(current)}"
    return f"{col} changed since the plan; it now holds {dumps(current.get(col))}"
