"""The order apply runs in, as data: apply, verify and the plan's rendering all walk STAGES (as SQLMesh keeps its
plan stages), so the order is decided once.

The old script's order, kept: every PostgreSQL database (independent transactions, so several at once), then the
DynamoDB tables, then the live (login) tables last, after their own confirmation, so people can still sign in
while everything else moves.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from emailsync.plan import SKIPPED_KIND, Action, Plan, Store, TargetRows


@dataclass(frozen=True)
class Stage:
    name: str
    store: Store
    live: bool  # this stage runs the actions on live tables (and only those)
    parallel: bool  # its targets are independent of each other: the executor runs `--parallel` of them at once
    confirmed: bool  # it runs only after a confirmation of its own (--confirm-live, or typing YES)
    says: str  # one line for the reader of a plan

    def holds(self, a: Action) -> bool:
        return a.store == self.store and a.live == self.live


STAGES: tuple[Stage, ...] = (
    Stage(
        "postgres",
        "postgres",
        live=False,
        parallel=True,
        confirmed=False,
        says="PostgreSQL databases, one transaction each (several at once with --parallel)",
    ),
    Stage(
        "dynamodb",
        "dynamodb",
        live=False,
        parallel=False,
        confirmed=False,
        says="DynamoDB tables, conditional writes and transactions, target by target",
    ),
    Stage(
        "live",
        "dynamodb",
        live=True,
        parallel=False,
        confirmed=True,
        says="live tables last, after a separate confirmation, each swap verified before the old item goes",
    ),
)


def stage_of(a: Action) -> Stage:
    return next(s for s in STAGES if s.holds(a))


def stores_in_order() -> list[Store]:
    """The stores in the order their targets are applied and verified."""
    out: list[Store] = []
    for s in STAGES:
        if s.store not in out:
            out.append(s.store)
    return out


def planned_by_stage(plan: Plan) -> list[tuple[Stage, dict[str, int]]]:
    """The plan's actions per stage and target, in apply order (stages without actions left out). Counted from the
    summary where a store has one stage; read from the actions of a store whose targets span several (DynamoDB's
    live tables), which are the small ones."""
    per_target: Counter[str] = Counter()
    for r in plan.summary:
        if r.kind != SKIPPED_KIND:
            per_target[r.target] += r.count
    counts: dict[Stage, Counter[str]] = {s: Counter() for s in STAGES}
    for name, n in per_target.items():
        store = plan.targets[name].store
        mine = [s for s in STAGES if s.store == store]
        if len(mine) == 1:
            counts[mine[0]][name] += n
        else:
            for a in TargetRows(plan.actions, name, n):
                counts[stage_of(a)][name] += 1
    return [(s, dict(c)) for s, c in counts.items() if c]
