"""`emailsync verify`: where each action of a plan stands in the stores now, reading only.

Each action is in its `before` state (what the plan found: apply would do it), its `after` state (done), or
`drifted` (neither: something else changed the row or item, or a live swap stopped half way). The states come
from the same classification apply uses before writing, so verify and apply never disagree.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from dataclasses import dataclass

import psycopg

from emailsync.applier import check_ddb_tables, check_plan_matches, reach_targets, table_metas
from emailsync.config import LoadedTargets
from emailsync.plan import Action, Plan
from emailsync.stores.ddb_apply import DynamoApplier
from emailsync.stores.pg_apply import PostgresApplier

STATES = ("before", "after", "drifted")
_STATE = {"pending": "before", "already-applied": "after", "stale": "drifted"}


@dataclass(frozen=True)
class ActionState:
    action: Action
    state: str  # before | after | drifted
    detail: str | None = None


def verify_plan(plan: Plan, loaded: LoadedTargets, only: set[str] | None = None) -> list[ActionState]:
    """The state of every action (or of the actions whose ids are in `only`), in plan order."""
    check_plan_matches(plan, loaded)
    by_target: dict[str, list[Action]] = defaultdict(list)
    for a in plan.actions:
        if only is None or a.id in only:
            by_target[a.target].append(a)
    states: dict[str, ActionState] = {}
    index = {a.id: a for actions in by_target.values() for a in actions}  # the same objects: no second copy
    # Reading another database than the plan's would report its rows as drifted: refused like apply refuses.
    conns, clients = reach_targets(plan, loaded, set(by_target))
    try:
        for idx, target in enumerate(loaded.config.postgres):
            actions = by_target.get(target.name)
            if not actions:
                continue
            conn = conns[target.name]
            try:
                metas = table_metas(conn, loaded, idx, actions)
                conn.rollback()
                applier = PostgresApplier(conn, target.name, metas, actions, "abort", None, target.statement_timeout)
                for aid, o in applier.classify_only().items():
                    states[aid] = ActionState(index[aid], _STATE[o.status], o.detail)
            except psycopg.Error:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                raise
    finally:
        for conn in conns.values():
            conn.close()
    for ddb in loaded.config.dynamodb:
        actions = by_target.get(ddb.name)
        if not actions:
            continue
        client = clients[ddb.name]
        check_ddb_tables(loaded, ddb, actions)
        # Live and other tables are classified separately, exactly as apply runs them.
        for group in ([a for a in actions if not a.live], [a for a in actions if a.live]):
            if group:
                for aid, o in DynamoApplier(ddb, client, group, "abort").classify_only().items():
                    states[aid] = ActionState(index[aid], _STATE[o.status], o.detail)
    return [states[a.id] for actions in by_target.values() for a in actions if a.id in states]


def counts(states: list[ActionState]) -> dict[str, int]:
    c = Counter(s.state for s in states)
    return {k: c.get(k, 0) for k in STATES}
