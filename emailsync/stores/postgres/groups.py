"""Unique groups in PostgreSQL: columns (of one target's tables) that share one address namespace, unique across all
of them by an application's rule the database does not enforce (GitLab keeps an address on one user, across
users.email and emails.email).

Decided after each table's own unique indexes, on what the plan would leave (engine/groups.py decides; this finds
the rows moving to an address and the rows keeping one). Addresses are compared ignoring case, as applications compare
them. `fail` lists every losing row; `skip` leaves each one unchanged (shown under Skipped in plan.md, naming the row
holding the address), and decides again, since a row left where it is keeps holding its own address.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import sql

from emailsync.config import UniqueGroup
from emailsync.engine.groups import SHOWN, Mover, contest, refusal
from emailsync.errors import Refusal, UserError
from emailsync.plan import dumps
from emailsync.stores.postgres.catalog import TableMeta, UniqueIndex
from emailsync.stores.postgres.paths import strings_at


class _Change(Protocol):
    new: Any
    entries: tuple[int, ...]


class _Row(Protocol):
    keystr: str
    fate: str
    reason: str | None
    sortkey: tuple[Any, ...]
    changes: dict[str, Any]
    kid: int
    conflict: Any
    conflict_check: dict[str, Any] | None
    unique_cols: frozenset[str]
    delete_entries: tuple[int, ...]


class _Table(Protocol):
    meta: TableMeta

    @property
    def rows(self) -> Sequence[_Row]: ...


def group_tables(groups: Iterable[tuple[str, UniqueGroup]], metas: Sequence[TableMeta], where: str) -> set[int]:
    """The tables some group names (read whole into Python, so each row's fate can be decided); a member column that
    cannot hold one address is refused."""
    out: set[int] = set()
    for label, g in groups:
        for mi, mem in enumerate(g.members):
            meta = next(m for m in metas if m.cfg.table == mem.table)
            if mem.owner is not None and mem.owner not in meta.columns:
                raise UserError(
                    f"{where}: {label}.members[{mi}].owner: {meta.display} has no column {mem.owner!r}; name the "
                    "column that says whose row it is (a user id)"
                )
            col = meta.columns[str(mem.column)]
            if col.kind != "text":
                raise UserError(
                    f"{where}: {label}.members[{mi}]: {meta.display}.{mem.column} is {col.type_sql}; a group's "
                    "columns must hold one address each (text, varchar, citext): leave this one out of the group"
                )
            out.add(meta.index)
    return out


def decide_group(
    conn: psycopg.Connection, label: str, group: UniqueGroup, tables: Sequence[_Table], where: str
) -> None:
    _decide(conn, label, group, tables, where)
    if group.on_conflict == "delete":
        _deletes_kept_justified(label, tables, where)


def _deletes_kept_justified(label: str, tables: Sequence[_Table], where: str) -> None:
    """Every delete (a unique index's or a group's) must still have its row keeping the address: a group's delete
    may have taken that row, and both would then go. Refused, naming both."""
    deleted = {(tp.meta.display, r.keystr) for tp in tables for r in tp.rows if r.fate == "delete"}
    for tp in tables:
        by_kid = {r.kid: r for r in tp.rows}
        for r in tp.rows:
            if r.fate != "delete":
                continue
            check = r.conflict_check or {}
            if "table" in check:
                holder = (str(check["table"]), dumps(check["key"]))
            elif r.conflict is not None:
                kind, ident = r.conflict[1].node
                holder = (tp.meta.display, ident if kind == "row" else by_kid[ident].keystr)
            else:
                continue
            if holder in deleted:
                raise Refusal(
                    f"{where}: {label} would delete {holder[0]} {holder[1]}, the row that {tp.meta.display} "
                    f"{r.keystr} is deleted for (it keeps the address that row loses), so both would go; choose "
                    "on_conflict: skip or fail for the group, or resolve these rows"
                )


def _decide(conn: psycopg.Connection, label: str, group: UniqueGroup, tables: Sequence[_Table], where: str) -> None:
    members = [
        (tp, str(mem.column), mem.owner) for mem in group.members for tp in tables if tp.meta.cfg.table == mem.table
    ]
    while True:
        moving: dict[str, list[tuple[_Table, _Row, str]]] = {}
        for tp, col, _ in members:
            for r in tp.rows:
                ch = r.changes.get(col)
                if r.fate == "move" and ch is not None and isinstance(ch.new, str):
                    moving.setdefault(ch.new.lower(), []).append((tp, r, col))
        if not moving:
            return
        holders, places, owners = _holders(conn, members, sorted(moving))
        arrivals = {
            addr: [
                Mover(_owner(owners, tp, r), _name(tp, r.keystr), (tp, r, col))
                for tp, r, col in sorted(rows, key=lambda x: _priority(x[1], x[0]))
            ]
            for addr, rows in moving.items()
        }
        lost = contest(label, arrivals, holders)
        if not lost:
            return
        if group.on_conflict == "fail":
            head, problems = refusal(label, [(x.mover, x.why) for x in lost])
            raise Refusal(f"{where}: {head}", problems=problems)
        if group.on_conflict == "delete":
            together = [f"{x.mover.name}: {x.why}" for x in lost if x.held is None]
            if together:
                raise Refusal(
                    f"{where}: {label} has on_conflict: delete, but these rows would take an address that a row moving "
                    "there too takes first, and no row holds it yet: a delete needs a row that keeps the address, "
                    "which apply checks before deleting; resolve these rows or choose on_conflict: skip",
                    problems=together[:SHOWN],
                )
        skipped = set()
        for x in lost:
            tp, r, col = x.mover.ref
            r.fate, r.reason = ("delete" if group.on_conflict == "delete" else "skip"), x.why
            if r.fate == "delete":
                # Deleted as a unique index's loser is: its entries in the group's column go, and apply deletes it
                # only while the row keeping the address (in its own table) still holds it.
                held = places[x.address][x.held or 0]
                r.unique_cols = frozenset({col}).union(*(u.columns for u in tp.meta.unique_indexes))
                r.delete_entries = tuple(sorted(r.changes[col].entries))
                r.conflict = (
                    UniqueIndex(label, (col,), None, False, frozenset({col})),
                    _Holder(("row", dumps(held[1]))),
                )
                r.conflict_check = {"key": held[1], "values": held[2], "table": held[0]}
            else:
                skipped.add((tp.meta.index, r.kid))
        for tp in tables:  # a row deleted so that a skipped row could take its entry would be deleted for nothing
            for r in tp.rows:
                holder = r.conflict[1].node if r.fate == "delete" and r.conflict else None
                if holder is not None and holder[0] == "post" and (tp.meta.index, holder[1]) in skipped:
                    raise UserError(
                        f"{where}: {label} leaves a row unchanged that {tp.meta.display} {r.keystr} was to be deleted "
                        f"for (on_conflict: delete); choose on_conflict: skip for {tp.meta.display} too, or fail"
                    )


@dataclass(frozen=True)
class _Holder:
    """Who keeps the address a group's delete is for (as planner.Holder: the kind and the key)."""

    node: tuple[str, Any]


def _holders(
    conn: psycopg.Connection, members: list[tuple[_Table, str, str | None]], addresses: list[str]
) -> tuple[
    dict[str, list[tuple[Any, str]]],
    dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]],
    dict[tuple[int, str], Any],
]:
    """(address -> (owner, name) of each row that holds it in a member column once the plan is applied: holding it
    now and not moved away or deleted by the plan; address -> (table, key, {column: value}) of those rows, in the
    same order, for a delete's check at apply; (table, key) -> owner of each moving row, where the member names an
    owner column)."""
    out: dict[str, list[tuple[Any, str]]] = {}
    places: dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]] = {}
    owners: dict[tuple[int, str], Any] = {}
    for tp, col, owner in members:
        meta = tp.meta
        gone = {r.keystr for r in tp.rows if r.fate == "delete" or (r.fate == "move" and col in r.changes)}
        t = meta.alias("t")
        who = sql.SQL("to_jsonb({}.{})").format(t, sql.Identifier(owner)) if owner else sql.SQL("NULL::jsonb")
        q = sql.SQL(
            "SELECT {k}, lower({t}.{c}::text), {who}, to_jsonb({t}.{c}) FROM {tbl} {t} "
            "WHERE lower({t}.{c}::text) = ANY(%s)"
        ).format(k=meta.key_json(t), t=t, c=sql.Identifier(col), tbl=meta.ident, who=who)
        for key, addr, ov, value in conn.execute(q, (addresses,)):
            ks = dumps(key)
            if ks not in gone:
                who_holds = ("owner", dumps(ov)) if owner else ("row", meta.index, ks)
                out.setdefault(addr, []).append((who_holds, _name(tp, ks)))
                places.setdefault(addr, []).append((meta.display, key, {col: value}))
        if owner:
            keys = [r.keystr for r in tp.rows if r.fate == "move" and col in r.changes]
            q = sql.SQL("SELECT {k}, {who} FROM {tbl} {t} WHERE {k} = ANY(%s::jsonb[])").format(
                k=meta.key_json(t), who=who, tbl=meta.ident, t=t
            )
            for key, ov in conn.execute(q, (keys,)):
                owners[(meta.index, dumps(key))] = ("owner", dumps(ov))
    return out, places, owners


