"""Addresses at paths inside jsonb documents (targets.yaml `{name: COLUMN, path: a.b.c}`), in SQL.

A path goes through nested objects only, as DynamoDB attribute paths do: it is read with a strict jsonpath whose
errors are silenced, so a path through an array or a scalar finds nothing (where `#>` would take "0" as an array
index). The value there is remapped if it is a string, element by element if it is an array of strings; nothing
else in the document changes. Planning (the Python way and the lines PostgreSQL makes) and apply's rebase use these
same expressions, so both sides agree on what a path holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

from psycopg import sql

Path = tuple[str, ...]
Norm = Callable[[sql.Composable], sql.Composable]


def dotted(path: Path) -> str:
    return ".".join(path)


def _jsonpath(path: Path, suffix: str = "") -> sql.Composable:
    # Member names as JSON strings: jsonpath reads the same escapes, so any name is quoted exactly.
    return sql.Literal("strict $" + "".join("." + json.dumps(p, ensure_ascii=False) for p in path) + suffix)


_INDEX = re.compile(r"\s*[+-]?[0-9]+\s*")  # what PostgreSQL would read as an array index


def value_at(doc: sql.Composable, path: Path) -> sql.Composable:
    """The jsonb value at `path` through nested objects, or NULL. `#>` where no part could be taken as an array
    index (it then steps into objects only, and is several times cheaper than a jsonpath); the strict jsonpath
    otherwise."""
    if not any(_INDEX.fullmatch(p) for p in path):
        return sql.SQL("({} #> {}::text[])").format(doc, sql.Literal(list(path)))
    return sql.SQL("jsonb_path_query_first({}, {}, '{{}}', true)").format(doc, _jsonpath(path))


def strings_at(doc: sql.Composable, paths: Sequence[Path]) -> sql.Composable:
    """Every string at the paths (a string there, or the strings of an array there), as text rows: a set-returning
    expression, like lines.doc_strings for a whole document."""
    found = sql.SQL(" || ").join(
        sql.SQL(
            # the element qualified by its alias: a bare name could be a column of the table read
            "CASE jsonb_typeof({v}) WHEN 'string' THEN ARRAY[{v} #>> '{{}}'] WHEN 'array' THEN "
            "ARRAY(SELECT _es_el.val #>> '{{}}' FROM jsonb_array_elements({v}) AS _es_el(val) "
            "WHERE jsonb_typeof(_es_el.val) = 'string') END"
        ).format(v=value_at(doc, path))
        for path in paths
    )
    return sql.SQL("unnest({})").format(found)


def remapped(doc: sql.Composable, path: Path, mp: sql.Identifier, norm: Norm) -> sql.Composable:
    """`doc` with the address at `path` remapped through the mapping table `mp` (a string, or each string of an
    array); the document itself where the path holds nothing to remap."""
    v = value_at(doc, path)
    lit = sql.Literal(list(path))
    elem = sql.SQL(
        "CASE WHEN jsonb_typeof(e.v) = 'string' THEN COALESCE((SELECT to_jsonb(m.new) FROM {mp} m "
        "WHERE m.old = {n}), e.v) ELSE e.v END"
    ).format(mp=mp, n=norm(sql.SQL("(e.v #>> '{}')")))
    return sql.SQL(
        "CASE jsonb_typeof({v}) "
        "WHEN 'string' THEN COALESCE((SELECT jsonb_set({d}, {p}::text[], to_jsonb(m.new)) FROM {mp} m "
        "WHERE m.old = {n}), {d}) "
        "WHEN 'array' THEN jsonb_set({d}, {p}::text[], COALESCE((SELECT jsonb_agg({elem} ORDER BY e.i) "
        "FROM jsonb_array_elements({v}) WITH ORDINALITY e(v, i)), '[]')) "
        "ELSE {d} END"
    ).format(v=v, d=doc, p=lit, mp=mp, n=norm(sql.SQL("(({}) #>> '{{}}')").format(v)), elem=elem)


def remapped_joins(
    doc: sql.Composable, paths: Sequence[Path], mp: sql.Identifier, norm: Norm, prefix: str
) -> tuple[sql.Composable, sql.Composable]:
    """(LATERAL joins, expression): the document with every path remapped, one path per join, so the document is
    not written out again inside each nested call. The expression names the last join's column."""
    joins: list[sql.Composable] = []
    cur = doc
    for i, path in enumerate(paths):
        alias = sql.Identifier(f"{prefix}p{i}")
        joins.append(
            sql.SQL(" CROSS JOIN LATERAL (SELECT {} AS d OFFSET 0) {}").format(remapped(cur, path, mp, norm), alias)
        )
        cur = sql.SQL("{}.d").format(alias)
    return sql.Composed(joins), cur


def path_list(paths: Sequence[Path]) -> list[str]:
    """The action's `paths` field: the column's configured paths, dotted."""
    return [dotted(p) for p in paths]


def rebased(
    doc: sql.Composable, old: sql.Composable, new: sql.Composable, paths: Sequence[Path], prefix: str
) -> tuple[sql.Composable, sql.Composable, sql.Composable, sql.Composable]:
    """What apply writes for a path action onto the document `doc` it finds, when that is not the planned old one:
    (LATERAL joins, whether every path still holds its planned old value, whether every path holds its planned new
    value already, `doc` with the planned new value written at each path). A path the plan found empty is left
    as it is."""
    same_old = sql.SQL(" AND ").join(
        sql.SQL("{} IS NOT DISTINCT FROM {}").format(value_at(doc, p), value_at(old, p)) for p in paths
    )
    same_new = sql.SQL(" AND ").join(
        sql.SQL("{} IS NOT DISTINCT FROM {}").format(value_at(doc, p), value_at(new, p)) for p in paths
    )
    joins: list[sql.Composable] = []
    cur = doc
    for i, path in enumerate(paths):
        alias = sql.Identifier(f"{prefix}r{i}")
        lit = sql.Literal(list(path))
        joins.append(
            sql.SQL(
                # Written only where every path still holds its planned old value (else the result is not used):
                # on a document the application reshaped since (a parent now an array), jsonb_set would raise.
                " CROSS JOIN LATERAL (SELECT CASE WHEN {v} IS NULL OR NOT ({same_old}) THEN {d} "
                "ELSE jsonb_set({d}, {p}::text[], {v}) END AS d OFFSET 0) {a}"
            ).format(v=value_at(new, path), d=cur, p=lit, a=alias, same_old=same_old)
        )
        cur = sql.SQL("{}.d").format(alias)
    return sql.Composed(joins), same_old, same_new, cur
