"""PostgreSQL: plan lines built by the database itself, for the rows whose changes need no decision in Python.

Each table goes one of three ways (way_of). In a "sql" table no unique index and no foreign key involves an email
column, so each changed value becomes exactly one action whose step depends only on its mapping entries, and the
planner reads nothing into Python. In an "analysed" table only the rows that meet another row in a unique index are
read into Python and decided there (their lines go to _es_pylines); every other row simply moves. Once the order of
the mapping entries is known, each section of the plan (table, kind) is one `COPY (SELECT …) TO STDOUT`: PostgreSQL
joins the column with the mapping, renders every action's line in the plan's canonical form (sorted keys, compact,
numbers as the plan writes them), hashes its id, merges Python's lines in, and sorts the section into the file's
order. The client copies the bytes into the plan; a second connection in the same snapshot fills some sections at the
same time (Ahead).

The lines are the ones the Python path makes for the same rows, byte for byte (tests/test_plan_lines_made_in_sql.py
compares them on awkward values): plans keep their format, digests and diffs whichever way a table was planned.
"""

from __future__ import annotations

import copy
import functools
import json
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import Any, Literal

import psycopg
from psycopg import sql

from emailsync.errors import UserError
from emailsync.plan import Action, Chunk, Section, dumps, line_of
from emailsync.stores.postgres.catalog import ForeignKey, TableMeta, in_email_foreign_key
from emailsync.stores.postgres.paths import path_list, remapped_joins, strings_at

# Made in the session before planning's read-only transaction starts (which allows no CREATE): helpers the lines'
# SQL calls. _es_num writes a JSON number as the plan does (Python's Decimal: 0.0000001 is 1E-7); _es_doc writes a
# jsonb document in canonical form, its strings remapped (mode 1: exactly, 2: case-insensitively) or not (0).
# _es_fail stops the query with a message the planner turns into the same error the Python path gives.
SETUP = [
    "CREATE TEMP TABLE _es_lvl (ord int PRIMARY KEY, lvl int NOT NULL)",
    # Rows of a table with unique indexes that meet another row in one (their fate is decided in Python), by table.
    "CREATE TEMP TABLE _es_trouble (tbl int NOT NULL, key jsonb NOT NULL, PRIMARY KEY (tbl, key))",
    # The lines Python made for those rows, merged by PostgreSQL into their sections.
    "CREATE TEMP TABLE _es_pylines (tbl int NOT NULL, kind text NOT NULL, k text NOT NULL, c text NOT NULL, "
    "id text NOT NULL, line text NOT NULL)",
    """
    CREATE FUNCTION pg_temp._es_fail(msg text) RETURNS text LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'emailsync-lines:%', msg; END $$
    """,
    """
    CREATE FUNCTION pg_temp._es_num(s text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN strpos(s, '.') = 0 OR adj >= -6 THEN s
                WHEN digits = '' THEN sign || '0E' || adj::text
                ELSE sign || left(digits, 1) || CASE WHEN length(digits) > 1 THEN '.' || substr(digits, 2) ELSE '' END
                     || 'E' || adj::text END
    FROM (SELECT sign, digits, CASE WHEN digits = '' THEN e ELSE e + length(digits) - 1 END AS adj
          FROM (SELECT CASE WHEN left(s, 1) = '-' THEN '-' ELSE '' END AS sign,
                       ltrim(replace(ltrim(s, '-'), '.', ''), '0') AS digits,
                       -length(split_part(s, '.', 2)) AS e) a) b
    $$
    """,
    """
    CREATE FUNCTION pg_temp._es_doc(j jsonb, mode int) RETURNS text LANGUAGE plpgsql STABLE AS $$
    DECLARE r text := ''; k text; v jsonb; s text;
    BEGIN
        CASE jsonb_typeof(j)
        WHEN 'object' THEN
            FOR k, v IN SELECT e.key, e.value FROM jsonb_each(j) e ORDER BY e.key COLLATE "C" LOOP
                r := r || ',' || to_json(k)::text || ':' || pg_temp._es_doc(v, mode);
            END LOOP;
            RETURN '{' || substr(r, 2) || '}';
        WHEN 'array' THEN
            FOR v IN SELECT e FROM jsonb_array_elements(j) e LOOP
                r := r || ',' || pg_temp._es_doc(v, mode);
            END LOOP;
            RETURN '[' || substr(r, 2) || ']';
        WHEN 'number' THEN RETURN pg_temp._es_num(j::text);
        WHEN 'string' THEN
            IF mode = 1 THEN
                SELECT to_json(m.new)::text INTO s FROM pg_temp._es_map m WHERE m.old = j #>> '{}';
            ELSIF mode = 2 THEN
                SELECT to_json(m.new)::text INTO s FROM pg_temp._es_map_ci m WHERE m.old = lower(j #>> '{}');
            END IF;
            RETURN coalesce(s, j::text);
        ELSE RETURN j::text;
        END CASE;
    END $$
    """,
]

_FAIL = "emailsync-lines:"
# COPY's text format doubles every backslash; CSV with a quote and a delimiter that canonical JSON never holds raw
# (it escapes every control character) sends each line exactly as built.
_AS_IS = sql.SQL("(FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')")