def _owner(owners: dict[tuple[int, str], Any], tp: _Table, r: _Row) -> Any:
    return owners.get((tp.meta.index, r.keystr), ("row", tp.meta.index, r.keystr))


def _priority(r: _Row, tp: _Table) -> tuple[Any, ...]:
    return (min((e for ch in r.changes.values() for e in ch.entries), default=0), tp.meta.index, r.sortkey)


def _name(tp: _Table, keystr: str) -> str:
    return f"{tp.meta.display} {keystr}"


SHARED_SHOWN = 20  # addresses warned about per target


def shared_addresses(
    conn: psycopg.Connection, metas: Sequence[TableMeta], tables: Sequence[_Table], match: str, target: str
) -> list[str]:
    """Warnings for a target that declares no unique group: each address that, once the plan is applied (its own
    deletes and skips counted), rows of two or more of its identity columns would hold while they now hold different
    addresses (a merge across tables, or a move onto an address another table's row keeps). Identity columns: text
    columns a one-column unique index covers, where an address names one row, and jsonb paths (an identity's email).
    A column that refers to a person (manager_email, an invitation unique per team) shares addresses by design, and
    within one column a unique index itself decides. Compared ignoring case, and counted by PostgreSQL."""
    decided = {tp.meta.index: tp for tp in tables}
    parts: list[sql.Composable] = []
    for m in metas:
        t = m.alias("t")
        tp = decided.get(m.index)
        deleted = [r.keystr for r in tp.rows if r.fate == "delete"] if tp else []
        kept = [r.keystr for r in tp.rows if r.fate == "skip"] if tp else []
        for c in m.email_columns:
            col = m.columns[c]
            unique = col.kind == "text" and any(len(u.exprs) == 1 and c in u.columns for u in m.unique_indexes)
            if not unique and c not in m.paths:
                continue
            ci = col.ci or match == "casefold"
            # A text column's value, or each string at a jsonb column's paths (an identity's email).
            if c in m.paths:
                # qualified: a bare name could be a column of the table read
                v: sql.Composable = sql.SQL("_es_x.v")
                src = sql.SQL("{} {} CROSS JOIN LATERAL {} AS _es_x(v)").format(
                    m.ident, t, strings_at(sql.SQL("{}.{}").format(t, sql.Identifier(c)), m.paths[c])
                )
            else:
                v = sql.SQL("{}.{}").format(t, sql.Identifier(c))
                src = sql.SQL("{} {}").format(m.ident, t)
            # Only rows holding an address of the mapping, old or new, compared ignoring case as groups compare.
            held = sql.SQL(
                "lower({}::text) IN (SELECT lower(old) FROM _es_map UNION SELECT lower(new) FROM _es_map)"
            ).format(v)
            parts.append(
                sql.SQL(
                    "SELECT lower(CASE WHEN {k} = ANY({kept}::jsonb[]) THEN {v}::text ELSE COALESCE(m.new, {v}::text) "
                    "END) AS post, lower({v}::text) AS pre, {name} || ' ' || {k}::text AS who "
                    "FROM {src} LEFT JOIN {mp} m ON m.old = {norm} WHERE {held} AND NOT {k} = ANY({deleted}::jsonb[])"
                ).format(
                    v=v,
                    k=m.key_json(t),
                    kept=sql.Literal(kept),
                    deleted=sql.Literal(deleted),
                    name=sql.Literal(f"{m.display}.{c}"),
                    src=src,
                    mp=sql.Identifier("_es_map_ci" if ci else "_es_map"),
                    norm=sql.SQL("lower({}::text)" if ci else "{}::text").format(v),
                    held=held,
                )
            )
    if len(parts) < 2 and not any(c in m.paths for m in metas for c in m.email_columns):
        return []
    if not parts:
        return []
    # One pass, one hash aggregate: an address is shared when its holders held different addresses before; the
    # holder with the least and the one with the greatest address before are its examples.
    rows = conn.execute(
        sql.SQL(
            "SELECT post, count(*), min(pre || E'\\x1f' || who), max(pre || E'\\x1f' || who), count(*) OVER () "
            "FROM ({}) s GROUP BY post HAVING min(pre) <> max(pre) ORDER BY post LIMIT {}"
        ).format(sql.SQL(" UNION ALL ").join(parts), sql.Literal(SHARED_SHOWN))
    ).fetchall()
    out = []
    for post, n, first, last, _ in rows:
        examples = "; ".join(f"{who} ({pre})" for pre, who in (first.split("\x1f", 1), last.split("\x1f", 1)))
        out.append(
            f"target {target!r}: {post} would be held by {n} rows of identity columns that now hold different "
            f"addresses (e.g. {examples}); if the application keeps an address on one person, declare these columns "
            "a unique group (unique_groups: in targets.yaml)"
        )
    if rows and rows[0][4] > len(rows):
        out.append(f"target {target!r}: ... and {rows[0][4] - len(rows)} more addresses shared after the plan")
    return out
