"""The plan: frozen data, its canonical JSON, its digest, and the order of its lines.

Making plans lives in engine/planner.py, applying them in engine/applier.py and reading or writing plan files in
planfile.py; this module only knows the data. Format versioning follows Terraform: `format` carries the major version
(a new major breaks readers), `format_minor` counts additions (an older reader refuses a newer minor rather than
ignore fields it does not understand, because ignoring part of a plan that rewrites identity data is never safe).

A plan is its header (this module's Plan) and two streams, its actions and its skipped changes: lists while a plan is
being made, the plan file itself once it is read (planfile.FileRows), so a plan of millions of actions is never held in
memory by the commands that read it.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import json
import os
import re
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from typing import IO, Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter

from emailsync.errors import UserError
from emailsync.files import reader_at

# v2: gzip'd JSON Lines, a header line then one line per action or skipped change, sorted by section (planfile.py).
# v1 (one JSON document; its minors 1-3 added rollback plans, signatures and reached targets) is refused by name.
PLAN_FORMAT = "emailsync.plan/v2"
PLAN_FORMAT_MINOR = 1  # 1: PostgresAction.paths
DIGEST_SCHEME = "sha256-jsonl/1"  # see planfile.py: the digest covers the header, the header the body's sha256
# zlib level of plan files: on a 375 MB body (1.4M actions), level 6 took 2.9 s and made 37.0 MB, level 3 1.3 s and
# 42.1 MB. Compression runs while planning's connection waits to write, so the faster level shortens `plan`.
DEFLATE_LEVEL = 3

ActionKind = Literal[
    "update",
    "array-replace",
    "delete-on-conflict",
    "merge-and-move",
    "live-swap",
    # rollback plans only: put back a deleted PostgreSQL row; move a DynamoDB item back (see `remains`)
    "insert-row",
    "restore-item",
]
Store = Literal["postgres", "dynamodb"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttrChange(_Frozen):
    """One DynamoDB attribute (a dotted path for nested maps) changing from `old` to `new`."""

    attribute: str
    old: Any
    new: Any


class ActionBase(_Frozen):
    """What every planned change has, whatever its store: one change to one PostgreSQL row or DynamoDB item."""

    id: str
    kind: ActionKind
    store: Store
    target: str
    table: str
    key: dict[str, Any]
    step: int
    mappings: list[int]  # ords of the mapping entries that produced the new values
    # The whole row or item as planned: for delete-on-conflict (what will be deleted), for updates of a column that
    # is part of the row's key (the key alone cannot identify the row once emails move between keys), and for a
    # DynamoDB item (what the change starts from).
    row: dict[str, Any] | None = None
    reason: str | None = None
    live: bool = False  # on a live table: applied last, only after its own confirmation


class PostgresAction(ActionBase):
    """One column of one PostgreSQL row. Values (`old`, `new`, `row`, `key`) are JSON exactly as to_jsonb renders
    them, so apply compares them in the database without client-side type conversion."""

    store: Literal["postgres"]
    kind: Literal["update", "array-replace", "delete-on-conflict", "insert-row"]
    column: str | None = None  # the column changed (none for insert-row: the whole row)
    old: Any = None
    new: Any = None
    # A jsonb column configured by path (minor 1): its dotted paths. `old` and `new` are the whole documents as
    # planned, and only the values at these paths differ; apply writes those values onto the document it finds,
    # provided each path still holds its planned old value.
    paths: list[str] | None = None
    # delete-on-conflict: the row holding the new value ({"key", "values"}); apply deletes only while that row
    # still holds it, so a conflict that disappeared since the plan never costs a row.
    conflict: dict[str, Any] | None = None


class DynamoAction(ActionBase):
    """One whole DynamoDB item. Keys, items and values are DynamoDB JSON ({"S": "..."}, {"N": "1.5"},
    {"SS": [...]}, binary as base64), exact and typed."""

    store: Literal["dynamodb"]
    kind: Literal["update", "array-replace", "merge-and-move", "live-swap", "restore-item"]
    # Every attribute that changes; for merge-and-move the key the item moves to, the item found there when
    # planning (None: none, the move creates it) and the item that will exist there afterwards.
    changes: list[AttrChange] | None = None
    new_key: dict[str, Any] | None = None
    existing: dict[str, Any] | None = None
    merged: dict[str, Any] | None = None
    # restore-item (rollback of a move): the item left under `key` once the item has moved back to `new_key`
    # (what was there before the original merge), or None: the item under `key` is deleted.
    remains: dict[str, Any] | None = None


# An action is one of the two, told apart by its store (the same JSON on disk as when one class held every field;
# a line with another store's fields is refused). Read one with parse_action.
Action = Annotated[PostgresAction | DynamoAction, Field(discriminator="store")]
_ACTION: TypeAdapter[PostgresAction | DynamoAction] = TypeAdapter(Action)


def parse_action(data: Any) -> PostgresAction | DynamoAction:
    return _ACTION.validate_python(data)


class ReadRecord(_Frozen):
    """How a DynamoDB table was read for the plan, for the reviewer and for cost."""

    target: str
    table: str
    method: str  # scan
    segments: int
    requests: int
    items_read: int


class Skipped(_Frozen):
    """A change the planner did not emit (on_conflict: skip), kept in the plan so reviewers see it."""

    target: str
    table: str
    key: dict[str, Any]
    column: str
    old: Any
    new: Any
    reason: str


class SummaryRow(_Frozen):
    target: str
    table: str
    column: str
    kind: str
    count: int


class Inputs(_Frozen):
    targets_file: str
    targets_sha256: str
    mappings_file: str
    mappings_sha256: str
    match: Literal["exact", "casefold"]
    mapping_count: int


class TargetFingerprint(_Frozen):
    """Where a target's connection arrived when the plan was made, as the store reported it (minor 3; before,
    what the DSN or endpoint_url said). apply refuses a connection that arrives anywhere else."""

    store: Store
    host: str | None = None  # PostgreSQL: the server's address, or the socket's folder; DynamoDB: the endpoint host
    port: str | None = None
    database: str | None = None  # PostgreSQL: current_database(); DynamoDB: the region
    system_identifier: str | None = None  # PostgreSQL: the cluster's, where the role may read pg_control_system()
    account: str | None = None  # DynamoDB on AWS: the credentials' account (STS); None for DynamoDB Local

    def describe(self) -> str:
        where = f"{self.host or ''}:{self.port or ''}/{self.database or ''}"
        if self.system_identifier:
            where += f" (cluster {self.system_identifier})"
        if self.account:
            where += f" (account {self.account})"
        return where


class RollbackOf(_Frozen):
    """A rollback plan's origin: the plan whose applies it undoes, and the journals it read."""

    plan_digest: str
    plan_folder: str
    journals: list[str]
    actions_undone: int


