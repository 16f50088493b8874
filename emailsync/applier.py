"""Applies a reviewed plan exactly: refuses anything that does not match it, then writes per database."""

from __future__ import annotations

import getpass
import socket
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from emailsync.config import DynamoTarget, LoadedTargets, PostgresTarget
from emailsync.errors import UserError
from emailsync.plan import Action, Plan
from emailsync.stores.ddb_apply import DynamoApplier
from emailsync.stores.dynamodb import call, client_for
from emailsync.stores.outcome import Outcome, TargetResult
from emailsync.stores.pg_apply import PostgresApplier
from emailsync.stores.pg_catalog import TableMeta, resolve_table
from emailsync.stores.postgres import connect

EXIT_OK, EXIT_ERROR, EXIT_INCOMPLETE = 0, 1, 3


def check_plan_matches(plan: Plan, loaded: LoadedTargets) -> None:
    """Refuse before connecting if the plan was made for other targets than these."""
    by_name: dict[str, PostgresTarget | DynamoTarget] = {t.name: t for t in loaded.config.postgres}
    by_name |= {t.name: t for t in loaded.config.dynamodb}
    problems = []
    for name, fp in plan.targets.items():
        target = by_name.get(name)
        if target is None:
            problems.append(f"the plan targets {name!r}, which {loaded.path.name} does not define")
            continue
        store = "postgres" if isinstance(target, PostgresTarget) else "dynamodb"
        if store != fp.store:
            problems.append(f"target {name!r} is a {store} target now but a {fp.store} target in the plan")
            continue
        now = target.fingerprint()
        then = fp.model_dump(exclude={"store"})
        if now != then:
            problems.append(
                f"target {name!r} now points at {now} but the plan was made against {then}; "
                "re-plan against this database"
            )
    for a in plan.actions:
        if a.target not in plan.targets:
            problems.append(f"action {a.id} names target {a.target!r}, which the plan's header does not list")
            break
    # Which tables are live is the targets file's word: a table that became live (or stopped being live)
    # since the plan needs a new plan, whose actions get the live treatment and confirmation.
    changed = sorted(
        {
            (a.target, a.table)
            for a in plan.actions
            if isinstance(by_name.get(a.target), DynamoTarget) and by_name[a.target].is_live(a.table) != a.live
        }
    )
    for target_name, table in changed:
        problems.append(
            f"{target_name}/{table} is {'live' if by_name[target_name].is_live(table) else 'not live'} in "
            f"{loaded.path.name} now but was {'not ' if by_name[target_name].is_live(table) else ''}live when the "
            "plan was made; re-plan"
        )
    if problems:
        raise UserError(f"the plan does not match {loaded.path}", problems=problems)


