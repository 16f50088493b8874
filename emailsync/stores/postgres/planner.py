"""PostgreSQL: reading the configured columns into row changes, and deciding conflicts.

Planning runs in one REPEATABLE READ READ ONLY transaction per database, so every table is read from one
snapshot and the database itself guarantees that planning writes nothing (temporary tables holding the
mapping are created just before that transaction starts). Each column is read with one set-based join
against the mapping, streamed through a server-side cursor.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from emailsync import progress
from emailsync.config import PostgresTarget, UniqueGroup
from emailsync.errors import Refusal, UserError
from emailsync.mappings import Mapping
from emailsync.plan import Section, Skipped, dumps
from emailsync.stores.postgres.catalog import (
    FK_ACTIONS,
    ForeignKey,
    TableMeta,
    UniqueIndex,
    foreign_keys,
    resolve_table,
)
from emailsync.stores.postgres.checks import check_violations
from emailsync.stores.postgres.connection import reached
from emailsync.stores.postgres.groups import decide_group, group_tables, shared_addresses
from emailsync.stores.postgres.lines import (
    SETUP,
    Ahead,
    Prefetch,
    TableLines,
    doc_strings,
    load_levels,
    text_moves,
    way_of,
)
from emailsync.stores.postgres.paths import remapped_joins, strings_at

SCAN_BATCH = 5000
CONFLICTS_SHOWN = 20  # conflicts listed per table when on_conflict: fail refuses a plan
# How long the helper connection waits for a lock on a table before leaving its section to planning's connection:
# planning already holds one on each table, so the helper can only wait behind a DDL statement that waits for it.
HELPER_LOCK_WAIT = "1s"
# _FENCE: array elements and jsonb strings are produced in a subquery with OFFSET 0, which PostgreSQL does not
# flatten, so the mapping is hashed once and probed by every element. Flattened, the planner put the mapping's hash
# join inside the per-row loop and rebuilt the hash for every row: 9x slower (11 s for 500k documents, 1 s fenced).


# --- row changes -------------------------------------------------------------------------------------------


ColKind = Literal["update", "array-replace"]


@dataclass
class ColChange:
    column: str
    kind: ColKind
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
    image: dict[str, Any] | None = None  # whole row, for deletes and key changes
    conflict: tuple[UniqueIndex, Holder] | None = None  # for deletes: the index and the row holding the entry
    conflict_check: dict[str, Any] | None = None  # {"key", "values"} that row must still show at apply
    unique_cols: frozenset[str] = frozenset()  # columns covered by some unique index of the table
    arrivals: list[tuple[RowPlan, frozenset[str]]] = field(default_factory=list)  # rows taking a deleted row's entries

    def kept_changes(self) -> dict[str, ColChange]:
        """The changes the plan may carry out: all for a moving row, none for a skipped one, and for a deleted
        row those outside every unique index (a change inside one would claim an entry the row lost). The
        planner keeps a deleted row's change only if it falls before the delete: a value the row references
        may move first."""
        if self.fate == "skip":
            return {}
        if self.fate == "delete":
            return {c: ch for c, ch in self.changes.items() if c not in self.unique_cols}
        return self.changes

    def entries_for(self, cols: Iterable[str]) -> set[int]:
        out: set[int] = set()
        for c in cols:
            ch = self.changes.get(c)
            if ch:
                out.update(ch.entries)
        return out


@dataclass(frozen=True)
class Holder:
    """Who holds an index entry: ("row", keystr) an unplanned row, ("pre", kid) a planned row that stays,
    ("post", kid) a planned row that moves in."""

    node: tuple[str, Any]


@dataclass
class IndexAnalysis:
    index: UniqueIndex
    movers: set[int]  # rows whose entry in this index changes (including rows leaving a partial index)
    post_slot: dict[int, Any] = field(default_factory=dict)  # kid -> entry it arrives at
    pre_slot: dict[int, Any] = field(default_factory=dict)  # kid -> entry it holds now
    incumbents: dict[Any, tuple[str, Any]] = field(default_factory=dict)  # entry -> row that keeps it


def _entries_before(row: RowPlan, u: UniqueIndex) -> set[int]:
    return set(row.delete_entries) if row.fate == "delete" else row.entries_for(u.columns)


@dataclass
class TablePlan:
    meta: TableMeta
    rows: list[RowPlan]
    analysed: bool = False  # rows: only those meeting another row in a unique index; PostgreSQL makes the rest


@dataclass
class TargetPlan:
    target: PostgresTarget
    reached: dict[str, str | None]  # where the connection arrived (reached())
    tables: list[TablePlan]  # read into Python
    edges: set[tuple[int, int]]  # (a, b): mapping entry a must be applied after entry b
    warnings: list[str]
    sql_tables: list[TableLines] = field(default_factory=list)  # lines made by PostgreSQL, once the steps are known
    conn: psycopg.Connection | None = None  # planning's snapshot, open while sql_tables are still to be read
    skipped: list[Skipped] = field(default_factory=list)  # of analysed tables, made with their sections
    table_names: list[str] = field(default_factory=list)  # every configured table, in targets.yaml's order
    notes: list[str] = field(default_factory=list)  # for the reviewer (plan.md's notes)
    # Another connection in planning's snapshot (its id), with the levels loaded: fills sections ahead (lines.Ahead).
    open_helper: Callable[[str, dict[int, int]], psycopg.Connection] | None = None
    ahead: Ahead | None = None
    prefetch: Prefetch | None = None  # a section begun while reading, assuming every level is 0

    def sections(self, levels: dict[int, int]) -> list[Section]:
        prefetch, self.prefetch = self.prefetch, None
        if prefetch is not None and any(levels.values()):
            prefetch.close()  # its lines have the wrong steps: the section is filled again
            prefetch = None
        try:
            if self.open_helper is None or self.conn is None:
                if prefetch is not None:
                    prefetch.close()
                return [s for t in self.sql_tables for s in t.sections()]
            row = self.conn.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            helper = functools.partial(self.open_helper, row[0], levels)
            self.ahead = Ahead(self.conn, self.sql_tables, helper, prefetch)
        except BaseException:
            if prefetch is not None:  # not yet Ahead's: stopped here, its connection closed
                prefetch.close()
            raise
        return self.ahead.sections

    def close(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()
            self.prefetch = None
        if self.ahead is not None:
            self.ahead.close()
            self.ahead = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _followers(meta: TableMeta) -> Iterator[str]:
    """A note for each generated column computed from a configured column: it is never written, it follows."""
    for g, deps in meta.generated_from.items():
        sources = [d for d in deps if d in meta.email_columns]
        if sources:
            yield (
                f"{meta.target} / {meta.display}: {g} is generated (GENERATED ALWAYS AS ({meta.generated[g]})) from "
                f"{', '.join(sources)}; it is not written, it follows the changes there, and apply checks that it did"
            )


def _sortkey(meta: TableMeta, key: dict[str, Any]) -> tuple[Any, ...]:
    return tuple([(key[k] is None, key[k] if key[k] is not None else 0) for k in meta.key])


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

    def __init__(
        self,
        target: PostgresTarget,
        where: str,
        mappings: tuple[Mapping, ...],
        match: str,
        connect: Callable[[PostgresTarget], psycopg.Connection],
        sql_lines: bool = True,
        helpers: bool = True,
        groups: tuple[tuple[str, UniqueGroup], ...] = (),
    ) -> None:
        """sql_lines: let PostgreSQL make the lines of the tables that qualify (lines.way_of); off, every
        table is read into Python (the same plan, byte for byte: the tests compare the two)."""
        self.sql_lines = sql_lines
        self.groups = groups  # (label, group) of the unique groups whose members are this target's (groups.py)
        self.helpers = helpers  # a second connection may fill sections ahead (lines.Ahead)
        self._copy_rows: bytes | None = None  # the mapping as COPY data (_fill_mapping)
        self._ci = False  # some column compares case-insensitively: _es_map_ci is filled
        self.target = target
        self.connect = connect
        self.where = where
        self.mappings = mappings
        self.by_ord = {m.ord: m for m in mappings}
        self.match = match
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self.edges: set[tuple[int, int]] = set()
        self._conn: psycopg.Connection | None = None
        self._stopped = False

    def run(self) -> TargetPlan:  # executor.Step
        return self.plan()

    def cancel(self) -> None:
        """From another thread: stop the query in flight (the server cancels it) and plan nothing more."""
        self._stopped = True
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.cancel_safe()

    def plan(self) -> TargetPlan:
        conn = self._conn = self.connect(self.target)
        kept = False
        prefetch = None
        try:
            if self._stopped:
                raise UserError(f"target {self.target.name!r}: planning stopped")
            where = reached(conn)
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
            # Every table locked for reading until planning ends, as a long SELECT would hold it: a TRUNCATE or a
            # rewriting ALTER waits instead of changing a table under the snapshot whose lines are still to be read
            # (and the helper connection, which waits at most HELPER_LOCK_WAIT, never waits behind one forever).
            if metas:
                conn.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.SQL(", ").join(m.ident for m in metas))
                )
            self.notes += [n for m in metas for n in _followers(m)]
            self._ci = any(m.columns[c].ci for m in metas for c in m.email_columns) or self.match == "casefold"
            if self._ci:
                self._fill_ci(conn)
                self._check_ci_ambiguity(conn)
            tables = []
            fks = foreign_keys(conn, [m.oid for m in metas])
            utf8 = conn.execute("SELECT current_setting('server_encoding') = 'UTF8'").fetchone() == (True,)
            names = [m.display for m in metas]
            grouped = group_tables(self.groups, metas, self.where)
            # A group's tables are read into Python: a row of one may be left unchanged for a row of another.
            ways = {m.index: "python" if m.index in grouped else way_of(m, fks, utf8) for m in metas}
            if not self.sql_lines:
                ways = dict.fromkeys(ways, "python")
            name = self.target.name
            sql_tables = [
                TableLines(conn, name, m, self.match, self._unfit, self.where, analysed=ways[m.index] == "analysed")
                for m in metas
                if ways[m.index] != "python"
            ]
            # The costliest section of a table that needs nothing from the reading below, begun now by a helper.
            if self.helpers and any(not t.analysed for t in sql_tables) and len(metas) > 1:
                row = conn.execute("SELECT pg_export_snapshot()").fetchone()
                assert row is not None
                prefetch = Prefetch(conn, sql_tables, functools.partial(self.open_helper, row[0], {}))
            total = sum(len(m.email_columns) for m in metas if ways[m.index] != "sql")
            with progress.task(f"plan {name}: reading", total=total) as bar:
                for m in metas:
                    # "sql" tables are read once the steps are known, as their lines; of an "analysed" table only
                    # the rows meeting another row in a unique index are read here.
                    if ways[m.index] == "sql":
                        continue
                    bar.describe(f"plan {name}: reading {m.display}")
                    troubled = ways[m.index] == "analysed"
                    if troubled:
                        emails = set(m.email_columns)
                        indexes = [_index_sql(m, u, "troubled") for u in m.unique_indexes if u.columns & emails]
                        next(t for t in sql_tables if t.meta is m).troubled(indexes)
                    tables.append(TablePlan(m, self._read_table(conn, m, bar, troubled), analysed=troubled))
            failed = [(tp.meta, problems) for tp in tables if (problems := self._resolve_conflicts(conn, tp))]
            if failed:
                raise self._refuse_conflicts(failed)
            for label, group in self.groups:
                decide_group(conn, label, group, tables, self.where)
            if not self.groups:
                self.warnings += shared_addresses(conn, metas, tables, self.match, self.target.name)
            # On the rows as the plan leaves them: its deletes and skips decided (in the tables read into Python).
            decided = {tp.meta.index: [r.keystr for r in tp.rows if r.fate != "move"] for tp in tables}
            broken = [(m, p) for m in metas for p in check_violations(conn, m, self.match, decided.get(m.index, ()))]
            if broken:
                raise Refusal(
                    f"{self.where}: the plan would break CHECK constraints of "
                    + ", ".join(dict.fromkeys(f"tables[{m.index}] ({m.display})" for m, _ in broken))
                    + "; fix the mappings of these rows (or the constraint) and plan again",
                    problems=[p for _, p in broken],
                )
            for tp in tables:
                # Whole rows for deletes, and for updates of a key column: where the email is the key, the
                # key alone cannot tell the planned row from another that has since moved onto that key.
                keyed = set(tp.meta.key)
                imaged = [r for r in tp.rows if r.fate == "delete" or (r.fate == "move" and keyed & set(r.changes))]
                if imaged:
                    images = self._images(conn, tp.meta, [r.key for r in imaged])
                    for r in imaged:
                        r.image = images.get(r.keystr)
            self._check_foreign_keys(conn, tables, fks)
            if sql_tables:
                # Kept open, in this snapshot, until the lines are read (TargetPlan.close).
                kept = True
                return TargetPlan(
                    self.target,
                    where,
                    tables,
                    self.edges,
                    self.warnings,
                    sql_tables,
                    conn,
                    table_names=names,
                    notes=self.notes,
                    open_helper=self.open_helper if self.helpers else None,
                    prefetch=prefetch,
                )
            conn.rollback()
        finally:
            if not kept:
                if prefetch is not None:
                    prefetch.close()
                conn.close()
        return TargetPlan(self.target, where, tables, self.edges, self.warnings, table_names=names, notes=self.notes)

    def open_helper(self, snapshot: str, levels: dict[int, int]) -> psycopg.Connection:
        """A second connection reading in planning's snapshot, with the same temporary tables and levels."""
        conn = self.connect(self.target)
        try:
            self._mapping_tables(conn)
            conn.commit()
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (HELPER_LOCK_WAIT,))
            # Filled inside the imported snapshot: rows written before it would be invisible to it.
            self._fill_mapping(conn, self._ci)
            load_levels(conn, levels)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- mapping in temp tables --------------------------------------------------------------------------

    def _load_mapping(self, conn: psycopg.Connection) -> None:
        self._mapping_tables(conn)
        self._fill_mapping(conn, ci=False)  # the case-insensitive copy once the columns are known (plan)

    @staticmethod
    def _mapping_tables(conn: psycopg.Connection) -> None:
        """The session's temporary tables and functions, empty (CREATE is refused in a read-only transaction)."""
        conn.execute("CREATE TEMP TABLE _es_map (ord int PRIMARY KEY, old text NOT NULL, new text NOT NULL)")
        conn.execute("CREATE UNIQUE INDEX ON _es_map (old)")
        # Case-insensitive lookups use PostgreSQL's lower(), the same function citext compares with.
        conn.execute("CREATE TEMP TABLE _es_map_ci (ord int NOT NULL, old text NOT NULL, new text NOT NULL)")
        conn.execute("CREATE UNIQUE INDEX ON _es_map_ci (old)")
        conn.execute("CREATE TEMP TABLE _es_chg (_es_kid int PRIMARY KEY, _es_key jsonb, _es_patch jsonb)")
        for stmt in SETUP:
            conn.execute(stmt)

    def _fill_mapping(self, conn: psycopg.Connection, ci: bool) -> None:
        """The mapping into the temporary tables (allowed in a read-only transaction: they are temporary). Its COPY
        data is made once, for planning's connection and the helper's."""
        if self._copy_rows is None:
            plain = "".join(f"{m.ord}\t{m.old}\t{m.new}\n" for m in self.mappings)
            # Addresses rarely hold a backslash, tab or line break: then each row has exactly two tabs and a newline,
            # and no value needs escaping (one look at the whole text instead of four replaces per value).
            if (
                "\\" in plain
                or "\r" in plain
                or plain.count("\t") != 2 * len(self.mappings)
                or plain.count("\n") != len(self.mappings)
            ):
                plain = "".join(f"{m.ord}\t{_copy_text(m.old)}\t{_copy_text(m.new)}\n" for m in self.mappings)
            self._copy_rows = plain.encode()
        with conn.cursor().copy("COPY _es_map (ord, old, new) FROM STDIN") as cp:
            cp.write(self._copy_rows)
        conn.execute("ANALYZE _es_map")
        if ci:
            self._fill_ci(conn)

    @staticmethod
    def _fill_ci(conn: psycopg.Connection) -> None:
        conn.execute(
            "INSERT INTO _es_map_ci SELECT DISTINCT ON (lower(old)) ord, lower(old), new FROM _es_map "
            "ORDER BY lower(old), ord"
        )
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

    def _read_table(
        self, conn: psycopg.Connection, meta: TableMeta, bar: progress.Task, troubled: bool = False
    ) -> list[RowPlan]:
        """The table's changed rows (troubled: only those listed in _es_trouble), with their changes."""
        rows: dict[Any, RowPlan] = {}
        for col in meta.email_columns:
            bar.advance()
            for ident, key, old, new, entries in self._scan_column(conn, meta, col, troubled):
                rp = rows.get(ident if ident is not None else dumps(key))
                if rp is None:
                    ks = dumps(key)
                    rp = rows[ident if ident is not None else ks] = RowPlan(
                        key=key, keystr=ks, sortkey=_sortkey(meta, key)
                    )
                kind: ColKind = "update" if meta.columns[col].kind != "array" else "array-replace"
                rp.changes[col] = ColChange(col, kind, old, new, entries)
        ordered = sorted(rows.values(), key=lambda r: r.sortkey)
        for i, r in enumerate(ordered):
            r.kid = i
        return ordered

    def _scan_column(
        self, conn: psycopg.Connection, meta: TableMeta, col: str, troubled: bool = False
    ) -> Iterable[tuple[Any, dict[str, Any], Any, Any, tuple[int, ...]]]:
        c = meta.columns[col]
        ci = c.ci or self.match == "casefold"
        mp = sql.Identifier("_es_map_ci" if ci else "_es_map")
        t = sql.Identifier("t")
        ident = sql.Identifier(col)

        def norm(expr: sql.Composable) -> sql.Composable:
            return sql.SQL("lower({}::text)").format(expr) if ci else sql.SQL("{}::text").format(expr)

        def value(expr: sql.Composable) -> sql.Composable:
            # Natively where psycopg loads exactly what to_jsonb renders: no JSON per value to decode.
            if c.native:
                return sql.SQL("({})::{}").format(expr, sql.SQL(c.native))
            return sql.SQL("to_jsonb({})").format(expr)

        # The key comes last: one jsonb object, or its columns natively (meta.key_select).
        keysel = meta.key_select(t)
        if c.kind == "text":
            # The new value is cast to the column's own type here, so char(n) padding, varchar(n) limits and
            # domain checks show up in the plan (or as a plan error), not as an apply-time failure.
            q = sql.SQL(
                "SELECT {old}, m.ord, {new}, "
                "CAST(m.new AS {typ})::text IS DISTINCT FROM m.new, "  # an explicit cast truncates silently
                "{k} FROM {tbl} AS t JOIN {mp} m ON m.old = {v} AND {moves}{only}"
            ).format(
                only=sql.SQL(" WHERE EXISTS (SELECT 1 FROM _es_trouble x WHERE x.tbl = {} AND x.key = {})").format(
                    sql.Literal(meta.index), meta.key_json(t)
                )
                if troubled
                else sql.SQL(""),
                k=keysel,
                old=value(sql.SQL("t.{}").format(ident)),
                new=value(sql.SQL("CAST(m.new AS {})").format(sql.SQL(c.type_sql))),
                typ=sql.SQL(c.type_sql),
                tbl=meta.ident,
                mp=mp,
                v=norm(sql.SQL("t.{}").format(ident)),
                moves=text_moves(sql.SQL("t.{}").format(ident), c.type_sql),
            )
        elif c.kind == "array":
            # One join of every element against the mapping, grouped by row: a per-row subquery would make
            # PostgreSQL hash the whole mapping once per row. New elements are rendered in the column's type
            # (natively, they are the mapping's own text: `cut` says whether the type changed any).
            news = (
                sql.SQL("array_agg(m.new ORDER BY e.i)")
                if c.native
                else sql.SQL("array_agg(to_jsonb(CAST(ARRAY[m.new] AS {typ})) -> 0 ORDER BY e.i)").format(
                    typ=sql.SQL(c.type_sql)
                )
            )
            q = sql.SQL(
                "SELECT {old}, h.pos, h.ords, array_ndims(t.{c}), h.news, h.cut, {k} FROM ("
                "SELECT e.tid, array_agg(e.i ORDER BY e.i) AS pos, array_agg(m.ord ORDER BY e.i) AS ords, "
                "{news} AS news, "
                "bool_or(CAST(ARRAY[m.new] AS {typ})::text[] IS DISTINCT FROM ARRAY[m.new]) AS cut "
                "FROM (SELECT t.ctid AS tid, e.v, e.i FROM {tbl} AS t "
                "CROSS JOIN LATERAL unnest(t.{c}) WITH ORDINALITY e(v, i) OFFSET 0) e "  # see _FENCE
                "JOIN {mp} m ON m.old = {ev} AND m.new IS DISTINCT FROM e.v::text GROUP BY e.tid) h "
                "JOIN {tbl} AS t ON t.ctid = h.tid"
            ).format(
                k=keysel,
                old=value(sql.SQL("t.{}").format(ident)),
                news=news,
                c=ident,
                typ=sql.SQL(c.type_sql),
                tbl=meta.ident,
                mp=mp,
                ev=norm(sql.SQL("e.v")),
            )
        elif col in meta.paths:
            # Only the strings at the configured paths are matched; the new document is made here too, by the same
            # expressions the lines use (paths.remapped), so both ways plan the same bytes.
            joins, newdoc = remapped_joins(sql.SQL("t.{}").format(ident), meta.paths[col], mp, norm, meta.prefix)
            q = sql.SQL(
                "SELECT t.{c}, {new}, h.ords, {k} FROM ("
                "SELECT s.tid, array_agg(DISTINCT m.ord ORDER BY m.ord) AS ords FROM ("
                "SELECT t.ctid AS tid, _es_x.v AS v FROM {tbl} AS t "
                "CROSS JOIN LATERAL {strings} AS _es_x(v) OFFSET 0) s "  # _FENCE
                "JOIN {mp} m ON m.old = {sv} AND m.new <> s.v GROUP BY s.tid) h "
                "JOIN {tbl} AS t ON t.ctid = h.tid{joins}"
            ).format(
                k=keysel,
                c=ident,
                new=newdoc,
                tbl=meta.ident,
                mp=mp,
                sv=norm(sql.SQL("s.v")),
                strings=strings_at(sql.SQL("t.{}").format(ident), meta.paths[col]),
                joins=joins,
            )
        else:
            # Every string of every document joined against the mapping, duplicates removed only among the matches:
            # a DISTINCT per document (a sort per row) made this five times slower on large tables.
            q = sql.SQL(
                "SELECT t.{c}, h.pairs, {k} FROM ("
                "SELECT s.tid, array_agg(DISTINCT jsonb_build_array(s.v, m.ord)) AS pairs FROM ("
                "SELECT t.ctid AS tid, _es_x.v AS v FROM {tbl} AS t "
                "CROSS JOIN LATERAL {strings} AS _es_x(v) OFFSET 0) s "  # _FENCE
                "JOIN {mp} m ON m.old = {sv} AND m.new <> s.v GROUP BY s.tid) h "
                "JOIN {tbl} AS t ON t.ctid = h.tid"
            ).format(
                k=keysel,
                c=ident,
                tbl=meta.ident,
                mp=mp,
                sv=norm(sql.SQL("s.v")),
                strings=doc_strings(sql.SQL("t.{}").format(ident)),
            )

        # Streamed in chunks (libpq's chunked rows mode), not through a DECLAREd cursor: memory stays bounded
        # either way, but PostgreSQL never runs a cursor's query in parallel, and these scans are the plan's cost.
        with conn.cursor() as cur:
            try:
                yield from self._changes(meta, col, cur.stream(q, size=SCAN_BATCH))
            except (psycopg.DataError, psycopg.IntegrityError) as e:
                raise self._unfit(meta, col, str(e.diag.message_primary or e)) from None

    def _changes(
        self, meta: TableMeta, col: str, records: Iterable[Any]
    ) -> Iterable[tuple[Any, dict[str, Any], Any, Any, tuple[int, ...]]]:
        c = meta.columns[col]
        width = meta.key_width
        single = meta.key_order[0] if meta.native_key and width == 1 else None
        for rec in records:
            if single is not None:  # the usual case, inline: this loop runs once per changed value
                ident = rec[-1]
                key = {single: ident}
            else:
                ident, key = meta.key_from(rec[-width:])
            if c.kind == "text":
                if rec[3]:
                    new_email = self.by_ord[rec[1]].new
                    raise self._unfit(meta, col, f"{new_email!r} does not fit (it would be cut short)")
                yield ident, key, rec[0], rec[2], (rec[1],)
            elif c.kind == "array":
                old, positions, ords, ndims, news, cut = rec[:6]
                if cut:
                    raise self._unfit(meta, col, "some new emails do not fit its elements (cut short)")
                if ndims != 1:
                    raise UserError(
                        f"{self.where}.tables[{meta.index}]: {meta.display}.{col} holds a "
                        f"{ndims}-dimensional array at key {dumps(key)}; only one-dimensional arrays "
                        "are supported"
                    )
                new = list(old)
                for pos, value in zip(positions, news, strict=True):
                    new[pos - 1] = value
                yield ident, key, old, new, tuple(sorted(set(ords)))
            elif col in meta.paths:
                yield ident, key, rec[0], rec[1], tuple(rec[2])
            else:
                pairs = rec[1]
                repl = {s: self.by_ord[o].new for s, o in pairs}
                yield ident, key, rec[0], _walk_replace(rec[0], repl), tuple(sorted({o for _, o in pairs}))

    def _refuse_conflicts(self, failed: list[tuple[TableMeta, list[str]]]) -> Refusal:
        """One error for every table with on_conflict: fail whose unique constraints the plan would break, each
        table's conflicts listed (the first CONFLICTS_SHOWN of each), so one plan run shows them all."""
        problems: list[str] = []
        for meta, found in failed:
            problems += found[:CONFLICTS_SHOWN]
            if len(found) > CONFLICTS_SHOWN:
                problems.append(f"{meta.display}: ... and {len(found) - CONFLICTS_SHOWN} more")
        if len(failed) == 1:
            meta = failed[0][0]
            head = f"{self.where}.tables[{meta.index}] ({meta.display}) has on_conflict: fail and the plan"
        else:
            names = ", ".join(f"tables[{m.index}] ({m.display})" for m, _ in failed)
            head = f"{self.where}: {names} have on_conflict: fail and the plan"
        return Refusal(
            f"{head} would break unique constraints; resolve these rows or choose on_conflict: skip or delete",
            problems=problems,
        )

    def _unfit(self, meta: TableMeta, col: str, why: str) -> UserError:
        return UserError(
            f"{self.where}.tables[{meta.index}]: {meta.display}.{col} ({meta.columns[col].type_sql}) cannot hold "
            f"a new email of the mappings: {why}; widen the column or fix the mapping"
        )

    # -- unique constraints --------------------------------------------------------------------------------

    def _resolve_conflicts(self, conn: psycopg.Connection, tp: TablePlan) -> list[str]:
        """Decide which changed rows may take their new index entries, under every unique index at once; with
        on_conflict: fail, the conflicts found instead (nothing decided).

        Rows are considered in priority order (mapping position, then key). A row wins if none of its new
        entries is held by a row that stays (unchanged, or left unchanged by on_conflict: skip) or was taken by
        a row that won before it. With on_conflict: skip a loser stays where it is, which can take an entry
        another row was counting on, so the decision is repeated until nothing changes. Every loser records
        the row holding its entry, so apply can check the conflict still exists before deleting anything.
        """
        meta = tp.meta
        changed_cols = {c for r in tp.rows for c in r.changes}
        relevant = [u for u in meta.unique_indexes if u.columns & changed_cols]
        if not relevant or not tp.rows:
            return []
        conn.execute("DELETE FROM _es_chg")
        with conn.cursor().copy("COPY _es_chg (_es_kid, _es_key, _es_patch) FROM STDIN") as cp:
            for r in tp.rows:
                cp.write_row((r.kid, dumps(r.key), dumps({c: ch.new for c, ch in r.changes.items()})))
        by_kid = {r.kid: r for r in tp.rows}
        analyses = [self._analyse_index(conn, meta, u, {r.keystr: r for r in tp.rows}) for u in relevant]

        def priority(r: RowPlan) -> tuple[Any, ...]:
            return (min(e for ch in r.changes.values() for e in ch.entries), r.sortkey)

        movers = sorted({k for a in analyses for k in a.movers}, key=lambda k: priority(by_kid[k]))
        policy = meta.cfg.on_conflict
        stayers: set[int] = set()  # skip: rows left as they are, holding their entries
        lost: dict[int, tuple[IndexAnalysis, Holder]] = {}  # losers of earlier rounds that stay lost
        # delete: rows blocked by a row outside the plan can never win; they are settled first, and the decisions
        # repeated with their entries free, until no more such rows appear.
        certain: set[int] = set()
        while True:
            losers: dict[int, tuple[IndexAnalysis, Holder]] = {}
            claimed: list[dict[Any, Holder]] = []
            for a in analyses:
                held: dict[Any, Holder] = {
                    slot: Holder(node)
                    for slot, node in a.incumbents.items()
                    if not (node[0] == "pre" and node[1] in certain)
                }
                for kid in stayers:
                    slot = a.pre_slot.get(kid)
                    if slot is not None:
                        held[slot] = Holder(("pre", kid))
                claimed.append(held)
            for kid in movers:
                if kid in stayers or kid in certain:
                    continue
                wanted = [(i, a.post_slot[kid]) for i, a in enumerate(analyses) if kid in a.post_slot]
                clash = next(((i, s) for i, s in wanted if s in claimed[i]), None)
                if clash is None:
                    for i, s in wanted:
                        claimed[i][s] = Holder(("post", kid))
                    continue
                losers[kid] = (analyses[clash[0]], claimed[clash[0]][clash[1]])
                if policy == "delete":
                    # Decided in mapping order, as the old script's updates ran: a deleted row frees the entries
                    # it held at once, for the rows decided after it.
                    for i, a in enumerate(analyses):
                        slot = a.pre_slot.get(kid)
                        if slot is not None and claimed[i].get(slot) == Holder(("pre", kid)):
                            del claimed[i][slot]
            if policy == "skip" and set(losers) - stayers:
                stayers |= set(losers)
                lost.update(losers)
                continue
            if policy == "delete":
                sure = {k: v for k, v in losers.items() if v[1].node[0] == "row"}
                if sure:
                    certain |= set(sure)
                    lost.update(sure)
                    continue
            break
        losers = {**lost, **losers}
        if policy == "delete":
            # A delete must be justified by a row that stays; one decided against a row deleted later would cost
            # a row for nothing.
            unjustified = [k for k, (_, h) in losers.items() if h.node[0] == "pre" and h.node[1] in losers]
            if unjustified:
                raise UserError(
                    f"{self.where}.tables[{meta.index}] ({meta.display}): these rows would be deleted for a conflict "
                    "with rows the plan deletes too; use on_conflict: skip, or split the mappings into two plans",
                    problems=[f"key {by_kid[k].keystr}" for k in unjustified[:20]],
                )
        problems: list[str] = []
        for kid, (a, holder) in losers.items():
            loser = by_kid[kid]
            reason = self._conflict_reason(a.index, loser, holder, by_kid)
            if policy == "fail":
                problems.append(f"{meta.display} key {loser.keystr}: {reason}")
            elif policy == "skip":
                loser.fate, loser.reason = "skip", reason
            else:
                loser.fate, loser.reason = "delete", reason
                loser.unique_cols = frozenset().union(*(u.columns for u in meta.unique_indexes))
                loser.delete_entries = tuple(sorted(loser.entries_for(a.index.columns)))
                loser.conflict = (a.index, holder)
        if problems:
            return problems  # the caller says them with every other table's (_refuse_conflicts)
        # Ordering: a row arriving at an entry goes after the row leaving it (moving away or deleted).
        for a in analyses:
            arriving: dict[Any, list[RowPlan]] = defaultdict(list)
            leaving: dict[Any, list[RowPlan]] = defaultdict(list)
            for kid, slot in a.post_slot.items():
                if by_kid[kid].fate == "move":
                    arriving[slot].append(by_kid[kid])
            for kid, slot in a.pre_slot.items():
                r = by_kid[kid]
                # A deleted row leaves every entry it held, including those of indexes it does not move in.
                if (kid in a.movers and r.fate == "move") or r.fate == "delete":
                    leaving[slot].append(r)
            for slot, rows in arriving.items():
                for x in rows:
                    for y in leaving.get(slot, ()):
                        if x.kid != y.kid:
                            self._order(x.entries_for(a.index.columns), _entries_before(y, a.index))
                            if y.fate == "delete":
                                y.arrivals.append((x, a.index.columns))
        self._holder_images(conn, meta, tp.rows, by_kid)
        return []

    def _order(self, after: Iterable[int], before: Iterable[int]) -> None:
        for x in after:
            for y in before:
                if x != y:
                    self.edges.add((x, y))

    @staticmethod
    def _conflict_reason(u: UniqueIndex, loser: RowPlan, holder: Holder, by_kid: dict[int, RowPlan]) -> str:
        vals = ", ".join(
            f"{c}={json.dumps(ch.new, ensure_ascii=False, default=str)}"
            for c, ch in loser.changes.items()
            if c in u.columns
        )
        kind, ident = holder.node
        if kind == "row":
            return f"unique index {u.name}: {vals} is already held by the row with key {ident}"
        other = by_kid[ident]
        if kind == "pre":
            return f"unique index {u.name}: {vals} is already held by the row with key {other.keystr}"
        return (
            f"unique index {u.name}: {vals} is also planned for the row with key {other.keystr}, whose mapping "
            "comes first"
        )

    def _holder_images(
        self, conn: psycopg.Connection, meta: TableMeta, rows: list[RowPlan], by_kid: dict[int, RowPlan]
    ) -> None:
        """For each deleted row: the key and index values of the row that holds its entry at apply time."""
        dels = [(r, r.conflict) for r in rows if r.fate == "delete" and r.conflict is not None]
        if not dels:
            return
        want: dict[str, dict[str, Any]] = {}
        for _, (_, holder) in dels:
            kind, ident = holder.node
            key = json.loads(ident) if kind == "row" else by_kid[ident].key
            want[dumps(key)] = key
        images = self._images(conn, meta, list(want.values()))
        for r, (u, holder) in dels:
            kind, ident = holder.node
            if kind == "row":
                key, image = json.loads(ident), images.get(ident)
                if image is None:
                    continue
                values = {c: image[c] for c in sorted(u.columns) if c in image}
            else:
                h = by_kid[ident]
                image = images.get(h.keystr)
                if image is None:
                    continue
                post = dict(image)  # what the holder holds once the plan is applied
                post.update({c: ch.new for c, ch in h.changes.items()})
                key = {k: post[k] for k in meta.key}
                values = {c: post[c] for c in sorted(u.columns) if c in post and c not in meta.generated}
                # The holder is itself a planned row: apply checks that its changes go ahead (its row is locked
                # and its actions pending or done), not its values at the moment of the delete.
                r.conflict_check = {"key": key, "values": values, "winner": h.key}
                continue
            r.conflict_check = {"key": key, "values": values}

    def _analyse_index(
        self, conn: psycopg.Connection, meta: TableMeta, u: UniqueIndex, by_keystr: dict[str, RowPlan]
    ) -> IndexAnalysis:
        """Where each changed row sits in the index before and after the change, and who shares those entries.

        Index expressions and the predicate are evaluated by PostgreSQL over the row before and after the
        change (generated columns recomputed), so collation, citext and expression indexes decide equality
        exactly as the index does. They are evaluated in a scope holding only that row, so no column name can
        be captured by our own aliases.
        """
        q = _index_sql(meta, u, "analysis")
        moving: set[int] = set()
        arriving: set[int] = set()
        in_index_before: set[int] = set()
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
                parent[max(ra, rb, key=_node_order)] = min(ra, rb, key=_node_order)

        for tag, k, other, okey, post_in in conn.execute(q):
            if tag == "v":
                moving.add(k)
                if post_in:
                    arriving.add(k)
            elif tag == "p":
                in_index_before.add(k)
            elif tag == "m":
                union(("post", k), ("post", other))
            else:
                ks = dumps(okey)
                occ = by_keystr.get(ks)
                if occ is not None and occ.kid == k:
                    continue
                union(("post", k), ("pre", occ.kid) if occ is not None else ("row", ks))
        a = IndexAnalysis(index=u, movers=moving)
        for k in arriving:
            a.post_slot[k] = find(("post", k))
        for k in in_index_before:
            a.pre_slot[k] = find(("pre", k))
            if k not in moving:
                a.incumbents[a.pre_slot[k]] = ("pre", k)
        for node in list(parent):
            if node[0] == "row":
                a.incumbents[find(node)] = node
        return a

    def _images(self, conn: psycopg.Connection, meta: TableMeta, keys: list[dict[str, Any]]) -> dict[str, Any]:
        T = meta.alias("t")
        # Found through the key's columns (its index), then compared as the plan keeps keys: matching the built
        # key of every row instead scanned the table (44 ms each lookup at 100k rows).
        q = sql.SQL(
            "SELECT {kj}, to_jsonb({T}.*) FROM (SELECT DISTINCT jsonb_array_elements(%s) AS key) k "
            "JOIN {tbl} AS {T} ON {km} WHERE {kj} = k.key"
        ).format(kj=meta.key_json(T), tbl=meta.ident, T=T, km=meta.key_match(T, sql.SQL("k.key")))
        return {dumps(k): img for k, img in conn.execute(q, (Jsonb(keys),))}

    # -- foreign keys --------------------------------------------------------------------------------------

    def _check_foreign_keys(self, conn: psycopg.Connection, tables: list[TablePlan], fks: list[ForeignKey]) -> None:
        by_oid = {tp.meta.oid: tp for tp in tables}
        problems: list[str] = []
        for fk in fks:
            if fk.child_oid not in by_oid and fk.parent_oid not in by_oid:
                continue  # between tables whose lines PostgreSQL makes: none of their email columns is in it
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
                problems += self._fk_parent_changes(conn, fk, parent, child, child is not None and bool(c_cols))
            elif child is not None and c_cols:
                problems += self._fk_child_targets(conn, fk, child)
            if parent is not None and not p_cols:
                dels = [r for r in parent.rows if r.fate == "delete"]
                n, ex, _ = self._children_of(conn, fk, parent, dels) if dels else (0, [], [])
                if n:
                    problems.append(
                        f"foreign key {fk.name}: {n} row(s) of {fk.child_name} reference rows of "
                        f"{parent.meta.display} that on_conflict: delete would remove (keys {ex}); "
                        f"set on_conflict: skip for {parent.meta.display} or reassign those rows first"
                    )
        if problems:
            raise UserError(f"{self.where}: the plan would break foreign keys in target {self.target.name!r}", problems)

    def _children_of(
        self,
        conn: psycopg.Connection,
        fk: ForeignKey,
        parent: TablePlan,
        rows: list[RowPlan],
        child: TablePlan | None = None,
    ) -> tuple[int, list[str], list[str]]:
        """Rows of the child referencing these parent rows: count, example parent keys, child keys (if the
        child is a configured table)."""
        C, Pa = sql.Identifier(parent.meta.prefix + "c"), sql.Identifier(parent.meta.prefix + "p")
        on = sql.SQL(" AND ").join(
            sql.SQL("{c}.{cc} = {p}.{pc}").format(c=C, p=Pa, cc=sql.Identifier(cc), pc=sql.Identifier(pc))
            for cc, pc in zip(fk.child_cols, fk.parent_cols, strict=True)
        )
        ckey = child.meta.key_json(C) if child is not None else sql.SQL("NULL::jsonb")
        q = sql.SQL(
            "SELECT {pk}::text, {ck} FROM {child} {c} JOIN {tbl} {p} ON {on} "
            "WHERE {pk} IN (SELECT jsonb_array_elements(%s))"
        ).format(
            pk=parent.meta.key_json(Pa),
            ck=ckey,
            c=C,
            p=Pa,
            on=on,
            child=sql.SQL(fk.child_name),  # regclass text from the catalog: already quoted
            tbl=parent.meta.ident,
        )
        found = conn.execute(q, (Jsonb([r.key for r in rows]),)).fetchall()
        parents = sorted({p for p, _ in found})
        return len(found), parents[:3], [dumps(c) for _, c in found if c is not None]

    def _fk_parent_changes(
        self,
        conn: psycopg.Connection,
        fk: ForeignKey,
        parent: TablePlan,
        child: TablePlan | None,
        child_planned: bool,
    ) -> list[str]:
        pc, cc = fk.parent_cols[0], fk.child_cols[0]
        out = []
        upd = [r for r in parent.rows if r.fate == "move" and pc in r.changes]
        dels = [r for r in parent.rows if r.fate == "delete"]
        col = f"{fk.child_name}.{cc}"
        for rows, what, rule in ((upd, "update", fk.on_update), (dels, "delete", fk.on_delete)):
            if not rows:
                continue
            n, ex, child_keys = self._children_of(conn, fk, parent, rows, child if child_planned else None)
            if not n:
                continue
            rule_name = FK_ACTIONS.get(rule, rule)
            if child_planned and child is not None:
                if what == "update" and rule in "rnd":
                    out.append(
                        f"foreign key {fk.name} is ON UPDATE {rule_name}: the {n} referencing row(s) of "
                        f"{fk.child_name} would be blocked or changed outside the plan; make it NO ACTION or "
                        "CASCADE, or leave the parent column out"
                    )
                    continue
                # Every referencing row must move with its parent; one left behind (skipped on a conflict)
                # would block the parent's change, or be cascaded away with a deleted parent.
                # A deleted row either follows its parent first or is gone before the parent changes.
                moving = {r.keystr for r in child.rows if r.fate == "delete" or cc in r.kept_changes()}
                behind = [k for k in child_keys if k not in moving]
                if behind:
                    out.append(
                        f"foreign key {fk.name}: {len(behind)} row(s) of {fk.child_name} (keys {behind[:3]}) "
                        f"reference {parent.meta.display}.{pc} values that the plan would {what}, but those rows "
                        f"are not planned to change (on_conflict: skip left them); resolve their conflicts first"
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
                    f"(ON {what.upper()} {rule_name}); add {cc!r} of {fk.child_name} to the targets"
                )
        if child_planned and child is not None:
            # The other way round: a referencing value that changes while the row it references stays (skipped on
            # a conflict) would point at another row, or at none, and fail the key mid-apply. Refused likewise.
            ci = parent.meta.columns[pc].ci

            def norm(v: Any) -> Any:
                return v.lower() if ci and isinstance(v, str) else v

            stays = {norm(r.changes[pc].old): r.keystr for r in parent.rows if r.fate == "skip" and pc in r.changes}
            left = [
                (r.keystr, stays[norm(r.kept_changes()[cc].old)])
                for r in child.rows
                if cc in r.kept_changes() and norm(r.kept_changes()[cc].old) in stays
            ]
            if left:
                out.append(
                    f"foreign key {fk.name}: {len(left)} row(s) of {child.meta.display} (keys "
                    f"{[c for c, _ in left[:3]]}) would change {cc} while the {parent.meta.display} row(s) they "
                    f"reference (keys {[p for _, p in left[:3]]}) stay, skipped on a conflict; resolve those "
                    "conflicts first, or use on_conflict: delete"
                )
            out += self._fk_child_targets(conn, fk, child, parent)
        return out

    def _fk_child_targets(
        self, conn: psycopg.Connection, fk: ForeignKey, child: TablePlan, parent: TablePlan | None = None
    ) -> list[str]:
        """A child moving to a new value needs that value in the parent once the plan is applied."""
        cc, pc = fk.child_cols[0], fk.parent_cols[0]
        news = sorted({r.kept_changes()[cc].new for r in child.rows if cc in r.kept_changes()})
        leaving: list[dict[str, Any]] = []
        if parent is not None:
            arrivals: dict[Any, list[RowPlan]] = defaultdict(list)
            for r in parent.rows:
                if r.fate == "move" and pc in r.changes:
                    arrivals[r.changes[pc].new].append(r)
            # A child may point at a new value only once a parent row holds it. Usually both move by the same
            # mapping entry in one statement; when the value arrives by another entry (the child's own parent
            # deleted on a conflict, another row taking its new value), the child's change goes after it.
            for r in child.rows:
                ch = r.kept_changes().get(cc)
                if ch is not None:
                    for p in arrivals.get(ch.new, ()):
                        self._order(ch.entries, p.changes[pc].entries)
            news = [w for w in news if w not in arrivals]
            leaving = [r.key for r in parent.rows if r.fate == "delete" or (r.fate == "move" and pc in r.changes)]
        if not news:
            return []
        Pa = sql.Identifier("_es_p")
        still_there = (
            sql.SQL(" AND {} NOT IN (SELECT jsonb_array_elements(%s))").format(parent.meta.key_json(Pa))
            if parent is not None
            else sql.SQL("")
        )
        q = sql.SQL(
            "SELECT _es_w FROM unnest(%s::text[]) _es_w WHERE NOT EXISTS "
            "(SELECT 1 FROM {parent} {p} WHERE {p}.{pc} = _es_w{still}) ORDER BY 1 LIMIT 5"
        ).format(parent=sql.SQL(fk.parent_name), p=Pa, pc=sql.Identifier(pc), still=still_there)
        params: tuple[Any, ...] = (news, Jsonb(leaving)) if parent is not None else (news,)
        missing = [r[0] for r in conn.execute(q, params)]
        if not missing:
            return []
        return [
            f"foreign key {fk.name}: {child.meta.display}.{cc} would be set to {missing}, which "
            f"{fk.parent_name}.{pc} will not contain after the plan; add that table and column to the targets "
            "so the parent changes too, or fix the mapping"
        ]