T_co = TypeVar("T_co", covariant=True)


class Rows(Protocol[T_co]):
    """Actions or skipped changes: a list while a plan is made, the plan file's lines once read. Each iteration
    reads them again from the start; len() is known without reading them."""

    def __iter__(self) -> Iterator[T_co]: ...

    def __len__(self) -> int: ...


class Plan(_Frozen):
    """The plan's header, which is also the first line of its file; `actions` and `skipped` stream the rest."""

    format: str = PLAN_FORMAT
    format_minor: int = PLAN_FORMAT_MINOR
    digest: str
    # HMAC of the digest under EMAILSYNC_PLAN_KEY (signing.py); outside the digest, which it signs.
    signature: str | None = None
    digest_scheme: str = DIGEST_SCHEME
    created_at: str
    tool_version: str
    inputs: Inputs
    targets: dict[str, TargetFingerprint]
    summary: list[SummaryRow]
    warnings: list[str]
    notes: list[str] = []  # minor 1: what a reviewer should know that is not a warning
    reads: list[ReadRecord] = []
    rollback_of: RollbackOf | None = None
    action_count: int
    skipped_count: int
    body_sha256: str  # sha256 of the body's lines, each with its newline (planfile.py)
    _actions: Rows[Action] = PrivateAttr(default_factory=list)
    _skipped: Rows[Skipped] = PrivateAttr(default_factory=list)
    _check: Callable[[], None] | None = PrivateAttr(None)  # the body's check, still running (planfile.read_plan)

    @property
    def actions(self) -> Rows[Action]:
        self.checked()
        return self._actions

    @property
    def skipped(self) -> Rows[Skipped]:
        self.checked()
        return self._skipped

    @property
    def unchecked_actions(self) -> Rows[Action]:
        """The actions before the body's check has ended: only for sending their bytes on (a database loading them),
        with nothing written until checked() has returned."""
        return self._actions

    def check_later(self, wait: Callable[[], None]) -> None:
        self._check = wait

    def checked(self) -> None:
        """Wait for the body's check that read_plan(early=True) left running; raises the UserError it found, then
        and at every later use of the actions."""
        wait = self._check
        if wait is None:
            return
        try:
            wait()
        except BaseException as e:
            self._check = functools.partial(_raise, e)
            raise
        self._check = None

    @property
    def has_changes(self) -> bool:
        return self.action_count > 0


