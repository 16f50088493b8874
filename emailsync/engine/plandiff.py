"""Comparing two plans action by action: what a re-plan added, removed and changed, for review.

Actions match by `id`, which the planner derives from target, table, key, column and kind, so the same change
keeps its id across re-plans and a diff shows only what really moved. PlanDiff is the single source of truth
for diff.json; the text and Markdown renderings are views of it. Values stay exact: PostgreSQL numerics are
Decimals and are written with emailsync.plan.dumps, never through float.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from emailsync.errors import UserError
from emailsync.files import write_atomic
from emailsync.plan import (
    Action,
    ActionKind,
    Plan,
    PostgresAction,
    Skipped,
    Store,
    TargetFingerprint,
    dumps,
    line_of,
    loads,
    sort_key,
)
from emailsync.planfile import PLAN_NAME, beside, read_header, read_plan

PLANDIFF_FORMAT = "emailsync.plandiff/v1"
MD_LIMIT = 60_000  # as plan.md: GitHub comments cap at 65,536 characters
TEXT_LIMIT = 100  # entries per section in the terminal; diff.json has them all


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldChange(_Frozen):
    """One difference at `path` (e.g. `new`, `row.name`, `changes[0].new.S`, `inputs.mappings_sha256`).

    `change` tells an absent value from a null one: `added` (no old value), `removed` (no new value).
    """

    path: str
    old: Any = None
    new: Any = None
    change: Literal["changed", "added", "removed"] = "changed"


class ActionEntry(_Frozen):
    """An action present in only one of the plans, with what a reviewer needs to judge it."""

    id: str
    kind: ActionKind
    store: Store
    target: str
    table: str
    key: dict[str, Any]
    step: int
    column: str | None = None
    old: Any = None
    new: Any = None
    mappings: list[int] = []  # positions of the mapping entries that produced the new values
    new_key: dict[str, Any] | None = None  # DynamoDB moves: where the item goes
    changes: list[dict[str, Any]] | None = None  # DynamoDB: attribute, old, new
    row: dict[str, Any] | None = None  # the whole row or item (what a delete removes)
    reason: str | None = None
    live: bool = False


class ActionChange(_Frozen):
    """The same action id in both plans with different content: every differing field, old and new."""

    id: str
    target: str
    table: str
    kind: ActionKind
    key: dict[str, Any]
    column: str | None = None
    fields: list[FieldChange]


class CountRow(_Frozen):
    target: str
    table: str
    kind: str
    added: int = 0
    removed: int = 0
    changed: int = 0


class DiffCounts(_Frozen):
    old_actions: int
    new_actions: int
    added: int
    removed: int
    changed: int
    unchanged: int
    skipped_added: int
    skipped_removed: int
    header: int


class PlanDiff(_Frozen):
    """What changed from the `old` plan to the `new` one. Serialised as diff.json by render_json."""

    format: str = PLANDIFF_FORMAT
    old_digest: str
    new_digest: str
    old_created_at: str
    new_created_at: str
    # Where the plans are, relative to the folder diff.json is in (set by archive_diff; None otherwise).
    old_plan: str | None = None
    new_plan: str | None = None
    header: list[FieldChange]
    added: list[ActionEntry]
    removed: list[ActionEntry]
    changed: list[ActionChange]
    skipped_added: list[Skipped]
    skipped_removed: list[Skipped]
    counts: DiffCounts
    by_table: list[CountRow]  # per target, table and kind

    @property
    def is_empty(self) -> bool:
        return not (
            self.header or self.added or self.removed or self.changed or self.skipped_added or self.skipped_removed
        )


# --- diffing -------------------------------------------------------------------------------------------------

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


def _path(parts: Iterable[Any]) -> str:
    """['changes', 0, 'new'] -> `changes[0].new`; names that would be ambiguous (dots, spaces) are quoted."""
    out = ""
    for p in parts:
        if isinstance(p, int) and not isinstance(p, bool):
            out += f"[{p}]"
        elif isinstance(p, str) and _PLAIN_NAME.match(p):
            out += f".{p}" if out else p
        else:
            out += "[" + dumps(p) + "]"
    return out


def _canonical(data: Any) -> Any:
    # Through the canonical JSON and back: a plan just built (psycopg's Decimal('1')) and the same plan read
    # from disk (int 1) compare equal, exactly as their files and digests do.
    return loads(dumps(data))


class _ExactDecimals:
    """DeepDiff operator: Decimal('1.50') == Decimal('1.5') in Python, but the plans (and apply) differ."""

    def match(self, level: Any) -> bool:
        return isinstance(level.t1, Decimal) and isinstance(level.t2, Decimal)

    def give_up_diffing(self, level: Any, diff_instance: Any) -> bool:
        if str(level.t1) != str(level.t2):
            diff_instance.custom_report_result("values_changed", level)
        return True  # handled here either way


def _sort_key(parts: list[Any]) -> list[tuple[int, Any]]:
    return [(0, p) if isinstance(p, int) else (1, str(p)) for p in parts]


def field_changes(old: Any, new: Any, prefix: tuple[Any, ...] = ()) -> list[FieldChange]:
    """Field-level differences between two JSON-like values, in path order, computed with DeepDiff."""
    from deepdiff import DeepDiff  # imported here: every plan loads this module, few plans have one to diff with

    tree = DeepDiff(
        old,
        new,
        view="tree",
        threshold_to_diff_deeper=0,  # always descend: `row.name`, not the whole row, for one changed column
        custom_operators=[_ExactDecimals()],
    )
    found: list[tuple[list[Any], FieldChange]] = []
    for report_type, levels in tree.items():
        for level in levels:
            parts = list(prefix) + list(level.path(output_format="list"))
            if report_type in ("dictionary_item_added", "iterable_item_added", "attribute_added", "set_item_added"):
                fc = FieldChange(path=_path(parts), new=level.t2, change="added")
            elif report_type in (
                "dictionary_item_removed",
                "iterable_item_removed",
                "attribute_removed",
                "set_item_removed",
            ):
                fc = FieldChange(path=_path(parts), old=level.t1, change="removed")
            else:  # values_changed, type_changes, repetition_change
                fc = FieldChange(path=_path(parts), old=level.t1, new=level.t2)
            found.append((parts, fc))
    found.sort(key=lambda x: (_sort_key(x[0]), x[1].change))
    return [fc for _, fc in found]


def _entry(a: Action) -> ActionEntry:
    d = _canonical(a.model_dump(mode="python"))
    keep = ActionEntry.model_fields.keys()
    return ActionEntry.model_validate({k: v for k, v in d.items() if k in keep})


def _header(old: Plan, new: Plan) -> list[FieldChange]:
    """Header differences a reviewer cares about: inputs, target fingerprints, warnings (not digest or time)."""
    out = field_changes(_canonical(old.inputs.model_dump()), _canonical(new.inputs.model_dump()), ("inputs",))
    for name in sorted(set(old.targets) | set(new.targets)):
        o, n = old.targets.get(name), new.targets.get(name)
        if o is None and n is not None:
            out.append(FieldChange(path=_path(["targets", name]), new=n.model_dump(), change="added"))
        elif n is None and o is not None:
            out.append(FieldChange(path=_path(["targets", name]), old=o.model_dump(), change="removed"))
        elif o is not None and n is not None and o != n:
            out += field_changes(o.model_dump(), n.model_dump(), ("targets", name))
    # Warnings as a multiset: a warning that moved in the list is not a difference.
    ow, nw = Counter(old.warnings), Counter(new.warnings)
    out += [FieldChange(path="warnings", old=w, change="removed") for w in old.warnings if ow[w] > nw[w]]
    out += [FieldChange(path="warnings", new=w, change="added") for w in new.warnings if nw[w] > ow[w]]
    return _dedupe(out)


def _dedupe(items: list[FieldChange]) -> list[FieldChange]:
    seen: set[str] = set()
    out = []
    for fc in items:
        k = dumps(fc)
        if k not in seen:
            seen.add(k)
            out.append(fc)
    return out


def _walk(old: Iterable[Any], new: Iterable[Any], key: Callable[[Any], Any]) -> Iterator[tuple[Any, Any]]:
    """Pairs (old item or None, new item or None) of two streams sorted by `key`, matched by equal keys: the
    merge walk that diffs two plans of millions of actions without holding either."""
    none: tuple[Any, Any] = (None, None)
    olds = ((key(x), x) for x in old)
    news = ((key(x), x) for x in new)
    (ko, o), (kn, n) = next(olds, none), next(news, none)  # each item's key computed once
    while o is not None or n is not None:
        if n is None or (o is not None and ko < kn):
            yield o, None
            ko, o = next(olds, none)
        elif o is None or kn < ko:
            yield None, n
            kn, n = next(news, none)
        else:
            yield o, n
            (ko, o), (kn, n) = next(olds, none), next(news, none)


def diff_plans(old: Plan, new: Plan) -> PlanDiff:
    """Every difference from `old` to `new`: header fields, actions added/removed/changed (by id), skipped.

    Both plans stream in their files' order (by section, then id), so actions pair up in one merge walk; memory
    grows with the differences found, not with the plans."""
    added: list[ActionEntry] = []
    removed: list[ActionEntry] = []
    changed: list[ActionChange] = []
    unchanged = 0
    for b, a in _walk(old.actions, new.actions, sort_key):
        if a is None:
            removed.append(_entry(b))
            continue
        if b is None:
            added.append(_entry(a))
            continue
        if line_of(a) == line_of(b):  # exact, as the plan file and its digest see it
            unchanged += 1
            continue
        od, nd = b.model_dump(mode="python"), a.model_dump(mode="python")
        fields = field_changes(_canonical(od), _canonical(nd))
        if not fields:  # differs in the file but no field says where (cannot happen today): show it whole
            fields = [FieldChange(path="(action)", old=_canonical(od), new=_canonical(nd))]
        changed.append(
            ActionChange(
                id=a.id,
                target=a.target,
                table=a.table,
                kind=a.kind,
                key=_canonical(a.key),
                column=a.column if isinstance(a, PostgresAction) else None,
                fields=fields,
            )
        )
    # Skipped changes as a multiset, by exact content: their lines sort the same way in both plans.
    skipped_added: list[Skipped] = []
    skipped_removed: list[Skipped] = []
    for sb, sa in _walk(old.skipped, new.skipped, sort_key):
        if sa is None:
            skipped_removed.append(sb)
        elif sb is None:
            skipped_added.append(sa)
    header = _header(old, new)

    tally: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: {"added": 0, "removed": 0, "changed": 0})
    for e in added:
        tally[(e.target, e.table, e.kind)]["added"] += 1
    for e in removed:
        tally[(e.target, e.table, e.kind)]["removed"] += 1
    for c in changed:
        tally[(c.target, c.table, c.kind)]["changed"] += 1
    by_table = [CountRow(target=t, table=tb, kind=k, **n) for (t, tb, k), n in sorted(tally.items())]

    return PlanDiff(
        old_digest=old.digest,
        new_digest=new.digest,
        old_created_at=old.created_at,
        new_created_at=new.created_at,
        header=header,
        added=added,
        removed=removed,
        changed=changed,
        skipped_added=skipped_added,
        skipped_removed=skipped_removed,
        counts=DiffCounts(
            old_actions=len(old.actions),
            new_actions=len(new.actions),
            added=len(added),
            removed=len(removed),
            changed=len(changed),
            unchanged=unchanged,
            skipped_added=len(skipped_added),
            skipped_removed=len(skipped_removed),
            header=len(header),
        ),
        by_table=by_table,
    )


# --- renderings ----------------------------------------------------------------------------------------------


def _plain(value: Any) -> str:
    """A value as a reviewer reads it: strings bare, DynamoDB {"S": x} as x, everything else exact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((t, v),) = value.items()
        if t in ("S", "N") and isinstance(v, str):
            return v
        if t in ("SS", "NS") and isinstance(v, list):
            return "{" + ", ".join(str(x) for x in v) + "}"
    return dumps(value)


