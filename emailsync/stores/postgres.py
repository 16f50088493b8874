"""PostgreSQL: connecting, reading the configured columns into row changes, and deciding conflicts.

Planning runs in one REPEATABLE READ READ ONLY transaction per database, so every table is read from one
snapshot and the database itself guarantees that planning writes nothing (temporary tables holding the
mapping are created just before that transaction starts). Each column is read with one set-based join
against the mapping, streamed through a server-side cursor.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads

from emailsync.config import PostgresTarget, dsn_secrets, redact
from emailsync.errors import UserError
from emailsync.mappings import Mapping
from emailsync.plan import dumps, loads
from emailsync.stores.pg_catalog import (
    FK_ACTIONS,
    ForeignKey,
    TableMeta,
    UniqueIndex,
    foreign_keys,
    resolve_table,
)

SCAN_BATCH = 5000


def connect(target: PostgresTarget) -> psycopg.Connection:
    """Connect with credentials kept out of every message."""
    dsn = target.dsn.get_secret_value()
    fp = target.fingerprint()
    try:
        conn = psycopg.connect(dsn, connect_timeout=10, application_name="emailsync")
    except psycopg.Error as e:
        detail = redact(str(e).strip(), dsn_secrets(dsn)).splitlines()
        raise UserError(
            f"target {target.name!r}: cannot connect to PostgreSQL at host {fp.get('host')!r}, port "
            f"{fp.get('port')!r}, database {fp.get('database')!r}: {' '.join(detail)}. "
            "Check the DSN's host, credentials and that the server is running."
        ) from None
    # Exact numbers both ways: numeric stays Decimal, and our canonical JSON writes it back unchanged.
    set_json_loads(lambda s: json.loads(s, parse_float=Decimal), conn)
    set_json_dumps(dumps, conn)
    return conn


# --- row changes -------------------------------------------------------------------------------------------


@dataclass
class ColChange:
    column: str
    kind: str  # update | array-replace
    old: Any
    new: Any
    entries: tuple[int, ...]


@dataclass
class RowPlan:
    key: dict[str, Any]
    keystr: str
    sortkey: tuple[Any, ...]
    changes: dict[str, ColChange] = field(default_factory=dict)
    kid: int = -1
    fate: str = "move"  # move | delete | skip
    reason: str | None = None
    delete_entries: tuple[int, ...] = ()
    image: dict[str, Any] | None = None  # whole row, for deletes

    def entries_for(self, cols: Iterable[str]) -> set[int]:
        out: set[int] = set()
        for c in cols:
            ch = self.changes.get(c)
            if ch:
                out.update(ch.entries)
        return out


@dataclass
class TablePlan:
    meta: TableMeta
    rows: list[RowPlan]


@dataclass
class TargetPlan:
    target: PostgresTarget
    tables: list[TablePlan]
    edges: set[tuple[int, int]]  # (a, b): mapping entry a must be applied after entry b
    warnings: list[str]


def _sortkey(meta: TableMeta, key: dict[str, Any]) -> tuple[Any, ...]:
    return tuple((key[k] is None, key[k] if key[k] is not None else 0) for k in meta.key)


def _walk_replace(doc: Any, repl: dict[str, str]) -> Any:
    """Replace string values (never object keys) anywhere in a JSON document."""
    if isinstance(doc, str):
        return repl.get(doc, doc)
    if isinstance(doc, list):
        return [_walk_replace(v, repl) for v in doc]
    if isinstance(doc, dict):
        return {k: _walk_replace(v, repl) for k, v in doc.items()}
    return doc


class PostgresPlanner:
    """Plans one PostgreSQL target. Holds only the changed rows in memory, never whole tables."""

    def __init__(self, target: PostgresTarget, where: str, mappings: tuple[Mapping, ...], match: str) -> None:
        self.target = target
        self.where = where
        self.mappings = mappings
        self.by_ord = {m.ord: m for m in mappings}
        self.match = match
        self.warnings: list[str] = []
        self.edges: set[tuple[int, int]] = set()

    def plan(self) -> TargetPlan:
        conn = connect(self.target)
        try:
            self._load_mapping(conn)
            conn.commit()
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            metas = [
                resolve_table(conn, self.target, f"{self.where}.tables[{i}]", i, t)
                for i, t in enumerate(self.target.tables)
            ]
            seen: dict[int, str] = {}
            for m in metas:
                if m.oid in seen:
                    raise UserError(
                        f"{self.where}.tables[{m.index}]: {m.cfg.table!r} is the same table as "
                        f"{seen[m.oid]!r}; list each table once with all its columns"
                    )
                seen[m.oid] = m.cfg.table
            if any(m.columns[c].ci for m in metas for c in m.email_columns) or self.match == "casefold":
                self._check_ci_ambiguity(conn)
            tables = [TablePlan(m, self._read_table(conn, m)) for m in metas]
            for tp in tables:
                self._resolve_conflicts(conn, tp)
                # Whole rows for deletes, and for updates of a key column: where the email is the key, the
                # key alone cannot tell the planned row from another that has since moved onto that key.
                keyed = set(tp.meta.key)
                imaged = [
                    r for r in tp.rows if r.fate == "delete" or (r.fate == "move" and keyed & set(r.changes))
                ]
                if imaged:
                    self._load_images(conn, tp.meta, imaged)
            self._check_foreign_keys(conn, tables)
            conn.rollback()
        finally:
            conn.close()
        return TargetPlan(self.target, tables, self.edges, self.warnings)

    # -- mapping in temp tables --------------------------------------------------------------------------

    def _load_mapping(self, conn: psycopg.Connection) -> None:
        conn.execute("CREATE TEMP TABLE _es_map (ord int PRIMARY KEY, old text NOT NULL, new text NOT NULL)")
        with conn.cursor().copy("COPY _es_map (ord, old, new) FROM STDIN") as cp:
            for m in self.mappings:
                cp.write_row((m.ord, m.old, m.new))
        conn.execute("CREATE UNIQUE INDEX ON _es_map (old)")
        # Case-insensitive lookups use PostgreSQL's lower(), the same function citext compares with.
        conn.execute(
            "CREATE TEMP TABLE _es_map_ci AS SELECT DISTINCT ON (lower(old)) ord, lower(old) AS old, new "
            "FROM _es_map ORDER BY lower(old), ord"
        )
        conn.execute("CREATE UNIQUE INDEX ON _es_map_ci (old)")
        conn.execute("CREATE TEMP TABLE _es_chg (_es_kid int PRIMARY KEY, _es_key jsonb, _es_patch jsonb)")
        conn.execute("ANALYZE _es_map")
        conn.execute("ANALYZE _es_map_ci")

    def _check_ci_ambiguity(self, conn: psycopg.Connection) -> None:
        rows = conn.execute(
            "SELECT lower(old), array_agg(old ORDER BY ord), array_agg(new ORDER BY ord) FROM _es_map "
            "GROUP BY 1 HAVING count(DISTINCT new) > 1 ORDER BY 1 LIMIT 10"
        ).fetchall()
        if rows:
            raise UserError(
                f"{self.where}: some old emails differ only in case but map to different new emails, and a "
                "case-insensitive column (citext, or match: casefold) cannot tell them apart",
                problems=[f"{', '.join(olds)} → {', '.join(news)}" for _, olds, news in rows],
            )

    # -- reading -------------------------------------------------------------------------------------------

    def _read_table(self, conn: psycopg.Connection, meta: TableMeta) -> list[RowPlan]:
        rows: dict[str, RowPlan] = {}
        for col in meta.email_columns:
            for key, old, new, entries in self._scan_column(conn, meta, col):
                ks = dumps(key)
                rp = rows.get(ks)
                if rp is None:
                    rp = rows[ks] = RowPlan(key=key, keystr=ks, sortkey=_sortkey(meta, key))
                kind = "update" if meta.columns[col].kind != "array" else "array-replace"
                rp.changes[col] = ColChange(col, kind, old, new, entries)
        ordered = sorted(rows.values(), key=lambda r: r.sortkey)
        for i, r in enumerate(ordered):
            r.kid = i
        return ordered

    def _scan_column(
        self, conn: psycopg.Connection, meta: TableMeta, col: str
    ) -> Iterable[tuple[dict[str, Any], Any, Any, tuple[int, ...]]]:
        c = meta.columns[col]
        ci = c.ci or self.match == "casefold"
        mp = sql.Identifier("_es_map_ci" if ci else "_es_map")
        t = sql.Identifier("t")
        ident = sql.Identifier(col)

        def norm(expr: sql.Composable) -> sql.Composable:
            return sql.SQL("lower({}::text)").format(expr) if ci else sql.SQL("{}::text").format(expr)

        keyj = meta.key_json(t)
        if c.kind == "text":
            # The new value is cast to the column's own type here, so char(n) padding, varchar(n) limits and
            # domain checks show up in the plan (or as a plan error), not as an apply-time failure.
            q = sql.SQL(
                "SELECT {k}, to_jsonb(t.{c}), m.ord, to_jsonb(CAST(m.new AS {typ})), "
                "CAST(m.new AS {typ})::text IS DISTINCT FROM m.new "  # an explicit cast truncates silently
                "FROM {tbl} AS t JOIN {mp} m ON m.old = {v}"
            ).format(
                k=keyj, c=ident, typ=sql.SQL(c.type_sql), tbl=meta.ident, mp=mp,
                v=norm(sql.SQL("t.{}").format(ident)),
            )
        elif c.kind == "array":
            # One join of every element against the mapping, grouped by row: a per-row subquery would make
            # PostgreSQL hash the whole mapping once per row.
            q = sql.SQL(
                "SELECT {k}, to_jsonb(t.{c}), h.pos, h.ords, array_ndims(t.{c}) FROM ("
                "SELECT t.ctid AS tid, array_agg(e.i ORDER BY e.i) AS pos, array_agg(m.ord ORDER BY e.i) AS ords "
                "FROM {tbl} AS t CROSS JOIN LATERAL unnest(t.{c}) WITH ORDINALITY e(v, i) "
                "JOIN {mp} m ON m.old = {ev} GROUP BY t.ctid) h JOIN {tbl} AS t ON t.ctid = h.tid"
            ).format(k=keyj, c=ident, tbl=meta.ident, mp=mp, ev=norm(sql.SQL("e.v")))
        else:
            q = sql.SQL(
                "SELECT {k}, t.{c}, h.pairs FROM ("
                "SELECT t.ctid AS tid, array_agg(jsonb_build_array(s.v, m.ord)) AS pairs FROM {tbl} AS t "
                "CROSS JOIN LATERAL (SELECT DISTINCT x #>> '{{}}' AS v FROM jsonb_path_query(t.{c}, 'strict $.**') x "
                "WHERE jsonb_typeof(x) = 'string') s JOIN {mp} m ON m.old = {sv} GROUP BY t.ctid) h "
                "JOIN {tbl} AS t ON t.ctid = h.tid"
            ).format(k=keyj, c=ident, tbl=meta.ident, mp=mp, sv=norm(sql.SQL("s.v")))

        with conn.cursor(name=f"es_scan_{meta.oid}_{c.attnum}") as cur:
            cur.itersize = SCAN_BATCH
            try:
                cur.execute(q)
                records = iter(cur)
                first = next(records, None)
            except (psycopg.errors.DataException, psycopg.errors.IntegrityConstraintViolation) as e:
                raise self._unfit(meta, col, str(e.diag.message_primary or e)) from None
            for rec in itertools.chain([first] if first is not None else [], records):
                key = rec[0]
                if c.kind == "text":
                    if rec[4]:
                        new = self.by_ord[rec[2]].new
                        raise self._unfit(meta, col, f"{new!r} does not fit (it would be cut short)")
                    yield key, rec[1], rec[3], (rec[2],)
                elif c.kind == "array":
                    old, positions, ords, ndims = rec[1], rec[2], rec[3], rec[4]
                    if ndims != 1:
                        raise UserError(
                            f"{self.where}.tables[{meta.index}]: {meta.display}.{col} holds a "
                            f"{ndims}-dimensional array at key {dumps(key)}; only one-dimensional arrays "
                            "are supported"
                        )
                    new = list(old)
                    for pos, o in zip(positions, ords, strict=True):
                        new[pos - 1] = self.by_ord[o].new
                    yield key, old, new, tuple(sorted(set(ords)))
                else:
                    pairs = rec[2]
                    repl = {s: self.by_ord[o].new for s, o in pairs}
                    yield key, rec[1], _walk_replace(rec[1], repl), tuple(sorted({o for _, o in pairs}))

    def _unfit(self, meta: TableMeta, col: str, why: str) -> UserError:
        return UserError(
            f"{self.where}.tables[{meta.index}]: {meta.display}.{col} ({meta.columns[col].type_sql}) cannot hold "
            f"a new email of the mappings: {why}; widen the column or fix the mapping"
        )

    # -- unique constraints --------------------------------------------------------------------------------

    def _resolve_conflicts(self, conn: psycopg.Connection, tp: TablePlan) -> None:
        meta = tp.meta
        changed_cols = {c for r in tp.rows for c in r.changes}
        relevant = [u for u in meta.unique_indexes if u.columns & changed_cols]
        if not relevant or not tp.rows:
            return
        conn.execute("DELETE FROM _es_chg")
        with conn.cursor().copy("COPY _es_chg (_es_kid, _es_key, _es_patch) FROM STDIN") as cp:
            for r in tp.rows:
                cp.write_row((r.kid, dumps(r.key), dumps({c: ch.new for c, ch in r.changes.items()})))
        by_kid = {r.kid: r for r in tp.rows}
        by_keystr = {r.keystr: r for r in tp.rows}

        analyses = [self._analyse_index(conn, meta, u, by_keystr) for u in relevant]
        problems: list[str] = []
        changed = True
        while changed:
            changed = False
            for u, movers, comps in analyses:
                for comp in comps:
                    present = [n for n in comp if self._present(n, by_kid, movers)]
                    if len({n[1] for n in present}) <= 1:
                        continue
                    incumbents = [n for n in present if n[0] != "post"]
                    arriving = sorted(
                        (n for n in present if n[0] == "post"),
                        key=lambda n: (min(by_kid[n[1]].entries_for(u.columns) or {0}), by_kid[n[1]].sortkey),
                    )
                    if incumbents:
                        win, losers = incumbents[0], arriving
                    else:
                        win, losers = arriving[0], arriving[1:]
                    win_key = by_kid[win[1]].keystr if win[0] != "row" else win[1]
                    for node in losers:
                        loser = by_kid[node[1]]
                        vals = ", ".join(
                            f"{c}={json.dumps(ch.new, ensure_ascii=False, default=str)}"
                            for c, ch in loser.changes.items()
                            if c in u.columns
                        )
                        how = "is already held by" if win[0] != "post" else "is also planned for"
                        reason = f"unique index {u.name}: {vals} {how} the row with key {win_key}"
                        policy = meta.cfg.on_conflict
                        if policy == "fail":
                            problems.append(f"{meta.display} key {loser.keystr}: {reason}")
                            loser.fate = "skip"
                        elif policy == "skip":
                            loser.fate, loser.reason = "skip", reason
                        else:
                            loser.fate, loser.reason = "delete", reason
                            loser.delete_entries = tuple(sorted(loser.entries_for(u.columns)))
                        changed = True
        if problems:
            raise UserError(
                f"{self.where}.tables[{meta.index}] ({meta.display}) has on_conflict: fail and the plan "
                "would break unique constraints; resolve these rows or choose on_conflict: skip or delete",
                problems=problems[:50]
                + ([f"... and {len(problems) - 50} more"] if len(problems) > 50 else []),
            )
        # Ordering: a row moving into a slot goes after the row leaving it (moved away or deleted).
        for u, movers, comps in analyses:
            for comp in comps:
                arriving = [by_kid[n[1]] for n in comp if n[0] == "post" and self._present(n, by_kid, movers)]
                leaving = [
                    by_kid[n[1]]
                    for n in comp
                    if n[0] == "pre"
                    and (by_kid[n[1]].fate == "delete" or (by_kid[n[1]].fate == "move" and n[1] in movers))
                ]
                for a in arriving:
                    for b in leaving:
                        if a.kid == b.kid:
                            continue
                        before = b.delete_entries if b.fate == "delete" else b.entries_for(u.columns)
                        for ea in a.entries_for(u.columns):
                            for eb in before:
                                if ea != eb:
                                    self.edges.add((ea, eb))

    @staticmethod
    def _present(node: tuple[str, Any], by_kid: dict[int, RowPlan], movers: set[int]) -> bool:
        kind, ident = node
        if kind == "row":
            return True
        r = by_kid[ident]
        if r.fate == "delete":
            return False
        if kind == "pre":
            return r.fate == "skip" or ident not in movers
        return r.fate == "move" and ident in movers

    def _analyse_index(
        self, conn: psycopg.Connection, meta: TableMeta, u: UniqueIndex, by_keystr: dict[str, RowPlan]
    ) -> tuple[UniqueIndex, set[int], list[list[tuple[str, Any]]]]:
        """Which changed rows move within the index, and which of them land on the same index entry.

        Index expressions and the predicate are evaluated by PostgreSQL over the row before and after the
        change, so collation, citext and expression indexes decide equality exactly as the index does.
        """
        n = len(u.exprs)
        names = [sql.Identifier(f"_es_u{i}") for i in range(n)]
        exprs = [sql.SQL(e) for e in u.exprs]
        pred = sql.SQL(u.predicate) if u.predicate else sql.SQL("true")
        sel = sql.SQL(", ").join(
            sql.SQL("({}) AS {}").format(e, nm) for e, nm in zip(exprs, names, strict=True)
        )
        eq = sql.SQL(" IS NOT DISTINCT FROM ") if u.nulls_not_distinct else sql.SQL(" = ")
        notnull = (
            sql.SQL("true")
            if u.nulls_not_distinct
            else sql.SQL(" AND ").join(sql.SQL("p.{} IS NOT NULL").format(nm) for nm in names)
        )

        def row_of(alias: str) -> sql.Composable:
            return sql.SQL("ROW({})").format(
                sql.SQL(", ").join(sql.SQL(alias + ".{}").format(nm) for nm in names)
            )

        pair_mm = sql.SQL(" AND ").join(sql.SQL("a.{0}{1}b.{0}").format(nm, eq) for nm in names)
        pair_mo = sql.SQL(" AND ").join(
            sql.SQL("a.{}{}({})").format(nm, eq, e) for nm, e in zip(names, exprs, strict=True)
        )
        tbl = meta.ident
        q = sql.SQL(
            """
            WITH pre AS MATERIALIZED (
                SELECT c._es_kid, {sel}, ({pred}) AS _es_in
                FROM _es_chg c JOIN {tbl} ON {km_pre}
            ), post AS MATERIALIZED (
                SELECT s._es_kid, {sel}, ({pred}) AS _es_in
                FROM (SELECT c._es_kid, (jsonb_populate_record(t, c._es_patch)).*
                      FROM _es_chg c JOIN {tbl} AS t ON {km_t}) s
            ), mv AS MATERIALIZED (
                SELECT p.* FROM post p JOIN pre q USING (_es_kid)
                WHERE p._es_in AND {notnull}
                  AND (q._es_in IS DISTINCT FROM p._es_in OR {row_q} IS DISTINCT FROM {row_p})
            )
            SELECT 'v', a._es_kid, NULL::int, NULL::jsonb FROM mv a
            UNION ALL
            SELECT 'm', a._es_kid, b._es_kid, NULL FROM mv a JOIN mv b ON {pair_mm} AND a._es_kid < b._es_kid
            UNION ALL
            SELECT 'o', a._es_kid, NULL, {keyj} FROM mv a JOIN {tbl} ON {pair_mo} WHERE ({pred})
            """
        ).format(
            sel=sel,
            pred=pred,
            tbl=tbl,
            km_pre=meta.key_match(tbl, sql.SQL("c._es_key")),
            km_t=meta.key_match(sql.Identifier("t"), sql.SQL("c._es_key")),
            notnull=notnull,
            row_q=row_of("q"),
            row_p=row_of("p"),
            pair_mm=pair_mm,
            pair_mo=pair_mo,
            keyj=meta.key_json(tbl),
        )
        movers: set[int] = set()
        parent: dict[tuple[str, Any], tuple[str, Any]] = {}

        def find(x: tuple[str, Any]) -> tuple[str, Any]:
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def union(a: tuple[str, Any], b: tuple[str, Any]) -> None:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb, key=str)] = min(ra, rb, key=str)

        for tag, kid, other, okey in conn.execute(q):
            if tag == "v":
                movers.add(kid)
            elif tag == "m":
                union(("post", kid), ("post", other))
            else:
                ks = dumps(okey)
                occ = by_keystr.get(ks)
                if occ is not None and occ.kid == kid:
                    continue
                union(("post", kid), ("pre", occ.kid) if occ is not None else ("row", ks))
        comps: dict[tuple[str, Any], list[tuple[str, Any]]] = {}
        for node in list(parent):
            comps.setdefault(find(node), []).append(node)
        ordered = sorted(
            (sorted(c, key=_node_order) for c in comps.values()), key=lambda c: _node_order(c[0])
        )
        return u, movers, ordered

    def _load_images(self, conn: psycopg.Connection, meta: TableMeta, rows: list[RowPlan]) -> None:
        """Whole rows: reviewed in the plan, compared again at apply."""
        keys = Jsonb([r.key for r in rows])
        q = sql.SQL(
            "SELECT {kj}, to_jsonb(t) FROM {tbl} AS t WHERE {kj} IN (SELECT jsonb_array_elements(%s))"
        ).format(kj=meta.key_json(sql.Identifier("t")), tbl=meta.ident)
        by_key = {r.keystr: r for r in rows}
        for key, image in conn.execute(q, (keys,)):
            by_key[dumps(key)].image = image

    # -- foreign keys --------------------------------------------------------------------------------------

    def _check_foreign_keys(self, conn: psycopg.Connection, tables: list[TablePlan]) -> None:
        by_oid = {tp.meta.oid: tp for tp in tables}
        problems: list[str] = []
        for fk in foreign_keys(conn, list(by_oid)):
            child, parent = by_oid.get(fk.child_oid), by_oid.get(fk.parent_oid)
            p_cols = set(fk.parent_cols) & set(parent.meta.email_columns) if parent else set()
            c_cols = set(fk.child_cols) & set(child.meta.email_columns) if child else set()
            if (p_cols or c_cols) and len(fk.child_cols) > 1:
                problems.append(
                    f"foreign key {fk.name} ({fk.child_name} → {fk.parent_name}) spans several columns "
                    "including an email column; such keys are not supported yet"
                )
                continue
            if parent is not None and p_cols:
                problems += self._fk_parent_changes(conn, fk, parent, child is not None and bool(c_cols))
            elif child is not None and c_cols:
                problems += self._fk_child_targets(conn, fk, child)
            if parent is not None and not p_cols:
                dels = [r for r in parent.rows if r.fate == "delete"]
                n, ex = self._children_of(conn, fk, parent, dels) if dels else (0, [])
                if n:
                    problems.append(
                        f"foreign key {fk.name}: {n} row(s) of {fk.child_name} reference rows of "
                        f"{parent.meta.display} that on_conflict: delete would remove (keys {ex}); "
                        f"set on_conflict: skip for {parent.meta.display} or reassign those rows first"
                    )
        if problems:
            raise UserError(
                f"{self.where}: the plan would break foreign keys in target {self.target.name!r}", problems
            )

    def _children_of(
        self, conn: psycopg.Connection, fk: ForeignKey, parent: TablePlan, rows: list[RowPlan]
    ) -> tuple[int, list[str]]:
        on = sql.SQL(" AND ").join(
            sql.SQL("c.{} = p.{}").format(sql.Identifier(cc), sql.Identifier(pc))
            for cc, pc in zip(fk.child_cols, fk.parent_cols, strict=True)
        )
        q = sql.SQL(
            "SELECT count(*), (array_agg(DISTINCT {pk}::text))[1:3] FROM {child} c JOIN {tbl} p ON {on} "
            "WHERE {pk} IN (SELECT jsonb_array_elements(%s))"
        ).format(
            pk=parent.meta.key_json(sql.Identifier("p")),
            child=sql.SQL(fk.child_name),  # regclass text from the catalog: already quoted
            tbl=parent.meta.ident,
            on=on,
        )
        n, ex = conn.execute(q, (Jsonb([r.key for r in rows]),)).fetchone()
        return int(n), list(ex or [])

    def _fk_parent_changes(
        self, conn: psycopg.Connection, fk: ForeignKey, parent: TablePlan, child_planned: bool
    ) -> list[str]:
        pc = fk.parent_cols[0]
        out = []
        upd = [r for r in parent.rows if r.fate == "move" and pc in r.changes]
        dels = [r for r in parent.rows if r.fate == "delete"]
        col = f"{fk.child_name}.{fk.child_cols[0]}"
        for rows, what, rule in ((upd, "update", fk.on_update), (dels, "delete", fk.on_delete)):
            if not rows:
                continue
            n, ex = self._children_of(conn, fk, parent, rows)
            if not n:
                continue
            rule_name = FK_ACTIONS.get(rule, rule)
            if child_planned:
                if (what == "update" and rule in "rnd") or (what == "delete" and rule == "r"):
                    out.append(
                        f"foreign key {fk.name} is ON {what.upper()} {rule_name}: the {n} referencing row(s) of "
                        f"{fk.child_name} would be blocked or changed outside the plan; make it NO ACTION or "
                        "CASCADE, or leave the parent column out"
                    )
            elif what == "update" and rule == "c":
                self.warnings.append(
                    f"{n} row(s) of {col} follow the planned changes of {parent.meta.display}.{pc} through "
                    f"ON UPDATE CASCADE ({fk.name})"
                )
            else:
                out.append(
                    f"foreign key {fk.name}: {n} row(s) of {fk.child_name} reference {parent.meta.display}.{pc} "
                    f"values that the plan would {what} (parent keys {ex}), and {col} is not in targets.yaml "
                    f"(ON {what.upper()} {rule_name}); add {fk.child_cols[0]!r} of {fk.child_name} to the targets"
                )
        return out

    def _fk_child_targets(self, conn: psycopg.Connection, fk: ForeignKey, child: TablePlan) -> list[str]:
        """A child moving to a new value needs that value in the parent, which the plan does not change."""
        cc = fk.child_cols[0]
        news = sorted({r.changes[cc].new for r in child.rows if r.fate == "move" and cc in r.changes})
        if not news:
            return []
        q = sql.SQL(
            "SELECT w FROM unnest(%s::text[]) w WHERE NOT EXISTS "
            "(SELECT 1 FROM {parent} p WHERE p.{pc} = w) ORDER BY w LIMIT 5"
        ).format(parent=sql.SQL(fk.parent_name), pc=sql.Identifier(fk.parent_cols[0]))
        missing = [r[0] for r in conn.execute(q, (news,))]
        if not missing:
            return []
        return [
            f"foreign key {fk.name}: {child.meta.display}.{cc} would be set to {missing} which "
            f"{fk.parent_name}.{fk.parent_cols[0]} does not contain; add that table and column to the "
            "targets so the parent changes too, or fix the mapping"
        ]


def _node_order(node: tuple[str, Any]) -> tuple[int, int, str]:
    kind, ident = node
    if kind == "row":
        return (2, 0, ident)
    return (0 if kind == "pre" else 1, ident, "")


__all__ = ["PostgresPlanner", "TargetPlan", "TablePlan", "RowPlan", "ColChange", "connect", "loads"]