def _raise(error: BaseException) -> None:
    raise error


SKIPPED_KIND = "skipped-conflict"  # the kind a skipped change is counted, selected and written under


WHOLE_ROW = ("(row)", "(item)")  # the summary's column for an action on a whole row (insert-row) or item


def summary_column(a: Action) -> str:
    """The column an action is counted under in the summary: its column, else the whole row or item."""
    if isinstance(a, PostgresAction):
        return a.column or "(row)"
    return "(item)"


def section_of(item: Action | Skipped) -> tuple[str, str, str]:
    """The section (target, table, kind) an action or skipped change is written in."""
    return (item.target, item.table, item.kind if isinstance(item, ActionBase) else SKIPPED_KIND)


def line_of(item: Action | Skipped) -> str:
    """The item's line in the plan file: compact canonical JSON, fields left at their default (None, false) left
    out, a skipped change marked by its kind. Lines stand alone, so `zcat plan.jsonl.gz | jq 'select(...)'` works."""
    if isinstance(item, ActionBase):
        return dumps({k: v for k, v in item.__dict__.items() if v is not None and not (k == "live" and v is False)})
    return dumps({**item.__dict__, "kind": SKIPPED_KIND})


def sort_key(item: Action | Skipped, line: str | None = None) -> tuple[str, ...]:
    """Order of the plan's body: by section (target, table, kind), then by the row's key and column, then by action id
    (a skipped change by its line). Stable across re-plans, so diff pairs two plans' actions by a merge walk; in key
    order, so a section reads like its table."""
    if isinstance(item, ActionBase):
        column = item.column if isinstance(item, PostgresAction) else None
        return (item.target, item.table, item.kind, dumps(item.key), column or "", item.id)
    return (
        item.target,
        item.table,
        SKIPPED_KIND,
        dumps(item.key),
        item.column,
        line if line is not None else line_of(item),
    )


class TargetRows:
    """One target's actions, streamed from the plan on each iteration (never held): what a store that works from
    its own copy of the actions (PostgreSQL's action table) reads them through."""

    def __init__(self, rows: Rows[Action], target: str, count: int) -> None:
        self._rows, self.target, self._count = rows, target, count

    def __iter__(self) -> Iterator[Action]:
        fast = getattr(self._rows, "of_target", None)
        if fast is not None:
            return iter(fast(self.target))
        return (a for a in self._rows if a.target == self.target)

    def __len__(self) -> int:
        return self._count

    def chunks(self) -> Iterator[bytes]:
        """The target's lines as the plan file holds them, each with its newline, in pieces of about 1 MiB cut
        anywhere: from the plan file's checked copy as they are, where the plan was read from one, so a store that
        parses them itself (PostgreSQL, as jsonb) does no per-action work in Python. The target's skipped changes
        may be among them: such a reader keeps only the lines whose "kind" is not SKIPPED_KIND."""
        fast = getattr(self._rows, "chunks_of_target", None)
        if fast is not None:
            return iter(fast(self.target))
        return chunked(line_of(a) for a in self)


