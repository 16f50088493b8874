"""`emailsync verify`: where each action of a plan stands in the stores now, reading only.

Each action is in its `before` state (what the plan found: apply would do it), its `after` state (done), or
`drifted` (neither: something else changed the row or item, or a live swap stopped half way). The states come
from the same classification apply uses before writing, so verify and apply never disagree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from emailsync.config import LoadedTargets
from emailsync.engine.applier import check_plan_matches, planned_columns, planned_counts, reach
from emailsync.plan import Action, Plan, TargetRows
from emailsync.stores import registry
from emailsync.stores.outcome import CompactOutcomes

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
    """The state of every action (or of the actions whose ids are in `only`), target by target, in the order apply
    runs them."""
    check_plan_matches(plan, loaded)
    planned = planned_counts(plan)
    stores = registry.stores(loaded, planned)
    for s in stores:
        rows = TargetRows(plan.actions, s.name, planned[s.name])
        s.take(rows if only is None else _Only(rows, only), planned[s.name], skip_live=False)
    states = States()
    # Reading another database than the plan's would report its rows as drifted: refused like apply refuses.
    reach(plan, loaded, stores)
    try:
        for s in stores:
            s.prepare(planned_columns(plan, s.name), None, warn=lambda msg: None)
        for s in stores:
            found, keys = s.classify()
            states.add(s.name, s.kind, found, keys)
    finally:
        for s in stores:
            s.close()
    return states


class _Only:
    """The actions of `rows` whose ids are in `ids`, iterable again and again."""

    def __init__(self, rows: Iterable[Action], ids: set[str]) -> None:
        self._rows, self._ids = rows, ids

    def __iter__(self) -> Iterator[Action]:
        return (a for a in self._rows if a.id in self._ids)


def counts(states: Iterable[ActionState]) -> dict[str, int]:
    c = Counter(s.state for s in states)
    return {k: c.get(k, 0) for k in STATES}
