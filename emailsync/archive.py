"""The plans/ folder: one folder per plan holding plan.jsonl.gz, plan.md and what happened when it was applied."""

from __future__ import annotations

import json
import os
import socket
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

DONE = ("applied", "already-applied")
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
    buf: list[str] = []
    for i, a in enumerate(actions):
        buf.append((",\n    " if i else "") + _line(a))
        if len(buf) >= 10_000:
            yield "".join(buf)
            buf.clear()
    yield "".join(buf) + "\n  ]" + after + "\n"


Entry = dict[str, Any]


def journal_writer(path: Path) -> Callable[[Entry | Iterable[Entry]], None]:
    """An append-only JSON-lines journal beside the plan. Each call (one entry, or several written together, such
    as a run's outcomes, streamed) is fsync'd before the write it records goes on."""

    lock = threading.Lock()  # targets applied in parallel journal from their own threads: records never interleave

    def write(entries: Entry | Iterable[Entry]) -> None:
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        batch = [entries] if isinstance(entries, dict) else entries
        with lock, open(path, "a", encoding="utf-8") as f:
            for e in batch:
                f.write(_line({"at": at, **e}) + "\n")  # buffered: written in blocks, not line by line
            f.flush()
            os.fsync(f.fileno())

    return write


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


def read_journal(path: Path) -> list[dict[str, Any]]:
    """A journal's entries; a last line cut short by a kill is ignored (it was never fsync'd whole)."""
    entries = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"{path}: cannot read the journal ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; the journal was damaged or replaced, restore it from git") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = loads(line)
        except ValueError:
            if n == len(lines):
                break
            raise UserError(f"{path}: line {n} is not valid JSON; the journal was edited or damaged") from None
        if not isinstance(entry, dict) or not _well_formed(entry):
            raise UserError(f"{path}: line {n} is not a journal entry; the journal was edited or damaged")
        entries.append(entry)
    return entries


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


def journal_runs(plan_path: Path, digest: str | None) -> list[tuple[Path, list[dict[str, Any]]]]:
    """The journals of this plan (by digest: several plans may share a folder when written with --out)."""
    out = []
    for j in journals(plan_path):
        entries = read_journal(j)
        start = next((e for e in entries if e.get("event") == "run-start"), None)
        if digest is None or start is None or start.get("plan_digest") == digest:
            out.append((j, entries))
    return out


def apply_history(plan_path: Path, digest: str | None = None) -> list[ApplyRun]:
    runs = []
    for j, entries in journal_runs(plan_path, digest):
        start = next((e for e in entries if e.get("event") == "run-start"), None)
        end = next((e for e in entries if e.get("event") == "run-end"), None)
        outcomes: dict[str, int] = {}
        for e in entries:
            if e.get("event") == "outcome":
                outcomes[e.get("status", "?")] = outcomes.get(e.get("status", "?"), 0) + 1
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
    from emailsync.ledger import process_alive

    host, me = socket.gethostname(), os.getpid()

    def running_elsewhere(h: ApplyRun) -> bool:
        return h.host == host and h.pid is not None and h.pid != me and process_alive(h.pid)

    return frozenset(
        h.run_id
        for h in apply_history(plan_path, digest)
        if h.run_id and not h.finished_at and not running_elsewhere(h)
    )


def recorded_outcomes(plan_path: Path, digest: str | None = None) -> dict[str, str]:
    """Each action's latest recorded status over every apply run, from the journals.

    A run killed before its outcome lines still left write records: an action in a batch whose write began
    counts as `maybe-applied` unless a later record says what happened to it."""
    latest: dict[str, str] = {}

    def record(aid: str, status: str, certain: bool = False) -> None:
        # Once written, always to be undone: a later run that wrote nothing (aborted, stale, failed) does not
        # make an earlier write go away. A write that began and ended in doubt (failed, a lost response) stays
        # maybe-applied unless the record is certain (a PostgreSQL transaction's outcome).
        now = latest.get(aid)
        if status in STICKY or (now not in STICKY and (now != "maybe-applied" or certain)):
            latest[aid] = status

    for _, entries in journal_runs(plan_path, digest):
        for e in entries:
            ev = e.get("event")
            if ev == "outcome" and "id" in e:
                record(e["id"], e.get("status") or "")
            elif ev == "write" and e.get("phase") == "before":
                for aid in e.get("actions") or ([e["action"]] if e.get("action") else []):
                    if latest.get(aid) not in STICKY:
                        latest[aid] = "maybe-applied"
            elif ev == "write" and e.get("phase") == "after":
                # A PostgreSQL transaction's outcome is known for every action (committed or rolled back whole).
                certain = e.get("store") == "postgres"
                for aid, status in (e.get("outcomes") or {}).items():
                    record(aid, status, certain=certain)
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