def chunked(lines: Iterable[str]) -> Iterator[bytes]:
    """Lines as bytes, each with its newline, joined into pieces of about 1 MiB."""
    buf: list[bytes] = []
    size = 0
    for line in lines:
        data = line.encode()
        buf += (data, b"\n")
        size += len(data) + 1
        if size >= 1 << 20:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


def in_sections(
    rows: Iterable[Any], chosen: Callable[[tuple[str, str, str]], bool], maybe: Callable[[str], bool] | None = None
) -> Iterator[Any]:
    """The items of `rows` in the chosen sections: without parsing the others where the rows can (a plan being made
    holds its lines by section), else by filtering what is read. `maybe`: where the rows hold lines, only those it
    keeps are parsed (it may keep more than wanted, never fewer)."""
    fast = getattr(rows, "in_sections", None)
    if fast is not None:
        return fast(chosen, maybe)  # type: ignore[no-any-return]
    return (x for x in rows if chosen(section_of(x)))


class _Filtered:
    """A part of some rows, chosen by section; its length comes from the plan's summary, without reading."""

    def __init__(self, rows: Rows[Any], chosen: Callable[[tuple[str, str, str]], bool], count: int) -> None:
        self._rows, self._chosen, self._count = rows, chosen, count

    def __iter__(self) -> Iterator[Any]:
        return in_sections(self._rows, self._chosen)

    def __len__(self) -> int:
        return self._count


def select(
    plan: Plan, *, targets: list[str] | None = None, tables: list[str] | None = None, kinds: list[str] | None = None
) -> Plan:
    """The part of the plan with these targets, tables and kinds (each None: all), its summary counted the same
    way; for reading a large plan piece by piece. A name the plan does not have is refused, naming those it has."""
    have = {
        "--target": sorted(plan.targets),
        "--table": sorted({s.table for s in plan.summary}),
        "--kind": sorted({s.kind for s in plan.summary}),
    }
    for option, wanted in (("--target", targets), ("--table", tables), ("--kind", kinds)):
        unknown = sorted(set(wanted or ()) - set(have[option]))
        if unknown:
            raise UserError(f"{option} {', '.join(unknown)}: not in the plan (it has: {', '.join(have[option])})")

    def chosen(target: str, table: str, kind: str) -> bool:
        return (
            (targets is None or target in targets)
            and (tables is None or table in tables)
            and (kinds is None or kind in kinds)
        )

    rows = [r for r in plan.summary if chosen(r.target, r.table, r.kind)]
    n_actions = sum(r.count for r in rows if r.kind != SKIPPED_KIND)
    part = plan.model_copy(
        update={
            "summary": rows,
            "reads": [r for r in plan.reads if kinds is None and chosen(r.target, r.table, "")],
            "action_count": n_actions,
            "skipped_count": sum(r.count for r in rows) - n_actions,
        }
    )
    part._actions = _Filtered(plan.actions, lambda s: chosen(*s), n_actions)
    part._skipped = _Filtered(plan.skipped, lambda s: chosen(*s), part.skipped_count)
    return part


# --- canonical JSON ------------------------------------------------------------------------------------------

# Numbers from PostgreSQL (numeric) are read as Decimal so a numeric(30,10) survives the round trip exactly.
# json cannot emit a Decimal as a bare number, so it is emitted as a sentinel string and unwrapped after.
# PostgreSQL text cannot hold NUL, so no real value can look like the sentinel.
_DEC = "\u0000emailsync-decimal:"
_DEC_RE = re.compile(r'"\\u0000emailsync-decimal:([-+0-9.eEinfaINFA]+)\\u0000"')


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            return str(obj)  # PostgreSQL renders non-finite numbers as strings in JSON too
        return f"{_DEC}{obj}\u0000"
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="python")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# One encoder per indent, made once: json.dumps with options builds a new encoder on every call, and dumps runs
# several times per action (keys, values, digests), hundreds of thousands of times on a big plan.
_ENCODERS: dict[int | None, json.JSONEncoder] = {}
# The compact form goes straight to the C encoder, made once: JSONEncoder.encode makes a new one per call, which cost
# more than encoding a small value. Without a markers dict it does not look for cycles, which plan data never has.
# json.encoder.c_make_encoder is _json.make_encoder, or None where Python has no C accelerator; _json is typed.
_C_COMPACT: Callable[[object, int], Iterable[str]] | None
try:
    import _json
