"""The plan and apply workflows as a library: what `emailsync plan` and `emailsync apply` do between reading their
options and printing their outcome. The CLI parses options, asks the person, prints, and maps outcomes to exit
codes; every check, refusal and file written is decided here, and can be driven without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from emailsync import progress
from emailsync.engine.executor import DEFAULT_PACE, Pace
from emailsync.engine.online import DEFAULT_ONLINE, Online
from emailsync.errors import UserError
from emailsync.plan import Action, Plan
from emailsync.stores.base import Progress
from emailsync.stores.errors import store_errors

T = TypeVar("T")
Warn = Callable[[str], None]


def with_progress(quiet: bool, fn: Callable[[], T]) -> T:
    """fn(), with progress bars on stderr while it runs: only on a terminal, never when `quiet`."""
    with progress.shown(progress.wanted(quiet)):
        return fn()


def redacted_markdown(plan: Plan, key: bytes | None) -> str:
    from emailsync.redact import NOTE, redacted
    from emailsync.render import plan_markdown

    return plan_markdown(redacted(plan, key), redaction=NOTE)


# -- plan ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    plan: Plan
    path: Path  # plan.jsonl.gz
    markdown: Path  # plan.md beside it
    diff: tuple[Path, Path] | None  # the previous plan for these targets, and diff.md against it
    later_warnings: list[str]  # the plan's warnings beyond the mapping file's (those were passed to `warn` first)


def make_plan(
    targets: Path,
    *,
    mappings: Path | None,
    out: Path | None,
    plans_dir: Path,
    redact: bool,
    quiet: bool,
    warn: Warn,
    parallel: int | None = None,
    pace: Pace = DEFAULT_PACE,
) -> Planned:
    """Read the targets and mappings, build the plan (read-only), sign it when EMAILSYNC_PLAN_KEY is set, and write
    plan.jsonl.gz, plan.md and the diff against the previous plan into the archive. Nothing is written to a store."""
    from emailsync.archive import save_plan
    from emailsync.config import load_targets
    from emailsync.engine.plandiff import archive_diff
    from emailsync.engine.planner import build_plan, default_plan_path
    from emailsync.mappings import load_mappings
    from emailsync.planfile import check_name
    from emailsync.render import plan_markdown
    from emailsync.signing import plan_key, sign

    if out is not None:
        check_name(out)
    key = plan_key()  # a bad key is refused before any store is read
    loaded = load_targets(targets)
    mset = load_mappings(loaded.mappings_path(mappings), loaded.config.match)
    for w in mset.warnings:
        warn(w)
    with store_errors("planning", "; nothing was written"):
        # Deflated where each target's lines are made, unless the plan goes to an uncompressed file.
        deflate = out is None or out.name.endswith(".gz")
        p = with_progress(quiet, lambda: build_plan(loaded, mset, parallel=parallel, pace=pace, deflate=deflate))
    if key is not None:
        p = sign(p, key)
    path = out or default_plan_path(plans_dir, p)
    md = save_plan(p, path, markdown=redacted_markdown(p, key) if redact else plan_markdown(p))
    diffed = archive_diff(path, p, plans_dir)
    return Planned(p, path, md, diffed[1:] if diffed else None, list(p.warnings[len(mset.warnings) :]))


# -- apply ---------------------------------------------------------------------------------------------------------


class Approver(Protocol):
    """The person at the terminal, asked before anything is written."""

    def approve(self, plan: Plan) -> bool:
        """The whole plan: only an explicit yes goes on."""
        ...

    def approve_live(self, live: list[Action]) -> bool:
        """The changes to the table people log in with, separately."""
        ...


@dataclass(frozen=True)
class ApplyOptions:
    on_stale: str = "abort"
    only_targets: list[str] | None = None
    auto_approve: bool = False
    confirm_live: bool = False
    skip_live: bool = False
    approver: str | None = None
    force: bool = False
    replan_check: bool = False
    mappings: Path | None = None  # for replan_check
    quiet: bool = False
    parallel: int | None = None  # PostgreSQL targets applied at once (executor.default_width when None)
    pace: Pace = DEFAULT_PACE  # DynamoDB: requests in flight per target, capacity caps per table
    online: Online = DEFAULT_ONLINE  # batches, timeouts and retries, rate, replica lag, pause (engine/online.py)


@dataclass(frozen=True)
class Applied:
    plan: Plan
    code: int  # 0, or 3 when an action is stale, failed or unverified
    report: dict[str, Any] | None  # None: the plan has no changes, nothing was run
    report_path: Path | None


def apply_reviewed(
    plan_file: Path, targets: Path, opts: ApplyOptions, *, person: Approver | None, warn: Warn
) -> Applied:
    """Apply exactly the reviewed plan. `person` is None when nobody can be asked (no terminal): the plan then
    needs opts.auto_approve, and its live actions opts.confirm_live."""
    from emailsync.planfile import read_plan

    if opts.confirm_live and opts.skip_live:
        raise UserError(
            "--confirm-live and --skip-live contradict each other: pass --confirm-live to apply the live-table "
            "actions too, or --skip-live to leave them out; nothing was written"
        )
    # A missing or broken plan is the first thing to hear about; its lines' check runs on while the stores are
    # reached and the lines loaded (apply_plan waits for it before anything is written).
    plan = read_plan(plan_file, opts.parallel, early=True)
    try:
        return _apply_read(plan, plan_file, targets, opts, person, warn)
    except UserError:
        plan.checked()  # a refusal meanwhile comes second to a problem in the plan's lines
        raise


def _apply_read(
    plan: Plan, plan_file: Path, targets: Path, opts: ApplyOptions, person: Approver | None, warn: Warn
) -> Applied:
    from emailsync.archive import journal_writer, killed_runs, rollbacks, write_report
    from emailsync.config import load_targets
    from emailsync.engine.applier import apply_plan
    from emailsync.engine.replan import replan_check_or_fail
    from emailsync.signing import check as check_signature
    from emailsync.signing import plan_key
    from emailsync.stores.ledger import Run

    if not opts.auto_approve and person is None:
        raise UserError("no terminal to confirm on: review the plan, then pass --auto-approve to apply it")
    unchecked = check_signature(plan, plan_file, plan_key())
    if unchecked:
        warn(unchecked)
    loaded = load_targets(targets)
    if loaded.sha256 != plan.inputs.targets_sha256:
        warn(
            f"{targets} changed since the plan was made; the plan's targets are checked against it before "
            "anything is written"
        )
    if opts.only_targets:
        unknown = set(opts.only_targets) - set(plan.targets)
        if unknown:
            raise UserError(f"--only-target {sorted(unknown)}: not in the plan (targets: {list(plan.targets)})")
    if not plan.has_changes:
        plan.checked()  # the header's count alone does not make a plan of no changes
        return Applied(plan, 0, None, None)
    approver = opts.approver
    if approver is not None and not approver.strip():
        raise UserError("--approver is empty; give the approver's name, or leave the option out")
    made = rollbacks(plan_file)
    if made and not opts.force:
        raise UserError(
            f"{plan_file}: a rollback plan was made from this plan ({made[-1].plan}); applying it again could undo "
            "that rollback, so it needs --force; nothing was written"
        )
    if opts.replan_check:
        with store_errors("re-planning"):
            replan_check_or_fail(plan, loaded, opts.mappings, plan_file)

    def approve(p: Plan) -> bool:
        return opts.auto_approve or (person is not None and person.approve(p))

    def approve_live(live: list[Action]) -> bool:
        # --auto-approve never approves the login table: only --confirm-live or the person's own answer does.
        if opts.confirm_live:
            return True
        if person is None:
            tables = sorted({f"{a.target}/{a.table}" for a in live})
            raise UserError(
                f"the plan has {len(live)} live action(s) on {', '.join(tables)}: pass --confirm-live to apply "
                "them, or --skip-live to apply the rest; nothing was written"
            )
        return person.approve_live(live)

    run = Run(plan.digest, approver.strip() if approver else None, force=opts.force)
    journal = journal_writer(plan_file.with_name(f"apply-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}.jsonl"))
    with store_errors("applying"):
        code, report = with_progress(
            opts.quiet,
            lambda: apply_plan(
                plan,
                loaded,
                on_stale=opts.on_stale,
                confirm=approve,
                confirm_live=approve_live,
                only_targets=opts.only_targets,
                skip_live=opts.skip_live,
                journal=journal,
                run=run,
                force=opts.force,
                warn=warn,
                unfinished_runs=lambda: killed_runs(plan_file, plan.digest),
                parallel=opts.parallel,
                pace=opts.pace,
                online=opts.online,
            ),
        )
    path = write_report(plan_file, report)
    if report["targets"]:
        # Journaled last, once report.json is written: a run killed before this is resumed, not refused as a replay.
        journal({"event": "run-end", "run_id": run.run_id, "exit_code": code, "summary": report["summary"]})
    return Applied(plan, code, report, path)


# -- status --------------------------------------------------------------------------------------------------------


def progress_of(plan_file: Path, targets: Path) -> tuple[Plan, list[Progress]]:
    """How far the applies of a plan got on each of its targets, from the targets' ledgers (reads only: no lock is
    taken, nothing is written). Rows planned come from the plan's summary where a target was not batched."""
    from emailsync.config import load_targets
    from emailsync.engine.applier import check_plan_matches, planned_counts
    from emailsync.planfile import read_header
    from emailsync.stores import registry

    plan = read_header(plan_file)
    if plan is None:
        raise UserError(f"{plan_file}: not a plan file (no plan header); give the plan.jsonl.gz that was applied")
    loaded = load_targets(targets)
    check_plan_matches(plan, loaded)
    planned = planned_counts(plan)
    out = []
    with store_errors("reading the ledgers"):
        for store in registry.stores(loaded, list(plan.targets)):
            try:
                p = store.progress(plan.digest)
            finally:
                store.close()
            if p.rows_total is None:
                p.rows_total = planned.get(store.name, 0)
            out.append(p)
    return plan, out