def doc_strings(doc: sql.Composable) -> sql.Composable:
    """Every string anywhere in a jsonb document, as text rows (a set-returning expression). Collected by one
    jsonpath call into an array and then unnested: jsonb_path_query's own rows cost 30% more (593 vs 421 ms for 400k
    documents)."""
    return sql.SQL(
        "jsonb_array_elements_text(jsonb_path_query_array({}, 'strict $.** ? (@.type() == \"string\")'))"
    ).format(doc)


def text_moves(value: sql.Composable, type_sql: str, mapping: str = "m") -> sql.Composable:
    """A matched value really changes: its new value, in the column's type, is not exactly what the column holds (a
    case-insensitive match of the new address itself would plan a change that changes nothing, and verify would
    report it pending for ever). A new value the type cuts short still counts, so it is refused as such."""
    m = sql.Identifier(mapping)
    return sql.SQL(
        "(CAST({m}.new AS {typ})::text IS DISTINCT FROM {m}.new OR to_jsonb(CAST({m}.new AS {typ})) IS DISTINCT FROM "
        "to_jsonb({v}))"
    ).format(typ=sql.SQL(type_sql), v=value, m=m)


Way = Literal["python", "sql", "analysed"]


def way_of(meta: TableMeta, fks: list[ForeignKey], utf8: bool) -> Way:
    """How a table's actions are made.

    "sql": every action by PostgreSQL. No unique index and no foreign key involves an email column, so no row is
    deleted, skipped or ordered after another; the key renders exactly (ints, text); arrays hold text; and the
    database sorts bytes in the plan's order (UTF-8).
    "analysed": as "sql", but unique indexes involve email columns (all of them text). PostgreSQL finds the rows
    that meet another row in one of them (planner._index_sql); only those are read into Python and decided there,
    and PostgreSQL makes the lines of every other row, which simply moves.
    "python": every changed row is read into Python (foreign keys on email columns, other column types)."""
    emails = set(meta.email_columns)
    if not utf8 or not meta.native_key:
        return "python"
    if in_email_foreign_key(meta, fks):
        return "python"
    if not any(u.columns & emails for u in meta.unique_indexes) and not emails & set(meta.key):
        ok = all(meta.columns[c].kind != "array" or meta.columns[c].native == "text[]" for c in meta.email_columns)
        return "sql" if ok else "python"
    return "analysed" if all(meta.columns[c].kind == "text" for c in meta.email_columns) else "python"


def load_levels(conn: psycopg.Connection, levels: dict[int, int]) -> None:
    """The level of each mapping entry that has one (the rest are 0), for the lines' steps."""
    conn.execute("DELETE FROM _es_lvl")
    if levels:
        with conn.cursor().copy("COPY _es_lvl (ord, lvl) FROM STDIN") as cp:
            for ord_, lvl in levels.items():
                cp.write_row((ord_, lvl))


def python_lines(conn: psycopg.Connection, tbl: int, actions: Iterable[Action]) -> None:
    """Lines made in Python for rows of an analysed table, with their sort keys, into _es_pylines."""
    with conn.cursor().copy("COPY _es_pylines (tbl, kind, k, c, id, line) FROM STDIN") as cp:
        for a in actions:
            cp.write_row((tbl, a.kind, dumps(a.key), getattr(a, "column", None) or "", a.id, line_of(a)))