except ImportError:
    _C_COMPACT = None
else:
    _C_COMPACT = _json.make_encoder(None, _default, json.encoder.encode_basestring, None, ":", ",", True, False, True)


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """JSON with sorted keys and exact decimals; compact unless indent is given."""
    if indent is None and _C_COMPACT is not None:
        text = "".join(_C_COMPACT(obj, 0))
        return _DEC_RE.sub(r"\1", text) if _DEC in text or "\\u0000emailsync" in text else text
    enc = _ENCODERS.get(indent)
    if enc is None:
        seps = (",", ":") if indent is None else (",", ": ")
        enc = _ENCODERS[indent] = json.JSONEncoder(
            sort_keys=True, separators=seps, ensure_ascii=False, default=_default, indent=indent
        )
    text = enc.encode(obj)
    return _DEC_RE.sub(r"\1", text) if _DEC in text or "\\u0000emailsync" in text else text


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears more than once in one object")
        out[k] = v
    return out


_DECODER = json.JSONDecoder(parse_float=Decimal, object_pairs_hook=_pairs_no_duplicates)


def loads(text: str) -> Any:
    if text.startswith("\ufeff"):  # what json.loads says; a bare decoder would only say "Expecting value"
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


_UNHASHED = ("digest", "signature")  # the digest covers everything else in the header


def header_digest(header: dict[str, Any]) -> str:
    """sha256 of the header's canonical JSON without digest and signature; the header holds the body's sha256."""
    body = {k: v for k, v in header.items() if k not in _UNHASHED}
    return "sha256:" + hashlib.sha256(dumps(body).encode()).hexdigest()


class LineRows:
    """Actions or skipped changes held as their lines, sorted (about a sixth of the memory of the models), parsed
    as they are read; `runs` says how many lines each section has, in order, for merging the two into the body.
    Past SPILL_BYTES of lines they are kept in sorted runs in private temporary files and merged as they are read,
    so making a plan of millions (or a rollback of one) holds a bounded part of it."""

    def __init__(
        self,
        lines: list[str],
        runs: list[tuple[tuple[str, str, str], int]],
        skipped: bool,
        spilled: list[IO[bytes]] | None = None,
    ) -> None:
        self._lines, self.runs, self._skipped, self._spilled = lines, runs, skipped, spilled or []
        self._count = sum(n for _, n in runs)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Any]:
        return _parsed(self.lines(), self._skipped)

    def lines(self) -> Iterator[str]:
        if not self._spilled:
            return iter(self._lines)
        return (line for _, line in self._merged_runs())

    def _merged_runs(self) -> Iterator[tuple[list[str], str]]:
        # Each spilled run is read back from its start on every call (the held lines were spilled as the last run).
        runs: list[Iterator[tuple[list[str], str]]] = [_read_run(f) for f in self._spilled]
        return heapq.merge(*runs, key=lambda kl: kl[0])

    def in_sections(
        self, chosen: Callable[[tuple[str, str, str]], bool], maybe: Callable[[str], bool] | None = None
    ) -> Iterator[Any]:
        """The items of the chosen sections (target, table, kind) only; the other lines are skipped unparsed."""
        if not self._spilled:
            pos = 0
            for section, n in self.runs:
                if chosen(section):
                    yield from _parsed(self._lines[pos : pos + n], self._skipped, maybe)
                pos += n
            return
        lines = (line for key, line in self._merged_runs() if chosen((key[0], key[1], key[2])))
        yield from _parsed(lines, self._skipped, maybe)


_PARSE = json.JSONDecoder(parse_float=Decimal)


def _parsed(lines: Iterable[str], skipped: bool, maybe: Callable[[str], bool] | None = None) -> Iterator[Any]:
    """Lines of a plan being made, as their models (written by this process: checked when they were made); those
    `maybe` keeps, when given."""
    for line in lines if maybe is None else filter(maybe, lines):
        data = _PARSE.decode(line)
        if skipped:
            data.pop("kind")
            yield Skipped.model_validate(data)
        else:
            yield parse_action(data)


