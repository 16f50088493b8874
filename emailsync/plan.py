"""The plan: frozen data, its canonical JSON, its digest, and reading/writing plan files.

Making plans lives in planner.py and applying them in applier.py; this module only knows the format.
Format versioning follows Terraform: `format` carries the major version (a new major breaks readers),
`format_minor` counts additions (an older reader refuses a newer minor rather than ignore fields it does
not understand, because ignoring part of a plan that rewrites identity data is never safe).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from emailsync.errors import UserError
from emailsync.files import write_atomic
from emailsync.inputs import NOT_TEXT, first_non_text, may_escape_surrogates, read_limited

PLAN_FORMAT = "emailsync.plan/v1"
PLAN_FORMAT_MINOR = 3  # 1: rollback plans (insert-row, restore-item, rollback_of); 2: signature;
# 3: targets record what the connection reached (system_identifier, account), not what the DSN said

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


class Action(_Frozen):
    """One planned change: to one column of one PostgreSQL row, or to one whole DynamoDB item.

    PostgreSQL values (`old`, `new`, `row`, `key`) are JSON exactly as to_jsonb renders them, so apply compares
    them in the database without client-side type conversion. DynamoDB keys, items and values are DynamoDB
    JSON ({"S": "..."}, {"N": "1.5"}, {"SS": [...]}, binary as base64), exact and typed.
    """

    id: str
    kind: ActionKind
    store: Store
    target: str
    table: str
    key: dict[str, Any]
    step: int
    column: str | None = None  # PostgreSQL: the column changed
    old: Any = None
    new: Any = None
    mappings: list[int]  # ords of the mapping entries that produced the new values
    # The whole row as planned: for delete-on-conflict (what will be deleted), and for updates of a column
    # that is part of the row's key (the key alone cannot identify the row once emails move between keys).
    row: dict[str, Any] | None = None
    reason: str | None = None
    # delete-on-conflict: the row holding the new value ({"key", "values"}); apply deletes only while that row
    # still holds it, so a conflict that disappeared since the plan never costs a row.
    conflict: dict[str, Any] | None = None
    # DynamoDB: every attribute that changes; for merge-and-move the key the item moves to, the item found there
    # when planning (None: none, the move creates it) and the item that will exist there afterwards.
    changes: list[AttrChange] | None = None
    live: bool = False  # on a live table: applied last, only after its own confirmation
    new_key: dict[str, Any] | None = None
    existing: dict[str, Any] | None = None
    merged: dict[str, Any] | None = None
    # restore-item (rollback of a move): the item left under `key` once the item has moved back to `new_key`
    # (what was there before the original merge), or None: the item under `key` is deleted.
    remains: dict[str, Any] | None = None


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


class Plan(_Frozen):
    format: str = PLAN_FORMAT
    format_minor: int = PLAN_FORMAT_MINOR
    digest: str
    # HMAC of the digest under EMAILSYNC_PLAN_KEY (signing.py); outside the digest, which it signs.
    signature: str | None = None
    created_at: str
    tool_version: str
    inputs: Inputs
    targets: dict[str, TargetFingerprint]
    summary: list[SummaryRow]
    warnings: list[str]
    reads: list[ReadRecord] = []
    skipped: list[Skipped]
    rollback_of: RollbackOf | None = None
    actions: list[Action]
    # The canonical JSON of the plan (without its digest) in pieces, kept by seal() for render_json(): the
    # digest and the file are written from the same text, so each action is serialised once.
    _canonical: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def has_changes(self) -> bool:
        return bool(self.actions)


SKIPPED_KIND = "skipped-conflict"  # the kind a skipped change is counted and selected under


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

    part = plan.model_copy(
        update={
            "actions": [a for a in plan.actions if chosen(a.target, a.table, a.kind)],
            "skipped": [s for s in plan.skipped if chosen(s.target, s.table, SKIPPED_KIND)],
            "summary": [r for r in plan.summary if chosen(r.target, r.table, r.kind)],
            "reads": [r for r in plan.reads if kinds is None and chosen(r.target, r.table, "")],
        }
    )
    part._canonical = None  # the file's text is the whole plan's: render_json must not pass it off as the part's
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


_LINED = ("actions", "skipped")  # written one per line in the file
_UNHASHED = ("digest", "signature")  # the digest covers everything else


# Canonical pieces: the compact canonical JSON of each top-level value but the digest, the lined fields as a list
# with one item's JSON each.
Pieces = dict[str, Any]


def _pieces_of_plan(plan: Plan) -> Pieces:
    """Each item is dumped from its fields (an action's __dict__), not through model_dump: the same text, without a
    copy of the plan."""
    pieces: Pieces = {}
    for k in Plan.model_fields:
        if k in _UNHASHED:
            continue
        v = getattr(plan, k)
        pieces[k] = [dumps(x.__dict__) for x in v] if k in _LINED else dumps(v)
    return pieces


def _digest_of(pieces: Pieces) -> str:
    # Exactly sha256(dumps(body without digest)): compact, sorted keys, a list as "[" + items joined by "," + "]".
    # Hashed item by item: a plan of a million actions is never held as one more string.
    h = hashlib.sha256()
    h.update(b"{")
    for n, k in enumerate(sorted(pieces)):
        if n:
            h.update(b",")
        v = pieces[k]
        h.update(f"{dumps(k)}:".encode())
        if k in _LINED:
            h.update(b"[")
            for i, item in enumerate(v):
                if i:
                    h.update(b",")
                h.update(item.encode())
            h.update(b"]")
        else:
            h.update(v.encode())
    h.update(b"}")
    return "sha256:" + h.hexdigest()


def compute_digest(plan_body: dict[str, Any]) -> str:
    # A plan without a signature hashes as it did before signatures existed (the key is left out, not null).
    body = {k: v for k, v in plan_body.items() if k not in _UNHASHED}
    return "sha256:" + hashlib.sha256(dumps(body).encode()).hexdigest()


def seal(body: dict[str, Any]) -> Plan:
    """Build the frozen Plan from everything but the digest, computing the digest."""
    body = dict(body)
    body["digest"] = "sha256:" + "0" * 64
    plan = Plan.model_validate(body)
    pieces = _pieces_of_plan(plan)
    sealed = plan.model_copy(update={"digest": _digest_of(pieces)})
    sealed._canonical = pieces
    return sealed


# --- files -------------------------------------------------------------------------------------------------


def _layout(header: dict[str, Any], pieces: Pieces) -> Iterator[str]:
    """The file in order, piece by piece: an indented header, then the lined fields one item per line."""
    head = dumps(header, indent=2)
    assert head.endswith("}")
    yield head[:-2] + ",\n"
    for name, end in (("actions", ",\n"), ("skipped", "\n}\n")):
        items = pieces[name]
        if not items:
            yield f'  "{name}": []'
        else:
            yield f'  "{name}": [\n    '
            for i, item in enumerate(items):
                if i:
                    yield ",\n    "
                yield item
            yield "\n  ]"
        yield end


def _render(header: dict[str, Any], pieces: Pieces) -> str:
    return "".join(_layout(header, pieces))


def _is_layout_of(text: str, header: dict[str, Any], pieces: Pieces) -> bool:
    """Whether text is exactly _render(header, pieces), compared piece by piece (no second copy of the file)."""
    pos = 0
    for part in _layout(header, pieces):
        if not text.startswith(part, pos):
            return False
        pos += len(part)
    return pos == len(text)


def render_json(plan: Plan) -> str:
    """The plan file: readable header, then one action per line so a re-plan diffs line by line in review."""
    pieces = plan._canonical
    if pieces is None:
        pieces = _pieces_of_plan(plan)
    header = {k: getattr(plan, k) for k in pieces if k not in _LINED} | {"digest": plan.digest}
    if plan.signature is not None:
        header["signature"] = plan.signature
    return _render(header, pieces)


_FAST_DECODER = json.JSONDecoder(parse_float=Decimal)  # C speed; duplicate keys are caught by _parse_plan


def _parse_plan(text: str) -> tuple[Any, Pieces | None]:
    """The plan's data, and its canonical pieces when the file is exactly as write_plan writes it.

    A file written by emailsync is parsed at C speed: re-rendered from its data it gives back the same text, which a
    duplicate key (or any other edit of the layout) would not. Any other file is parsed again by loads(), which names
    the first duplicate key or syntax error as before."""
    try:
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("BOM", text, 0)
        data = _FAST_DECODER.decode(text)
    except (ValueError, RecursionError):  # JSONDecodeError, or an integer too long to convert
        return loads(text), None
    if isinstance(data, dict) and all(isinstance(data.get(k), list) for k in _LINED):
        try:
            pieces = {
                k: [dumps(x) for x in v] if k in _LINED else dumps(v) for k, v in data.items() if k not in _UNHASHED
            }
            header = {k: v for k, v in data.items() if k not in _LINED}
            if _is_layout_of(text, header, pieces):
                return data, pieces
        except (TypeError, ValueError, RecursionError, AssertionError):
            pass
    return loads(text), None


def write_plan(plan: Plan, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render_json(plan))  # never a half-written plan under the real name, even after a crash


def read_plan(path: Path) -> Plan:
    """Read and check a plan file: format, digest, schema. Every problem is a UserError."""
    try:
        text = read_limited(path, "plan").decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: plan file not found; pass the plan.json written by `emailsync plan`") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; pass the plan.json inside it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the plan file ({e})") from None
    except ValueError:  # a NUL byte in the path
        raise UserError(f"{path!r}: not a usable file name (it contains a NUL byte)") from None
    # emailsync writes characters as they are, not as \\udXXX escapes: only an edited plan has its strings walked.
    escaped = may_escape_surrogates(text)
    try:
        data, pieces = _parse_plan(text)
        del text  # a plan of a million actions: the text, its pieces and its data are each hundreds of MB
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except ValueError as e:
        raise UserError(f"{path}: {e}; the plan was edited by hand, make a new one with `emailsync plan`") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a plan; make a new one with `emailsync plan`") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a plan (the top level must be an object)")
    bad = first_non_text(data) if escaped else None
    if bad is not None:
        raise UserError(f"{path}: {bad}: {NOT_TEXT}; the plan was edited by hand, make a new one with `emailsync plan`")
    fmt = data.get("format")
    if fmt != PLAN_FORMAT:
        raise UserError(
            f"{path}: unknown plan format {fmt!r}; this emailsync reads {PLAN_FORMAT!r}. "
            "Make the plan with this version, or upgrade emailsync to the one that made it."
        )
    minor = data.get("format_minor", 0)
    if not isinstance(minor, int) or isinstance(minor, bool):
        raise UserError(
            f"{path}: format_minor must be a whole number, not {str(minor)[:40]!r}; the plan was edited by hand, "
            "make a new one with `emailsync plan`"
        )
    if minor > PLAN_FORMAT_MINOR:
        raise UserError(
            f"{path}: plan format {PLAN_FORMAT} minor {minor!r} is newer than this emailsync understands "
            f"(minor {PLAN_FORMAT_MINOR}); upgrade emailsync before applying it."
        )
    digest = data.get("digest")
    try:
        expected = _digest_of(pieces) if pieces is not None else compute_digest(data)
        del pieces
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a plan; make a new one with `emailsync plan`") from None
    if digest != expected:
        raise UserError(
            f"{path}: digest mismatch: the file says {str(digest)[:80]!r} but its content hashes to {expected!r}. "
            "The plan was changed after it was made; re-run `emailsync plan` and have it reviewed again."
        )
    try:
        plan = Plan.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{path}: not a valid plan at {loc}: {first['msg']}") from None
    # The canonical pieces are not kept (plan._canonical): apply never writes the plan again, and on a plan of a
    # million actions they would hold another copy of the whole file in memory.
    return plan
