"""Renderings of plans and reports for people: plan.md for a pull request, text for the terminal.

plan.md is written for the reviewer of a pull request: a headline counting the changes, a summary per target with
the risky kinds marked, then the details (live swaps first). Every value that can hold an address (old and new
values, keys, reasons, details) is in a code span, so GitHub shows it as written instead of making a mailto link
of it. Text for the terminal is plain: tables are aligned columns without borders, for grep and scripts.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from emailsync.engine.stages import planned_by_stage
from emailsync.plan import Action, DynamoAction, Plan, PostgresAction, Rows, Skipped, SummaryRow, dumps, in_sections

if TYPE_CHECKING:
    from emailsync.archive import ApplyRun
    from emailsync.engine.verify import ActionState
    from emailsync.stores.base import Progress

MD_LIMIT = 60_000  # GitHub comments cap at 65,536 characters; keep a margin for the header
# Key values are shown whole up to this (a UUID, USER#<uuid>, an address): a key cut short cannot be told from another.
KEY_WIDTH = 100
# A deleted row is shown whole up to this (every column of an ordinary row); one holding a large document is cut, so
# that it cannot push the rest of plan.md past a comment's size. The plan file has it whole.
ROW_WIDTH = 2_000
MD_WARNINGS = 50  # warnings shown in plan.md (each up to 300 characters)
MD_COLLECT = 2_000  # live swaps, deletes and a deleted row's other changes gathered for plan.md: more than fit


_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)  # made once: json.dumps with options makes one per call


def _v(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else _ENCODER.encode(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _key(key: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_v(v, KEY_WIDTH)}" for k, v in key.items())


def _ddb(av: Any, width: int = 50, fmt: Callable[[Any, int], str] = _v) -> str:
    """A DynamoDB JSON value, shown plainly: "x" for {"S": "x"}, [..] for lists and sets."""
    if isinstance(av, dict) and len(av) == 1:
        ((t, v),) = av.items()
        if t in ("S", "N"):
            return fmt(v, width)
        if t in ("SS", "NS"):
            return fmt("{" + ", ".join(v) + "}", width)
        if t == "L":
            return fmt("[" + ", ".join(_ddb(x, width, fmt) for x in v) + "]", width)
    return fmt(av, width)


def ddb_key(key: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={_ddb(v, KEY_WIDTH)}" for k, v in (key or {}).items())


# --- Markdown pieces -----------------------------------------------------------------------------------------------

_LINE_BREAKS = str.maketrans({"\n": "\\n", "\r": "\\r"})  # the only line endings of CommonMark (and of a table row)
_TICKS = re.compile(r"`+")
# Anything that looks like an address, generously (as redact.py finds them): put in a code span inside prose.
_ADDRESS = re.compile(r"[^\s@<>()\[\]{}|,;:\"'`]+@[^\s@<>()\[\]{}|,;:\"'`]+")
_MD_PUNCT = re.compile(r"([\\`*_\[\]<>|&~#])")  # what could start markup in running text; escaped with a backslash


def _raw(value: Any, width: int | None = None) -> str:
    """A value as text on one line, for a code span: strings as they are, other values as compact JSON; shortened
    to `width` characters with "…" (plan.json keeps the whole value)."""
    text = (value if isinstance(value, str) else _ENCODER.encode(value)).translate(_LINE_BREAKS)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def _code(text: str, *, table: bool = True) -> str:
    """`text` as a CommonMark code span, shown exactly as written (GitHub makes no link of an address inside one).

    The fence is one backtick longer than the longest run of backticks inside, and a space pads both ends where
    the text starts or ends with a backtick or with a space (CommonMark strips one such pair). In a table cell
    every `|` is escaped: GFM splits cells before it reads code spans, and unescapes `\\|` inside them too."""
    text = text.translate(_LINE_BREAKS)
    if not text:
        return "*(empty)*"
    fence = "`" * (max((len(t) for t in _TICKS.findall(text)), default=0) + 1)
    if text[0] == "`" or text[-1] == "`" or (text[0] == " " and text[-1] == " " and text.strip(" ")):
        text = f" {text} "
    if table:
        text = text.replace("|", "\\|")
    return f"{fence}{text}{fence}"


def _prose(text: str, *, table: bool = False) -> str:
    """Running text for Markdown: every address-like word in a code span, markup characters escaped elsewhere."""
    text = text.translate(_LINE_BREAKS)
    out: list[str] = []
    pos = 0
    for m in _ADDRESS.finditer(text):
        out += [_MD_PUNCT.sub(r"\\\1", text[pos : m.start()]), _code(m.group(0), table=table)]
        pos = m.end()
    out.append(_MD_PUNCT.sub(r"\\\1", text[pos:]))
    return "".join(out)


def _cell(name: str) -> str:
    """A name (target, table, column) in a table cell: as written, on one line, its pipes escaped."""
    return name.translate(_LINE_BREAKS).replace("|", "\\|")


def _md_value(value: Any, width: int | None = 60) -> str:
    return _code(_raw(value, width))


def _md_key(key: dict[str, Any] | None, ddb: bool = False) -> str:
    """A row's key (or an item's) in one code span: `id=1, email=a@x.com`."""
    if ddb:
        return _code(", ".join(f"{k}={_ddb(v, KEY_WIDTH, _raw)}" for k, v in (key or {}).items()))
    return _code(", ".join(f"{k}={_raw(v, KEY_WIDTH)}" for k, v in (key or {}).items()))


RISKY = ("delete-on-conflict", "live-swap", "merge-and-move")  # a row or an item goes away, or moves


def _kind(kind: str) -> str:
    return f"⚠ {kind}" if kind in RISKY else kind


# How each kind is counted in words, in this order: "15 updates, 1 delete, 2 live swaps, 1 skipped".
_WORDS: dict[str, tuple[str, str]] = {
    "update": ("update", "updates"),
    "array-replace": ("array update", "array updates"),
    "delete-on-conflict": ("delete", "deletes"),
    "merge-and-move": ("merge", "merges"),
    "live-swap": ("live swap", "live swaps"),
    "insert-row": ("row insert", "row inserts"),
    "restore-item": ("item restore", "item restores"),
    "skipped-conflict": ("skipped", "skipped"),
}


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def count_words(counts: dict[str, int]) -> str:
    """Counts by kind in words, changes first and skipped last: "15 updates, 1 delete, 1 skipped"; "No changes"
    first when nothing changes."""
    order = {k: i for i, k in enumerate(_WORDS)}
    parts: list[str] = []
    for kind in sorted((k for k, n in counts.items() if n), key=lambda k: (order.get(k, len(order)), k)):
        one, many = _WORDS.get(kind, (kind.replace("-", " "), kind.replace("-", " ") + "s"))
        parts.append(_plural(counts[kind], one, many))
    if not any(n for k, n in counts.items() if k != "skipped-conflict"):
        parts.insert(0, "No changes")
    return ", ".join(parts)


def plan_headline(plan: Plan) -> str:
    """The one line a reviewer reads first: "**15 updates, 1 delete, 2 live swaps, 1 skipped across 3 targets**"."""
    counts: Counter[str] = Counter()
    targets: set[str] = set()
    for s in plan.summary:
        counts[s.kind] += s.count
        targets.add(s.target)
    if not counts:
        return "**No changes**: no configured column holds an old email."
    where = f"across {len(targets)} targets" if len(targets) != 1 else "in 1 target"
    return f"**{count_words(counts)} {where}**"


def _summary_md(summary: list[SummaryRow]) -> list[str]:
    """The summary grouped by target: each target's counts in words, a table by table and column, and a total."""
    by_target: dict[str, list[SummaryRow]] = {}
    for s in summary:
        by_target.setdefault(s.target, []).append(s)
    out = ["## Summary", ""]
    for target, rows in by_target.items():
        counts: Counter[str] = Counter()
        for s in rows:
            counts[s.kind] += s.count
        out += [
            f"### {_cell(target)}: {count_words(counts)}",
            "",
            "| table | column | kind | count |",
            "|---|---|---|---:|",
            *(f"| {_cell(s.table)} | {_cell(s.column)} | {_kind(s.kind)} | {s.count} |" for s in rows),
            f"| **total** | | | **{sum(s.count for s in rows)}** |",
            "",
        ]
    return out