SPILL_BYTES = 32 * 1024 * 1024  # lines held before a sorted run goes to a temporary file


def _write_run(keyed: list[tuple[tuple[str, ...], str]]) -> IO[bytes]:
    """One sorted run in an unnamed temporary file: per item its sort key as JSON, a tab, its line (JSON escapes
    tabs and newlines inside both, so the tab and the newline are unambiguous)."""
    f = tempfile.TemporaryFile(buffering=1 << 20)  # noqa: SIM115  # it outlives this function: the LineRows owns it
    for key, line in keyed:
        f.write(f"{dumps(list(key))}\t{line}\n".encode("utf-8", "surrogatepass"))
    f.flush()
    return f


def _read_run(f: IO[bytes]) -> Iterator[tuple[list[str], str]]:
    for raw in reader_at(f.fileno(), 1 << 20):
        key, _, line = raw.decode("utf-8", "surrogatepass").rstrip("\n").partition("\t")
        yield json.loads(key), line


def _sorted_lines(items: Iterable[Action | Skipped], skipped: bool) -> LineRows:
    """Each item made its line as it arrives (the model is not kept), then the lines sorted into the file's order;
    past SPILL_BYTES, in sorted runs on disk."""
    keyed: list[tuple[tuple[str, ...], str]] = []
    held = 0
    spilled: list[IO[bytes]] = []
    sections: Counter[tuple[str, str, str]] = Counter()
    for x in items:
        line = line_of(x)
        key = sort_key(x, line)
        keyed.append((key, line))
        sections[(key[0], key[1], key[2])] += 1
        held += len(line) + 200  # about what the key and the tuple hold beside the line
        if held > SPILL_BYTES:
            keyed.sort(key=lambda kl: kl[0])
            spilled.append(_write_run(keyed))
            keyed, held = [], 0
    keyed.sort(key=lambda kl: kl[0])
    runs = sorted(sections.items())  # the sort key starts with the section, so sections come in this order
    if spilled:
        if keyed:
            spilled.append(_write_run(keyed))
        return LineRows([], runs, skipped, spilled)
    return LineRows([line for _, line in keyed], runs, skipped)


def seal(body: dict[str, Any]) -> Plan:
    """Build the frozen Plan from its header fields and its `actions` and `skipped` (iterables of models or dicts):
    each is turned into its line as it comes, the lines sorted into the file's order, counted and hashed, and the
    digest computed. The plan holds the lines, not the models."""
    body = dict(body)
    actions = _sorted_lines(
        (a if isinstance(a, PostgresAction | DynamoAction) else parse_action(a) for a in body.pop("actions")),
        skipped=False,
    )
    skipped = _sorted_lines(
        (s if isinstance(s, Skipped) else Skipped.model_validate(s) for s in body.pop("skipped")), skipped=True
    )
    h = hashlib.sha256()
    for line in _merged(actions, skipped):
        h.update(line.encode())
        h.update(b"\n")
    body |= {
        "action_count": len(actions),
        "skipped_count": len(skipped),
        "body_sha256": h.hexdigest(),
        "digest": "sha256:" + "0" * 64,
    }
    plan = Plan.model_validate(body)
    sealed = plan.model_copy(update={"digest": header_digest(plan.model_dump(mode="python"))})
    sealed._actions = actions
    sealed._skipped = skipped
    return sealed


def _merged(actions: LineRows, skipped: LineRows) -> Iterator[str]:
    """The body: the two sorted line lists merged run by run (a skipped change's section never is an action's)."""
    a_lines, s_lines = actions.lines(), skipped.lines()
    a_runs = [(sec, a_lines, n) for sec, n in actions.runs]
    s_runs = [(sec, s_lines, n) for sec, n in skipped.runs]
    for _, lines, n in heapq.merge(a_runs, s_runs, key=lambda r: r[0]):
        yield from itertools.islice(lines, n)


