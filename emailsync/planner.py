"""Builds a Plan from targets.yaml and the mappings. Reads the stores, writes nothing anywhere."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from emailsync import __version__
from emailsync.config import LoadedTargets
from emailsync.errors import UserError
from emailsync.executor import Step, default_width, run_all
from emailsync.mappings import MappingSet
from emailsync.plan import (
    SKIPPED_KIND,
    Action,
    AttrChange,
    Inputs,
    Plan,
    ReadRecord,
    Skipped,
    Store,
    SummaryRow,
    TargetFingerprint,
    dumps,
    seal,
    summary_column,
)
from emailsync.planfile import PLAN_NAME
from emailsync.stores.dynamodb import DynamoPlanner, DynamoTargetPlan
from emailsync.stores.postgres import PostgresPlanner, TablePlan, TargetPlan


class _Where(TypedDict):
    """The fields every action on one row shares."""

    store: Store
    target: str
    table: str
    key: dict[str, Any]


def build_plan(
    loaded: LoadedTargets, mset: MappingSet, *, now: datetime | None = None, parallel: int | None = None
) -> Plan:
    """Plan every target (read-only), `parallel` targets at a time (default: executor.default_width); the plan is
    the same whatever the width."""
    cfg = loaded.config
    warnings = list(mset.warnings)
    pg_planners = [
        PostgresPlanner(
            target,
            f"{loaded.path.name}: postgres[{i}]",
            mset.unscoped(f"PostgreSQL target {target.name!r} has no client column, so client_id is ignored there"),
            cfg.match,
        )
        for i, target in enumerate(cfg.postgres)
    ]
    ddb_planners = [DynamoPlanner(t, f"{loaded.path.name}: dynamodb[{i}]", mset) for i, t in enumerate(cfg.dynamodb)]
    steps: list[Step[TargetPlan | DynamoTargetPlan]] = [*pg_planners, *ddb_planners]
    done = run_all(steps, parallel if parallel is not None else default_width(len(steps)))
    target_plans = [tp for tp in done if isinstance(tp, TargetPlan)]
    ddb_plans = [dp for dp in done if isinstance(dp, DynamoTargetPlan)]
    for tp in target_plans:
        warnings += tp.warnings
    levels = _levels({e for tp in target_plans for e in tp.edges}, mset)
    skipped: list[Skipped] = []
    summary: dict[tuple[str, str, str, str], int] = defaultdict(int)
    ids: set[str] = set()

    def counted(a: Action) -> Action:
        if a.id in ids:  # 64-bit ids: a clash is astronomically unlikely, but never silent
            raise UserError("internal: two actions got the same id; please report this with the inputs")
        ids.add(a.id)
        summary[(a.target, a.table, summary_column(a), a.kind)] += 1
        return a

    def actions() -> Iterator[Action]:
        """Every action, made as seal() takes it (seal keeps its line, not the model). A table's planned rows are
        let go once its actions are made, so the planned rows and the plan's lines are not both held whole."""
        for tp in target_plans:
            for tab in tp.tables:
                yield from (counted(a) for a in _table_actions(tp, tab, levels, skipped))
                tab.rows = []
        for dp in ddb_plans:
            for d in dp.actions:
                kid = _action_id(d["target"], d["table"], dumps(d["key"]), "", d["kind"]).replace("pg-", "ddb-")
                yield counted(Action(id=kid, **dict(d, changes=[AttrChange(**c) for c in d["changes"]])))
            dp.actions = []

    # seal() takes every action first, then the skipped changes, and only then reads the header: the summary and
    # the skipped list are complete by then, filled in as the last action is taken.
    summary_rows: list[SummaryRow] = []

    def every_action() -> Iterator[Action]:
        yield from actions()
        for s in skipped:
            summary[(s.target, s.table, s.column, SKIPPED_KIND)] += 1
        summary_rows.extend(
            SummaryRow(target=k[0], table=k[1], column=k[2], kind=k[3], count=n) for k, n in summary.items()
        )

    for dp in ddb_plans:
        warnings += dp.warnings

    now = now or datetime.now(UTC)
    body = dict(
        created_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        tool_version=__version__,
        inputs=Inputs(
            targets_file=loaded.path.name,
            targets_sha256=loaded.sha256,
            mappings_file=mset.path.name,
            mappings_sha256=mset.sha256,
            match=cfg.match,
            mapping_count=len(mset.mappings),
        ),
        targets={tp.target.name: TargetFingerprint(store="postgres", **tp.reached) for tp in target_plans}
        | {dp.target.name: TargetFingerprint(store="dynamodb", **dp.reached) for dp in ddb_plans},
        reads=[ReadRecord(**r) for dp in ddb_plans for r in dp.reads],
        summary=summary_rows,
        warnings=warnings,
        skipped=skipped,
        actions=every_action(),
    )
    return seal(body)


