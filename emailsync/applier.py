"""Applies a reviewed plan exactly: refuses anything that does not match it, then writes per database."""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import botocore.exceptions
import psycopg

from emailsync.config import DynamoTarget, LoadedTargets, PostgresTarget
from emailsync.errors import UserError
from emailsync.executor import default_width, run_all
from emailsync.ledger import DynamoLedger, NoLedger, PastRun, PgLedger, Run, now
from emailsync.plan import SKIPPED_KIND, WHOLE_ROW, Action, Plan, Rows, TargetFingerprint, TargetRows, dumps
from emailsync.stores.ddb_apply import DynamoApplier
from emailsync.stores.dynamodb import call, client_for
from emailsync.stores.dynamodb import reached as ddb_reached
from emailsync.stores.outcome import Outcome, TargetResult
from emailsync.stores.pg_apply import PostgresApplier
from emailsync.stores.pg_catalog import TableMeta, resolve_table
from emailsync.stores.postgres import connect
from emailsync.stores.postgres import reached as pg_reached

EXIT_OK, EXIT_ERROR, EXIT_INCOMPLETE = 0, 1, 3


def check_plan_matches(plan: Plan, loaded: LoadedTargets) -> None:
    """Refuse before connecting if the plan was made for other targets than these (where each connection
    arrives is checked once connected: check_reached)."""
    dynamo = {t.name: t for t in loaded.config.dynamodb}
    by_name: dict[str, PostgresTarget | DynamoTarget] = {t.name: t for t in loaded.config.postgres}
    by_name |= dynamo
    problems = []
    for name, fp in plan.targets.items():
        target = by_name.get(name)
        if target is None:
            problems.append(f"the plan targets {name!r}, which {loaded.path.name} does not define")
            continue
        store = "postgres" if isinstance(target, PostgresTarget) else "dynamodb"
        if store != fp.store:
            problems.append(f"target {name!r} is a {store} target now but a {fp.store} target in the plan")
    # Every action names a target of the header: planfile.read_plan checked each line.
    # Which tables are live is the targets file's word: a table that became live (or stopped being live)
    # since the plan needs a new plan, whose actions get the live treatment and confirmation.
    counts = planned_counts(plan)
    changed = sorted(  # read through each DynamoDB target's lines only: PostgreSQL's are skipped unparsed
        {
            (a.target, a.table)
            for name in dynamo
            if counts.get(name)
            for a in TargetRows(plan.actions, name, counts[name])
            if dynamo[name].is_live(a.table) != a.live
        }
    )
    for target_name, table in changed:
        problems.append(
            f"{target_name}/{table} is {'live' if dynamo[target_name].is_live(table) else 'not live'} in "
            f"{loaded.path.name} now but was {'not ' if dynamo[target_name].is_live(table) else ''}live when the "
            "plan was made; re-plan"
        )
    if problems:
        raise UserError(f"the plan does not match {loaded.path}", problems=problems)


def check_reached(plan: Plan, now: dict[str, TargetFingerprint], loaded: LoadedTargets) -> None:
    """Refuse, before anything is locked or written, a connection that arrived anywhere but where the plan's did:
    another database, server, cluster, endpoint, region or account (the environment can move a DSN or a client
    without targets.yaml changing)."""
    problems = []
    for name, reached in now.items():
        then = plan.targets[name]
        if reached != then:
            fields = [f for f in type(then).model_fields if f != "store" and getattr(then, f) != getattr(reached, f)]
            diffs = ", ".join(f"{f} {getattr(then, f)!r} in the plan, {getattr(reached, f)!r} now" for f in fields)
            problems.append(
                f"target {name!r} reaches {reached.describe()}; the plan was made against {then.describe()} ({diffs})"
            )
    if problems:
        raise UserError(
            f"the plan does not match the stores {loaded.path.name} reaches now; nothing was written. Apply "
            "with the targets and environment the plan was made with, or re-plan against these stores",
            problems=problems,
        )


