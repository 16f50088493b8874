"""Unique groups in PostgreSQL: columns (of one target's tables) that share one address namespace, unique across all
of them by an application's rule the database does not enforce (GitLab keeps an address on one user, across
users.email and emails.email).

Decided after each table's own unique indexes, on what the plan would leave: a row the plan moves to an address
loses it when another row of the group's columns already holds that address and keeps it (or a row whose mapping
comes first takes it too). Addresses are compared ignoring case, as applications compare them. `fail` lists every
such row; `skip` leaves each one unchanged (shown under Skipped in plan.md, naming the row holding the address), and
decides again, since a row left where it is keeps holding its own address.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import psycopg
from psycopg import sql

from emailsync.config import UniqueGroup
from emailsync.errors import UserError
from emailsync.plan import dumps
from emailsync.stores.postgres.catalog import TableMeta

SHOWN = 20  # conflicts listed per group when on_conflict: fail refuses a plan


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
    members = [
        (tp, str(mem.column), mem.owner) for mem in group.members for tp in tables if tp.meta.cfg.table == mem.table
    ]
    while True:
        arrivals: dict[str, list[tuple[_Table, _Row]]] = {}
        for tp, col, _ in members:
            for r in tp.rows:
                ch = r.changes.get(col)
                if r.fate == "move" and ch is not None and isinstance(ch.new, str):
                    arrivals.setdefault(ch.new.lower(), []).append((tp, r))
        if not arrivals:
            return
        holders, owners = _holders(conn, members, sorted(arrivals))
        losers: list[tuple[_Table, _Row, str]] = []
        for addr, movers in arrivals.items():
            # One identity per owner (or per row, where the member names no owner): a row moving in two columns,
            # or a user's own rows in two tables, never conflict with themselves.
            by_owner: dict[Any, list[tuple[_Table, _Row]]] = {}
            for tp, r in sorted(movers, key=lambda x: _priority(x[1], x[0])):
                who = owners.get((tp.meta.index, r.keystr), ("row", tp.meta.index, r.keystr))
                by_owner.setdefault(who, []).append((tp, r))
            held = holders.get(addr, [])
            held_by = {h[0] for h in held}
            if held:  # rows keeping the address: every other owner's moving rows lose it
                losers += [
                    (tp, r, f"{label}: {addr} is already held by {next(n for h, n in held if h != who)}")
                    for who, rows in by_owner.items()
                    if who not in held_by
                    for tp, r in rows
                ]
            elif len(by_owner) > 1:
                ranked = list(by_owner.values())
                first = ranked[0][0]
                what = f"taken by {_name(first[0], first[1].keystr)}, whose mapping comes first"
                losers += [(tp, r, f"{label}: {addr} is {what}") for rows in ranked[1:] for tp, r in rows]
        if not losers:
            return
        if group.on_conflict == "fail":
            problems = [f"{_name(tp, r.keystr)}: {why}" for tp, r, why in losers]
            shown = problems[:SHOWN]
            if len(problems) > SHOWN:
                shown.append(f"... and {len(problems) - SHOWN} more")
            raise UserError(
                f"{where}: {label} has on_conflict: fail and the plan would give one address to more than one row "
                "across its columns; resolve these rows or choose on_conflict: skip",
                problems=shown,
            )
        skipped = set()
        for tp, r, why in losers:
            r.fate, r.reason = "skip", why
            skipped.add((tp.meta.index, r.kid))
        for tp in tables:  # a row deleted so that a skipped row could take its entry would be deleted for nothing
            for r in tp.rows:
                holder = r.conflict[1].node if r.fate == "delete" and r.conflict else None
                if holder is not None and holder[0] == "post" and (tp.meta.index, holder[1]) in skipped:
                    raise UserError(
                        f"{where}: {label} leaves a row unchanged that {tp.meta.display} {r.keystr} was to be deleted "
                        f"for (on_conflict: delete); choose on_conflict: skip for {tp.meta.display} too, or fail"
                    )


def _holders(
    conn: psycopg.Connection, members: list[tuple[_Table, str, str | None]], addresses: list[str]
) -> tuple[dict[str, list[tuple[Any, str]]], dict[tuple[int, str], Any]]:
    """(address -> (owner, name) of each row that holds it in a member column once the plan is applied: holding it
    now and not moved away or deleted by the plan; (table, key) -> owner of each moving row, where the member names
    an owner column)."""
    out: dict[str, list[tuple[Any, str]]] = {}
    owners: dict[tuple[int, str], Any] = {}
    for tp, col, owner in members:
        meta = tp.meta
        if owner is not None and owner not in meta.columns:
            raise UserError(f"{meta.display} has no column {owner!r} (the owner of a unique group's member)")
        gone = {r.keystr for r in tp.rows if r.fate == "delete" or (r.fate == "move" and col in r.changes)}
        t = meta.alias("t")
        who = sql.SQL("to_jsonb({}.{})").format(t, sql.Identifier(owner)) if owner else sql.SQL("NULL::jsonb")
        q = sql.SQL(
            "SELECT {k}, lower({t}.{c}::text), {who} FROM {tbl} {t} WHERE lower({t}.{c}::text) = ANY(%s)"
        ).format(k=meta.key_json(t), t=t, c=sql.Identifier(col), tbl=meta.ident, who=who)
        for key, addr, ov in conn.execute(q, (addresses,)):
            ks = dumps(key)
            if ks not in gone:
                who_holds = ("owner", dumps(ov)) if owner else ("row", meta.index, ks)
                out.setdefault(addr, []).append((who_holds, _name(tp, ks)))
        if owner:
            keys = [r.keystr for r in tp.rows if r.fate == "move" and col in r.changes]
            q = sql.SQL("SELECT {k}, {who} FROM {tbl} {t} WHERE {k} = ANY(%s::jsonb[])").format(
                k=meta.key_json(t), who=who, tbl=meta.ident, t=t
            )
            for key, ov in conn.execute(q, (keys,)):
                owners[(meta.index, dumps(key))] = ("owner", dumps(ov))
    return out, owners


def _priority(r: _Row, tp: _Table) -> tuple[Any, ...]:
    return (min((e for ch in r.changes.values() for e in ch.entries), default=0), tp.meta.index, r.sortkey)


def _name(tp: _Table, keystr: str) -> str:
    return f"{tp.meta.display} {keystr}"