# A PostgreSQL target with more actions than this gets plan.md's advice to apply in batches (apply --batch-size).
BATCH_ADVICE_ACTIONS = 50_000


def _order_md(plan: Plan) -> list[str]:
    """The order apply runs the plan in: its stages (stages.py), each with the targets and actions in it."""
    stages = planned_by_stage(plan)
    if not stages:
        return []
    out = ["## Apply order", ""]
    for n, (stage, targets) in enumerate(stages, 1):
        where = ", ".join(f"{_code(t, table=False)} ({c})" for t, c in targets.items())
        out.append(f"{n}. {stage.says}: {sum(targets.values())} action(s) on {where}")
    big = {t: c for stage, targets in stages if stage.store == "postgres" for t, c in targets.items()}
    big = {t: c for t, c in big.items() if c > BATCH_ADVICE_ACTIONS}
    if big:
        names = ", ".join(f"{_code(t, table=False)} ({c:,} actions)" for t, c in big.items())
        out += [
            "",
            f"**Large database changes**: {names}. One transaction holds a lock on every changed row until it "
            "commits, for minutes at this size. On a database in use, apply in batches: "
            "`emailsync apply PLAN --batch-size 10000`. Each batch commits alone, with its ledger record: the "
            "database is consistent after each batch but not changed all at once (a chain or merge of addresses "
            "stays in one batch), a paused or killed apply goes on at the next batch, and a rollback plan restores "
            "the batches that ran.",
        ]
    return [*out, ""]