def _merged_lines(actions: Iterable[Action], skipped: Iterable[Skipped]) -> Iterator[str]:
    """The body's lines from sorted actions and sorted skipped changes, merged into one order by section."""
    a_lines = ((sort_key(a), line_of(a)) for a in actions)
    s_lines = ((sort_key(s), line_of(s)) for s in skipped)
    for _, line in heapq.merge(a_lines, s_lines, key=lambda kl: kl[0]):
        yield line


def body_lines(plan: Plan) -> Iterator[str]:
    """The plan's body, line by line, as its file holds it (planfile.FileRows reads the lines back unchanged)."""
    raw = getattr(plan.actions, "raw_lines", None)
    if raw is not None:
        yield from raw()
        return
    if isinstance(plan.actions, LineRows) and isinstance(plan.skipped, LineRows):
        yield from _merged(plan.actions, plan.skipped)
        return
    yield from _merged_lines(plan.actions, plan.skipped)


# --- plans made in parts, one per target -------------------------------------------------------------------------
# The body's sort key starts with the target, so each target's lines can be made and sorted on their own (in a
# process of their own when planning in parallel) and the body is the parts one after another in target order.
# A part is two unnamed temporary files made by the process that seals the plan (so they go with it, even after
# kill -9, and a forked worker writes into them): its lines, and the same bytes as one raw deflate stream ended by a
# full flush, so the plan file is one gzip stream whose pieces were compressed where they were made.

PartRun = tuple[tuple[str, str, str], int, bool, int, int]  # section, lines, skipped?, byte offset, byte length


class Part:
    """One target's part of the body: its files, and (once written) its runs of lines by section."""

    def __init__(self, target: str, deflate: bool = True) -> None:
        """deflate: also write the lines deflated, where they are made (for a .gz plan file)."""
        self.target = target
        self.raw: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115  # lives as long as the plan that reads it
        self.gz: IO[bytes] | None = tempfile.TemporaryFile() if deflate else None  # noqa: SIM115
        self.runs: list[PartRun] = []

    def counts(self) -> tuple[int, int]:
        """(actions, skipped changes) in the part."""
        return sum(r[1] for r in self.runs if not r[2]), sum(r[1] for r in self.runs if r[2])

    def chunks(self, gz: bool = False) -> Iterator[bytes]:
        """The part's lines, or (gz) the same deflated: as written, or deflated now if they were not."""
        if gz and self.gz is None:
            deflate = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
            for data in self.chunks():
                yield deflate.compress(data)
            yield deflate.flush(zlib.Z_FULL_FLUSH)
            return
        f = self.gz if gz and self.gz is not None else self.raw
        pos = 0
        while data := os.pread(f.fileno(), 1 << 20, pos):
            yield data
            pos += len(data)

    def run_lines(self, run: PartRun) -> list[str]:
        return os.pread(self.raw.fileno(), run[4], run[3]).decode().split("\n")[:-1]


Chunk = bytes | bytearray | memoryview  # lines a store writes into its section, as the database sent them


class Section:
    """A section of actions whose lines a store writes itself, already in the file's order and form (PostgreSQL
    builds them in SQL, so no action passes through Python): `fill(write)` writes them, each ending in a newline,
    and returns how many it wrote per column; those counts are kept in `counts` for the plan's summary."""

    def __init__(self, key: tuple[str, str, str], fill: Callable[[Callable[[Chunk], None]], dict[str, int]]) -> None:
        self.key, self._fill = key, fill
        self.counts: dict[str, int] = {}

    def fill(self, write: Callable[[Chunk], None]) -> int:
        self.counts = self._fill(write)
        return sum(self.counts.values())


class _Sink:
    """Bytes to a part's files, in blocks of about 1 MB: a store writes a section line by line."""

    def __init__(self, raw: IO[bytes], gz: IO[bytes] | None, deflate: Any) -> None:
        self.raw, self.gz, self.deflate = raw, gz, deflate
        self.buf = bytearray()
        self.written = 0

    def write(self, data: Chunk) -> None:
        self.buf += data
        if len(self.buf) >= 1 << 20:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            data = bytes(self.buf)
            self.raw.write(data)
            if self.gz is not None:
                self.gz.write(self.deflate.compress(data))
            self.written += len(data)
            self.buf.clear()


