"""`emailsync verify`: where each action of a plan stands in the stores now, reading only.

Each action is in its `before` state (what the plan found: apply would do it), its `after` state (done), or
`drifted` (neither: something else changed the row or item, or a live swap stopped half way). The states come
from the same classification apply uses before writing, so verify and apply never disagree.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from emailsync.applier import (
    check_ddb_tables,
    check_plan_matches,
    planned_columns,
    planned_counts,
    reach_targets,
    table_metas,
)
from emailsync.config import LoadedTargets
from emailsync.plan import Action, Plan, TargetRows
from emailsync.stores.ddb_apply import DynamoApplier
from emailsync.stores.outcome import CompactOutcomes, Outcome
from emailsync.stores.pg_apply import PostgresApplier

STATES = ("before", "after", "drifted")
_STATE = {"pending": "before", "already-applied": "after", "stale": "drifted"}


@dataclass(slots=True)
class ActionState:
    """Where one action stands. The action itself is not kept (a plan may hold millions); `key` is filled in for
    the drifted ones that a report shows (KEYS_KEPT at most)."""

    id: str
    target: str
    table: str
    kind: str
    store: str
    state: str  # before | after | drifted
    detail: str | None = None
    key: dict[str, Any] | None = None


KEYS_KEPT = 1000  # drifted actions whose keys are looked up for the report (it shows at most a few hundred)


class States:
    """Every action's state, kept compactly per target (CompactOutcomes) and made into ActionState objects only as
    they are read: a verify of millions of actions holds about 80 bytes per action."""

    def __init__(self) -> None:
        self._parts: list[tuple[str, str, CompactOutcomes, dict[str, dict[str, Any]]]] = []

    def add(self, target: str, store: str, found: CompactOutcomes, keys: dict[str, dict[str, Any]]) -> None:
        self._parts.append((target, store, found, keys))

    def __iter__(self) -> Iterator[ActionState]:
        for target, store, found, keys in self._parts:
            for aid, o in found.items():
                yield ActionState(
                    aid, target, o.table or "", o.kind or "", store, _STATE[o.status], o.detail, keys.get(aid)
                )

    def __len__(self) -> int:
        return sum(len(found) for _, _, found, _ in self._parts)


def verify_plan(plan: Plan, loaded: LoadedTargets, only: set[str] | None = None) -> States:
    """The state of every action (or of the actions whose ids are in `only`), target by target."""
    check_plan_matches(plan, loaded)
    planned = planned_counts(plan)
    pg = {t.name for t in loaded.config.postgres}

    def chosen(rows: Iterable[Action]) -> Iterator[Action]:
        return (a for a in rows if only is None or a.id in only)

    names = [n for n in planned if n in pg] + [n for n in planned if n not in pg]
    # Reading another database than the plan's would report its rows as drifted: refused like apply refuses.
    conns, clients = reach_targets(plan, loaded, set(names))
    states = States()
    try:
        for idx, target in enumerate(loaded.config.postgres):
            if not planned.get(target.name):
                continue
            rows = TargetRows(plan.actions, target.name, planned[target.name])
            conn = conns[target.name]
            try:
                metas = table_metas(conn, loaded, idx, planned_columns(plan, target.name))
                conn.rollback()
                stream: Iterable[Action] = rows if only is None else _Only(rows, only)
                applier = PostgresApplier(conn, target.name, metas, stream, "abort", None, target.statement_timeout)
                found = applier.classify_only()
            except psycopg.Error:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                raise
            states.add(target.name, "postgres", found, _keys_of_drifted(found, rows))
    finally:
        for conn in conns.values():
            conn.close()
    for ddb in loaded.config.dynamodb:
        if not planned.get(ddb.name):
            continue
        actions = list(chosen(TargetRows(plan.actions, ddb.name, planned[ddb.name])))
        if not actions:
            continue
        client = clients[ddb.name]
        check_ddb_tables(loaded, ddb, actions)
        index = {a.id: a for a in actions}
        found = CompactOutcomes()
        keys: dict[str, dict[str, Any]] = {}
        # Live and other tables are classified separately, exactly as apply runs them.
        for group in ([a for a in actions if not a.live], [a for a in actions if a.live]):
            if group:
                for aid, o in DynamoApplier(ddb, client, group, "abort").classify_only().items():
                    a = index[aid]
                    found.add(aid, Outcome(o.status, o.detail, a.table, a.kind))
                    if o.status == "stale":
                        keys[aid] = a.key
        states.add(ddb.name, "dynamodb", found, keys)
    return states


class _Only:
    """The actions of `rows` whose ids are in `ids`, iterable again and again."""

    def __init__(self, rows: Iterable[Action], ids: set[str]) -> None:
        self._rows, self._ids = rows, ids

    def __iter__(self) -> Iterator[Action]:
        return (a for a in self._rows if a.id in self._ids)


def _keys_of_drifted(found: CompactOutcomes, rows: Iterable[Action]) -> dict[str, dict[str, Any]]:
    """The keys of the first KEYS_KEPT drifted (stale) actions, in one more pass over the target's actions."""
    want = set(itertools.islice((aid for aid, o in found.items() if o.status == "stale"), KEYS_KEPT))
    keys: dict[str, dict[str, Any]] = {}
    if want:
        for a in rows:
            if a.id in want:
                keys[a.id] = a.key
                if len(keys) == len(want):
                    break
    return keys


def counts(states: Iterable[ActionState]) -> dict[str, int]:
    c = Counter(s.state for s in states)
    return {k: c.get(k, 0) for k in STATES}