def plan_markdown(plan: Plan, *, redaction: str | None = None) -> str:
    """plan.md: the headline, then digest and inputs, the summary by target, warnings, and the details while they fit
    in a pull-request comment (MD_LIMIT). `redaction`: the plan was redacted (redact.py) and this says how."""
    out: list[str] = [
        "# emailsync plan",
        "",
        plan_headline(plan),
        "",
        *([f"- **redacted**: {redaction}"] if redaction else []),
        f"- digest: `{plan.digest}`" + (" (signed)" if plan.signature else ""),
        f"- created: {plan.created_at} by emailsync {plan.tool_version}",
        f"- inputs: {_code(plan.inputs.targets_file, table=False)} (sha256 {plan.inputs.targets_sha256[:12]}), "
        f"{_code(plan.inputs.mappings_file, table=False)} (sha256 {plan.inputs.mappings_sha256[:12]}, "
        f"{plan.inputs.mapping_count} mappings, match: {plan.inputs.match})",
        "- targets: "
        + ", ".join(
            f"{_code(n, table=False)} ({fp.store} {_code(fp.describe(), table=False)})"
            for n, fp in plan.targets.items()
        ),
        "",
    ]
    if plan.summary:
        out += _summary_md(plan.summary)
        out += _order_md(plan)
    if plan.warnings:
        # Capped like the details: a mappings file can warn once per entry, and plan.md must fit in a comment.
        shown_w = plan.warnings[:MD_WARNINGS]
        out += ["## Warnings", ""] + [f"- {_prose(_raw(w, 300))}" for w in shown_w]
        if len(plan.warnings) > len(shown_w):
            out.append(f"- _… and {len(plan.warnings) - len(shown_w)} more: `emailsync show PLAN --format text`_")
        out.append("")
    if plan.notes:
        out += ["## Notes", ""] + [f"- {_prose(_raw(n, 300))}" for n in plan.notes[:MD_WARNINGS]] + [""]

    head = "\n".join(out)
    # Lines are rendered only while they fit: a plan of a million actions keeps a few hundred rows of plan.md.
    body: list[tuple[str, int]] = []
    size = len(head)  # the length of head + "\n" + "\n".join(body)
    for line, n in _body_lines(plan):
        body.append((line, n))
        size += len(line) + 1
        if size > MD_LIMIT:
            break
    else:
        return head + "\n" + "\n".join(line for line, _ in body)
    total = len(plan.actions) + len(plan.skipped)

    def note(shown: int) -> str:
        return (
            f"\n\n_… truncated to fit a pull-request comment: {shown} of {total} rows shown; the summary above "
            "counts them all. The rest, part by part: `emailsync show PLAN --format text --table TABLE --kind "
            "KIND` (`--target`, `--table` and `--kind` repeat; `--format markdown` for this layout). The full detail "
            "is in the plan file._\n"
        )

    kept: list[str] = []
    shown = 0
    size = len(head) + 1 + len(note(total))  # the note's longest form: room kept for it
    for line, n in body:
        if size + len(line) + 1 > MD_LIMIT:
            break
        kept.append(line)
        shown += n
        size += len(line) + 1
    return head + "\n" + "\n".join(kept) + note(shown)


