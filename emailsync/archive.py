"""The plans/ folder: one folder per plan holding plan.jsonl.gz, plan.md and what happened when it was applied."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from emailsync.errors import UserError
from emailsync.files import write_atomic
from emailsync.plan import Plan, loads
from emailsync.planfile import beside, check_name, write_plan
from emailsync.stores.outcome import DONE as DONE  # the journal's readers (rollback) take it from here

STICKY = (*DONE, "needs-review")  # written: a later run's outcome that wrote nothing does not undo that


def save_plan(plan: Plan, path: Path, *, markdown: str) -> Path:
    """Write plan.jsonl.gz and plan.md (`markdown`, its rendering) side by side; returns the plan.md path."""
    check_name(path)
    if path.exists():
        raise UserError(f"--out {path}: the file exists; plans are never overwritten, choose another path")
    write_plan(plan, path)
    md = beside(path, "plan.md")
    md.write_text(markdown, encoding="utf-8")
    return md


def write_report(plan_path: Path, report: dict[str, Any]) -> Path:
    """report.json beside the plan: the latest apply's outcome per action (fsync'd, then renamed)."""
    out = beside(plan_path, "report.json")
    write_atomic(out, report_chunks(report))
    return out


# Made once, straight to the C encoder (JSONEncoder.encode makes a new one per call; an indented dump runs the
# pure-Python one): seconds on a report or journal of 100k actions. The output is json.dumps(x, sort_keys=True,
# ensure_ascii=False, default=str).
# json.encoder.c_make_encoder is _json.make_encoder, or None where Python has no C accelerator; _json is typed.
_C_LINE: Callable[[object, int], Iterable[str]] | None
try:
    import _json
except ImportError:
    _C_LINE = None
else:
    _C_LINE = _json.make_encoder(None, str, json.encoder.encode_basestring, None, ": ", ", ", True, False, True)


def _line(obj: Any) -> str:
    if _C_LINE is None:
        return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return "".join(_C_LINE(obj, 0))


# One action's outcome: id, target, table, status, detail.
OutcomeRecord = tuple[str, str, str | None, str, str | None]
_enc = json.encoder.encode_basestring  # the string encoding _line uses (characters as they are)


def outcome_texts(records: Iterable[OutcomeRecord], event: bool = False) -> Iterator[str]:
    """Each outcome as _line renders {"id", "target", "table", "status"[, "detail"]} (with "event": "outcome" for the
    journal), put together from its strings: a run of millions of outcomes makes no dict per action."""
    ev = '"event": "outcome", ' if event else ""
    target, tgt = None, ""
    for aid, t, table, status, detail in records:
        if t != target:
            target, tgt = t, _enc(t)
        det = f'"detail": {_enc(detail)}, ' if detail else ""
        tab = "null" if table is None else _enc(table)
        yield f'{{{det}{ev}"id": {_enc(aid)}, "status": {_enc(status)}, "table": {tab}, "target": {tgt}}}'


def outcome_text_blocks(blocks: Iterable[OutcomeBlock], event: bool = False) -> Iterator[list[str]]:
    """outcome_texts for blocks of outcomes alike: the lines of a block without details and with ids JSON leaves as
    they are (the usual case) are made by one comprehension, not one call each."""
    ev = '"event": "outcome", ' if event else ""
    for ids, details, target, table, status in blocks:
        if details is None and not _ESCAPED.search("".join(ids)):
            tab = "null" if table is None else _enc(table)
            head, tail = (
                "{" + ev + '"id": "',
                f'", "status": {_enc(status)}, "table": {tab}, "target": {_enc(target)}}}',
            )
            yield [head + aid + tail for aid in ids]
        else:
            dets = details or [None] * len(ids)
            yield list(outcome_texts(((a, target, table, status, d) for a, d in zip(ids, dets, strict=True)), event))


# What json's encode_basestring escapes (ensure_ascii=False): a string without these is written as it is.
_ESCAPED = re.compile(r'["\\\x00-\x1f]')
# Outcomes alike, for the report: (ids, details or None, target, table, status).
OutcomeBlock = tuple[list[str], list[str | None] | None, str, str | None, str]


class Rendered(str):
    """Journal entries rendered already, one per line, each as _line renders a dict whose keys all sort after "at"
    (outcome_texts)."""

    __slots__ = ()


def report_chunks(report: dict[str, Any]) -> Iterator[str]:
    """The report indented for reading, except its actions: one per line, like the plan's. Streamed: its actions
    (applier.ReportActions, or a list) are turned into text as they are written."""
    actions = report.get("actions")
    if actions is None or not len(actions):
        yield json.dumps({**report, "actions": []}, indent=2, ensure_ascii=False, sort_keys=True, default=str) + "\n"
        return
    head = json.dumps({**report, "actions": []}, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    marker = '\n  "actions": []'
    assert marker in head  # sorted keys: "actions" comes first
    before, after = head.split(marker, 1)
    yield before + '\n  "actions": [\n    '
    blocks = getattr(actions, "blocks", None)
    if blocks is not None:
        first = True
        for lines in outcome_text_blocks(blocks()):
            if lines:
                yield ("" if first else ",\n    ") + ",\n    ".join(lines)
                first = False
        yield "\n  ]" + after + "\n"
        return
    buf: list[str] = []
    for i, a in enumerate(map(_line, actions)):
        buf.append((",\n    " if i else "") + a)
        if len(buf) >= 10_000:
            yield "".join(buf)
            buf.clear()
    yield "".join(buf) + "\n  ]" + after + "\n"


Entry = dict[str, Any]


def journal_writer(path: Path) -> Callable[[Entry | Iterable[Entry | Rendered]], None]:
    """An append-only JSON-lines journal beside the plan. Each call (one entry, or several written together, such
    as a run's outcomes, streamed) returns once its lines are fsync'd, before the write they record goes on."""
    return _GroupCommit(path).write


class _GroupCommit:
    """Calls made from several threads at once (targets applied in parallel, a DynamoDB target's requests in
    flight) share one write and one fsync: the first caller writes every line waiting by then, the others wait
    for that fsync (or the next one, if their lines came too late for it). A stream of entries (a run's outcomes)
    is written as it is read, never held whole in memory, by one caller at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cond = threading.Condition()
        self.waiting: list[str] = []  # rendered lines not yet written
        self.queued = 0  # calls whose lines are waiting or written, numbered in call order
        self.durable = 0  # calls up to this number are fsync'd
        self.failed: list[tuple[int, int, BaseException]] = []  # calls (from, to] lost to a failed write
        self.writing = False

    def write(self, entries: Entry | Iterable[Entry | Rendered]) -> None:
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if not isinstance(entries, dict):
            self._stream(at, entries)
            return
        with self.cond:
            self.waiting.append(_line({"at": at, **entries}) + "\n")
            self.queued += 1
            mine = self.queued
            while True:
                lost = next((e for first, upto, e in self.failed if first < mine <= upto), None)
                if lost is not None:
                    raise lost
                if self.durable >= mine:
                    return
                if self.writing:
                    self.cond.wait()
                    continue
                self._commit(lambda f: None)

    def _stream(self, at: str, entries: Iterable[Entry | Rendered]) -> None:
        head = f'{{"at": {_enc(at)}, '

        def lines(f: Any) -> None:
            for e in entries:  # buffered by the file: written in blocks, not line by line
                if isinstance(e, Rendered):  # each of its lines gets the time too
                    f.write(head + e[1:].replace("\n{", "\n" + head) + "\n")
                else:
                    f.write(_line({"at": at, **e}) + "\n")

        with self.cond:
            while self.writing:
                self.cond.wait()
            self.queued += 1
            self._commit(lines)

    def _commit(self, more: Callable[[Any], None]) -> None:
        """With the condition held and nobody writing: write the waiting lines, then `more`'s, and fsync, with the
        condition released meanwhile so that other callers can queue theirs for the next commit."""
        text, first, upto = "".join(self.waiting), self.durable, self.queued
        self.waiting.clear()
        self.writing = True
        try:
            self.cond.release()
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(text)
                    more(f)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                self.cond.acquire()
            self.durable = upto
        except BaseException as e:
            self.failed.append((first, upto, e))
            raise
        finally:
            self.writing = False
            self.cond.notify_all()


# -- reading the journals back ------------------------------------------------------------------------------------


class ApplyRun(BaseModel):
    """One apply run, as its journal tells it (a run killed part way has no `finished_at`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    journal: str
    run_id: str | None = None
    plan_digest: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    user: str | None = None
    host: str | None = None
    pid: int | None = None
    approver: str | None = None
    force: bool = False
    exit_code: int | None = None
    outcomes: dict[str, int] = {}


def journals(plan_path: Path) -> list[Path]:
    """The plan's apply journals, oldest first (their names start with the UTC time)."""
    folder = plan_path.parent if plan_path.is_file() or plan_path.suffix == ".json" else plan_path
    return sorted(folder.glob("apply-*.jsonl"))


class Journal:
    """One journal's entries, read from the file as they are iterated (a journal of millions of outcomes is never
    held); a last line cut short by a kill is ignored (it was never fsync'd whole)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[Entry]:
        path = self.path
        try:
            f = open(path, "rb")  # noqa: SIM115  # closed below, also when the reader stops early
        except OSError as e:
            raise UserError(f"{path}: cannot read the journal ({e.strerror})") from None
        with f:
            # Each line is judged once the next one is known: only a bad line with nothing after it is forgiven.
            bad: tuple[int, str] | None = None
            for n, raw in enumerate(f, 1):
                if bad is not None:
                    raise UserError(f"{path}: line {bad[0]} {bad[1]}; the journal was edited or damaged")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(
                        f"{path}: not UTF-8 text; the journal was damaged or replaced, restore it from git"
                    ) from None
                if not line.strip():
                    continue
                try:
                    entry = loads(line)
                except ValueError:
                    bad = (n, "is not valid JSON")
                    continue
                if not isinstance(entry, dict) or not _well_formed(entry):
                    raise UserError(f"{path}: line {n} is not a journal entry; the journal was edited or damaged")
                yield entry

    def start(self) -> Entry | None:
        """The run-start entry (the journal's first)."""
        return next((e for e in self if e.get("event") == "run-start"), None)


def _well_formed(e: dict[str, Any]) -> bool:
    """The fields the archive reads back have the types the journal writes (checked, so a damaged journal is a
    clear error rather than a crash)."""
    kinds = {
        "event": str,
        "id": str,
        "status": str,
        "run_id": str,
        "plan_digest": str,
        "action": str,
        "phase": str,
        "actions": list,
        "outcomes": dict,
    }
    for name, kind in kinds.items():
        if name in e and e[name] is not None and not isinstance(e[name], kind):
            return False
    ids = e.get("actions") or []
    outcomes = e.get("outcomes") or {}
    return all(isinstance(x, str) for x in ids) and all(isinstance(v, str) for v in outcomes.values())


def journal_runs(plan_path: Path, digest: str | None) -> list[tuple[Path, Journal]]:
    """The journals of this plan (by digest: several plans may share a folder when written with --out), each read
    again from its file whenever its entries are iterated."""
    out = []
    for j in journals(plan_path):
        journal = Journal(j)
        start = journal.start()
        if digest is None or start is None or start.get("plan_digest") == digest:
            out.append((j, journal))
    return out


def apply_history(plan_path: Path, digest: str | None = None) -> list[ApplyRun]:
    runs = []
    for j, entries in journal_runs(plan_path, digest):
        start = end = None
        outcomes: dict[str, int] = {}
        for e in entries:
            ev = e.get("event")
            if ev == "outcome":
                outcomes[e.get("status", "?")] = outcomes.get(e.get("status", "?"), 0) + 1
            elif ev == "run-start" and start is None:
                start = e
            elif ev == "run-end" and end is None:
                end = e
        runs.append(
            ApplyRun(
                journal=j.name,
                run_id=(start or {}).get("run_id"),
                plan_digest=(start or {}).get("plan_digest"),
                started_at=(start or {}).get("started_at"),
                finished_at=(end or {}).get("at"),
                user=(start or {}).get("user"),
                host=(start or {}).get("host"),
                pid=_pid((start or {}).get("pid")),
                approver=(start or {}).get("approver"),
                force=bool((start or {}).get("force")),
                exit_code=(end or {}).get("exit_code"),
                outcomes=outcomes,
            )
        )
    return runs


def _pid(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def killed_runs(plan_path: Path, digest: str) -> frozenset[str]:
    """Runs of this plan whose journals never reached their end because they were killed: not those still running
    in another process on this host (one that has released its locks and is writing its report)."""
    from emailsync.stores.ledger import process_alive

    host, me = socket.gethostname(), os.getpid()

    def running_elsewhere(h: ApplyRun) -> bool:
        return h.host == host and h.pid is not None and h.pid != me and process_alive(h.pid)

    return frozenset(
        h.run_id
        for h in apply_history(plan_path, digest)
        if h.run_id and not h.finished_at and not running_elsewhere(h)
    )


class RecordedOutcomes:
    """Each action's latest recorded status over every apply run, kept in a private temporary SQLite database (on
    disk, removed when closed), so a rollback of millions of actions looks them up without holding them."""

    # A status replaces the one recorded unless the action was already written (STICKY) and this one wrote nothing,
    # or it was maybe-applied and this record is not certain. See recorded_outcomes.
    _RECORD = (
        "INSERT INTO latest (id, status) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET status = excluded.status "
        "WHERE excluded.status IN ({s}) OR (latest.status NOT IN ({s}) AND (latest.status != 'maybe-applied' OR ?3))"
    ).format(s=", ".join(f"'{x}'" for x in STICKY))

    def __init__(self) -> None:
        self._db = sqlite3.connect("")  # "": a temporary database file, deleted when the connection closes
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute("CREATE TABLE latest (id TEXT PRIMARY KEY, status TEXT NOT NULL) WITHOUT ROWID")
        self._pending: list[tuple[str, str, bool]] = []

    def record(self, aid: str, status: str, certain: bool = False) -> None:
        self._pending.append((aid, status, certain))
        if len(self._pending) >= 50_000:
            self.flush()

    def flush(self) -> None:
        # executemany keeps the records' order, so the latest record of an action is still the one that counts.
        self._db.executemany(self._RECORD, self._pending)
        self._pending.clear()

    def get(self, aid: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT status FROM latest WHERE id = ?", (aid,)).fetchone()
        return default if row is None else str(row[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RecordedOutcomes:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def recorded_outcomes(plan_path: Path, digest: str | None = None) -> RecordedOutcomes:
    """Each action's latest recorded status over every apply run, from the journals.

    A run killed before its outcome lines still left write records: an action in a batch whose write began
    counts as `maybe-applied` unless a later record says what happened to it. Once written, always to be undone: a
    later run that wrote nothing (aborted, stale, failed) does not make an earlier write go away. A write that began
    and ended in doubt (failed, a lost response) stays maybe-applied unless the record is certain (a PostgreSQL
    transaction's outcome, known for every action: committed or rolled back whole)."""
    latest = RecordedOutcomes()
    try:
        for _, entries in journal_runs(plan_path, digest):
            for e in entries:
                ev = e.get("event")
                if ev == "outcome" and "id" in e:
                    latest.record(e["id"], e.get("status") or "")
                elif ev == "write" and e.get("phase") == "before":
                    # Recording maybe-applied changes nothing already written, as the rule says.
                    for aid in e.get("actions") or ([e["action"]] if e.get("action") else []):
                        latest.record(aid, "maybe-applied")
                elif ev == "write" and e.get("phase") == "after":
                    certain = e.get("store") == "postgres"
                    for aid, status in (e.get("outcomes") or {}).items():
                        latest.record(aid, status, certain=certain)
        latest.flush()
    except BaseException:
        latest.close()
        raise
    return latest


# -- rollbacks made from a plan ----------------------------------------------------------------------------------


class RollbackRecord(BaseModel):
    """rollbacks.json in a plan's folder: the rollback plans made from it. Applying the plan again after one of
    them could undo the rollback, so apply asks for --force."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plan: str  # the rollback plan's path, as given when it was made
    digest: str
    created_at: str


def _rollbacks_path(plan_path: Path) -> Path:
    return beside(plan_path, "rollbacks.json")


def rollbacks(plan_path: Path) -> list[RollbackRecord]:
    try:
        data = loads(_rollbacks_path(plan_path).read_text(encoding="utf-8"))
        return [RollbackRecord.model_validate(r) for r in data]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{_rollbacks_path(plan_path)}: not a list of rollback records ({e})") from None


def record_rollback(plan_path: Path, rollback: Plan, rollback_path: Path) -> None:
    records = [
        *rollbacks(plan_path),
        RollbackRecord(plan=str(rollback_path), digest=rollback.digest, created_at=rollback.created_at),
    ]
    write_atomic(_rollbacks_path(plan_path), json.dumps([r.model_dump() for r in records], indent=2) + "\n")