class TableLines:
    """The sections of one table whose lines PostgreSQL builds (with, for an analysed table, the lines Python made
    for its troubled rows, from _es_pylines)."""

    def __init__(
        self,
        conn: psycopg.Connection,
        target: str,
        meta: TableMeta,
        match: str,
        unfit: Callable[[TableMeta, str, str], UserError],
        where: str,
        analysed: bool = False,
    ) -> None:
        self.conn, self.target, self.meta, self.match, self.unfit, self.where = conn, target, meta, match, unfit, where
        self.analysed = analysed

    def parts(self) -> list[tuple[str, list[str]]]:
        """The table's sections: (kind, the columns whose lines it holds)."""
        kinds: dict[str, list[str]] = {}
        for c in self.meta.email_columns:
            kinds.setdefault("array-replace" if self.meta.columns[c].kind == "array" else "update", []).append(c)
        if self.analysed:
            for (kind,) in self.conn.execute(
                "SELECT DISTINCT kind FROM _es_pylines WHERE tbl = %s ORDER BY 1", (self.meta.index,)
            ):
                kinds.setdefault(kind, [])
        return list(kinds.items())

    def sections(self) -> list[Section]:
        return [
            Section((self.target, self.meta.display, kind), functools.partial(self._fill, kind, cols))
            for kind, cols in self.parts()
        ]

    def on(self, conn: psycopg.Connection) -> TableLines:
        """The same table's lines, read through another connection in the same snapshot (a helper's)."""
        other = copy.copy(self)
        other.conn = conn
        return other

    def troubled(self, indexes: list[sql.Composed]) -> None:
        """Every changed row into _es_chg (key, new values), then the keys of those that meet another row in one of
        the unique indexes (their `troubled` queries) into _es_trouble: those are read into Python."""
        meta = self.meta
        t = sql.Identifier(meta.prefix + "t")
        changes = sql.SQL(" UNION ALL ").join(
            sql.SQL(
                "SELECT {keyj} AS key, {c} AS col, to_jsonb(CAST(m.new AS {typ})) AS new FROM {tbl} AS {t} "
                "JOIN {mp} m ON m.old = {nv} AND {moves}"
            ).format(
                moves=text_moves(sql.SQL("{}.{}").format(t, sql.Identifier(col)), meta.columns[col].type_sql),
                keyj=meta.key_json(t),
                c=sql.Literal(col),
                typ=sql.SQL(meta.columns[col].type_sql),
                tbl=meta.ident,
                t=t,
                mp=self._map(col),
                nv=self._norm(col, sql.SQL("{}.{}").format(t, sql.Identifier(col))),
            )
            for col in meta.email_columns
        )
        self.conn.execute("DELETE FROM _es_chg")
        self._guarded(
            "update",
            list(meta.email_columns),
            sql.SQL(
                "INSERT INTO _es_chg (_es_kid, _es_key, _es_patch) "
                "SELECT row_number() OVER (), key, jsonb_object_agg(col, new) FROM ({}) s GROUP BY key"
            ).format(changes),
        )
        for q in indexes:
            self.conn.execute(
                sql.SQL("INSERT INTO _es_trouble (tbl, key) SELECT {}, k FROM ({}) s(k) ON CONFLICT DO NOTHING").format(
                    sql.Literal(meta.index), q
                )
            )

    def _map(self, col: str) -> sql.Identifier:
        ci = self.meta.columns[col].ci or self.match == "casefold"
        return sql.Identifier("_es_map_ci" if ci else "_es_map")

    def _norm(self, col: str, expr: sql.Composable) -> sql.Composable:
        ci = self.meta.columns[col].ci or self.match == "casefold"
        return sql.SQL("lower(({})::text)").format(expr) if ci else sql.SQL("({})::text").format(expr)

    # -- one section -------------------------------------------------------------------------------------------

    def _fill(self, kind: str, cols: list[str], write: Callable[[Chunk], None]) -> dict[str, int]:
        parts = [self._lines(kind, c, i) for i, c in enumerate(cols)]
        if self.analysed:
            parts.append(
                sql.SQL("SELECT k, c, id, line FROM _es_pylines WHERE tbl = {} AND kind = {}").format(
                    sql.Literal(self.meta.index), sql.Literal(kind)
                )
            )
        lines = sql.SQL(" UNION ALL ").join(parts)
        order = sql.SQL('ORDER BY k COLLATE "C", c COLLATE "C", id COLLATE "C"')
        single = len(cols) == 1 and not self.analysed
        if single:
            q = sql.SQL("COPY (SELECT line FROM ({}) l {}) TO STDOUT {}").format(lines, order, _AS_IS)
        else:
            # Several columns in one section: their counts (for the summary) come last, as one more line.
            q = sql.SQL(
                "COPY (WITH l AS ({lines}) SELECT line FROM ("
                "SELECT 0 AS z, k, c, id, line FROM l UNION ALL "
                "SELECT 1, NULL, NULL, NULL, (SELECT COALESCE(json_object_agg(c, n), '{{}}')::text "
                "FROM (SELECT c, count(*) AS n FROM l GROUP BY c) x)) o ORDER BY z, {order}) TO STDOUT {as_is}"
            ).format(lines=lines, order=sql.SQL('k COLLATE "C", c COLLATE "C", id COLLATE "C"'), as_is=_AS_IS)
        last: Any = None

        def copy() -> int:
            nonlocal last
            with self.conn.cursor() as cur:
                with cur.copy(q) as cp:
                    if single:
                        for data in cp:
                            write(data)
                    else:
                        for data in cp:
                            if last is not None:
                                write(last)
                            last = bytes(data)
                return cur.rowcount

        n = self._guarded(kind, cols, copy)
        if single:
            return {cols[0]: n} if n > 0 else {}
        counts: dict[str, int] = json.loads(last) if last is not None else {}
        return {c: counts[c] for c in self.meta.email_columns if counts.get(c)}  # in targets.yaml's order

    def _guarded(self, kind: str, cols: list[str], run: Callable[[], int] | sql.Composed) -> int:
        """Run a statement over the columns' changes; a new email that does not fit becomes the Python path's
        error, naming the column."""
        self.conn.execute("SAVEPOINT _es_lines")
        try:
            n = run() if callable(run) else self.conn.execute(run).rowcount
        except psycopg.errors.RaiseException as e:
            self.conn.execute("ROLLBACK TO SAVEPOINT _es_lines")
            raise self._failed(cols, str(e.diag.message_primary or e)) from None
        except (psycopg.DataError, psycopg.IntegrityError) as e:
            # A new email that the column's type refuses (a domain's check): found column by column, to name it.
            self.conn.execute("ROLLBACK TO SAVEPOINT _es_lines")
            raise self._which(kind, cols, str(e.diag.message_primary or e)) from None
        self.conn.execute("RELEASE SAVEPOINT _es_lines")
        return n

    def _failed(self, cols: list[str], message: str) -> UserError:
        what = message.split(_FAIL, 1)[-1]
        i, _, rest = what.partition(":")
        col = cols[int(i)]
        kind, _, detail = rest.partition(":")
        if kind == "cut":
            return self.unfit(self.meta, col, f"{detail!r} does not fit (it would be cut short)")
        if kind == "cut-elements":
            return self.unfit(self.meta, col, "some new emails do not fit its elements (cut short)")
        ndims, _, key = detail.partition(":")
        return UserError(
            f"{self.where}.tables[{self.meta.index}]: {self.meta.display}.{col} holds a {ndims}-dimensional array at "
            f"key {key}; only one-dimensional arrays are supported"
        )

    def _which(self, kind: str, cols: list[str], message: str) -> UserError:
        for i, c in enumerate(cols):
            self.conn.execute("SAVEPOINT _es_which")
            try:
                self.conn.execute(sql.SQL("SELECT count(line) FROM ({}) l").format(self._lines(kind, c, i)))
            except psycopg.errors.RaiseException as e:  # a new email cut short in this column: said as such
                self.conn.execute("ROLLBACK TO SAVEPOINT _es_which")
                return self._failed(cols, str(e.diag.message_primary or e))
            except psycopg.Error as e:
                self.conn.execute("ROLLBACK TO SAVEPOINT _es_which")
                return self.unfit(self.meta, c, str(e.diag.message_primary or e))
            self.conn.execute("RELEASE SAVEPOINT _es_which")
        return self.unfit(self.meta, cols[0], message)

    # -- one column's lines ------------------------------------------------------------------------------------

    def _key(self, t: sql.Composable) -> sql.Composable:
        """The row's key as dumps() writes it: its columns in sorted order, compact."""
        parts = []
        for i, k in enumerate(sorted(self.meta.key)):
            col = sql.SQL("{}.{}").format(t, sql.Identifier(k))
            value = (
                sql.SQL("({})::int8::text").format(col)
                if self.meta.columns[k].native == "int8"
                else sql.SQL("to_json(({})::text)::text").format(col)
            )
            label = ("{" if i == 0 else ",") + dumps(k) + ":"
            parts.append(sql.SQL("{} || COALESCE({}, 'null')").format(sql.Literal(label), value))
        return sql.SQL("({} || '}}')").format(sql.SQL(" || ").join(parts))

    def _lines(self, kind: str, col: str, i: int) -> sql.Composable:
        """SELECT k, c, id, line: one line per changed value of the column, in the plan's canonical form."""
        meta = self.meta
        c = meta.columns[col]
        ci = c.ci or self.match == "casefold"
        mp = sql.Identifier("_es_map_ci" if ci else "_es_map")
        t = sql.Identifier(meta.prefix + "t")
        ident = sql.SQL("{}.{}").format(t, sql.Identifier(col))
        typ = sql.SQL(c.type_sql)
        key = self._key(t)

        def norm(expr: sql.Composable) -> sql.Composable:
            return sql.SQL("lower(({})::text)").format(expr) if ci else sql.SQL("({})::text").format(expr)

        def fail(what: str, detail: sql.Composable) -> sql.Composable:
            return sql.SQL("pg_temp._es_fail({} || {})").format(sql.Literal(f"{i}:{what}:"), detail)

        image: sql.Composable = sql.SQL("''")
        if c.kind == "text":
            only: sql.Composable = sql.SQL("")
            if self.analysed:
                # The troubled rows' lines come from Python; a row whose key holds a changed email carries its
                # whole row (as the Python path's image), so apply can tell it from a row moving onto that key.
                only = sql.SQL(
                    " WHERE NOT EXISTS (SELECT 1 FROM _es_trouble x WHERE x.tbl = {} AND x.key = {})"
                ).format(sql.Literal(meta.index), meta.key_json(t))
                keyed = [k for k in meta.key if k in meta.email_columns]
                if keyed:
                    moves = sql.SQL(" OR ").join(
                        sql.SQL("EXISTS (SELECT 1 FROM {} x WHERE x.old = {} AND {})").format(
                            self._map(k),
                            self._norm(k, sql.SQL("{}.{}").format(t, sql.Identifier(k))),
                            # as the Python way: a key column whose match changes nothing does not move the row
                            text_moves(sql.SQL("{}.{}").format(t, sql.Identifier(k)), meta.columns[k].type_sql, "x"),
                        )
                        for k in keyed
                    )
                    image = sql.SQL("CASE WHEN {} THEN ',\"row\":' || {} ELSE '' END").format(
                        moves, _doc(sql.SQL("to_jsonb({}.*)").format(t), 0, mp, norm)
                    )
            inner = sql.SQL(
                "SELECT {key} AS k, to_jsonb({v})::text AS od, "
                "CASE WHEN CAST(m.new AS {typ})::text IS DISTINCT FROM m.new THEN {cut} "
                "ELSE to_jsonb(CAST(m.new AS {typ}))::text END AS nw, "
                "m.ord::text AS ords, (3 * COALESCE(l.lvl, 0) + 1)::text AS step, {image} AS img "
                "FROM {tbl} AS {t} JOIN {mp} m ON m.old = {nv} AND {moves} LEFT JOIN _es_lvl l ON l.ord = m.ord{only}"
            ).format(
                moves=text_moves(ident, c.type_sql),
                key=key,
                v=ident,
                typ=typ,
                cut=fail("cut", sql.SQL("m.new")),
                image=image,
                tbl=meta.ident,
                t=t,
                mp=mp,
                nv=norm(ident),
                only=only,
            )
        elif c.kind == "array":
            # The rows found by one join of every element with the mapping (see planner._FENCE), then each row's
            # array rebuilt with the new elements at their positions.
            inner = sql.SQL(
                "SELECT {key} AS k, to_json(({v})::text[])::text AS od, "
                "CASE WHEN h.cut THEN {cut} WHEN array_ndims({v}) <> 1 THEN {ndims} "
                "ELSE to_json(ARRAY(SELECT CASE WHEN p.i IS NULL THEN e.v ELSE p.n END "
                "FROM unnest(({v})::text[]) WITH ORDINALITY e(v, i) LEFT JOIN unnest(h.pos, h.news) p(i, n) "
                "ON p.i = e.i ORDER BY e.i))::text END AS nw, "
                "array_to_string(h.ords, ',') AS ords, "
                "(3 * COALESCE((SELECT max(l.lvl) FROM _es_lvl l WHERE l.ord = ANY(h.ords)), 0) + 1)::text AS step, "
                "'' AS img FROM (SELECT e.tid, array_agg(e.i ORDER BY e.i) AS pos, "
                "array_agg(m.new ORDER BY e.i) AS news, "
                "array_agg(DISTINCT m.ord ORDER BY m.ord) AS ords, "
                "bool_or(CAST(ARRAY[m.new] AS {typ})::text[] IS DISTINCT FROM ARRAY[m.new]) AS cut "
                "FROM (SELECT {t}.ctid AS tid, e.v, e.i FROM {tbl} AS {t} "
                "CROSS JOIN LATERAL unnest({v}) WITH ORDINALITY e(v, i) OFFSET 0) e "
                "JOIN {mp} m ON m.old = {ev} AND m.new IS DISTINCT FROM e.v::text GROUP BY e.tid) h "
                "JOIN {tbl} AS {t} ON {t}.ctid = h.tid"
            ).format(
                key=key,
                v=ident,
                cut=fail("cut-elements", sql.SQL("''")),
                ndims=fail("ndims", sql.SQL("array_ndims({})::text || ':' || {}").format(ident, key)),
                typ=typ,
                tbl=meta.ident,
                t=t,
                mp=mp,
                ev=norm(sql.SQL("e.v")),
            )
        else:
            # A document, at its paths or whole: the rows holding a mapped string (where the address may be), then
            # each one's old and new document written out in canonical form.
            after: sql.Composable  # what the document's new form needs joined after the old form
            if col in meta.paths:
                # Only the strings at the paths match; the new document is the old one with those values remapped
                # (paths.remapped).
                after, newdoc = remapped_joins(ident, meta.paths[col], mp, norm, meta.prefix)
                strings = strings_at(ident, meta.paths[col])
                new = _doc(newdoc, 0, mp, norm)
            else:
                mode = 2 if ci else 1
                strings = doc_strings(ident)
                new = _doc(ident, mode, mp, norm)
                if mode == 1:
                    # A document holding one mapped address (the usual case): the new document is the old one's
                    # text with that string's every value token replaced (_swapped), not rendered again member by
                    # member.
                    new = sql.SQL(
                        "CASE WHEN cardinality(h.ords) = 1 AND left(d.od, 1) IN ('{{', '[') THEN {swapped} "
                        "ELSE {new} END"
                    ).format(swapped=_swapped(sql.SQL("d.od"), sql.SQL("r.o"), sql.SQL("r.n")), new=new)
                after = sql.SQL(
                    " LEFT JOIN LATERAL (SELECT to_json(m.old)::text AS o, to_json(m.new)::text AS n FROM {mp} m "
                    "WHERE m.ord = h.ords[1]) r ON true"
                ).format(mp=mp)
            inner = sql.SQL(
                "SELECT {key} AS k, d.od, {new} AS nw, array_to_string(h.ords, ',') AS ords, "
                "(3 * COALESCE((SELECT max(l.lvl) FROM _es_lvl l WHERE l.ord = ANY(h.ords)), 0) + 1)::text AS step, "
                "'' AS img FROM (SELECT s.tid, array_agg(DISTINCT m.ord ORDER BY m.ord) AS ords FROM ("
                "SELECT {t}.ctid AS tid, _es_x.v AS v FROM {tbl} AS {t} "
                "CROSS JOIN LATERAL {strings} AS _es_x(v) OFFSET 0) s "
                "JOIN {mp} m ON m.old = {sv} AND m.new <> s.v GROUP BY s.tid) h JOIN {tbl} AS {t} ON {t}.ctid = h.tid "
                # OFFSET 0: the old document is rendered once, not again wherever the new one uses it
                "CROSS JOIN LATERAL (SELECT {old} AS od OFFSET 0) d{after}"
            ).format(
                key=key,
                old=_doc(ident, 0, mp, norm),
                new=new,
                strings=strings,
                tbl=meta.ident,
                t=t,
                mp=mp,
                sv=norm(sql.SQL("s.v")),
                after=after,
            )
        id_pre = "[" + dumps(self.target) + "," + dumps(meta.display) + ","
        id_post = "," + dumps(col) + "," + dumps(kind) + "]"
        head = '{"column":' + dumps(col) + ',"id":"'
        tail = ',"store":"postgres","table":' + dumps(meta.display) + ',"target":' + dumps(self.target) + "}"
        return sql.SQL(
            'SELECT s.k, {col} AS c, s.id, {head} || s.id || \'","key":\' || s.k || {kind} || s.ords '
            "|| '],\"new\":' || s.nw || ',\"old\":' || s.od || {paths} || s.img || ',\"step\":' || s.step || {tail} "
            "AS line "
            "FROM (SELECT r.*, 'pg-' || left(encode(sha256(convert_to({id_pre} || to_json(r.k)::text || {id_post}, "
            "'UTF8')), 'hex'), 16) AS id FROM ({inner}) r) s"
        ).format(
            col=sql.Literal(col),
            paths=sql.Literal(',"paths":' + dumps(path_list(meta.paths[col])) if col in meta.paths else ""),
            head=sql.Literal(head),
            kind=sql.Literal(',"kind":' + dumps(kind) + ',"mappings":['),
            tail=sql.Literal(tail),
            id_pre=sql.Literal(id_pre),
            id_post=sql.Literal(id_post),
            inner=inner,
        )