def _ddb_row(a: DynamoAction) -> str:
    changes = "; ".join(
        f"{_code(c.attribute)}: {_code(_ddb(c.old, 50, _raw))} → {_code(_ddb(c.new, 50, _raw))}"
        for c in a.changes or []
    )
    there = "" if a.kind not in ("merge-and-move", "live-swap") else ("merged, existing wins" if a.existing else "none")
    moves = _md_key(a.new_key, ddb=True) if a.new_key else ""
    return f"| {a.step} | {_md_key(a.key, ddb=True)} | {_kind(a.kind)} | {changes} | {moves} | {there} |"


DOC_CHANGES_SHOWN = 10  # values shown per changed document in plan.md; the plan file has them all
DOC_VALUE_WIDTH = 80  # a value inside a document is shown whole up to this, whatever the cell's width


def doc_changes(old: Any, new: Any, at: str = "") -> Iterator[tuple[str, Any, Any]]:
    """The values that differ between two JSON documents, path by path (`owner`, `team.reviewers[0]`): objects
    member by member, arrays of one length element by element; anything else, or arrays whose length changed,
    as one value."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(old.keys() | new.keys()):
            name = k if _PLAIN_MEMBER.fullmatch(k) else _ENCODER.encode(k)
            sub = f"{at}.{name}" if at else name
            if k not in old or k not in new:
                yield sub, old.get(k, _ABSENT), new.get(k, _ABSENT)
            else:
                yield from doc_changes(old[k], new[k], sub)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (o, n) in enumerate(zip(old, new, strict=True)):
            yield from doc_changes(o, n, f"{at}[{i}]")
    elif old != new or type(old) is not type(new):
        yield at, old, new


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()
_PLAIN_MEMBER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _pg_change(a: PostgresAction | Skipped, width: int = 60) -> str:
    """old → new; for a jsonb document, each value that changes inside it (`meta.owner`: a → b), so a reviewer
    sees exactly what moves and that nothing else does."""
    if isinstance(a.old, dict | list) and isinstance(a.new, dict | list):
        found = list(itertools.islice(doc_changes(a.old, a.new), DOC_CHANGES_SHOWN + 1))
        if found:
            col = a.column or ""
            shown = [
                f"{_code(f'{col}.{p}' if not p.startswith('[') else f'{col}{p}')}: "
                f"{_md_doc_value(o, DOC_VALUE_WIDTH)} → {_md_doc_value(n, DOC_VALUE_WIDTH)}"
                for p, o, n in found[:DOC_CHANGES_SHOWN]
            ]
            if len(found) > DOC_CHANGES_SHOWN:
                shown.append("… (the plan file has every value)")
            return "<br>".join(shown)
    return f"{_md_value(a.old, width)} → {_md_value(a.new, width)}"


def _md_doc_value(value: Any, width: int) -> str:
    return "*(absent)*" if value is _ABSENT else _md_value(value, width)


def _row_id(a: Action) -> tuple[str, str, Any]:
    """Which row an action is on: its target, table and key (as a tuple where the key's values allow it, which is
    cheaper than JSON on a plan of a million actions)."""
    try:
        key: Any = tuple(a.key.items())
        hash(key)
    except TypeError:  # a list or an object in the key
        key = _ENCODER.encode(a.key)
    return (a.target, a.table, key)


def _body_lines(plan: Plan) -> Iterator[tuple[str, int]]:
    """plan.md after its header, line by line with the number of actions (or skipped rows) each line shows: live
    swaps, deletes, skipped conflicts, then every table.

    A row that other steps change before it is deleted (an update of manager_email in step 1, then its delete in
    step 2) is shown once, in the deletes, with those changes beside it; its table's section leaves them out."""
    # Streamed, and collected only up to MD_COLLECT of each: plan.md shows a few hundred rows whatever the plan's
    # size, so memory stays flat however many deletes a plan of millions holds.
    dels: list[PostgresAction] = []
    live: list[DynamoAction] = []
    # Only the sections that can hold them are read (deletes have their own kind; live actions are DynamoDB's): on
    # a plan being made, the rest is skipped unparsed.
    dynamo = {name for name, fp in plan.targets.items() if fp.store == "dynamodb"}
    for a in in_sections(plan.actions, lambda sec: sec[2] == "delete-on-conflict" or sec[0] in dynamo):
        if isinstance(a, PostgresAction) and a.kind == "delete-on-conflict" and len(dels) < MD_COLLECT:
            dels.append(a)
        elif isinstance(a, DynamoAction) and a.live and len(live) < MD_COLLECT:
            live.append(a)
    also: dict[tuple[str, str, str], list[PostgresAction]] = {}
    if dels:
        deleted = {_row_id(a) for a in dels}
        tables = {(t, tb) for t, tb, _ in deleted}
        # Lines are parsed only if their key's text is a deleted row's: a table of 100k updates and 1k deletes
        # cost 0.7 s parsed whole. The key is written right before "kind" in every line that is not a delete's.
        keys = {dumps(a.key) for a in dels}

        def maybe(line: str) -> bool:
            at = line.find('"key":')
            end = line.find(',"kind":', at) if at >= 0 else -1
            return end < 0 or line[at + 6 : end] in keys

        def chosen(sec: tuple[str, str, str]) -> bool:
            return (sec[0], sec[1]) in tables and sec[2] != "delete-on-conflict"

        for a in in_sections(plan.actions, chosen, maybe):
            if isinstance(a, PostgresAction) and a.kind != "delete-on-conflict" and (a.target, a.table) in tables:
                rid = _row_id(a)
                if rid in deleted and len(also.setdefault(rid, [])) < MD_COLLECT:
                    also[rid].append(a)
    shown_with_delete = {o.id for others in also.values() for o in others}
    if live:
        yield from (
            (line, 0)
            for line in [
                "## ⚠ LIVE — the table people log in with (high risk)",
                "",
                "Applied last, and only after a separate confirmation (`--confirm-live`, or typing YES). Each swap "
                "creates or merges the new item, reads it back and compares it field by field, and deletes the old "
                "item only if they match; on a mismatch both are kept for review.",
                "",
                "| step | key | kind | changes | moves to | existing item there |",
                "|---:|---|---|---|---|---|",
            ]
        )
        yield from ((_ddb_row(a), 1) for a in live)
        yield "", 0
    if dels:
        yield from (
            (line, 0)
            for line in [
                "## Rows to be deleted (⚠ delete-on-conflict)",
                "",
                "Each row's new email is already taken under a unique constraint, so the row is deleted as the old "
                'script did; "why" names the row that holds it. The whole row is kept in the plan file.'
                + (" Changes planned for a deleted row in other steps are listed beside it." if also else ""),
                "",
                "| step | table | key | column | old → new | why |"
                + (" other steps on this row |" if also else "")
                + " row |",
                "|---:|---|---|---|---|---|" + ("---|" if also else "") + "---|",
            ]
        )
        for a in dels:
            others = also.get(_row_id(a), [])
            other = (
                " " + "<br>".join(f"step {o.step}: {_cell(o.column or '')} {_pg_change(o, 40)}" for o in others) + " |"
                if also
                else ""
            )
            yield (
                f"| {a.step} | {_cell(a.target)} / {_cell(a.table)} | {_md_key(a.key)} | {_cell(a.column or '')} "
                f"| {_pg_change(a, 40)} | {_code(a.reason) if a.reason else ''} |{other} "
                f"{_md_value(a.row, ROW_WIDTH)} |",
                1 + len(others),
            )
        yield "", 0
    if plan.skipped:
        yield from (
            (line, 0)
            for line in [
                "## Skipped because of conflicts (on_conflict: skip)",
                "",
                "| table | key | column | old → new | why |",
                "|---|---|---|---|---|",
            ]
        )
        yield from (
            (
                f"| {_cell(s.target)} / {_cell(s.table)} | {_md_key(s.key)} | {_cell(s.column)} "
                f"| {_pg_change(s, 40)} | {_code(s.reason)} |",
                1,
            )
            for s in plan.skipped
        )
        yield "", 0
    rest = (a for a in plan.actions if a.kind != "delete-on-conflict" and not a.live and a.id not in shown_with_delete)
    # The plan's lines are sorted by target and table: each table's rows arrive together, streamed.
    for (target, table), acts in itertools.groupby(rest, key=lambda a: (a.target, a.table)):
        if plan.targets[target].store == "dynamodb":
            yield from (
                (line, 0)
                for line in [
                    f"## {target} / {table} (DynamoDB)",
                    "",
                    "| step | key | kind | changes | moves to | existing item there |",
                    "|---:|---|---|---|---|---|",
                ]
            )
            yield from ((_ddb_row(a), 1) for a in acts if isinstance(a, DynamoAction))
        else:
            yield from (
                (line, 0)
                for line in [
                    f"## {target} / {table}",
                    "",
                    "| step | key | column | kind | old → new |",
                    "|---:|---|---|---|---|",
                ]
            )
            yield from (
                (f"| {a.step} | {_md_key(a.key)} | {_cell(a.column or '')} | {_kind(a.kind)} | {_pg_change(a)} |", 1)
                for a in acts
                if isinstance(a, PostgresAction)
            )
        yield "", 0
    if plan.reads:
        yield from (
            (line, 0)
            for line in [
                "## How DynamoDB tables were read",
                "",
                "| target | table | method | segments | requests | items |",
                "|---|---|---|---:|---:|---:|",
                *(
                    f"| {_cell(r.target)} | {_cell(r.table)} | {r.method} | {r.segments} | {r.requests} "
                    f"| {r.items_read} |"
                    for r in plan.reads
                ),
                "",
            ]
        )