def write_part(
    part: Part, actions: Iterable[Action], skipped: Iterable[Skipped], sections: Iterable[Section] = ()
) -> list[PartRun]:
    """Sort one target's actions and skipped changes into its part of the body and write both of its files; returns
    the part's runs. `skipped` is read after `actions`, so it may be filled as they are made. `sections` are written
    by their store in their place in the file's order (none of them shares a section with `actions`)."""
    a = _sorted_lines(actions, skipped=False)
    s = _sorted_lines(skipped, skipped=True)
    a_lines, s_lines = a.lines(), s.lines()
    runs: list[PartRun] = []
    deflate = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
    offset = 0
    raw, gz = part.raw, part.gz
    made: list[tuple[tuple[str, str, str], int, Section | None]] = [(sec, n, None) for sec, n in a.runs]
    by_store = sorted(sections, key=lambda x: x.key)
    if {x.key for x in by_store} & {sec for sec, _ in a.runs} or len({x.key for x in by_store}) < len(by_store):
        raise UserError("internal: a section of the plan was made twice; please report this with the inputs")
    made = list(heapq.merge(made, [(x.key, 0, x) for x in by_store], key=lambda r: r[0]))
    for section, n, is_skipped, store_made in heapq.merge(
        [(sec, n, False, x) for sec, n, x in made], [(sec, n, True, None) for sec, n in s.runs], key=lambda r: r[0]
    ):
        if store_made is not None:
            sink = _Sink(raw, gz, deflate)
            n = store_made.fill(sink.write)
            sink.flush()
            if n:
                runs.append((section, n, False, offset, sink.written))
            offset += sink.written
            continue
        chunk = "".join(line + "\n" for line in itertools.islice(s_lines if is_skipped else a_lines, n))
        data = chunk.encode()  # as planfile encodes every other plan's lines
        raw.write(data)
        if gz is not None:
            gz.write(deflate.compress(data))
        runs.append((section, n, is_skipped, offset, len(data)))
        offset += len(data)
    raw.flush()
    if gz is not None:
        gz.write(deflate.flush(zlib.Z_FULL_FLUSH))
        gz.flush()
    return runs


class PartRows:
    """The actions (or skipped changes) of a plan made in parts, read from the parts' files on each iteration."""

    def __init__(self, parts: list[Part], skipped: bool, count: int) -> None:
        self.parts, self._skipped, self._count = parts, skipped, count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Any]:
        return self.in_sections(lambda s: True)

    def in_sections(
        self, chosen: Callable[[tuple[str, str, str]], bool], maybe: Callable[[str], bool] | None = None
    ) -> Iterator[Any]:
        """The items of the chosen sections, in order; the other sections' lines are not read."""
        for p in self.parts:
            for run in p.runs:
                if run[2] is self._skipped and chosen(run[0]):
                    yield from _parsed(p.run_lines(run), self._skipped, maybe)

    def raw_lines(self) -> Iterator[str]:
        """The whole body (actions and skipped changes), line by line."""
        for p in self.parts:
            for run in p.runs:
                yield from p.run_lines(run)


def seal_parts(body: dict[str, Any], parts: list[Part]) -> Plan:
    """seal() for a plan made in parts (written): the body is the parts in target order."""
    parts = sorted(parts, key=lambda p: p.target)
    h = hashlib.sha256()
    for p in parts:
        for chunk in p.chunks():
            h.update(chunk)
    n_actions = sum(p.counts()[0] for p in parts)
    n_skipped = sum(p.counts()[1] for p in parts)
    body = dict(body) | {
        "action_count": n_actions,
        "skipped_count": n_skipped,
        "body_sha256": h.hexdigest(),
        "digest": "sha256:" + "0" * 64,
    }
    plan = Plan.model_validate(body)
    sealed = plan.model_copy(update={"digest": header_digest(plan.model_dump(mode="python"))})
    sealed._actions = PartRows(parts, False, n_actions)
    sealed._skipped = PartRows(parts, True, n_skipped)
    return sealed