def _swapped(doc: sql.Composable, old: sql.Composable, new: sql.Composable) -> sql.Composable:
    """A canonical document's text with every string VALUE whose JSON is `old` written as `new`; member names stay.

    In compact canonical JSON a value token follows ':' (in an object) or '[' or ',' (in an array) and is followed by
    ',', '}' or ']'; a member name is followed by ':'. A quote inside a string is always escaped, so a token with one
    of those characters right before and after it is a whole value, never part of a string or a name. Only (',' ,
    ',') can match twice in a row sharing a comma, which one replace() skips: that one runs twice."""
    out = doc
    for before, after in ((":", ","), (":", "}"), ("[", ","), ("[", "]"), (",", ","), (",", ","), (",", "]")):
        out = sql.SQL("replace({}, {} || {} || {}, {} || {} || {})").format(
            out, sql.Literal(before), old, sql.Literal(after), sql.Literal(before), new, sql.Literal(after)
        )
    return out


INLINE_DEPTH = 2  # nesting levels of a document written out in SQL; deeper ones go through pg_temp._es_doc


def _doc(
    v: sql.Composable, mode: int, mp: sql.Identifier, norm: Callable[[sql.Composable], sql.Composable]
) -> sql.Composable:
    """A jsonb document in canonical form (strings remapped unless mode is 0). Objects and arrays are written here,
    inline, INLINE_DEPTH levels deep: only what is nested deeper goes through the (much slower) function, which took
    most of a plan's time on documents with a nested object and an array (four calls each)."""

    def string(x: sql.Composable) -> sql.Composable:
        if not mode:
            return sql.SQL("{}::text").format(x)
        return sql.SQL("COALESCE((SELECT to_json(m.new)::text FROM {mp} m WHERE m.old = {n}), {x}::text)").format(
            mp=mp, n=norm(sql.SQL("{} #>> '{{}}'").format(x)), x=x
        )

    def value(x: sql.Composable, depth: int) -> sql.Composable:
        nested: sql.Composable = sql.SQL("pg_temp._es_doc({}, {})").format(x, sql.Literal(mode))
        return sql.SQL(
            "CASE jsonb_typeof({x}) WHEN 'string' THEN {string} "
            "WHEN 'number' THEN CASE WHEN strpos({x}::text, '.') = 0 THEN {x}::text "
            "ELSE pg_temp._es_num({x}::text) END "
            "WHEN 'object' THEN {obj} WHEN 'array' THEN {arr} ELSE {x}::text END"
        ).format(
            x=x,
            string=string(x),
            obj=whole(x, depth + 1) if depth < INLINE_DEPTH else nested,
            arr=items(x, depth + 1) if depth < INLINE_DEPTH else nested,
        )

    def whole(x: sql.Composable, depth: int) -> sql.Composable:
        e = sql.Identifier(f"_es_e{depth}")
        return sql.SQL(
            "'{{' || COALESCE((SELECT string_agg(to_json({e}.k)::text || ':' || {member}, ',' ORDER BY {e}.k COLLATE "
            "\"C\") FROM jsonb_each({x}) {e}(k, v)), '') || '}}'"
        ).format(e=e, x=x, member=value(sql.SQL("{}.v").format(e), depth))

    def items(x: sql.Composable, depth: int) -> sql.Composable:
        e = sql.Identifier(f"_es_e{depth}")
        return sql.SQL(
            "'[' || COALESCE((SELECT string_agg({member}, ',' ORDER BY {e}.i) "
            "FROM jsonb_array_elements({x}) WITH ORDINALITY {e}(v, i)), '') || ']'"
        ).format(e=e, x=x, member=value(sql.SQL("{}.v").format(e), depth))

    return sql.SQL("CASE WHEN jsonb_typeof({v}) = 'object' THEN {whole} ELSE pg_temp._es_doc({v}, {mode}) END").format(
        v=v, whole=whole(v, 1), mode=sql.Literal(mode)
    )


