"""Renderings of plans and reports for people: plan.md for a pull request, text for the terminal."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from emailsync.plan import Action, Plan

if TYPE_CHECKING:
    from emailsync.archive import ApplyRun
    from emailsync.verify import ActionState

MD_LIMIT = 60_000  # GitHub comments cap at 65,536 characters; keep a margin for the header


_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)  # made once: json.dumps with options makes one per call


def _v(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else _ENCODER.encode(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _key(key: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_v(v, 30)}" for k, v in key.items())


def _ddb(av: Any, width: int = 50) -> str:
    """A DynamoDB JSON value, shown plainly: "x" for {"S": "x"}, [..] for lists and sets."""
    if isinstance(av, dict) and len(av) == 1:
        ((t, v),) = av.items()
        if t in ("S", "N"):
            return _v(v, width)
        if t in ("SS", "NS"):
            return _v("{" + ", ".join(v) + "}", width)
        if t == "L":
            return _v("[" + ", ".join(_ddb(x, width) for x in v) + "]", width)
    return _v(av, width)


def ddb_key(key: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={_ddb(v, 40)}" for k, v in (key or {}).items())


def _ddb_row(a: Action) -> str:
    changes = "; ".join(f"{c.attribute}: {_ddb(c.old)} → {_ddb(c.new)}" for c in a.changes or [])
    there = "" if a.kind not in ("merge-and-move", "live-swap") else ("merged, existing wins" if a.existing else "none")
    return (
        f"| {a.step} | {ddb_key(a.key)} | {a.kind} | {changes} | {ddb_key(a.new_key) if a.new_key else ''} | {there} |"
    )


def summary_lines(plan: Plan) -> list[str]:
    rows = [("target", "table", "column", "kind", "count")]
    rows += [(s.target, s.table, s.column, s.kind, str(s.count)) for s in plan.summary]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def plan_markdown(plan: Plan, *, redaction: str | None = None) -> str:
    """`redaction`: the plan was redacted (redact.py) and this says how, at the top."""
    out: list[str] = [
        "# emailsync plan",
        "",
        *([f"- **redacted**: {redaction}"] if redaction else []),
        f"- digest: `{plan.digest}`" + (" (signed)" if plan.signature else ""),
        f"- created: {plan.created_at} by emailsync {plan.tool_version}",
        f"- inputs: `{plan.inputs.targets_file}` (sha256 {plan.inputs.targets_sha256[:12]}), "
        f"`{plan.inputs.mappings_file}` (sha256 {plan.inputs.mappings_sha256[:12]}, "
        f"{plan.inputs.mapping_count} mappings, match: {plan.inputs.match})",
        "- targets: " + ", ".join(f"`{n}` ({fp.store} {fp.describe()})" for n, fp in plan.targets.items()),
        "",
    ]
    if not plan.actions and not plan.skipped:
        out += ["**No changes.** Every configured column already holds no old email.", ""]
    out += ["## Summary", "", "| target | table | column | kind | count |", "|---|---|---|---|---:|"]
    out += [f"| {s.target} | {s.table} | {s.column} | {s.kind} | {s.count} |" for s in plan.summary]
    out.append("")
    if plan.warnings:
        out += ["## Warnings", ""] + [f"- {_v(w, 300)}" for w in plan.warnings] + [""]

    head = "\n".join(out)
    # Lines are rendered only while they fit: a plan of a million actions keeps a few hundred rows of plan.md.
    body: list[str] = []
    size = len(head)  # the length of head + "\n" + "\n".join(body)
    for line in _body_lines(plan):
        body.append(line)
        size += len(line) + 1
        if size > MD_LIMIT:
            break
    else:
        return head + "\n" + "\n".join(body)
    kept: list[str] = []
    size = len(head) + 200
    for line in body:
        if size + len(line) + 1 > MD_LIMIT:
            break
        kept.append(line)
        size += len(line) + 1
    shown = sum(
        1 for line in kept if line.startswith("| ") and not line.startswith("| step") and not line.startswith("| table")
    )
    return (
        head
        + "\n"
        + "\n".join(kept)
        + (
            f"\n\n_… truncated to fit a pull-request comment: about {shown} of "
            f"{len(plan.actions) + len(plan.skipped)} rows shown. The full detail is in plan.json._\n"
        )
    )


def _body_lines(plan: Plan) -> Iterator[str]:
    """plan.md after its header, line by line: live swaps, deletes, skipped conflicts, then every table."""
    dels = [a for a in plan.actions if a.kind == "delete-on-conflict"]
    live = [a for a in plan.actions if a.live]
    if live:
        yield from [
            "## ⚠ LIVE — the table people log in with (high risk)",
            "",
            "Applied last, and only after a separate confirmation (`--confirm-live`, or typing YES). Each swap "
            "creates or merges the new item, reads it back and compares it field by field, and deletes the old "
            "item only if they match; on a mismatch both are kept for review.",
            "",
            "| step | key | kind | changes | moves to | existing item there |",
            "|---:|---|---|---|---|---|",
        ]
        yield from (_ddb_row(a) for a in live)
        yield ""
    if dels:
        yield from [
            "## Rows to be deleted (delete-on-conflict)",
            "",
            "Each row's new email is already taken under a unique constraint, so the row is deleted as the old "
            "script did. The whole row is kept in plan.json.",
            "",
            "| table | key | column | old → new | why | row |",
            "|---|---|---|---|---|---|",
        ]
        yield from (
            f"| {a.table} | {_key(a.key)} | {a.column} | {_v(a.old, 40)} → {_v(a.new, 40)} | {_v(a.reason, 80)} "
            f"| {_v(a.row, 120)} |"
            for a in dels
        )
        yield ""
    if plan.skipped:
        yield from [
            "## Skipped because of conflicts (on_conflict: skip)",
            "",
            "| table | key | column | old → new | why |",
            "|---|---|---|---|---|",
        ]
        yield from (
            f"| {s.table} | {_key(s.key)} | {s.column} | {_v(s.old, 40)} → {_v(s.new, 40)} | {_v(s.reason, 80)} |"
            for s in plan.skipped
        )
        yield ""
    by_table: dict[tuple[str, str], list[Action]] = defaultdict(list)
    for a in plan.actions:
        if a.kind != "delete-on-conflict" and not a.live:
            by_table[(a.target, a.table)].append(a)
    for (target, table), acts in by_table.items():
        if acts[0].store == "dynamodb":
            yield from [
                f"## {target} / {table} (DynamoDB)",
                "",
                "| step | key | kind | changes | moves to | existing item there |",
                "|---:|---|---|---|---|---|",
            ]
            yield from (_ddb_row(a) for a in acts)
        else:
            yield from [
                f"## {target} / {table}",
                "",
                "| step | key | column | kind | old → new |",
                "|---:|---|---|---|---|",
            ]
            yield from (
                f"| {a.step} | {_key(a.key)} | {a.column} | {a.kind} | {_v(a.old)} → {_v(a.new)} |" for a in acts
            )
        yield ""
    if plan.reads:
        yield from [
            "## How DynamoDB tables were read",
            "",
            "| target | table | method | segments | requests | items |",
            "|---|---|---|---:|---:|---:|",
        ]
        yield from [
            f"| {r.target} | {r.table} | {r.method} | {r.segments} | {r.requests} | {r.items_read} |"
            for r in plan.reads
        ]
        yield ""


def report_lines(report: dict[str, Any]) -> list[str]:
    rows = [("target", "table", "kind", "status", "count")]
    for r in report["summary"]:
        rows.append((r["target"], r["table"], r["kind"], r["status"], str(r["count"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for t in report["targets"]:
        if t.get("error"):
            lines.append(f"{t['target']}: {t['error']}")
    return lines


def plan_text(plan: Plan) -> list[str]:
    """The plan for a terminal: header, counts, then one line per action."""
    out = [
        f"plan {plan.digest}  made {plan.created_at} by emailsync {plan.tool_version}",
        f"inputs: {plan.inputs.targets_file} ({plan.inputs.mapping_count} mapping(s) from {plan.inputs.mappings_file},"
        f" match {plan.inputs.match})",
        "",
        *summary_lines(plan),
        "",
    ]
    out += [f"warning: {w}" for w in plan.warnings]
    for a in plan.actions:
        where = f"{a.target}/{a.table}"
        if a.store == "postgres":
            change = (
                "" if a.kind in ("delete-on-conflict", "insert-row") else f" {a.column}: {_v(a.old)} -> {_v(a.new)}"
            )
            out.append(f"{a.step:>3} {a.kind:<18} {where} [{_key(a.key)}]{change}")
        else:
            moved = f" -> [{ddb_key(a.new_key)}]" if a.new_key else ""
            changes = "; ".join(f"{c.attribute}: {_ddb(c.old)} -> {_ddb(c.new)}" for c in a.changes or [])
            live = " LIVE" if a.live else ""
            out.append(f"{a.step:>3} {a.kind:<18} {where}{live} [{ddb_key(a.key)}]{moved} {changes}".rstrip())
    out += [f"skipped {s.target}/{s.table} [{_key(s.key)}] {s.column}: {s.reason}" for s in plan.skipped]
    return out


def history_lines(history: list[ApplyRun], markdown: bool = False) -> list[str]:
    """The apply runs recorded beside a plan, oldest first."""
    if not history:
        return ["## Apply history" if markdown else "Apply history:", "", "Not applied yet (no apply journal)."]
    out = ["## Apply history", ""] if markdown else ["Apply history:"]
    if markdown:
        out += ["| started | finished | by | approver | exit | outcomes | journal |", "|---|---|---|---|---|---|---|"]
    for h in history:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(h.outcomes.items())) or "none recorded"
        finished = h.finished_at or "never (killed or still running)"
        if markdown:
            out.append(
                f"| {h.started_at or ''} | {finished} | {h.user}@{h.host} | {h.approver or ''} | "
                f"{'' if h.exit_code is None else h.exit_code} | {outcomes} | {h.journal} |"
            )
        else:
            out.append(
                f"  {h.started_at}  by {h.user}@{h.host}"
                + (f" (approver {h.approver})" if h.approver else "")
                + f"  finished {finished}  exit {h.exit_code if h.exit_code is not None else '-'}  {outcomes}"
                + ("  --force" if h.force else "")
            )
    return out


def verify_lines(plan: Plan, states: list[ActionState], counts: dict[str, int], limit: int = 200) -> list[str]:
    out = [
        f"plan {plan.digest}: {len(states)} action(s): {counts['after']} after (applied), "
        f"{counts['before']} before (not applied), {counts['drifted']} drifted",
    ]
    by: dict[tuple[str, str, str], int] = defaultdict(int)
    for s in states:
        by[(s.action.target, s.action.table, s.state)] += 1
    rows = [("target", "table", "state", "count")] + [(t, tb, st, str(n)) for (t, tb, st), n in sorted(by.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    drifted = [s for s in states if s.state == "drifted"]
    if drifted:
        out.append("\nDrifted (neither as planned nor as applied):")
        for s in drifted[:limit]:
            key = ddb_key(s.action.key) if s.action.store == "dynamodb" else _key(s.action.key)
            out.append(f"  {s.action.id} {s.action.target}/{s.action.table} [{key}] {s.action.kind}: {s.detail or ''}")
        if len(drifted) > limit:
            out.append(f"  ... and {len(drifted) - limit} more (--format json lists all)")
    return out
