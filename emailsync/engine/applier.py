"""Applies a reviewed plan exactly: refuses anything that does not match it, then walks the stages (stages.py),
asking each target's store (stores/base.py) for its part of each; it never names a store."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from emailsync.archive import OutcomeBlock, OutcomeRecord, Rendered, outcome_text_blocks
from emailsync.config import LoadedTargets
from emailsync.engine.executor import DEFAULT_PACE, Pace, default_width, run_all
from emailsync.engine.online import DEFAULT_ONLINE, Online
from emailsync.engine.stages import STAGES
from emailsync.errors import UserError
from emailsync.plan import SKIPPED_KIND, WHOLE_ROW, Action, Plan, TargetFingerprint, TargetRows
from emailsync.stores import registry
from emailsync.stores.base import Store
from emailsync.stores.ledger import PastRun, Run, now
from emailsync.stores.outcome import CompactOutcomes, TargetResult, tally

EXIT_OK, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_PAUSED = 0, 1, 3, 130


def check_plan_matches(plan: Plan, loaded: LoadedTargets) -> None:
    """Refuse before connecting if the plan was made for other targets than these (where each connection
    arrives is checked once connected: check_reached; a table that became live since, when the target's actions
    are taken: Store.take)."""
    by_name = registry.targets(loaded)
    problems = []
    for name, fp in plan.targets.items():
        target = by_name.get(name)
        if target is None:
            problems.append(f"the plan targets {name!r}, which {loaded.path.name} does not define")
            continue
        store = registry.kind_of(target)
        if store != fp.store:
            problems.append(f"target {name!r} is a {store} target now but a {fp.store} target in the plan")
    # Every action names a target of the header: planfile.read_plan checked each line.
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
    pace: Pace = DEFAULT_PACE,
    online: Online = DEFAULT_ONLINE,
) -> tuple[int, dict[str, Any]]:
    """Apply the plan's actions (those of `only_targets`, without live ones if `skip_live`), stage by stage.

    `unfinished_runs`: the ids of earlier runs of this plan that were killed before their journals' end, asked for
    once every lock is held. A target's ledger recording such a run as complete is no replay: this run finishes
    what that one began."""
    check_plan_matches(plan, loaded)
    run = run or Run(plan.digest, None)
    write = journal or (lambda entry: None)
    planned = planned_counts(plan)
    chosen = registry.stores(
        loaded, [t for t in planned if only_targets is None or t in only_targets], pace=pace, online=online
    )
    # A store that only sends the lines' bytes on gets them while the plan's check may still run (read_plan early).
    taken = {
        s.name: s.take(
            TargetRows(plan.unchecked_actions if s.loads_unchecked else plan.actions, s.name, planned[s.name]),
            planned[s.name],
            skip_live,
        )
        for s in chosen
    }
    stores = [s for s in chosen if taken[s.name]]
    results: list[TargetResult] = []
    costs: list[dict[str, Any]] = []
    if stores:
        try:
            # Reach every target, resolve every table and take every lock before writing to any of them.
            reach(plan, loaded, stores)
            try:
                for s in stores:
                    s.prepare(planned_columns(plan, s.name), run, warn)
            except Exception:  # not on Ctrl-C: that ends the run at once
                plan.checked()  # a line that is not a plan's (the load choked on it) is named by the check
                raise
            plan.checked()  # before anything is written or shown: a problem in the plan's lines is the error
            # Read only now that every lock is held: a run that ended while this one waited for a lock is a finished
            # run (so this one is a replay), not a killed one to resume.
            killed = unfinished_runs()
            past = [p for s in stores for p in s.past_runs() if p.run_id not in killed]
            _refuse_replay(plan, past, {s.name for s in stores}, force, warn)
            # A target its ledger already records as complete is re-checked: the ledger keeps one run of the plan
            # per target however often a --skip-live or --only-target rerun re-checks it, and records a rerun only
            # if it wrote something (a row changed back since) or found it stale (see PgLedger.finish).
            rechecked = set() if force else {p.target for p in past}
            if not confirm(plan):
                raise UserError("apply cancelled: nothing was written")
            live = [a for s in stores for a in s.live_actions()]
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
                    "action_count": sum(taken.values()),
                }
            )
            for s in stores:
                if s.name not in rechecked:
                    s.start_run()
            # Stage by stage (stages.py); within a stage whose targets are independent (PostgreSQL databases: a
            # transaction each, its ledger row inside it), `parallel` targets at once.
            for stage in STAGES:
                steps = [st for s in stores if (st := s.step(stage, on_stale, write)) is not None]
                width = (parallel if parallel is not None else default_width(len(steps))) if stage.parallel else 1
                results += run_all(steps, width)
            for s in stores:
                s.finish(results)
        finally:
            costs = [c for s in stores for c in s.request_costs()]
            for s in stores:
                s.close()
    plan.checked()  # when no store ran (nothing taken), still a plan whose lines were checked
    report = _report(plan, results, run, on_stale)
    if stores and costs:
        report["requests"] = costs
    if report["actions"]:  # streamed, one fsync for all of them
        write(
            Rendered("\n".join(lines)) for lines in outcome_text_blocks(report["actions"].blocks(), event=True) if lines
        )
    if any(r.paused for r in results) and not any(r.error for r in results):
        report["paused"] = True
        return EXIT_PAUSED, report
    failed = any(r.error for r in results) or any(
        status not in ("applied", "already-applied") for r in results for status, _, _ in tally(r.outcomes)
    )
    # The run's end is journaled by the caller once report.json is written: a run killed before that is resumed
    # by a rerun (see unfinished_runs) rather than refused as a replay.
    return (EXIT_INCOMPLETE if failed else EXIT_OK), report


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


def reach(plan: Plan, loaded: LoadedTargets, stores: list[Store]) -> None:
    """Connect to each store's target and refuse, closing what was opened, unless every one arrived where the
    plan's connections did (check_reached)."""
    try:
        check_reached(plan, {s.name: s.reach() for s in stores}, loaded)
    except BaseException:
        for s in stores:
            s.close()
        raise