Key = tuple[str, str, str]


class Ahead:
    """Sections of "sql" tables filled by two connections at once: planning's own and a helper reading in the same
    snapshot (pg_export_snapshot). The helper starts with the costliest section (estimated from the table's pages,
    documents counting more) and then takes the next costliest not yet taken, into temporary files. Planning's
    connection writes the sections in the file's order: one nobody has taken it fills straight into the plan; while
    the one whose turn it is is still being filled by the helper, it fills the next costliest into a temporary file
    instead of waiting. Sections filled ahead are copied into the plan in their place, so the plan is the same bytes
    whoever filled what; on two cores the largest section no longer runs after all the others."""

    def __init__(
        self,
        conn: psycopg.Connection,
        tables: list[TableLines],
        open_helper: Callable[[], psycopg.Connection],
        prefetch: Prefetch | None = None,
    ) -> None:
        self._prefetch = prefetch
        self._cond = threading.Condition()
        self._state: dict[Key, str] = {}  # free, taken, done
        self._results: dict[Key, Any] = {}  # (file, counts) or the exception, for sections filled ahead
        self._work: dict[Key, tuple[TableLines, str, list[str]]] = {}
        self._movable: set[Key] = set()  # the helper's to take
        self._open = open_helper
        self._conn: psycopg.Connection | None = None
        self._stop = False
        self.sections: list[Section] = []
        cost: dict[Key, float] = {}
        for t in tables:
            for kind, cols in t.parts():
                key = (t.target, t.meta.display, kind)
                self._state[key] = "free"
                self._work[key] = (t, kind, cols)
                cost[key] = _cost(conn, t, cols)
                if not t.analysed:  # an analysed table's sections read _es_pylines, which only this session has
                    self._movable.add(key)
                self.sections.append(
                    Section(key, functools.partial(self._fill, key, functools.partial(t._fill, kind, cols)))
                )
        self._queue = sorted(cost, key=lambda k: (-cost[k], k))  # costliest first
        self._thread: threading.Thread | None = None
        if prefetch is not None and prefetch.key in self._movable:
            # The helper started on its section while planning's connection was still reading: it goes on from there.
            self._state[prefetch.key] = "taken"
            self._thread = threading.Thread(target=self._go_on, args=(prefetch,), name="emailsync-lines", daemon=True)
            self._thread.start()
        else:
            if prefetch is not None:
                prefetch.close()
                self._prefetch = None
            if len(self._movable) > 1:
                first = next(k for k in self._queue if k in self._movable)
                self._state[first] = "taken"  # the helper's, before planning's connection can reach it
                self._thread = threading.Thread(target=self._help, args=(first,), name="emailsync-lines", daemon=True)
                self._thread.start()

    def _take(self, movable: bool = False) -> Key | None:
        """The costliest free section (movable: of those a helper may fill), now taken (call with the condition
        held)."""
        for key in self._queue:
            if self._state[key] == "free" and (key in self._movable or not movable):
                self._state[key] = "taken"
                return key
        return None

    def _ahead(self, key: Key, conn: psycopg.Connection | None) -> None:
        """Fill one section into a temporary file, through `conn` (None: planning's own)."""
        t, kind, cols = self._work[key]
        result: Any = None
        try:
            f = tempfile.TemporaryFile(buffering=1 << 20)  # noqa: SIM115  # handed over to _fill
            lines = t if conn is None else t.on(conn)
            result = (f, lines._fill(kind, cols, f.write))  # type: ignore[arg-type]  # takes any buffer
        except psycopg.errors.LockNotAvailable:
            # The helper waited behind a lock (a DDL statement queued behind planning's own lock): planning's
            # connection, which holds that lock already, does this section, and the helper stops.
            with self._cond:
                self._state[key] = "free"
                self._stop = True
                self._cond.notify_all()
            return
        except BaseException as e:  # noqa: BLE001  # an error is raised when the section's turn comes
            result = e
            if not isinstance(e, Exception):  # Ctrl-C, exit: now, once the section is marked
                raise
        finally:
            with self._cond:
                if result is not None:
                    self._results[key] = result
                    self._state[key] = "done"
                self._cond.notify_all()

    def _fill(
        self, key: Key, fill: Callable[[Callable[[Chunk], None]], dict[str, int]], write: Callable[[Chunk], None]
    ) -> dict[str, int]:
        while True:
            work = None
            with self._cond:
                state = self._state[key]
                if state == "free":
                    self._state[key] = "taken"
                elif state == "taken":
                    work = self._take()
                    if work is None:
                        self._cond.wait()
                        continue
            if state == "free":
                return fill(write)
            if state == "done":
                return self._copied(key, write)
            assert work is not None
            self._ahead(work, None)

    def _copied(self, key: Key, write: Callable[[Chunk], None]) -> dict[str, int]:
        with self._cond:
            result = self._results.pop(key)
        if isinstance(result, BaseException):
            raise result
        f, counts = result
        with f:
            f.seek(0)
            while data := f.read(1 << 20):
                write(data)
        return counts  # type: ignore[no-any-return]

    def _next(self) -> Key | None:
        """The helper's next section, unless it was told to stop."""
        with self._cond:
            return None if self._stop else self._take(movable=True)

    def _help(self, first: Key) -> None:
        try:
            conn = self._conn = self._open()
        except Exception:  # noqa: BLE001  # no helper (a connection limit, say): planning's connection does it all
            with self._cond:
                self._state[first] = "free"
                self._cond.notify_all()
            return
        self._run_helper(first, conn)

    def _run_helper(self, key: Key | None, conn: psycopg.Connection) -> None:
        try:
            while key is not None:
                self._ahead(key, conn)
                key = self._next()
        finally:
            conn.close()

    def _go_on(self, prefetch: Prefetch) -> None:
        """The prefetched section, once done, as if this helper had filled it; then the helper takes the next."""
        result, conn = prefetch.wait()
        self._conn = conn
        with self._cond:
            if result is None:  # no helper, or it waited behind a lock: planning's connection fills the section
                self._state[prefetch.key] = "free"
                self._stop = self._stop or conn is not None
            else:
                self._results[prefetch.key] = result
                self._state[prefetch.key] = "done"
            self._cond.notify_all()
        if conn is not None:
            self._run_helper(None if self._stop else self._next(), conn)

    def close(self) -> None:
        """Stop the helper (its query cancelled) and wait for it."""
        self._stop = True
        if self._prefetch is not None:
            self._prefetch.stop()
        # Cancelled again until the helper ends: a cancel that reaches the server between two statements is lost.
        while self._thread is not None and self._thread.is_alive():
            conn = self._conn
            if conn is not None and not conn.closed:
                conn.cancel_safe()
            self._thread.join(0.2)
        for r in self._results.values():
            if not isinstance(r, BaseException):
                r[0].close()


