"""`apply --replan-check`: re-plan against the stores just before applying, and refuse if the fresh plan
differs from the reviewed one in anything but actions already applied.

A reviewed plan that no longer describes the data is applied only to the extent it still matches (apply
refuses stale rows one by one); this check refuses the whole run instead, listing what a reviewer would have
seen differently: actions added, actions changed, actions gone that were not applied.
"""

from __future__ import annotations

from pathlib import Path

from emailsync.config import LoadedTargets
from emailsync.engine.plandiff import diff_plans
from emailsync.engine.planner import build_plan
from emailsync.engine.verify import verify_plan
from emailsync.errors import UserError
from emailsync.mappings import load_mappings
from emailsync.plan import Plan

MAX_LISTED = 20


def replan_check_or_fail(plan: Plan, loaded: LoadedTargets, mappings: Path | None, plan_file: Path) -> None:
    if plan.rollback_of is not None:
        raise UserError(
            f"--replan-check: {plan_file} is a rollback plan, made from the archive rather than from mappings, so "
            "there is nothing to re-plan; run `emailsync verify` on it to see how the stores stand"
        )
    path = loaded.mappings_path(mappings)
    mset = load_mappings(path, loaded.config.match)
    if mset.sha256 != plan.inputs.mappings_sha256:
        raise UserError(
            f"--replan-check: {path} is not the mappings file {plan_file} was made from (its sha256 differs); "
            "pass the original with --mappings, or make and review a new plan"
        )
    fresh = build_plan(loaded, mset)
    d = diff_plans(plan, fresh)
    problems = [f"action {c.id} ({c.target}/{c.table} {c.kind}) is new since the review" for c in d.added]
    # Step numbers are renumbered by a re-plan once part of a chain has run; the order they encode is the same.
    changed = [c for c in d.changed if any(f.path != "step" for f in c.fields)]
    problems += [f"action {c.id} ({c.target}/{c.table} {c.kind}) changed: {_fields(c)}" for c in changed]
    gone = {c.id for c in d.removed}
    if gone:
        for s in verify_plan(plan, loaded, only=gone):
            if s.state != "after":
                why = f"; {s.detail}" if s.detail else ""
                problems.append(
                    f"action {s.id} ({s.target}/{s.table} {s.kind}) is no longer "
                    f"planned and was not applied ({s.state}{why})"
                )
    if problems:
        shown = problems[:MAX_LISTED]
        if len(problems) > MAX_LISTED:
            shown.append(f"... and {len(problems) - MAX_LISTED} more (compare with `emailsync diff`)")
        raise UserError(
            f"--replan-check: the stores no longer match the reviewed plan {plan_file}: {len(problems)} "
            "difference(s); nothing was written. Make a new plan and have it reviewed",
            problems=shown,
        )


def _fields(change: object) -> str:
    fields = getattr(change, "fields", []) or []
    return ", ".join(getattr(f, "path", str(f)) for f in fields[:5]) or "content"