def apply_plan(
    plan: Plan,
    loaded: LoadedTargets,
    *,
    on_stale: str,
    confirm: Callable[[Plan], bool],
    confirm_live: Callable[[list[Action]], bool] = lambda live: False,
    only_targets: list[str] | None = None,
    skip_live: bool = False,
    journal: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[int, dict[str, Any]]:
    check_plan_matches(plan, loaded)
    by_target: dict[str, list[Action]] = defaultdict(list)
    for a in plan.actions:
        if (only_targets is None or a.target in only_targets) and not (skip_live and a.live):
            by_target[a.target].append(a)
    started = datetime.now(UTC)
    results: list[TargetResult] = []
    if by_target:
        # Reach every target, and resolve every table, before writing to any of them.
        prepared: list[tuple[PostgresTarget, psycopg.Connection, list[TableMeta], list[Action]]] = []
        ddb_prepared: list[tuple[DynamoTarget, Any, list[Action]]] = []
        try:
            for idx, target in enumerate(loaded.config.postgres):
                if target.name in by_target:
                    actions = by_target[target.name]
                    conn = connect(target)
                    prepared.append((target, conn, _metas(conn, loaded, idx, actions), actions))
                    conn.rollback()
            for ddb in loaded.config.dynamodb:
                if ddb.name in by_target:
                    actions = by_target[ddb.name]
                    ddb_prepared.append((ddb, _ddb_client(loaded, ddb, actions), actions))
            if not confirm(plan):
                raise UserError("apply cancelled: nothing was written")
            live = [a for actions in by_target.values() for a in actions if a.live]
            if live and not confirm_live(live):
                raise UserError("live changes not confirmed: nothing was written")
            # The old script's order: PostgreSQL databases, then DynamoDB, then the live tables last.
            for target, conn, metas, actions in prepared:
                results.append(
                    PostgresApplier(
                        conn, target.name, metas, actions, on_stale, target.lock_timeout, target.statement_timeout
                    ).run()
                )
            for ddb, client, actions in ddb_prepared:
                normal = [a for a in actions if not a.live]
                if normal:
                    results.append(DynamoApplier(ddb, client, normal, on_stale, journal).run())
            for ddb, client, actions in ddb_prepared:
                live_actions = [a for a in actions if a.live]
                if live_actions:
                    results.append(DynamoApplier(ddb, client, live_actions, on_stale, journal).run())
        finally:
            for _, conn, _, _ in prepared:
                conn.close()
    report = _report(plan, results, started, on_stale)
    failed = any(r.error for r in results) or any(
        o.status not in ("applied", "already-applied") for r in results for o in r.outcomes.values()
    )
    return (EXIT_INCOMPLETE if failed else EXIT_OK), report


def _ddb_client(loaded: LoadedTargets, target: DynamoTarget, actions: list[Action]) -> Any:
    client, probe = client_for(target), client_for(target, probe=True)
    known = {t.table for t in target.tables}
    for table in dict.fromkeys(a.table for a in actions):
        if table not in known:
            raise UserError(
                f"the plan changes DynamoDB table {table!r} in target {target.name!r}, which {loaded.path.name} "
                "no longer lists; apply with the targets file the plan was made from"
            )
        call(target, f"describe {table}", probe.describe_table, TableName=table)
    return client


def _metas(conn: psycopg.Connection, loaded: LoadedTargets, idx: int, actions: list[Action]) -> list[TableMeta]:
    target = loaded.config.postgres[idx]
    metas = [
        resolve_table(conn, target, f"{loaded.path.name}: postgres[{idx}].tables[{i}]", i, t)
        for i, t in enumerate(target.tables)
    ]
    known = {m.display: m for m in metas}
    used = []
    for table in dict.fromkeys(a.table for a in actions):
        m = known.get(table)
        if m is None:
            raise UserError(
                f"the plan changes {table!r} in target {target.name!r}, which {loaded.path.name} no longer lists; "
                "apply with the targets file the plan was made from"
            )
        missing = {a.column for a in actions if a.table == table} - set(m.email_columns)
        if missing:
            raise UserError(
                f"the plan changes columns {sorted(missing)} of {table!r}, which {loaded.path.name} does not "
                "list for that table; apply with the targets file the plan was made from"
            )
        used.append(m)
    return used


def _report(plan: Plan, results: list[TargetResult], started: datetime, on_stale: str) -> dict[str, Any]:
    by_id = {a.id: a for a in plan.actions}
    counts: Counter[tuple[str, str, str, str]] = Counter()
    actions = []
    for r in results:
        for aid, o in r.outcomes.items():
            a = by_id[aid]
            counts[(a.target, a.table, a.kind, o.status)] += 1
            actions.append(_action_outcome(a, o))
    return {
        "plan_digest": plan.digest,
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "applied_by": {"user": getpass.getuser(), "host": socket.gethostname()},
        "on_stale": on_stale,
        "targets": [{"target": r.target, "committed": r.committed, "error": r.error} for r in results],
        "summary": [
            {"target": k[0], "table": k[1], "kind": k[2], "status": k[3], "count": n} for k, n in sorted(counts.items())
        ],
        "actions": actions,
    }


def _action_outcome(a: Action, o: Outcome) -> dict[str, Any]:
    d: dict[str, Any] = {"id": a.id, "target": a.target, "table": a.table, "status": o.status}
    if o.detail:
        d["detail"] = o.detail
    return d