class Prefetch:
    """The costliest section of the tables that need nothing from reading (not analysed), filled by a helper in
    planning's snapshot while planning's connection still reads the other tables. It assumes that every mapping entry
    is at level 0 (no chain across a unique index, the usual case): if so, Ahead takes the section and the helper
    over; otherwise both are dropped (close) and the sections are filled with the levels found."""

    def __init__(
        self, conn: psycopg.Connection, tables: list[TableLines], open_helper: Callable[[], psycopg.Connection]
    ) -> None:
        work = [(t, kind, cols) for t in tables if not t.analysed for kind, cols in t.parts()]
        cost = {(t.target, t.meta.display, kind): _cost(conn, t, cols) for t, kind, cols in work}
        self.key: Key = min(cost, key=lambda k: (-cost[k], k))
        self._work = next(w for w in work if (w[0].target, w[0].meta.display, w[1]) == self.key)
        self._open = open_helper
        self._conn: psycopg.Connection | None = None
        self._result: Any = None
        self._taken = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="emailsync-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._conn = self._open()
        except Exception:  # noqa: BLE001  # no helper: planning's connection fills every section
            return
        if self._stopping:
            return
        t, kind, cols = self._work
        try:
            f = tempfile.TemporaryFile(buffering=1 << 20)  # noqa: SIM115  # handed over to Ahead
            self._result = (f, t.on(self._conn)._fill(kind, cols, f.write))  # type: ignore[arg-type]
        except psycopg.errors.LockNotAvailable:
            self._result = None  # planning's connection, which holds the lock, fills it (see Ahead._ahead)
        except BaseException as e:  # noqa: BLE001  # raised when the section's turn comes
            self._result = e
            if not isinstance(e, Exception):
                raise

    def wait(self) -> tuple[Any, psycopg.Connection | None]:
        """The section's result (None: not filled) and the helper's connection, now Ahead's to use and close."""
        self._thread.join()
        self._taken = True
        return self._result, self._conn

    def stop(self) -> None:
        """Stop the helper's work and wait for it: its query cancelled, again until it ends (a cancel that reaches the
        server between two statements, or before the helper connected, is lost)."""
        self._stopping = True
        while self._thread.is_alive():
            conn = self._conn
            if conn is not None and not conn.closed:
                conn.cancel_safe()
            self._thread.join(0.2)

    def close(self) -> None:
        """Drop the section and the helper (the levels were not all 0, or planning stopped)."""
        if self._taken:
            return
        self.stop()
        self._taken = True
        if isinstance(self._result, tuple):
            self._result[0].close()
        if self._conn is not None:
            self._conn.close()


def _cost(conn: psycopg.Connection, t: TableLines, cols: list[str]) -> float:
    """A section's estimated cost: the table's pages, times its columns (documents count four)."""
    return max(1, sum(4 if t.meta.columns[c].kind == "jsonb" else 1 for c in cols)) * _pages(conn, t)


def _pages(conn: psycopg.Connection, t: TableLines) -> float:
    row = conn.execute("SELECT GREATEST(relpages, 1) FROM pg_class WHERE oid = %s", (t.meta.oid,)).fetchone()
    return float(row[0]) if row else 1.0
