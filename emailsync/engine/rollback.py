"""`emailsync rollback`: a plan that puts back what the recorded applies of a plan changed.

Built from the archive alone (plan.jsonl.gz has every before image the rollback needs; the journals say which
actions were applied), with no store access: the rollback plan is reviewed and applied like any other, and
apply's conditions make any row or item changed since the original apply come out stale, not overwritten.

Each applied action is inverted, in reverse step order (so every unique value is free again when a row
moves back, exactly as it was free when the row moved away):
- PostgreSQL update / array-replace: the same column set back from new to old, found under the row's key as
  it is after the apply;
- PostgreSQL delete-on-conflict: insert-row, the deleted row re-inserted from its image (updates planned on
  that row are not inverted separately: the image is the row from before all of them);
- DynamoDB update / array-replace: the same attributes set back;
- DynamoDB merge-and-move / live-swap: restore-item, a move back: the old item put back under its key and, in
  the same transaction (on a live table: after the put is verified), the item under the new key set back to
  what was there before the move (deleted if nothing was). Never one without the other.
"""

from __future__ import annotations

import copy
import hashlib
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emailsync import __version__
from emailsync.archive import DONE, RecordedOutcomes, journal_runs, recorded_outcomes
from emailsync.errors import UserError
from emailsync.plan import (
    Action,
    AttrChange,
    DynamoAction,
    Plan,
    PostgresAction,
    RollbackOf,
    SummaryRow,
    dumps,
    loads,
    seal,
    summary_column,
)
from emailsync.planfile import PLAN_NAME, read_plan
from emailsync.stores.dynamodb.items import set_path

UNDOABLE = (*DONE, "needs-review", "maybe-applied")  # needs-review: written, but not as planned


def build_rollback(plan_dir: Path, *, now: datetime | None = None) -> Plan:
    plan_path = plan_dir / PLAN_NAME if plan_dir.is_dir() else plan_dir
    plan = read_plan(plan_path)
    if plan.rollback_of is not None:
        # Undoing a rollback is re-applying the original plan; say so rather than build a third plan.
        raise UserError(
            f"{plan_path} is itself a rollback (of {plan.rollback_of.plan_folder}); to redo the original changes, "
            "make a new plan with `emailsync plan`"
        )
    runs = [j for j, _ in journal_runs(plan_path, plan.digest)]
    if not runs:
        raise UserError(f"{plan_path.parent}: no apply journal (apply-*.jsonl) beside the plan: it was never applied")
    with recorded_outcomes(plan_path, plan.digest) as outcomes, _Rows() as rows:
        return _build(plan, plan_path, runs, outcomes, rows, now)


def _build(
    plan: Plan,
    plan_path: Path,
    runs: list[Path],
    outcomes: RecordedOutcomes,
    rows: _Rows,
    now: datetime | None,
) -> Plan:
    def done() -> Iterator[Action]:
        """The applied actions, streamed from the plan again on each call (a plan of millions is never held)."""
        return (a for a in plan.actions if outcomes.get(a.id) in UNDOABLE)

    # First pass: how many are undone, the last step, the rows deleted, the rows whose whole image or key the
    # reverts carry, and every new value written to a PostgreSQL row (read back only for those rows).
    n_done, last = 0, 0
    for a in plan.actions:
        last = max(last, a.step)
        if outcomes.get(a.id) not in UNDOABLE:
            continue
        n_done += 1
        if a.kind == "delete-on-conflict":
            rows.mark(_row(a), deleted=True)
        elif isinstance(a, PostgresAction):
            if a.row is not None:
                rows.mark(_row(a), deleted=False)
            if a.column is not None:
                rows.new_value(_row(a), a.column, a.new)
    rows.flush()
    if not n_done:
        raise UserError(
            f"{plan_path.parent}: no action of the plan is recorded as applied in {', '.join(p.name for p in runs)}; "
            "there is nothing to roll back"
        )
    summary: dict[tuple[str, str, str, str], int] = defaultdict(int)
    # seal() takes every action first and reads the header after: the summary and the warning are filled in then.
    summary_rows: list[dict[str, Any]] = []
    warnings: list[str] = []

    def every_action() -> Iterator[Action]:
        n = 0
        for a in done():
            for x in _undo(a, last, rows):
                summary[(x.target, x.table, summary_column(x), x.kind)] += 1
                n += 1
                yield x
        summary_rows.extend(
            SummaryRow(target=t, table=tb, column=c, kind=k, count=n).model_dump()
            for (t, tb, c, k), n in sorted(summary.items())
        )
        warnings.append(
            f"rollback of plan {plan.digest} ({plan_path.parent.name}): {n_done} applied action(s) undone as "
            f"{n} action(s)"
        )

    created = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "created_at": created,
        "tool_version": __version__,
        "inputs": plan.inputs.model_dump(),
        "targets": {k: v.model_dump() for k, v in plan.targets.items()},
        "summary": summary_rows,
        "warnings": warnings,
        "reads": [],
        "skipped": [],
        "rollback_of": RollbackOf(
            plan_digest=plan.digest,
            plan_folder=plan_path.parent.name,
            journals=[p.name for p in runs],
            actions_undone=n_done,
        ).model_dump(),
        "actions": every_action(),
    }
    return seal(body)