def apply_plan(
    plan: Plan,
    loaded: LoadedTargets,
    *,
    on_stale: str,
    confirm: Callable[[Plan], bool],
    confirm_live: Callable[[list[Action]], bool] = lambda live: False,
    only_targets: list[str] | None = None,
    skip_live: bool = False,
    journal: Callable[[Any], None] | None = None,
    run: Run | None = None,
    force: bool = False,
    warn: Callable[[str], None] = lambda msg: None,
    unfinished_runs: Callable[[], frozenset[str]] = frozenset,
    parallel: int | None = None,
) -> tuple[int, dict[str, Any]]:
    """Apply the plan's actions (those of `only_targets`, without live ones if `skip_live`).

    `unfinished_runs`: the ids of earlier runs of this plan that were killed before their journals' end, asked for
    once every lock is held. A target's ledger recording such a run as complete is no replay: this run finishes
    what that one began."""
    check_plan_matches(plan, loaded)
    run = run or Run(plan.digest, None)
    write = journal or (lambda entry: None)
    planned = planned_counts(plan)
    in_scope = [t for t in planned if only_targets is None or t in only_targets]
    # A PostgreSQL target's actions are streamed from the plan into its action table and never held here; a
    # DynamoDB target's are held, in the order its applier writes them: step by step, in key order within a step.
    pg_rows = {t.name: TargetRows(plan.actions, t.name, planned[t.name]) for t in loaded.config.postgres}
    by_target: dict[str, Rows[Action]] = {}
    ddb_actions: dict[str, list[Action]] = {}
    for name in in_scope:
        if name in pg_rows:
            by_target[name] = pg_rows[name]
        else:
            acts = [a for a in TargetRows(plan.actions, name, planned[name]) if not (skip_live and a.live)]
            acts.sort(key=lambda a: (a.step, a.table, dumps(a.key), a.column or ""))
            if acts:
                by_target[name] = ddb_actions[name] = acts
    results: list[TargetResult] = []
    if by_target:
        # Reach every target, resolve every table and take every lock before writing to any of them.
        prepared: list[tuple[PostgresTarget, psycopg.Connection, list[TableMeta], Rows[Action], PgLedger]] = []
        ddb_prepared: list[tuple[DynamoTarget, Any, list[Action], DynamoLedger | NoLedger]] = []
        conns, clients = reach_targets(plan, loaded, set(by_target))
        try:
            for idx, target in enumerate(loaded.config.postgres):
                if target.name in by_target:
                    actions, conn = by_target[target.name], conns[target.name]
                    ledger = PgLedger(conn, target, run)
                    ledger.lock()
                    prepared.append(
                        (
                            target,
                            conn,
                            table_metas(conn, loaded, idx, planned_columns(plan, target.name)),
                            actions,
                            ledger,
                        )
                    )
                    conn.rollback()
                    ledger.ensure()
            for ddb in loaded.config.dynamodb:
                if ddb.name in ddb_actions:
                    actions, client = ddb_actions[ddb.name], clients[ddb.name]
                    check_ddb_tables(loaded, ddb, actions)
                    dledger = DynamoLedger(ddb, client, run) if ddb.ledger_table else NoLedger(ddb)
                    ddb_prepared.append((ddb, client, actions, dledger))
                    if not ddb.ledger_table:
                        warn(
                            f"DynamoDB target {ddb.name!r} has no ledger_table in {loaded.path.name}: this apply is "
                            "not recorded in the target, and nothing stops a second applier running at the same time"
                        )
                    call(ddb, f"ledger table {ddb.ledger_table}", dledger.ensure)
                    call(ddb, f"lock in {ddb.ledger_table}", dledger.lock)
            # Read only now that every lock is held: a run that ended while this one waited for a lock is a finished
            # run (so this one is a replay), not a killed one to resume.
            killed = unfinished_runs()
            past = [p for *_, lg in prepared for p in lg.completed()]
            past += [p for *_, dl in ddb_prepared for p in call(dl.target, "ledger", dl.completed)]
            past = [p for p in past if p.run_id not in killed]
            _refuse_replay(plan, past, set(by_target), force, warn)
            # A target its ledger already records as complete is re-checked: the ledger keeps one run of the plan
            # per target however often a --skip-live or --only-target rerun re-checks it, and records a rerun only
            # if it wrote something (a row changed back since) or found it stale (see PgLedger.finish).
            rechecked = set() if force else {p.target for p in past}
            if not confirm(plan):
                raise UserError("apply cancelled: nothing was written")
            live = [a for actions in ddb_actions.values() for a in actions if a.live]
            if live and not confirm_live(live):
                raise UserError("live changes not confirmed: nothing was written")
            write(
                {
                    "event": "run-start",
                    **run.header(),
                    "force": force,
                    "on_stale": on_stale,
                    "only_targets": only_targets,
                    "skip_live": skip_live,
                    "action_count": sum(len(v) for v in by_target.values()),
                }
            )
            for target, *_, lg in prepared:
                if target.name not in rechecked:
                    lg.start()
            for ddb, *_, dl in ddb_prepared:
                if ddb.name not in rechecked:
                    call(dl.target, "ledger", dl.start)
            # The old script's order: PostgreSQL databases, then DynamoDB, then the live tables last. The databases
            # are independent (a transaction each, its ledger row inside it): `parallel` of them at once.
            steps = [
                _PostgresStep(
                    conn,
                    functools.partial(
                        _apply_postgres,
                        t,
                        conn,
                        metas,
                        actions,
                        ledger,
                        len(actions) == planned[t.name],
                        on_stale,
                        write,
                    ),
                )
                for t, conn, metas, actions, ledger in prepared
            ]
            results += run_all(steps, parallel if parallel is not None else default_width(len(steps)))
            # --on-stale abort writes nothing to a target with a stale item, its live table included: the live
            # actions run last, in a group of their own, so a target is held back as a whole here.
            held: dict[str, str] = {}
            live_stale: dict[str, dict[str, Outcome]] = {}
            for ddb, client, actions, _ in ddb_prepared:
                live_actions = [a for a in actions if a.live]
                if on_stale == "abort" and live_actions and any(not a.live for a in actions):
                    probe = DynamoApplier(ddb, client, live_actions, on_stale, write)
                    live_stale[ddb.name] = call(ddb, "reading the live items", probe.stale_before_writing)
                    if live_stale[ddb.name]:
                        held[ddb.name] = f"{len(live_stale[ddb.name])} stale live action(s)"
                normal = [a for a in actions if not a.live]
                if normal:
                    if ddb.name in held:
                        results.append(_held_back(ddb.name, normal, held[ddb.name]))
                        continue
                    res = DynamoApplier(ddb, client, normal, on_stale, write).run()
                    results.append(res)
                    if on_stale == "abort" and any(o.status == "stale" for o in res.outcomes.values()):
                        held[ddb.name] = "stale action(s) in its other tables"
            for ddb, client, actions, _ in ddb_prepared:
                live_actions = [a for a in actions if a.live]
                if live_actions and ddb.name in held:
                    res = _held_back(ddb.name, live_actions, held[ddb.name])
                    res.outcomes.update(live_stale.get(ddb.name, {}))  # the stale ones say why
                    results.append(res)
                elif live_actions:
                    results.append(DynamoApplier(ddb, client, live_actions, on_stale, write).run())
            for ddb, _, actions, dl in ddb_prepared:
                outcomes = {i: o.status for r in results if r.target == ddb.name for i, o in r.outcomes.items()}
                full = len(actions) == planned[ddb.name]
                with contextlib.suppress(botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                    dl.finish(_status(outcomes, full), dict(Counter(outcomes.values())))
        finally:
            for *_, dl in ddb_prepared:
                with contextlib.suppress(botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                    dl.release()
            for conn in conns.values():
                conn.close()
    report = _report(plan, ddb_actions, results, run, on_stale)
    if report["actions"]:
        write({"event": "outcome", **entry} for entry in report["actions"])  # streamed, one fsync for all of them
    failed = any(r.error for r in results) or any(
        o.status not in ("applied", "already-applied") for r in results for o in r.outcomes.values()
    )
    # The run's end is journaled by the caller once report.json is written: a run killed before that is resumed
    # by a rerun (see unfinished_runs) rather than refused as a replay.
    return (EXIT_INCOMPLETE if failed else EXIT_OK), report


def _held_back(target: str, actions: list[Action], why: str) -> TargetResult:
    """Actions of a target that --on-stale abort keeps from running because of stale actions elsewhere in it."""
    res = TargetResult(target)
    res.outcomes = {a.id: Outcome("not-applied", f"nothing written: {why} and --on-stale abort") for a in actions}
    res.error = f"{why}; nothing written to this target (--on-stale abort)"
    return res


def _refuse_replay(
    plan: Plan, past: list[PastRun], in_scope: set[str], force: bool, warn: Callable[[str], None]
) -> None:
    """A plan the targets' ledgers record as applied completely runs again only with --force."""
    if not past or force:
        return
    # One line per target: its first complete run (ledgers written before runs were recorded once may hold more).
    first: dict[str, PastRun] = {}
    for p in past:
        first.setdefault(p.target, p)
    if set(first) < in_scope:
        # Part of the plan is still to do (a --skip-live or --only-target run before): go on; the finished
        # targets' actions are re-checked and come out already-applied.
        for p in first.values():
            warn(
                f"already applied completely on target {p.describe()}; its actions are re-checked (a row or item "
                "changed back since is written again, and that run recorded)"
            )
        return
    raise UserError(
        f"this plan ({plan.digest[:19]}) has already been applied completely; nothing was written. "
        "Applying it again is refused so a plan runs once; run `emailsync verify` on it to check the "
        "stores, or pass --force to apply it again anyway",
        problems=[p.describe() for p in first.values()],
    )


def _apply_postgres(
    target: PostgresTarget,
    conn: psycopg.Connection,
    metas: list[TableMeta],
    actions: Rows[Action],
    ledger: PgLedger,
    full: bool,
    on_stale: str,
    write: Callable[[Any], None],
) -> TargetResult:
    """One database's transaction, journaled before and after; its ledger row commits with the changes."""
    entry = {"event": "write", "target": target.name, "store": "postgres", "op": "transaction"}
    res = PostgresApplier(
        conn,
        target.name,
        metas,
        actions,
        on_stale,
        target.lock_timeout,
        target.statement_timeout,
        before_commit=lambda statuses: ledger.finish(_status(statuses, full), dict(Counter(statuses.values()))),
        # Journaled once the actions are loaded (ids read back from the database, not from another pass over the
        # plan) and before anything is written.
        loaded=lambda ids: write(_batched({**entry, "phase": "before"}, ((aid, None) for aid in ids), "actions")),
    ).run()
    if not res.committed:
        with contextlib.suppress(psycopg.Error):
            failed = any(o.status == "failed" for o in res.outcomes.values())
            ledger.finish("failed" if failed else "incomplete", _counts(res))
            conn.commit()
    # What committed, action by action: the journal alone then tells what a killed run did. A large transaction's
    # outcomes go in several "after" records of AFTER_BATCH actions (one fsync for all), never one huge line.
    after = {**entry, "phase": "after", "committed": res.committed, "error": res.error}
    write(_batched(after, ((aid, o.status) for aid, o in res.outcomes.items()), "outcomes"))
    return res


BATCH = 10_000  # actions per journal record of a PostgreSQL transaction


def _batched(entry: dict[str, Any], pairs: Iterator[tuple[str, Any]], field: str) -> Iterator[dict[str, Any]]:
    """The entry once per BATCH actions (at least once): `field` holds their ids ("actions", with "count") or
    their statuses by id ("outcomes"). Streamed, so a transaction of millions never makes one list or one line."""
    first = True
    while True:
        batch = dict(itertools.islice(pairs, BATCH))
        if not batch and not first:
            return
        first = False
        if field == "actions":
            yield {**entry, "count": len(batch), "actions": list(batch)}
        else:
            yield {**entry, field: batch}


class _PostgresStep:
    """One database's apply as an executor step: cancelling it cancels the statement running on its connection,
    so its transaction rolls back and reports so."""

    def __init__(self, conn: psycopg.Connection, apply: Callable[[], TargetResult]) -> None:
        self._conn, self._apply = conn, apply

    def run(self) -> TargetResult:
        return self._apply()

    def cancel(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.cancel_safe()


def _status(statuses: Mapping[str, str], full: bool) -> str:
    """complete: every action of the plan for the target is done, so applying the plan again is a replay."""
    done = all(s in ("applied", "already-applied") for s in statuses.values())
    return "complete" if done and full else "incomplete"


def _counts(res: TargetResult) -> dict[str, int]:
    return dict(Counter(o.status for o in res.outcomes.values()))


def reach_targets(
    plan: Plan, loaded: LoadedTargets, names: set[str]
) -> tuple[dict[str, psycopg.Connection], dict[str, Any]]:
    """Connect to each named target (a connection per PostgreSQL target, a client per DynamoDB one) and refuse,
    closing what was opened, unless every one arrived where the plan's connections did (check_reached)."""
    conns: dict[str, psycopg.Connection] = {}
    clients: dict[str, Any] = {}
    now: dict[str, TargetFingerprint] = {}
    try:
        for target in loaded.config.postgres:
            if target.name in names:
                conns[target.name] = conn = connect(target)
                now[target.name] = TargetFingerprint(store="postgres", **pg_reached(conn))
        for ddb in loaded.config.dynamodb:
            if ddb.name in names:
                clients[ddb.name] = client = client_for(ddb)
                now[ddb.name] = TargetFingerprint(store="dynamodb", **ddb_reached(ddb, client))
        check_reached(plan, now, loaded)
    except BaseException:
        for conn in conns.values():
            conn.close()
        raise
    return conns, clients


def check_ddb_tables(loaded: LoadedTargets, target: DynamoTarget, actions: list[Action]) -> None:
    """Every table the actions change is still listed, exists, and has the key the plan's items were read with: a
    table recreated with another key since the plan is refused here, before any write."""
    probe = client_for(target, probe=True)
    known = {t.table for t in target.tables}
    keys: dict[str, dict[str, str]] = {}  # table -> the key attributes and their types, as the plan's items show
    for a in actions:
        if a.table not in known:
            raise UserError(
                f"the plan changes DynamoDB table {a.table!r} in target {target.name!r}, which {loaded.path.name} "
                "no longer lists; apply with the targets file the plan was made from"
            )
        if a.table not in keys:
            keys[a.table] = {name: next(iter(v)) for name, v in a.key.items() if isinstance(v, dict) and v}
    problems = []
    for table, planned in keys.items():
        desc = call(target, f"describe {table}", probe.describe_table, TableName=table)["Table"]
        types = {d["AttributeName"]: d["AttributeType"] for d in desc.get("AttributeDefinitions", [])}
        now = {k["AttributeName"]: types.get(k["AttributeName"], "?") for k in desc.get("KeySchema", [])}
        if now != planned:
            problems.append(
                f"{table}: the key is {_key_text(now)} now, but the plan's items were read with {_key_text(planned)}"
            )
    if problems:
        raise UserError(
            f"target {target.name!r}: DynamoDB table(s) changed their key since the plan (recreated?); nothing was "
            "written. Re-plan against the tables as they are now",
            problems=problems,
        )


def _key_text(key: dict[str, str]) -> str:
    return ", ".join(f"{name} ({kind})" for name, kind in key.items()) or "(none)"


class ReportActions:
    """The report's actions, one dict per outcome, made as they are read (report.json, the journal's outcome events,
    apply --json): a run of millions of actions never holds them all as dicts."""

    def __init__(self, results: list[TargetResult], held: dict[str, Action]) -> None:
        self._results, self._held = results, held  # held: the actions kept in memory (DynamoDB's), by id

    def where(self, aid: str, o: Outcome) -> tuple[str | None, str | None]:
        a = self._held.get(aid)
        return (o.table, o.kind) if a is None else (a.table, a.kind)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for r in self._results:
            for aid, o in r.outcomes.items():
                d: dict[str, Any] = {"id": aid, "target": r.target, "table": self.where(aid, o)[0], "status": o.status}
                if o.detail:
                    d["detail"] = o.detail
                yield d

    def __len__(self) -> int:
        return sum(len(r.outcomes) for r in self._results)


def planned_counts(plan: Plan) -> Counter[str]:
    """Actions per target, from the plan's summary (checked against its lines when the plan was read)."""
    counts: Counter[str] = Counter()
    for r in plan.summary:
        if r.kind != SKIPPED_KIND:
            counts[r.target] += r.count
    return counts


def planned_columns(plan: Plan, target: str) -> dict[str, set[str]]:
    """The tables a target's actions change and their columns, from the plan's summary (no pass over the actions)."""
    columns: dict[str, set[str]] = {}
    for r in plan.summary:
        if r.target == target and r.kind != SKIPPED_KIND:
            cols = columns.setdefault(r.table, set())
            if r.column not in WHOLE_ROW:  # a row put back (insert-row) changes no single column
                cols.add(r.column)
    return columns


def table_metas(
    conn: psycopg.Connection, loaded: LoadedTargets, idx: int, columns: dict[str, set[str]]
) -> list[TableMeta]:
    target = loaded.config.postgres[idx]
    metas = [
        resolve_table(conn, target, f"{loaded.path.name}: postgres[{idx}].tables[{i}]", i, t)
        for i, t in enumerate(target.tables)
    ]
    known = {m.display: m for m in metas}
    used = []
    for table, planned_columns in columns.items():
        m = known.get(table)
        if m is None:
            raise UserError(
                f"the plan changes {table!r} in target {target.name!r}, which {loaded.path.name} no longer lists; "
                "apply with the targets file the plan was made from"
            )
        missing = planned_columns - set(m.email_columns)
        if missing:
            raise UserError(
                f"the plan changes columns {sorted(missing)} of {table!r}, which {loaded.path.name} does not "
                "list for that table; apply with the targets file the plan was made from"
            )
        used.append(m)
    return used


def _report(
    plan: Plan, held: dict[str, list[Action]], results: list[TargetResult], run: Run, on_stale: str
) -> dict[str, Any]:
    """`held`: the actions held in memory (DynamoDB's); a PostgreSQL outcome says its own table and kind."""
    actions = ReportActions(results, {a.id: a for acts in held.values() for a in acts})
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for r in results:
        for aid, o in r.outcomes.items():
            table, kind = actions.where(aid, o)
            counts[(r.target, table or "", kind or "", o.status)] += 1
    return {
        "plan_digest": plan.digest,
        "run_id": run.run_id,
        "started_at": run.started_at,
        "finished_at": now(),
        "applied_by": {"user": run.user, "host": run.host, "approver": run.approver},
        "on_stale": on_stale,
        "targets": [{"target": r.target, "committed": r.committed, "error": r.error} for r in results],
        "summary": [
            {"target": k[0], "table": k[1], "kind": k[2], "status": k[3], "count": n} for k, n in sorted(counts.items())
        ],
        "actions": actions,
    }
