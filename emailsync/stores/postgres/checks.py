"""CHECK constraints that a planned new value would break, found at plan time.

A type's limits (varchar(n), a domain's CHECK) show up when planning casts a new address to the column's type. A
table's own CHECK constraints (`char_length(email) <= 64`, `email <> backup_email`) see the whole row, so each one
over a configured column is evaluated by PostgreSQL on every changed row as the plan would leave it: the row's
configured columns remapped as planning remaps them, its other columns as they are. Only a constraint that comes
out false refuses the plan (NULL passes, as it does in PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from emailsync.plan import dumps
from emailsync.stores.postgres.catalog import TableMeta
from emailsync.stores.postgres.lines import _doc
from emailsync.stores.postgres.paths import remapped_joins

SHOWN = 20  # rows listed per constraint


def check_violations(conn: psycopg.Connection, meta: TableMeta, match: str, unchanged: Sequence[str] = ()) -> list[str]:
    """One line per changed row whose planned values a CHECK constraint of the table refuses (the first SHOWN of
    each constraint, then how many more). `unchanged`: the keys of rows the plan deletes or leaves as they are.

    A constraint that also reads a generated column is left to apply (what that column will hold is PostgreSQL's
    to compute); so is one this query cannot evaluate (a new value the column's type refuses is said by planning's
    own reading, more precisely)."""
    checks = conn.execute(
        """
        SELECT k.conname, pg_get_expr(k.conbin, k.conrelid),
               ARRAY(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = k.conrelid AND a.attnum = ANY(k.conkey))
        FROM pg_constraint k WHERE k.conrelid = %s AND k.contype = 'c' ORDER BY k.conname
        """,
        (meta.oid,),
    ).fetchall()
    emails = set(meta.email_columns)
    generated = set(meta.generated)
    relevant = [(name, expr) for name, expr, cols in checks if emails & set(cols) and not set(cols) & generated]
    if not relevant:
        return []
    t = meta.alias("t")
    s = meta.alias("s")
    joins: list[sql.Composable] = []
    values: list[sql.Composable] = []
    changed: list[sql.Composable] = []
    for c, col in meta.columns.items():
        if col.generated:
            continue  # computed from the others by PostgreSQL: the row below cannot say what it will hold
        if c not in emails:
            values.append(sql.SQL("{}.{} AS {}").format(t, sql.Identifier(c), sql.Identifier(c)))
            continue
        new, extra = _new_value(meta, c, t, match, len(joins))
        joins += extra
        values.append(sql.SQL("{} AS {}").format(new, sql.Identifier(c)))
        # as text: citext's own equality would take a change of case for no change
        changed.append(sql.SQL("({})::text IS DISTINCT FROM {}.{}::text").format(new, t, sql.Identifier(c)))
    out: list[str] = []
    for name, expr in relevant:
        q = sql.SQL(
            "SELECT {key}, count(*) OVER () FROM (SELECT {values}, {keyj} AS {key} FROM {tbl} AS {t}{joins} "
            "WHERE ({changed}) AND NOT {keyj} = ANY({unchanged}::jsonb[])) {s} WHERE ({expr}) IS FALSE LIMIT {n}"
        ).format(
            key=meta.alias("key"),
            values=sql.SQL(", ").join(values),
            keyj=meta.key_json(t),
            tbl=meta.ident,
            t=t,
            joins=sql.Composed(joins),
            changed=sql.SQL(" OR ").join(changed),
            s=s,
            expr=sql.SQL(expr),
            n=sql.Literal(SHOWN),
            unchanged=sql.Literal(list(unchanged)),
        )
        try:
            with conn.transaction():  # a savepoint: a failed evaluation leaves planning's transaction usable
                rows = conn.execute(q).fetchall()
        except psycopg.Error:
            continue
        out += [f"{meta.display}: row {dumps(key)} would break CHECK {name} ({expr})" for key, _ in rows]
        if rows and rows[0][1] > len(rows):
            out.append(f"{meta.display}: ... and {rows[0][1] - len(rows)} more rows breaking {name}")
    return out


def _new_value(
    meta: TableMeta, c: str, t: sql.Identifier, match: str, n: int
) -> tuple[sql.Composable, list[sql.Composable]]:
    """The column's value once the plan has remapped it, in the column's type (and LATERAL joins it needs)."""
    col = meta.columns[c]
    ci = col.ci or match == "casefold"
    mp = sql.Identifier("_es_map_ci" if ci else "_es_map")

    def norm(expr: sql.Composable) -> sql.Composable:
        return sql.SQL("lower(({})::text)").format(expr) if ci else sql.SQL("({})::text").format(expr)

    v = sql.SQL("{}.{}").format(t, sql.Identifier(c))
    typ = sql.SQL(col.type_sql)
    if col.kind == "text":
        return sql.SQL("COALESCE((SELECT CAST(m.new AS {typ}) FROM {mp} m WHERE m.old = {n}), {v})").format(
            typ=typ, mp=mp, n=norm(v), v=v
        ), []
    if col.kind == "array":
        return sql.SQL(
            "CASE WHEN {v} IS NULL OR array_ndims({v}) <> 1 THEN {v} ELSE CAST(ARRAY(SELECT COALESCE((SELECT m.new "
            "FROM {mp} m WHERE m.old = {n}), e.v::text) FROM unnest({v}) WITH ORDINALITY e(v, i) ORDER BY e.i) "
            "AS {typ}) END"
        ).format(v=v, mp=mp, n=norm(sql.SQL("e.v")), typ=typ), []
    if c in meta.paths:
        joins, doc = remapped_joins(v, meta.paths[c], mp, norm, f"{meta.prefix}c{n}")
        return doc, [joins]
    return sql.SQL("CAST(({}) AS jsonb)").format(_doc(v, 2 if ci else 1, mp, norm)), []