# --- text for the terminal ---------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_NAMES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _plain(text: str) -> str:
    """A cell of a text table on one line of the terminal: control characters shown escaped (\\n, \\x1b), never
    sent to the terminal, so every row stays one line and the columns stay aligned."""
    return _CONTROL.sub(lambda m: _CONTROL_NAMES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def text_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows (the first is the header) as aligned columns of plain text, two spaces apart, without borders, colours
    or trailing spaces: one line per row, for grep and scripts. Columns are aligned by what the terminal shows
    (a CJK character takes two cells), and no cell is ever wrapped or cut."""
    from rich.cells import cell_len  # only the width table: a whole rich Table cost 0.03 s of every command

    cells = [[_plain(c) for c in r] for r in rows]
    widths = [max(cell_len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return ["  ".join(c + " " * (w - cell_len(c)) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def summary_lines(plan: Plan) -> list[str]:
    rows = [("target", "table", "column", "kind", "count")]
    rows += [(s.target, s.table, s.column, s.kind, str(s.count)) for s in plan.summary]
    return text_table(rows)


def report_lines(report: dict[str, Any]) -> list[str]:
    rows = [("target", "table", "kind", "status", "count")]
    for r in report["summary"]:
        rows.append((r["target"], r["table"], r["kind"], r["status"], str(r["count"])))
    lines = text_table(rows)
    for t in report["targets"]:
        if t.get("error"):
            lines.append(f"{t['target']}: {t['error']}")
        b = t.get("batches")
        if b:
            earlier = f", {b['resumed']:,} of them by an earlier run" if b.get("resumed") else ""
            lines.append(
                f"{t['target']}: {b['committed']:,} of {b['batches']:,} batches of about {b['batch_size']:,} actions "
                f"committed{earlier}. Each batch committed alone: the database was consistent after each, not "
                "changed all at once; a rollback plan restores the batches that ran"
            )
    costs = report.get("requests") or []
    if costs:
        capped = any(c.get("waited_s") for c in costs)  # a column of its own only when a cap held requests back
        lines += ["", "DynamoDB requests (read and write capacity units consumed, attempts throttled):"]
        head: tuple[str, ...] = ("target", "table", "requests", "read units", "write units", "throttled")
        per_table: list[tuple[str, ...]] = [
            (c["target"], c["table"], str(c["requests"]), _units(c["read_units"]), _units(c["write_units"]),
             str(c["throttled"]))
            for c in costs
        ]  # fmt: skip
        if capped:
            head += ("waited s",)
            per_table = [(*r, f"{c.get('waited_s', 0):.1f}") for r, c in zip(per_table, costs, strict=True)]
        lines += text_table([head, *per_table])
    return lines


def _units(n: float) -> str:
    return f"{n:,.1f}".removesuffix(".0")


def plan_text(plan: Plan) -> Iterator[str]:
    """The plan for a terminal: header, counts, then one line per action, streamed."""
    yield from [
        f"plan {plan.digest}  made {plan.created_at} by emailsync {plan.tool_version}",
        f"inputs: {plan.inputs.targets_file} ({plan.inputs.mapping_count} mapping(s) from {plan.inputs.mappings_file},"
        f" match {plan.inputs.match})",
        "",
        *summary_lines(plan),
        "",
    ]
    yield from (f"warning: {w}" for w in plan.warnings)
    for a in plan.actions:
        where = f"{a.target}/{a.table}"
        if a.store == "postgres":
            change = (
                "" if a.kind in ("delete-on-conflict", "insert-row") else f" {a.column}: {_v(a.old)} -> {_v(a.new)}"
            )
            yield f"{a.step:>3} {a.kind:<18} {where} [{_key(a.key)}]{change}"
        else:
            moved = f" -> [{ddb_key(a.new_key)}]" if a.new_key else ""
            changes = "; ".join(f"{c.attribute}: {_ddb(c.old)} -> {_ddb(c.new)}" for c in a.changes or [])
            live = " LIVE" if a.live else ""
            yield f"{a.step:>3} {a.kind:<18} {where}{live} [{ddb_key(a.key)}]{moved} {changes}".rstrip()
    yield from (f"skipped {s.target}/{s.table} [{_key(s.key)}] {s.column}: {s.reason}" for s in plan.skipped)


def status_lines(progress: list[Progress]) -> list[str]:
    """emailsync status: one row per target, how far this plan's applies got."""
    head = ("target", "store", "state", "batches", "rows", "stale", "rate", "time left")
    rows = [head]
    for p in progress:
        batches = (
            f"{p.batches_done:,} of {p.batches:,}" if p.batches is not None and p.batches_done is not None else "-"
        )
        total = f" of {p.rows_total:,}" if p.rows_total is not None else ""
        rate = f"{p.rows_per_s:,.0f} rows/s" if p.rows_per_s else "-"
        eta = p.eta_s
        left = "-" if eta is None else seconds_text(eta)
        rows.append((p.target, p.store, p.state, batches, f"{p.rows_done:,}{total}", f"{p.stale:,}", rate, left))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out += [f"{p.target}: {p.note}" for p in progress if p.note]
    return out


def seconds_text(s: float) -> str:
    n = int(round(s))
    if n >= 3600:
        return f"{n // 3600}h{n % 3600 // 60:02d}m"
    return f"{n // 60}m{n % 60:02d}s" if n >= 60 else f"{n}s"


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
                f"| {h.started_at or ''} | {finished} | {_code(f'{h.user}@{h.host}')} | "
                f"{_prose(h.approver, table=True) if h.approver else ''} | "
                f"{'' if h.exit_code is None else h.exit_code} | {outcomes} | {_cell(h.journal)} |"
            )
        else:
            out.append(
                f"  {h.started_at}  by {h.user}@{h.host}"
                + (f" (approver {h.approver})" if h.approver else "")
                + f"  finished {finished}  exit {h.exit_code if h.exit_code is not None else '-'}  {outcomes}"
                + ("  --force" if h.force else "")
            )
    return out