def _index_sql(meta: TableMeta, u: UniqueIndex, what: Literal["analysis", "troubled"]) -> sql.Composed:
    """Where each row of _es_chg sits in the index before and after its change, and who shares those entries.

    "analysis": tagged rows for PostgresPlanner._analyse_index. "troubled": only the keys of rows that meet another
    row in the index (two arriving at one entry, or one arriving where a row is now): the rows whose fate needs a
    decision; every other changed row simply moves.
    """
    n = len(u.exprs)
    P = meta.prefix
    names = [sql.Identifier(f"{P}u{i}") for i in range(n)]
    kid, inn = sql.Identifier(f"{P}kid"), sql.Identifier(f"{P}in")
    exprs = [sql.SQL(e) for e in u.exprs]
    pred = sql.SQL(u.predicate) if u.predicate else sql.SQL("true")
    notnull = (
        sql.SQL("true")
        if u.nulls_not_distinct
        else sql.SQL(" AND ").join(sql.SQL("({}) IS NOT NULL").format(e) for e in exprs)
    )
    # Outside the index's own definition a row with a NULL key column is not in the index at all.
    sel = sql.SQL(", ").join(
        [sql.SQL("({}) AS {}").format(e, nm) for e, nm in zip(exprs, names, strict=True)]
        + [sql.SQL("(({}) AND {}) AS {}").format(pred, notnull, inn)]
    )
    eq = sql.SQL(" IS NOT DISTINCT FROM ") if u.nulls_not_distinct else sql.SQL(" = ")
    T, C = meta.alias("t"), meta.alias("c")
    cols = [c for c in meta.columns if c not in meta.generated]
    post_row = sql.SQL("SELECT {cols}{gen} FROM (SELECT (jsonb_populate_record({T}, {C}._es_patch)).*) s1").format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
        gen=sql.SQL("").join(
            sql.SQL(", ({}) AS {}").format(sql.SQL(expr), sql.Identifier(g)) for g, expr in meta.generated.items()
        ),
        T=T,
        C=C,
    )

    def row_of(alias: str) -> sql.Composable:
        return sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.SQL(alias + ".{}").format(nm) for nm in names))

    pair_mm = sql.SQL(" AND ").join(sql.SQL("x.{0}{1}y.{0}").format(nm, eq) for nm in names)
    A = meta.alias("a")
    pair_mo = sql.SQL(" AND ").join(
        sql.SQL("{a}.{nm}{eq}({e})").format(a=A, nm=nm, eq=eq, e=e) for nm, e in zip(names, exprs, strict=True)
    )
    ctes = """
        WITH pre AS MATERIALIZED (
            SELECT {C}._es_kid AS {kid}, v.* FROM _es_chg {C} JOIN {tbl} AS {T} ON {km}
            CROSS JOIN LATERAL (SELECT {sel} FROM (SELECT {T}.*) s) v
        ), post AS MATERIALIZED (
            SELECT {C}._es_kid AS {kid}, v.* FROM _es_chg {C} JOIN {tbl} AS {T} ON {km}
            CROSS JOIN LATERAL (SELECT {sel} FROM ({post_row}) s) v
        ), mv AS MATERIALIZED (
            SELECT p.*, q.{inn} AS was_in FROM post p JOIN pre q USING ({kid})
            WHERE q.{inn} IS DISTINCT FROM p.{inn} OR {row_q} IS DISTINCT FROM {row_p}
        )
        """
    if what == "analysis":
        body = """
            SELECT 'v', {kid}, NULL::int, NULL::jsonb, {inn} FROM mv WHERE was_in OR {inn}
            UNION ALL
            SELECT 'm', x.{kid}, y.{kid}, NULL, NULL FROM mv x JOIN mv y ON {pair_mm} AND x.{kid} < y.{kid}
            WHERE x.{inn} AND y.{inn}
            UNION ALL
            SELECT 'o', {A}.{kid}, NULL, {keyj}, NULL FROM (SELECT * FROM mv WHERE {inn}) {A}
            JOIN {tbl} AS {T} ON {pair_mo} WHERE ({pred_t})
            UNION ALL
            SELECT 'p', {kid}, NULL, NULL, NULL FROM pre WHERE {inn}
            """
    else:
        body = """
            SELECT c._es_key FROM (
                SELECT x.{kid} AS k, y.{kid} AS o FROM mv x JOIN mv y ON {pair_mm} AND x.{kid} < y.{kid}
                WHERE x.{inn} AND y.{inn}
            ) s JOIN _es_chg c ON c._es_kid IN (s.k, s.o)
            UNION
            SELECT c._es_key FROM (SELECT * FROM mv WHERE {inn}) {A} JOIN {tbl} AS {T} ON {pair_mo}
            JOIN _es_chg c ON c._es_kid = {A}.{kid} WHERE ({pred_t}) AND {keyj} <> c._es_key
            UNION
            SELECT {keyj} FROM (SELECT * FROM mv WHERE {inn}) {A} JOIN {tbl} AS {T} ON {pair_mo}
            JOIN _es_chg c ON c._es_kid = {A}.{kid} WHERE ({pred_t}) AND {keyj} <> c._es_key
            """
    return sql.SQL(ctes + body).format(
        C=C,
        T=T,
        A=A,
        kid=kid,
        inn=inn,
        sel=sel,
        tbl=meta.ident,
        post_row=post_row,
        km=meta.key_match(T, sql.SQL("{}._es_key").format(C)),
        row_q=row_of("q"),
        row_p=row_of("p"),
        pair_mm=pair_mm,
        pair_mo=pair_mo,
        keyj=meta.key_json(T),
        pred_t=sql.SQL("({}) AND {}").format(pred, notnull),
    )


def _copy_text(value: str) -> str:
    """A value in COPY's text format."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _node_order(node: tuple[str, Any]) -> tuple[int, int, str]:
    kind, ident = node
    if kind == "row":
        return (2, 0, ident)
    return (0 if kind == "pre" else 1, ident, "")


__all__ = ["PostgresPlanner", "TargetPlan", "TablePlan", "RowPlan", "ColChange"]
