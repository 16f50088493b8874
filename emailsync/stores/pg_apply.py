"""Applying a plan's PostgreSQL actions to one database: one transaction, set-based, verified.

The sequence inside the transaction:
1. the target's actions are copied into a temporary table (one COPY, no per-row round trips);
2. every planned row is locked (FOR UPDATE) and classified against the plan: pending (still holds the
   planned old value, or for a delete the whole planned image), already-applied, or stale;
3. steps run in order; each step is ONE statement (writable CTEs over every table) so foreign keys checked
   at the end of a statement see parents and children change together;
4. every touched row is read back and compared with its pre-write image plus the planned new values;
5. commit only if nothing is stale (or --on-stale skip) and everything verified; otherwise roll back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from deepdiff import DeepDiff
from psycopg import sql

from emailsync.plan import Action, dumps
from emailsync.stores.pg_catalog import TableMeta

DONE = ("applied", "already-applied")


@dataclass
class Outcome:
    status: str  # applied | already-applied | stale | failed | not-applied
    detail: str | None = None


@dataclass
class TargetResult:
    target: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    error: str | None = None
    committed: bool = False


class PostgresApplier:
    def __init__(
        self,
        conn: psycopg.Connection,
        target: str,
        metas: list[TableMeta],
        actions: list[Action],
        on_stale: str,
        lock_timeout: str | None,
        statement_timeout: str | None,
    ) -> None:
        self.conn = conn
        self.target = target
        self.metas = metas
        self.tbl_no = {m.display: i for i, m in enumerate(metas)}
        self.actions = actions
        self.on_stale = on_stale
        self.lock_timeout = lock_timeout
        self.statement_timeout = statement_timeout

    def run(self) -> TargetResult:
        res = TargetResult(self.target)
        conn = self.conn
        try:
            for name, value in (
                ("lock_timeout", self.lock_timeout),
                ("statement_timeout", self.statement_timeout),
            ):
                if value:
                    conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            self._load()
            for i, m in enumerate(self.metas):
                self._classify(i, m)
            status = dict(conn.execute("SELECT id, status FROM _es_act").fetchall())
            stale = [i for i, s in status.items() if s == "stale"]
            if stale and self.on_stale == "abort":
                conn.rollback()
                details = self._stale_details_after_rollback(stale)
                for a in self.actions:
                    if status[a.id] == "stale":
                        res.outcomes[a.id] = Outcome("stale", details.get(a.id))
                    else:
                        res.outcomes[a.id] = Outcome(
                            "not-applied", "rolled back: stale rows and --on-stale abort"
                        )
                res.error = (
                    f"{len(stale)} stale action(s); nothing written to this database (--on-stale abort)"
                )
                return res
            stale_detail = self._stale_details(stale)
            for step in sorted({a.step for a in self.actions}):
                self._run_step(step)
            mismatches = self._verify()
            final = dict(conn.execute("SELECT id, status FROM _es_act").fetchall())
            if mismatches:
                conn.rollback()
                for a in self.actions:
                    if a.id in mismatches:
                        res.outcomes[a.id] = Outcome("failed", "verification mismatch: " + mismatches[a.id])
                    elif final[a.id] == "stale":
                        res.outcomes[a.id] = Outcome("stale", stale_detail.get(a.id))
                    else:
                        res.outcomes[a.id] = Outcome("not-applied", "rolled back: verification failed")
                res.error = f"{len(mismatches)} action(s) failed verification; the database was rolled back"
                return res
            conn.commit()
            res.committed = True
            for a in self.actions:
                s = final[a.id]
                res.outcomes[a.id] = Outcome(s, stale_detail.get(a.id) if s == "stale" else None)
            return res
        except psycopg.Error as e:
            conn.rollback()
            msg = (getattr(e.diag, "message_primary", None) or str(e)).strip()
            res.error = f"database error, rolled back: {msg}"
            for a in self.actions:
                res.outcomes[a.id] = Outcome("failed", res.error)
            return res

    # -- 1. load -------------------------------------------------------------------------------------------

    def _load(self) -> None:
        self.conn.execute(
            """
            CREATE TEMP TABLE _es_act (
                id text PRIMARY KEY, tbl int NOT NULL, rowid int NOT NULL, kind text NOT NULL,
                step int NOT NULL, col text NOT NULL, key jsonb NOT NULL, post_key jsonb NOT NULL,
                cur_key jsonb NOT NULL, old jsonb, new jsonb, image jsonb, rowcols text[] NOT NULL,
                status text, pre jsonb
            ) ON COMMIT DROP
            """
        )
        rowids: dict[tuple[int, str], int] = {}
        post_keys: dict[tuple[int, str], dict[str, Any]] = {}
        rowcols: dict[tuple[int, str], list[str]] = {}
        for a in self.actions:
            rk = (self.tbl_no[a.table], dumps(a.key))
            rowids.setdefault(rk, len(rowids))
            rowcols.setdefault(rk, []).append(a.column)
            pk = post_keys.setdefault(rk, dict(a.key))
            if a.column in a.key and a.kind != "delete-on-conflict":
                pk[a.column] = a.new
        with self.conn.cursor().copy(
            "COPY _es_act (id, tbl, rowid, kind, step, col, key, post_key, cur_key, old, new, image, rowcols) "
            "FROM STDIN"
        ) as cp:
            for a in self.actions:
                rk = (self.tbl_no[a.table], dumps(a.key))
                k = dumps(a.key)
                cp.write_row(
                    (
                        a.id,
                        rk[0],
                        rowids[rk],
                        a.kind,
                        a.step,
                        a.column,
                        k,
                        dumps(post_keys[rk]),
                        k,
                        dumps(a.old),
                        dumps(a.new),
                        dumps(a.row) if a.row is not None else None,
                        rowcols[rk],
                    )
                )
        self.conn.execute("CREATE INDEX ON _es_act (tbl, step)")
        self.conn.execute("ANALYZE _es_act")

    # -- 2. lock and classify -----------------------------------------------------------------------------

    def _classify(self, i: int, m: TableMeta) -> None:
        t = sql.Identifier("t")
        km = m.key_match(t, sql.SQL("a.key"))
        self.conn.execute(
            sql.SQL(
                "SELECT count(*) FROM (SELECT 1 FROM {tbl} t JOIN _es_act a ON a.tbl = %s AND {km} "
                "FOR UPDATE OF t) s"
            ).format(tbl=m.ident, km=km),
            (i,),
        )
        self.conn.execute(
            sql.SQL(
                """
                UPDATE _es_act a SET pre = to_jsonb(t), status = CASE
                    WHEN a.image IS NOT NULL THEN
                        CASE WHEN to_jsonb(t) = a.image THEN 'pending' END  -- else: maybe applied, look below
                    WHEN to_jsonb(t) -> a.col = a.old THEN 'pending'
                    WHEN to_jsonb(t) -> a.col = a.new THEN 'already-applied'
                    ELSE 'stale' END
                FROM {tbl} t WHERE a.tbl = %s AND {km}
                """
            ).format(tbl=m.ident, km=km),
            (i,),
        )
        # A row whose key holds a changed email is found under its new key once applied.
        self.conn.execute(
            sql.SQL(
                """
                UPDATE _es_act a SET pre = to_jsonb(t), cur_key = a.post_key, status = CASE
                    WHEN to_jsonb(t) -> a.col = a.new AND (to_jsonb(t) - a.rowcols) = (a.image - a.rowcols)
                    THEN 'already-applied' ELSE 'stale' END
                FROM {tbl} t
                WHERE a.tbl = %s AND a.status IS NULL AND a.kind <> 'delete-on-conflict'
                  AND a.post_key <> a.key AND {km}
                """
            ).format(tbl=m.ident, km=m.key_match(t, sql.SQL("a.post_key"))),
            (i,),
        )
        # Not found as planned: a delete whose row is gone already happened; anything else is stale.
        self.conn.execute(
            "UPDATE _es_act SET status = CASE WHEN kind = 'delete-on-conflict' AND pre IS NULL "
            "THEN 'already-applied' ELSE 'stale' END WHERE tbl = %s AND status IS NULL",
            (i,),
        )

    def _stale_details(self, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        rows = self.conn.execute(
            "SELECT id, kind, col, pre FROM _es_act WHERE id = ANY(%s)", (ids,)
        ).fetchall()
        return {i: _stale_text(kind, col, pre) for i, kind, col, pre in rows}

    def _stale_details_after_rollback(self, ids: list[str]) -> dict[str, str]:
        # The temp table is gone with the rollback: read the rows' current values directly.
        out: dict[str, str] = {}
        by_id = {a.id: a for a in self.actions}
        for i, m in enumerate(self.metas):
            mine = [by_id[x] for x in ids if self.tbl_no[by_id[x].table] == i]
            if not mine:
                continue
            t = sql.Identifier("t")
            q = sql.SQL(
                "SELECT {kj}, to_jsonb(t) FROM {tbl} t WHERE {kj} IN (SELECT jsonb_array_elements(%s))"
            )
            q = q.format(kj=m.key_json(t), tbl=m.ident)
            cur = {dumps(k): img for k, img in self.conn.execute(q, (dumps([a.key for a in mine]),))}
            self.conn.rollback()
            for a in mine:
                out[a.id] = _stale_text(a.kind, a.column, cur.get(dumps(a.key)))
        return out

    # -- 3. write --------------------------------------------------------------------------------------------

    def _run_step(self, step: int) -> None:
        ctes: list[sql.Composable] = []
        names: list[sql.Composable] = []
        kinds = dict(
            self.conn.execute(
                "SELECT tbl, array_agg(DISTINCT kind) FROM _es_act WHERE step = %s AND status = 'pending' "
                "GROUP BY tbl",
                (step,),
            ).fetchall()
        )
        if not kinds:
            return
        t = sql.Identifier("t")
        for i, m in enumerate(self.metas):
            if i not in kinds:
                continue
            if "delete-on-conflict" in kinds[i]:
                nm = sql.Identifier(f"d{i}")
                ctes.append(
                    sql.SQL(
                        "{nm} AS (DELETE FROM {tbl} t USING _es_act a WHERE a.tbl = {i} AND a.step = {s} "
                        "AND a.kind = 'delete-on-conflict' AND a.status = 'pending' AND {km} "
                        "AND to_jsonb(t) = a.image RETURNING ARRAY[a.id] AS ids)"
                    ).format(
                        nm=nm,
                        tbl=m.ident,
                        i=sql.Literal(i),
                        s=sql.Literal(step),
                        km=m.key_match(t, sql.SQL("a.cur_key")),
                    )
                )
                names.append(nm)
            if set(kinds[i]) - {"delete-on-conflict"}:
                nm = sql.Identifier(f"u{i}")
                sets = sql.SQL(", ").join(
                    sql.SQL("{c} = (jsonb_populate_record(t, p.new)).{c}").format(c=sql.Identifier(c))
                    for c in m.email_columns
                )
                conds = sql.SQL(" AND ").join(
                    sql.SQL("(NOT p.old ? {lit} OR to_jsonb(t.{c}) = p.old -> {lit})").format(
                        lit=sql.Literal(c), c=sql.Identifier(c)
                    )
                    for c in m.email_columns
                )
                ctes.append(
                    sql.SQL(
                        "{nm} AS (UPDATE {tbl} t SET {sets} FROM ("
                        "SELECT cur_key, jsonb_object_agg(col, new) AS new, jsonb_object_agg(col, old) AS old, "
                        "array_agg(id) AS ids FROM _es_act WHERE tbl = {i} AND step = {s} "
                        "AND kind <> 'delete-on-conflict' AND status = 'pending' GROUP BY cur_key) p "
                        "WHERE {km} AND {conds} RETURNING p.ids)"
                    ).format(
                        nm=nm,
                        tbl=m.ident,
                        sets=sets,
                        i=sql.Literal(i),
                        s=sql.Literal(step),
                        km=m.key_match(t, sql.SQL("p.cur_key")),
                        conds=conds,
                    )
                )
                names.append(nm)
        body = sql.SQL(" UNION ALL ").join(sql.SQL("SELECT unnest(ids) FROM {}").format(n) for n in names)
        stmt = sql.SQL("WITH {} {}").format(sql.SQL(", ").join(ctes), body)
        done = [r[0] for r in self.conn.execute(stmt).fetchall()]
        pending = self.conn.execute(
            "SELECT count(*) FROM _es_act WHERE step = %s AND status = 'pending'", (step,)
        ).fetchone()[0]
        if len(done) != pending:
            # Every pending row was locked and checked, so this means something else changed them (a trigger,
            # a rule): refuse to guess, roll back.
            raise psycopg.errors.RaiseException(
                f"step {step}: {pending} row(s) were pending but {len(done)} were written; nothing committed"
            )
        self.conn.execute("UPDATE _es_act SET status = 'applied' WHERE id = ANY(%s)", (done,))
        # Later steps find a row under its new key if this step changed a key column.
        self.conn.execute(
            """
            UPDATE _es_act x SET cur_key = x.cur_key || jsonb_build_object(a.col, a.new)
            FROM _es_act a
            WHERE a.step = %s AND a.status = 'applied' AND a.kind <> 'delete-on-conflict' AND a.key ? a.col
              AND a.tbl = x.tbl AND a.rowid = x.rowid
            """,
            (step,),
        )

    # -- 4. verify -------------------------------------------------------------------------------------------

    def _verify(self) -> dict[str, str]:
        """Every touched row, read back, must equal its pre-write image with the planned values set."""
        out: dict[str, str] = {}
        t = sql.Identifier("t")
        for i, m in enumerate(self.metas):
            ignore = list(m.cfg.verify_ignore)
            q = sql.SQL(
                """
                WITH r AS (
                    SELECT rowid, (array_agg(cur_key))[1] AS k, (array_agg(pre) FILTER (WHERE pre IS NOT NULL))[1]
                           AS pre, bool_or(kind = 'delete-on-conflict') AS deleted,
                           COALESCE(jsonb_object_agg(col, new) FILTER (WHERE kind <> 'delete-on-conflict'),
                                    '{{}}') AS newvals,
                           array_agg(id) AS ids
                    FROM _es_act WHERE tbl = %s AND status IN ('applied', 'already-applied')
                    GROUP BY rowid
                )
                SELECT r.ids, r.deleted, (r.pre || r.newvals) - %s::text[], to_jsonb(t) - %s::text[]
                FROM r LEFT JOIN {tbl} t ON {km}
                WHERE CASE WHEN r.deleted THEN t IS NOT NULL
                           ELSE t IS NULL OR (to_jsonb(t) - %s::text[]) <> ((r.pre || r.newvals) - %s::text[]) END
                LIMIT 1000
                """
            ).format(tbl=m.ident, km=m.key_match(t, sql.SQL("r.k")))
            for ids, deleted, expected, actual in self.conn.execute(q, (i, ignore, ignore, ignore, ignore)):
                if deleted:
                    why = f"{m.display}: the row should be deleted but still exists: {dumps(actual)}"
                elif actual is None:
                    why = f"{m.display}: the row is missing after the update"
                else:
                    diff = DeepDiff(expected, actual, verbose_level=2)
                    why = f"{m.display}: " + _describe(diff)
                for x in ids:
                    out[x] = why
        return out


def _describe(diff: DeepDiff) -> str:
    parts = []
    for change in ("values_changed", "type_changes"):
        for path, d in diff.get(change, {}).items():
            parts.append(f"{path}: expected {d.get('old_value')!r}, found {d.get('new_value')!r}")
    for change in (
        "dictionary_item_added",
        "dictionary_item_removed",
        "iterable_item_added",
        "iterable_item_removed",
    ):
        for path in diff.get(change, {}):
            parts.append(f"{path}: {change.replace('_', ' ')}")
    return "; ".join(parts) or str(diff)


def _stale_text(kind: str, col: str, current: dict[str, Any] | None) -> str:
    if current is None:
        return "the row no longer exists"
    if kind == "delete-on-conflict":
        return f"the row changed since the plan; it now reads {dumps(current)}"
    return f"{col} changed since the plan; it now holds {dumps(current.get(col))}"