def _state_counts(states: Rows[ActionState]) -> list[tuple[str, str, str, int]]:
    by: dict[tuple[str, str, str], int] = defaultdict(int)
    for s in states:
        by[(s.target, s.table, s.state)] += 1
    return [(t, tb, st, n) for (t, tb, st), n in sorted(by.items())]


def _first_drifted(states: Iterable[ActionState], limit: int) -> tuple[list[ActionState], int]:
    """The first `limit` drifted states, and how many there are: never every state in a list."""
    first: list[ActionState] = []
    n = 0
    for s in states:
        if s.state == "drifted":
            n += 1
            if len(first) < limit:
                first.append(s)
    return first, n


def verify_lines(plan: Plan, states: Rows[ActionState], counts: dict[str, int], limit: int = 200) -> list[str]:
    out = [
        f"plan {plan.digest}: {len(states)} action(s): {counts['after']} after (applied), "
        f"{counts['before']} before (not applied), {counts['drifted']} drifted",
    ]
    out += text_table([("target", "table", "state", "count")] + [(*r[:3], str(r[3])) for r in _state_counts(states)])
    drifted, n_drifted = _first_drifted(states, limit)
    if drifted:
        out.append("\nDrifted (neither as planned nor as applied):")
        for s in drifted:
            key = "" if s.key is None else ddb_key(s.key) if s.store == "dynamodb" else _key(s.key)
            out.append(f"  {s.id} {s.target}/{s.table} [{key}] {s.kind}: {s.detail or ''}")
        if n_drifted > limit:
            out.append(f"  ... and {n_drifted - limit} more (--format json lists all)")
    return out