def _table_actions(tp: TargetPlan, tab: TablePlan, levels: dict[int, int], skipped: list[Skipped]) -> Iterator[Action]:
    """The actions of one planned table, in its rows' order; its skipped changes are added to `skipped`."""
    meta = tab.meta
    col_order = {c: n for n, c in enumerate(meta.email_columns)}
    for row in tab.rows:
        base: _Where = {"store": "postgres", "target": tp.target.name, "table": meta.display, "key": row.key}
        if row.fate == "skip":
            for ch in row.changes.values():
                skipped.append(
                    Skipped(
                        target=tp.target.name,
                        table=meta.display,
                        key=row.key,
                        column=ch.column,
                        old=ch.old,
                        new=ch.new,
                        reason=row.reason or "",
                    )
                )
            continue
        delete_step = None
        if row.fate == "delete":
            conflict_cols = row.conflict[0].columns if row.conflict else set()
            cause = [c for c in meta.email_columns if c in row.changes and c in conflict_cols]
            ch = row.changes[(cause or list(row.changes))[0]]
            if row.conflict_check is None or row.image is None:
                raise UserError(f"internal: no image for the row to delete in {meta.display} {row.keystr}")
            # Each level has three steps: deletes whose entries another row takes at that level, updates,
            # then the other deletes (after the rows referencing them have moved).
            delete_step = 3 * max(levels.get(e, 0) for e in row.delete_entries) + 2
            for other, cols in row.arrivals:
                arrive = 3 * max((levels.get(e, 0) for e in other.entries_for(cols)), default=0) + 1
                delete_step = min(delete_step, arrive - 1)
            yield (
                Action(
                    id=_action_id(tp.target.name, meta.display, row.keystr, ch.column, "delete"),
                    kind="delete-on-conflict",
                    step=delete_step,
                    conflict=row.conflict_check,
                    column=ch.column,
                    old=ch.old,
                    new=ch.new,
                    mappings=list(ch.entries),
                    row=row.image,
                    reason=row.reason,
                    **base,
                )
            )
        for ch in sorted(row.kept_changes().values(), key=lambda c: col_order[c.column]):
            step = 3 * max((levels.get(e, 0) for e in ch.entries), default=0) + 1
            if delete_step is not None and step > delete_step:
                continue  # the row is deleted before this value moves: nothing to keep valid
            yield (
                Action(
                    id=_action_id(tp.target.name, meta.display, row.keystr, ch.column, ch.kind),
                    kind=ch.kind,
                    step=step,
                    column=ch.column,
                    old=ch.old,
                    new=ch.new,
                    mappings=list(ch.entries),
                    row=row.image,
                    **base,
                )
            )


def _action_id(target: str, table: str, keystr: str, column: str, kind: str) -> str:
    # Content-derived, so the same change keeps its id across re-plans and plan diffs stay readable.
    return "pg-" + hashlib.sha256(dumps([target, table, keystr, column, kind]).encode()).hexdigest()[:16]


def _levels(edges: set[tuple[int, int]], mset: MappingSet) -> dict[int, int]:
    """Longest-path level of each mapping entry: an entry runs after every entry it depends on."""
    after: dict[int, set[int]] = defaultdict(set)
    nodes: set[int] = set()
    for a, b in edges:
        after[a].add(b)
        nodes.update((a, b))
    level: dict[int, int] = {}
    state: dict[int, int] = {}  # 1 = visiting, 2 = done
    by_ord = {m.ord: m for m in mset.mappings}
    # Iterative depth-first search: a long chain of mappings must not hit Python's recursion limit.
    for root in sorted(nodes):
        if state.get(root) == 2:
            continue
        path: list[int] = [root]
        stack: list[tuple[int, list[int]]] = [(root, sorted(after[root]))]
        state[root] = 1
        while stack:
            n, todo = stack[-1]
            if todo:
                b = todo.pop()
                if state.get(b) == 1:
                    cyc = path[path.index(b) :] + [b]
                    raise UserError(
                        "the mappings cannot be ordered: under a unique index these changes each wait for the other "
                        "(for example a swap that a case-insensitive index sees as one value). Split them into two "
                        "plans",
                        problems=[f"{by_ord[o].where}: {by_ord[o].old} → {by_ord[o].new}" for o in cyc if o in by_ord],
                    )
                if state.get(b) != 2:
                    state[b] = 1
                    path.append(b)
                    stack.append((b, sorted(after[b])))
                continue
            level[n] = max((level[b] + 1 for b in after[n]), default=0)
            state[n] = 2
            stack.pop()
            path.pop()
    return level


def default_plan_path(plans_dir: Path, plan: Plan) -> Path:
    stamp = plan.created_at.replace("-", "").replace(":", "")
    return plans_dir / f"{stamp}-{plan.digest.split(':')[1][:12]}" / PLAN_NAME