class ReportActions:
    """The report's actions, one dict per outcome, made as they are read (report.json, the journal's outcome events,
    apply --json): a run of millions of actions never holds them all as dicts. Each outcome says its table."""

    def __init__(self, results: list[TargetResult]) -> None:
        self._results = results

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for aid, target, table, status, detail in self.records():
            d: dict[str, Any] = {"id": aid, "target": target, "table": table, "status": status}
            if detail:
                d["detail"] = detail
            yield d

    def blocks(self) -> Iterator[OutcomeBlock]:
        """The outcomes as blocks of alike ones: (ids, details or None, target, table, status)."""
        for r in self._results:
            if isinstance(r.outcomes, CompactOutcomes):
                for ids, details, status, table, _ in r.outcomes.blocks():
                    yield ids, details, r.target, table, status
                continue
            for aid, o in r.outcomes.items():
                yield [aid], [o.detail], r.target, o.table, o.status

    def records(self) -> Iterator[OutcomeRecord]:
        """(id, target, table, status, detail) of each outcome (archive.outcome_texts renders them)."""
        for r in self._results:
            if isinstance(r.outcomes, CompactOutcomes):
                for aid, status, table, _, detail in r.outcomes.records():
                    yield aid, r.target, table, status, detail
                continue
            for aid, o in r.outcomes.items():
                yield aid, r.target, o.table, o.status, o.detail

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


def _report(plan: Plan, results: list[TargetResult], run: Run, on_stale: str) -> dict[str, Any]:
    actions = ReportActions(results)
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for r in results:
        for (status, table, kind), n in tally(r.outcomes).items():
            counts[(r.target, table or "", kind or "", status)] += n
    return {
        "plan_digest": plan.digest,
        "run_id": run.run_id,
        "started_at": run.started_at,
        "finished_at": now(),
        "applied_by": {"user": run.user, "host": run.host, "approver": run.approver},
        "on_stale": on_stale,
        "targets": [
            {
                "target": r.target,
                "committed": r.committed,
                "error": r.error,
                **({"paused": True} if r.paused else {}),
                **({"batches": r.batches} if r.batches else {}),
            }
            for r in results
        ],
        "summary": [
            {"target": k[0], "table": k[1], "kind": k[2], "status": k[3], "count": n} for k, n in sorted(counts.items())
        ],
        "actions": actions,
    }