def verify_markdown(plan: Plan, states: Rows[ActionState], counts: dict[str, int], limit: int = 200) -> str:
    """What verify_lines shows, as Markdown for a pull request or an incident note: a headline with the counts, a
    table by target, table and state, then the drifted actions with their keys and details (at most `limit`, and
    only while they fit in MD_LIMIT characters)."""
    n = len(states)
    if not n:
        verdict = "nothing to check"
    elif counts["after"] == n:
        verdict = "every action is applied"
    else:
        verdict = "not every action is applied"
    out = [
        "# emailsync verify",
        "",
        f"**{_plural(n, 'action', 'actions')}: {counts['after']} after (applied), {counts['before']} before "
        f"(not applied), {counts['drifted']} drifted**",
        "",
        f"- plan: `{plan.digest}`",
        f"- verdict: {verdict}",
        "",
    ]
    rows = _state_counts(states)
    if rows:
        out += ["| target | table | state | count |", "|---|---|---|---:|"]
        out += [
            f"| {_cell(t)} | {_cell(tb)} | {'⚠ drifted' if st == 'drifted' else st} | {c} |" for t, tb, st, c in rows
        ]
        out.append("")
    drifted, n_drifted = _first_drifted(states, limit)
    if drifted:
        out += [
            "## ⚠ Drifted (neither as planned nor as applied)",
            "",
            "| action | target / table | key | kind | detail |",
            "|---|---|---|---|---|",
        ]
        size = sum(len(line) + 1 for line in out) + 200
        shown = 0
        for s in drifted:
            key = "" if s.key is None else _md_key(s.key, ddb=s.store == "dynamodb")
            line = (
                f"| {_code(s.id)} | {_cell(s.target)} / {_cell(s.table)} | {key} "
                f"| {_kind(s.kind)} | {_code(s.detail) if s.detail else ''} |"
            )
            if size + len(line) + 1 > MD_LIMIT:
                break
            out.append(line)
            size += len(line) + 1
            shown += 1
        if shown < n_drifted:
            out += [
                "",
                f"_… {shown} of {n_drifted} drifted actions shown; `emailsync verify --format json` lists them all._",
            ]
        out.append("")
    return "\n".join(out)