def _undo(a: Action, last: int, rows: _Rows) -> Iterator[Action]:
    """The action that undoes one applied action (none for a change to a row that is put back whole)."""
    step = last + 1 - a.step
    common: dict[str, Any] = {
        "target": a.target,
        "table": a.table,
        "step": step,
        "mappings": a.mappings,
        "live": a.live,
    }
    if isinstance(a, PostgresAction):
        if a.kind == "delete-on-conflict":
            # After every revert: the values its image holds (its key, its references to parents) are free
            # and present again only once the rows that took or moved them are back.
            yield PostgresAction(
                store="postgres",
                id=_id(a, "insert"),
                kind="insert-row",
                key=a.key,
                row=a.row,
                reason=f"re-insert the row deleted by {a.id}",
                **(common | {"step": last + 2}),
            )
        elif not rows.deleted(_row(a)):
            changed = rows.new_values(_row(a))
            key_after = {k: changed.get(k, v) for k, v in a.key.items()}
            image = None if a.row is None else {**a.row, **changed}
            yield PostgresAction(
                store="postgres",
                id=_id(a, "revert"),
                kind=a.kind,
                key=key_after,
                column=a.column,
                old=a.new,
                new=a.old,
                paths=a.paths,
                row=image,
                reason=f"revert {a.id}",
                **common,
            )
    elif a.kind in ("update", "array-replace"):
        after = copy.deepcopy(a.row or {})
        for c in a.changes or []:
            set_path(after, tuple(c.attribute.split(".")), c.new)
        yield DynamoAction(
            store="dynamodb",
            id=_id(a, "revert"),
            kind=a.kind,
            key=a.key,
            changes=[AttrChange(attribute=c.attribute, old=c.new, new=c.old) for c in a.changes or []],
            row=after,
            reason=f"revert {a.id}",
            **common,
        )
    else:  # merge-and-move, live-swap: the item moves back, like a move, in one transaction or swap
        yield DynamoAction(
            store="dynamodb",
            id=_id(a, "move-back"),
            kind="restore-item",
            key=a.new_key or {},
            row=a.merged,
            new_key=a.key,
            existing=None,
            merged=a.row,
            remains=a.existing,
            reason=f"move back the item {a.id} moved",
            **common,
        )


def _row(a: Action) -> str:
    return dumps([a.target, a.table, a.key])


class _Rows:
    """What the reverts need to know about the rows the applied actions touched, in a private temporary SQLite
    database (on disk, removed when closed) rather than in memory: which rows were deleted, which carry their
    image (imaged), and the new values written to each. Marks and values are buffered and written in batches."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")
        self._db.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
            "CREATE TABLE marks (row TEXT PRIMARY KEY, deleted INTEGER NOT NULL, imaged INTEGER NOT NULL)"
            " WITHOUT ROWID;"
            "CREATE TABLE newval (row TEXT, col TEXT, new TEXT NOT NULL, PRIMARY KEY (row, col)) WITHOUT ROWID;"
        )
        self._marks: list[tuple[str, int]] = []
        self._values: list[tuple[str, str, str]] = []

    def mark(self, row: str, *, deleted: bool) -> None:
        self._marks.append((row, int(deleted)))
        if len(self._marks) >= 50_000:
            self.flush()

    def new_value(self, row: str, column: str, new: Any) -> None:
        self._values.append((row, column, dumps(new)))
        if len(self._values) >= 50_000:
            self.flush()

    def flush(self) -> None:
        self._db.executemany(
            "INSERT INTO marks VALUES (?1, ?2, 1 - ?2) ON CONFLICT (row) DO UPDATE SET "
            "deleted = max(deleted, excluded.deleted), imaged = max(imaged, excluded.imaged)",
            self._marks,
        )
        self._db.executemany("INSERT OR REPLACE INTO newval VALUES (?, ?, ?)", self._values)  # the last one wins
        self._marks.clear()
        self._values.clear()

    def deleted(self, row: str) -> bool:
        found = self._db.execute("SELECT deleted FROM marks WHERE row = ?", (row,)).fetchone()
        return bool(found and found[0])

    def new_values(self, row: str) -> dict[str, Any]:
        """The new values written to the row, when the reverts carry its whole image (else none are needed)."""
        found = self._db.execute("SELECT imaged FROM marks WHERE row = ?", (row,)).fetchone()
        if not (found and found[0]):
            return {}
        return {c: loads(v) for c, v in self._db.execute("SELECT col, new FROM newval WHERE row = ?", (row,))}

    def __enter__(self) -> _Rows:
        return self

    def __exit__(self, *_: object) -> None:
        self._db.close()


def _id(a: Action, what: str) -> str:
    prefix = "pg-" if a.store == "postgres" else "ddb-"
    return prefix + "rb-" + hashlib.sha256(f"{a.id}\x00{what}".encode()).hexdigest()[:16]