def _cell(value: Any, width: int = 60) -> str:
    text = _plain(value).replace("|", "\\|").replace("\n", " ").replace("`", "'")
    return text if len(text) <= width else text[: width - 1] + "…"


def _key(key: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={_plain(v)}" for k, v in (key or {}).items())


def _what(e: ActionEntry) -> str:
    """The change an action makes, in one line."""
    if e.store == "dynamodb":
        text = "; ".join(
            f"{c.get('attribute')}: {_plain(c.get('old'))} → {_plain(c.get('new'))}" for c in e.changes or []
        )
        if e.new_key:
            text += f" (moves to {_key(e.new_key)})"
        return text
    text = f"{e.column}: {_plain(e.old)} → {_plain(e.new)}"
    if e.kind == "delete-on-conflict":
        text += f" (deletes the row: {_plain(e.row)})"
    return text


def _field(fc: FieldChange) -> str:
    if fc.change == "added":
        return f"{fc.path}: + {_plain(fc.new)}"
    if fc.change == "removed":
        return f"{fc.path}: − {_plain(fc.old)}"
    return f"{fc.path}: {_plain(fc.old)} → {_plain(fc.new)}"


def _old(fc: FieldChange, width: int = 60) -> str:
    return "(none)" if fc.change == "added" else _cell(fc.old, width)


def _new(fc: FieldChange, width: int = 60) -> str:
    return "(none)" if fc.change == "removed" else _cell(fc.new, width)


def _folder(rel: str | None) -> str | None:
    if not rel:
        return None
    p = PurePosixPath(rel)
    return p.parent.name or p.name


def _totals(d: PlanDiff) -> str:
    c = d.counts
    text = f"{c.added} added, {c.removed} removed, {c.changed} changed, {c.unchanged} unchanged"
    if c.skipped_added or c.skipped_removed:
        text += f"; skipped: {c.skipped_added} newly skipped, {c.skipped_removed} no longer skipped"
    if c.header:
        text += f"; {c.header} header difference{'' if c.header == 1 else 's'}"
    return text


def render_text(d: PlanDiff, *, limit: int = TEXT_LIMIT) -> str:
    """The diff for a terminal: totals, header differences, then +/−/~ lines (at most `limit` per section)."""
    old = f"{d.old_digest} ({d.old_created_at})" + (f" {d.old_plan}" if d.old_plan else "")
    lines = [f"plan diff: {old} → {d.new_digest} ({d.new_created_at})"]
    if d.is_empty:
        lines.append("no differences: the same actions and skipped changes, for the same inputs")
        return "\n".join(lines) + "\n"
    lines.append(_totals(d))

    def section(title: str, items: list[Any], show: Any) -> None:
        if not items:
            return
        lines.append(f"{title}:")
        for item in items[:limit]:
            lines.extend(show(item))
        if len(items) > limit:
            lines.append(f"  … {len(items) - limit} more (diff.json has them all)")

    section("header", d.header, lambda fc: [f"  {_field(fc)}"])
    section("added", d.added, lambda e: [f"  + {e.target} {e.table} {_key(e.key)} {e.kind}: {_what(e)}"])
    section("removed", d.removed, lambda e: [f"  - {e.target} {e.table} {_key(e.key)} {e.kind}: {_what(e)}"])
    section(
        "changed",
        d.changed,
        lambda c: (
            [" ".join(["  ~", c.target, c.table, _key(c.key), *([c.column] if c.column else []), c.kind])]
            + [f"      {_field(fc)}" for fc in c.fields]
        ),
    )
    skip_line = "{sign} {s.target} {s.table} {key} {s.column}: {old} → {new} ({s.reason})"

    def skip(sign: str) -> Any:
        return lambda s: [
            "  " + skip_line.format(sign=sign, s=s, key=_key(s.key), old=_plain(s.old), new=_plain(s.new))
        ]

    section("newly skipped", d.skipped_added, skip("+"))
    section("no longer skipped", d.skipped_removed, skip("-"))
    return "\n".join(lines) + "\n"


def render_markdown(d: PlanDiff, *, limit: int = MD_LIMIT) -> str:
    """diff.md for a pull request: totals, counts per target/table/kind, then tables, under `limit` characters."""
    folder = _folder(d.old_plan)
    prev = f"[`{folder}`]({d.old_plan}), digest" if folder and d.old_plan else "digest"
    head = [
        "# emailsync plan diff",
        "",
        f"- previous plan: {prev} `{d.old_digest}`, created {d.old_created_at}",
        f"- this plan: digest `{d.new_digest}`, created {d.new_created_at}",
        "",
    ]
    if d.is_empty:
        head += [
            "**No differences.** The same actions (matched by id, compared field by field) and the same skipped "
            "changes, for the same inputs and targets.",
            "",
        ]
        return "\n".join(head)
    counts = d.counts
    head += [
        f"**{_totals(d)}** (actions: {counts.old_actions} in the previous plan, {counts.new_actions} in this one)",
        "",
    ]
    if d.by_table:
        head += [
            "## Counts",
            "",
            "| target | table | kind | added | removed | changed |",
            "|---|---|---|---:|---:|---:|",
        ]
        head += [f"| {r.target} | {r.table} | {r.kind} | {r.added} | {r.removed} | {r.changed} |" for r in d.by_table]
        head.append("")

    # Each section: heading lines, then one block of table rows per entry (a changed action spans a row per
    # field; an entry is shown whole or not at all, so the count of what was left out is exact).
    sections: list[tuple[str, list[str], list[list[str]]]] = []
    if d.header:
        sections.append(
            (
                "header differences",
                ["## Plan header", "", "| field | previous | this plan |", "|---|---|---|"],
                [[f"| {fc.path} | {_old(fc, 100)} | {_new(fc, 100)} |"] for fc in d.header],
            )
        )
    table = "| target | table | key | kind | change |"
    for name, title, items in (
        ("added", "## Added (only in this plan)", d.added),
        ("removed", "## Removed (only in the previous plan)", d.removed),
    ):
        if items:
            sections.append(
                (
                    name,
                    [title, "", table, "|---|---|---|---|---|"],
                    [
                        [f"| {e.target} | {e.table} | {_cell(_key(e.key), 40)} | {e.kind} | {_cell(_what(e), 160)} |"]
                        for e in items
                    ],
                )
            )
    if d.changed:
        blocks = []
        for c in d.changed:
            where = f"| {c.target} | {c.table} | {_cell(_key(c.key), 40)} | {c.column or ''} | {c.kind} "
            blocks.append(
                [
                    (where if i == 0 else "| | | | | ") + f"| {fc.path} | {_old(fc)} | {_new(fc)} |"
                    for i, fc in enumerate(c.fields)
                ]
            )
        sections.append(
            (
                "changed",
                [
                    "## Changed (same action, different content)",
                    "",
                    "| target | table | key | column | kind | field | previous | this plan |",
                    "|---|---|---|---|---|---|---|---|",
                ],
                blocks,
            )
        )
    for name, title, skipped in (
        ("newly skipped", "## Newly skipped (on_conflict: skip)", d.skipped_added),
        ("no longer skipped", "## No longer skipped", d.skipped_removed),
    ):
        if skipped:
            sections.append(
                (
                    name,
                    [title, "", "| target | table | key | column | old → new | why |", "|---|---|---|---|---|---|"],
                    [
                        [
                            f"| {s.target} | {s.table} | {_cell(_key(s.key), 40)} | {s.column} "
                            f"| {_cell(s.old, 40)} → {_cell(s.new, 40)} | {_cell(s.reason, 80)} |"
                        ]
                        for s in skipped
                    ],
                )
            )

    reserve = 600  # room for the note saying what was left out, and for the trailing blank lines
    out = list(head)
    budget = limit - sum(len(ln) + 1 for ln in out) - reserve
    shown = _fair_prefixes([(heading, blocks) for _, heading, blocks in sections], budget)
    left_out: dict[str, int] = {}
    for (name, heading, blocks), n in zip(sections, shown, strict=True):
        if n:
            out += heading
            for block in blocks[:n]:
                out += block
            out.append("")
        if n < len(blocks):
            left_out[name] = len(blocks) - n
    if left_out:
        total = sum(left_out.values())
        parts = ", ".join(f"{n} {name}" for name, n in left_out.items())
        out += [
            f"**Truncated:** {total} entries left out to keep this file under {limit:,} characters ({parts}). "
            "diff.json beside this file has every difference.",
            "",
        ]
    return "\n".join(out)


def _fair_prefixes(sections: list[tuple[list[str], list[list[str]]]], budget: int) -> list[int]:
    """How many blocks of each section fit in `budget` characters, sharing it fairly between sections.

    Water-filling: sections smaller than an equal share are shown whole and their rest is shared among the
    others, so a long list of additions never hides every change (or the other way round).
    """

    def size(lines: list[str]) -> int:
        return sum(len(ln) + 1 for ln in lines)

    costs = []  # per section: cumulative cost of showing the first k blocks, heading and blank line included
    for heading, blocks in sections:
        acc, cum = size(heading) + 1, []
        for block in blocks:
            acc += size(block)
            cum.append(acc)
        costs.append(cum)
    shown = [0] * len(sections)
    pending = [i for i, cum in enumerate(costs) if cum]
    remaining = budget
    while pending:
        share = remaining // len(pending)
        whole = [i for i in pending if costs[i][-1] <= share]
        if not whole:
            for i in pending:  # none fits whole: each shows as many entries as its share holds
                shown[i] = sum(1 for c in costs[i] if c <= share)
            break
        for i in whole:
            shown[i] = len(costs[i])
            remaining -= costs[i][-1]
        pending = [i for i in pending if i not in whole]
    return shown


def render_json(d: PlanDiff) -> str:
    """diff.json: canonical (sorted keys, exact decimals), indented for reading."""
    return dumps(d.model_dump(mode="python"), indent=2) + "\n"


# --- the archive ---------------------------------------------------------------------------------------------

_STAMPED = re.compile(r"^(\d{8}T\d{6}Z)-")  # folder names from planner.default_plan_path


def _stamp(created_at: str) -> str:
    return created_at.replace("-", "").replace(":", "")


def _same_targets(raw: Any, plan: Plan) -> bool:
    if not isinstance(raw, dict):
        return False
    try:
        theirs = {k: TargetFingerprint.model_validate(v).model_dump() for k, v in raw.items()}
    except (ValueError, TypeError):
        return False
    return theirs == {k: v.model_dump() for k, v in plan.targets.items()}


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _find_previous(plans_dir: Path, plan: Plan, exclude: Path | None) -> tuple[Path, Plan] | None:
    try:
        folders = [p for p in plans_dir.iterdir() if p.is_dir()]
    except OSError:
        return None
    try:
        excluded = exclude.resolve() if exclude is not None else None
    except (OSError, RuntimeError):
        excluded = exclude
    # Two plans made in the same second have the same created_at and folder stamp, and their folder names
    # then differ only by digest, which says nothing about order; the plan written earlier is the earlier one.
    # A plan not yet on disk is later than every plan already there.
    own_mtime = _mtime(exclude) if exclude is not None and exclude.exists() else None
    own_name = exclude.parent.name if exclude is not None else ""

    def earlier(path: Path, created_at: str, digest: str) -> bool:
        if created_at != plan.created_at:
            return created_at < plan.created_at  # ISO UTC with Z: text order is time order
        if digest == plan.digest or own_mtime is None:
            return digest != plan.digest
        m = _mtime(path)
        return m < own_mtime or (m == own_mtime and path.parent.name < own_name)

    def candidate(folder: Path) -> tuple[tuple[str, int, str], Path, Plan] | None:
        path = folder / PLAN_NAME
        try:
            if excluded is not None and path.resolve() == excluded:
                return None
        except (OSError, RuntimeError):  # a symlink loop in the archive: not a plan
            return None
        head = read_header(path)  # cheap rejection of other targets and later plans, before reading every action
        if head is None or head.targets != plan.targets or not earlier(path, head.created_at, head.digest):
            return None
        try:
            other = read_plan(path)  # the whole file: format, digest, schema
        except (UserError, OSError, ValueError, RecursionError):
            return None  # a broken file in the archive is not this plan's problem
        if other.targets != plan.targets or not earlier(path, other.created_at, other.digest):
            return None
        return (other.created_at, _mtime(path), folder.name), path, other

    found: list[tuple[tuple[str, int, str], Path, Plan]] = []
    # Folders named by default_plan_path sort by time: newest first, stop at the first stamp that has a match.
    # Later stamps are skipped without reading. Other folders (from --out) cannot be ordered by name: read all.
    stamped = sorted((f for f in folders if _STAMPED.match(f.name)), key=lambda f: f.name, reverse=True)
    others = [f for f in folders if not _STAMPED.match(f.name)]
    limit = _stamp(plan.created_at)
    best_stamp: str | None = None
    for folder in stamped:
        stamp = folder.name[:16]
        if stamp > limit:
            continue
        if best_stamp is not None and stamp < best_stamp:
            break  # every plan in this and older folders is earlier than the one already found
        c = candidate(folder)
        if c is not None:
            found.append(c)
            best_stamp = stamp
    found += [c for c in (candidate(f) for f in others) if c is not None]
    if not found:
        return None
    _, path, other = max(found, key=lambda c: c[0])
    return path, other


def find_previous(plans_dir: Path, plan: Plan, exclude: Path | None = None) -> Path | None:
    """The plan file of the latest plan in the archive made before `plan` for the same targets, or None.

    Same targets: the same fingerprints (store, host, port, database per target name). Earlier: an earlier
    created_at, or the same one with a different digest and written before `exclude`. Unreadable or invalid plan
    files in the archive are skipped.
    """
    found = _find_previous(plans_dir, plan, exclude)
    return found[0] if found else None


def diff_paths(plan_path: Path) -> tuple[Path, Path]:
    """Where the diff of a plan goes: diff.md and diff.json beside plan.jsonl.gz, else <stem>.diff.md/.json."""
    return beside(plan_path, "diff.md"), beside(plan_path, "diff.json")


def archive_diff(plan_path: Path, plan: Plan, plans_dir: Path) -> tuple[Path, Path, Path] | None:
    """Diff `plan` against the previous plan for the same targets and write diff.md and diff.json beside it.

    Returns (previous plan file, diff.md, diff.json), or None (nothing written) when there is no earlier plan.
    """
    found = _find_previous(plans_dir, plan, plan_path)
    if found is None:
        return None
    prev_path, prev = found
    try:
        rel = Path(os.path.relpath(prev_path.resolve(), plan_path.resolve().parent)).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        rel = prev_path.resolve().as_posix()
    d = diff_plans(prev, plan).model_copy(update={"old_plan": rel, "new_plan": plan_path.name})
    md_path, json_path = diff_paths(plan_path)
    write_atomic(json_path, render_json(d))  # readers see the old file or the whole new one, never half of it
    write_atomic(md_path, render_markdown(d))
    return prev_path, md_path, json_path
