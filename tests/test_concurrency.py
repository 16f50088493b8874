"""Concurrency: other writers between plan and apply and during apply, and two appliers at once on one target.

Everything runs against the real stores: the embedded PostgreSQL (other writers are real transactions on their own
connections, some in threads so they can block on apply's row locks) and the moto server (other writers are a
separate boto3 client, called from botocore event hooks on apply's client at an exact moment, one request at a time:
moto is not thread-safe under concurrent writes). The second applier is a real `python -m emailsync apply`
subprocess started while the first holds its lock. Every test checks the stores' final contents exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from helpers import cli_process, hook_dynamodb

from emailsync.stores.postgres.applier import PostgresApplier
from emailsync.stores.postgres.ledger import PgLedger

# -- shared helpers -------------------------------------------------------------------------------------------------


def _report(plan: Path) -> dict[str, Any]:
    return json.loads((plan.parent / "report.json").read_text())


def _labels(ws: Any, plan: Path) -> dict[str, str]:
    """Action id -> `<table> <key> <column or kind>`, so assertions read like the plan (ids are digests)."""
    out = {}
    for a in ws.plan_json(plan)["actions"]:
        key = ",".join(str(v.get("S", v) if isinstance(v, dict) else v) for v in a["key"].values())
        what = a["column"] if a["kind"] in ("update", "array-replace") and a.get("column") else a["kind"]
        out[a["id"]] = f"{a['table']} {key} {what}"
    return out


def _statuses(ws: Any, plan: Path) -> dict[str, str]:
    """report.json's status per action, by label."""
    labels = _labels(ws, plan)
    return {labels[a["id"]]: a["status"] for a in _report(plan)["actions"]}


def _verify(ws: Any, plan: Path) -> tuple[int, dict[str, str]]:
    """`emailsync verify --format json`: exit code and each action's state, by label."""
    r = ws.run("verify", str(plan), "--format", "json")
    labels = _labels(ws, plan)
    return r.code, {labels[a["id"]]: a["state"] for a in json.loads(r.out)["actions"]}


def _cli(ws: Any, *args: str) -> subprocess.CompletedProcess[str]:
    proc = cli_process(ws, *args)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _journals(plan: Path) -> list[Path]:
    return sorted(plan.parent.glob("apply-*.jsonl"))


def _run_id(journal: Path) -> str:
    (start,) = [e for e in map(json.loads, journal.read_text().splitlines()) if e.get("event") == "run-start"]
    return start["run_id"]


# -- PostgreSQL estate ----------------------------------------------------------------------------------------------

PG_TARGETS = """version: 1
mappings: email_mappings.json
postgres:
  - name: core
    dsn: ${CORE_DSN}
    lock_timeout: 5s
    tables:
      - table: public.employees
        columns: [email, manager_email]
"""

# Row 3's new email is already held by row 4: the plan deletes row 3 (delete-on-conflict), relying on row 4.
PG_ROWS = [
    (1, "a@old.com", "boss@old.com", "A"),
    (2, "b@old.com", "boss@old.com", "B"),
    (3, "c@old.com", None, "C"),
    (4, "c@new.com", None, "C new"),
    (5, "boss@old.com", None, "Boss"),
]
PG_MAPPINGS = {
    "a@old.com": "a@new.com",
    "b@old.com": "b@new.com",
    "c@old.com": "c@new.com",
    "boss@old.com": "boss@new.com",
}
# What the plan leaves when nobody else writes.
PG_DONE = [
    (1, "a@new.com", "boss@new.com", "A"),
    (2, "b@new.com", "boss@new.com", "B"),
    (4, "c@new.com", None, "C new"),
    (5, "boss@new.com", None, "Boss"),
]
PG_ACTIONS = {
    "public.employees 1 email",
    "public.employees 1 manager_email",
    "public.employees 2 email",
    "public.employees 2 manager_email",
    "public.employees 3 delete-on-conflict",
    "public.employees 5 email",
}


def _pg_setup(ws: Any, db: Any) -> Path:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, manager_email text, name text NOT NULL)")
    for row in PG_ROWS:
        db.execute("INSERT INTO employees VALUES (%s, %s, %s, %s)", row)
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    ws.targets(PG_TARGETS)
    ws.mappings(PG_MAPPINGS)
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert set(_labels(ws, plan).values()) == PG_ACTIONS
    return plan


def _rows(db: Any) -> list[tuple[Any, ...]]:
    return db.rows("SELECT id, email, manager_email, name FROM employees ORDER BY id")


def _ledger(db: Any) -> list[tuple[str, str]]:
    return db.rows("SELECT run_id, status FROM emailsync.ledger ORDER BY started_at")


def _blocked_by(db: Any, holder_pid: int) -> list[int]:
    """Sessions of this database waiting for a lock that `holder_pid` holds."""
    rows = db.rows(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND %s = ANY(pg_blocking_pids(pid))",
        (holder_pid,),
    )
    return sorted(pid for (pid,) in rows)


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _apply(ws: Any, plan: Path, *extra: str) -> Any:
    return ws.run("apply", str(plan), "--auto-approve", *extra)


# -- PostgreSQL: a writer between plan and apply --------------------------------------------------------------------


def test_postgres_writer_between_plan_and_apply_is_stale_and_keeps_its_value(ws, db, reliability):
    """After the plan, another connection commits: row 1's planned email changes, and row 2 gets a new name (a column
    the plan does not touch). --on-stale abort writes nothing; --on-stale skip applies everything else; the other
    writer's values stay in both cases, and verify calls row 1's email drifted."""
    plan = _pg_setup(ws, db)
    with psycopg.connect(db.dsn) as other:  # one real transaction, committed before apply starts
        other.execute("UPDATE employees SET email = 'a@elsewhere.com' WHERE id = 1")
        other.execute("UPDATE employees SET name = 'B (renamed)' WHERE id = 2")
    after_writer = [
        (1, "a@elsewhere.com", "boss@old.com", "A"),
        (2, "b@old.com", "boss@old.com", "B (renamed)"),
        *PG_ROWS[2:],
    ]
    assert _rows(db) == after_writer

    r = _apply(ws, plan)  # --on-stale abort (the default): the database is rolled back
    assert r.code == 3, r.out + r.err
    assert _rows(db) == after_writer
    assert _statuses(ws, plan) == {label: "not-applied" for label in PG_ACTIONS} | {"public.employees 1 email": "stale"}
    (stale,) = [a for a in _report(plan)["actions"] if a["status"] == "stale"]
    assert stale["detail"] == 'email changed since the plan; it now holds "a@elsewhere.com"'

    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3, r.out + r.err
    assert _rows(db) == [
        (1, "a@elsewhere.com", "boss@new.com", "A"),  # the other writer's email kept; the manager column applied
        (2, "b@new.com", "boss@new.com", "B (renamed)"),  # the rename survives the update of the planned columns
        (4, "c@new.com", None, "C new"),
        (5, "boss@new.com", None, "Boss"),
    ]
    assert _statuses(ws, plan) == {label: "applied" for label in PG_ACTIONS} | {"public.employees 1 email": "stale"}
    assert [s for _, s in _ledger(db)] == ["incomplete", "incomplete"]

    code, states = _verify(ws, plan)
    assert code == 3
    assert states == {label: "after" for label in PG_ACTIONS} | {"public.employees 1 email": "drifted"}
    reliability("concurrent writer between plan and apply (PostgreSQL)", "stale reported, other writer's value kept")


def test_postgres_winner_row_changed_after_the_plan_keeps_the_loser_and_verify_agrees(ws, db, reliability):
    """Row 3 is deleted by the plan because row 4 holds c@new.com. After the plan another writer moves row 4 to
    c@moved.com: deleting row 3 now would lose data for nothing. apply must report the delete stale and keep both
    rows; `emailsync verify` must say the same (drifted), not `before` (which means "apply would do it")."""
    plan = _pg_setup(ws, db)
    db.execute("UPDATE employees SET email = 'c@moved.com' WHERE id = 4")
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3, r.out + r.err
    assert _rows(db) == [
        (1, "a@new.com", "boss@new.com", "A"),
        (2, "b@new.com", "boss@new.com", "B"),
        (3, "c@old.com", None, "C"),  # not deleted: the row that was to hold c@new.com no longer does
        (4, "c@moved.com", None, "C new"),  # the other writer's value
        (5, "boss@new.com", None, "Boss"),
    ]
    delete = "public.employees 3 delete-on-conflict"
    assert _statuses(ws, plan) == {label: "applied" for label in PG_ACTIONS} | {delete: "stale"}
    code, states = _verify(ws, plan)
    assert code == 3
    assert states == {label: "after" for label in PG_ACTIONS} | {delete: "drifted"}
    reliability("concurrent writer between plan and apply (PostgreSQL)", "stale reported, other writer's value kept")


def test_postgres_row_taking_a_planned_new_email_after_the_plan_is_stale_not_a_rollback(ws, db, reliability):
    """After the plan another writer inserts row 6 holding a@new.com, the email the plan gives row 1. The unique
    index now forbids row 1's update: that action is stale (its premise, a free new email, no longer holds), row 6
    is kept, and with --on-stale skip every other action is applied, as DynamoDB does for an item created at a
    move's new key."""
    plan = _pg_setup(ws, db)
    db.execute("INSERT INTO employees VALUES (6, 'a@new.com', NULL, 'Newcomer')")
    r = _apply(ws, plan, "--on-stale", "skip")
    rows = _rows(db)
    assert rows[0][:2] == (1, "a@old.com") and rows[-1] == (6, "a@new.com", None, "Newcomer")  # nothing overwritten
    expected = {label: "applied" for label in PG_ACTIONS} | {"public.employees 1 email": "stale"}
    assert _statuses(ws, plan) == expected, r.out
    assert r.code == 3, r.out + r.err
    assert rows == [
        (1, "a@old.com", "boss@new.com", "A"),
        (2, "b@new.com", "boss@new.com", "B"),
        (4, "c@new.com", None, "C new"),
        (5, "boss@new.com", None, "Boss"),
        (6, "a@new.com", None, "Newcomer"),
    ]
    reliability("concurrent writer between plan and apply (PostgreSQL)", "stale reported, other writer's value kept")


# -- PostgreSQL: a writer during apply ------------------------------------------------------------------------------


def _end_when_blocking(db: Any, holder: psycopg.Connection, end: str, waiters: list[int]) -> threading.Thread:
    """A thread that ends `holder`'s open transaction (commit or rollback) as soon as another session waits for one
    of its locks, recording the waiting sessions in `waiters` (a failed wait cannot raise in the test's thread)."""
    pid = holder.info.backend_pid

    def run() -> None:
        _wait_for(lambda: bool(_blocked_by(db, pid)), "apply to wait for the other writer's row lock")
        waiters.extend(_blocked_by(db, pid))
        getattr(holder, end)()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_postgres_apply_waits_for_an_open_writer_then_reports_its_committed_row_stale(ws, db, reliability):
    """When apply starts, another transaction has updated row 1 and row 2's name but not committed. apply's row
    lock waits for it (within lock_timeout); the writer commits while apply waits. apply then sees the committed
    row: row 1 is stale and keeps the writer's email, row 2's rename stays under apply's update, the rest applies."""
    plan = _pg_setup(ws, db)
    holder = psycopg.connect(db.dsn)
    try:
        holder.execute("UPDATE employees SET email = 'a@elsewhere.com' WHERE id = 1")
        holder.execute("UPDATE employees SET name = 'B (renamed)' WHERE id = 2")
        waiters: list[int] = []
        writer = _end_when_blocking(db, holder, "commit", waiters)
        r = _apply(ws, plan, "--on-stale", "skip")
        writer.join(10)
    finally:
        holder.close()
    assert len(waiters) == 1  # apply did wait for the writer's lock (one session: apply's)
    assert r.code == 3, r.out + r.err
    assert _rows(db) == [
        (1, "a@elsewhere.com", "boss@new.com", "A"),
        (2, "b@new.com", "boss@new.com", "B (renamed)"),
        (4, "c@new.com", None, "C new"),
        (5, "boss@new.com", None, "Boss"),
    ]
    assert _statuses(ws, plan) == {label: "applied" for label in PG_ACTIONS} | {"public.employees 1 email": "stale"}
    code, states = _verify(ws, plan)
    assert code == 3 and states == {label: "after" for label in PG_ACTIONS} | {"public.employees 1 email": "drifted"}
    reliability("concurrent writer during apply (PostgreSQL)", "stale reported, other writer's value kept")


def test_postgres_apply_waits_for_an_open_writer_that_rolls_back_then_applies_everything(ws, db, reliability):
    """The same open writer, but it rolls back while apply waits: nothing changed after all, so nothing is stale
    and the whole plan applies (a lock wait alone is no reason to give up)."""
    plan = _pg_setup(ws, db)
    holder = psycopg.connect(db.dsn)
    try:
        holder.execute("UPDATE employees SET email = 'a@elsewhere.com' WHERE id = 1")
        waiters: list[int] = []
        writer = _end_when_blocking(db, holder, "rollback", waiters)
        r = _apply(ws, plan)
        writer.join(10)
    finally:
        holder.close()
    assert len(waiters) == 1
    assert r.code == 0, r.out + r.err
    assert _rows(db) == PG_DONE
    assert _statuses(ws, plan) == {label: "applied" for label in PG_ACTIONS}
    reliability("concurrent writer during apply (PostgreSQL)", "lock wait, then everything applied")


def test_postgres_writer_after_classification_blocks_until_apply_commits_then_lands_on_top(ws, db, reliability):
    """Right after apply has locked and classified the rows and before its first write, two other sessions try to
    change rows: row 1 (planned, locked FOR UPDATE) gets a new name, and row 4 (which row 3's delete relies on, locked
    FOR SHARE) a new email. Both must wait until apply commits (so nothing apply checked can change under it), then
    land on top of apply's result: apply's changes and theirs are all there."""
    plan = _pg_setup(ws, db)
    writes = {
        "row 1": "UPDATE employees SET name = 'A (renamed)' WHERE id = 1",
        "row 4": "UPDATE employees SET email = 'c@moved.com' WHERE id = 4",
    }
    conns = {name: psycopg.connect(db.dsn, autocommit=True) for name in writes}
    writer_pids = sorted(c.info.backend_pid for c in conns.values())
    updated: dict[str, int] = {}
    threads: list[threading.Thread] = []
    seen: dict[str, Any] = {}

    def write(name: str) -> None:
        updated[name] = conns[name].execute(writes[name]).rowcount

    real_step, real_finish = PostgresApplier._run_step, PgLedger.finish

    def step(self: PostgresApplier, step_no: int) -> None:
        if not threads:  # the first step: rows locked and classified, nothing written yet
            apply_pid = self.conn.info.backend_pid
            threads.extend(threading.Thread(target=write, args=(n,), daemon=True) for n in writes)
            for t in threads:
                t.start()
            _wait_for(lambda: _blocked_by(db, apply_pid) == writer_pids, "both writers to wait for apply's row locks")
        real_step(self, step_no)

    def finish(self: PgLedger, status: str, counts: dict[str, int]) -> None:
        # Just before apply commits: the writers are still waiting, and the committed rows are still the old ones.
        seen["before_commit"] = (dict(updated), _blocked_by(db, self.conn.info.backend_pid), _rows(db))
        real_finish(self, status, counts)

    ws.monkeypatch.setattr(PostgresApplier, "_run_step", step)
    ws.monkeypatch.setattr(PgLedger, "finish", finish)
    try:
        r = _apply(ws, plan)
        for t in threads:
            t.join(10)
    finally:
        for c in conns.values():
            c.close()
    assert r.code == 0, r.out + r.err
    assert seen["before_commit"] == ({}, writer_pids, PG_ROWS)
    assert updated == {"row 1": 1, "row 4": 1}
    assert _rows(db) == [
        (1, "a@new.com", "boss@new.com", "A (renamed)"),
        (2, "b@new.com", "boss@new.com", "B"),
        (4, "c@moved.com", None, "C new"),
        (5, "boss@new.com", None, "Boss"),
    ]
    assert _statuses(ws, plan) == {label: "applied" for label in PG_ACTIONS}
    reliability("concurrent writer during apply (PostgreSQL)", "other writer blocked until commit, then kept")


# -- DynamoDB estate ------------------------------------------------------------------------------------------------

DDB_TARGETS = """version: 1
mappings: m.json
dynamodb:
  - name: hr
    endpoint_url: ${DYNAMODB_ENDPOINT}
    ledger_table: emailsync-ledger
    tables:
      - table: users
        attributes: [email]
      - table: profiles
        attributes: [email, watchers]
      - table: logins
        live: true
        attributes: [email]
"""

USERS = [{"email": f"u{i}@old.com", "name": f"U{i}"} for i in range(1, 5)]
PROFILES = [
    {"id": "p1", "email": "u1@old.com"},
    {"id": "p2", "email": "u2@old.com"},
    {"id": "p3", "email": "u3@old.com", "watchers": ["u4@old.com", "x@y.com"]},
]
LOGINS = [{"email": "u4@old.com", "pwd": "h4"}]
DDB_ACTIONS = {
    "users u1@old.com merge-and-move",
    "users u2@old.com merge-and-move",
    "users u3@old.com merge-and-move",
    "users u4@old.com merge-and-move",
    "profiles p1 update",
    "profiles p2 update",
    "profiles p3 update",
    "logins u4@old.com live-swap",
}
LIVE_SWAP = "logins u4@old.com live-swap"


def _ddb_setup(ws: Any, ddb: Any) -> Path:
    ddb.create("users", "email")
    ddb.create("profiles", "id")
    ddb.create("logins", "email")
    ddb.put("users", *USERS)
    ddb.put("profiles", *PROFILES)
    ddb.put("logins", *LOGINS)
    ws.targets(DDB_TARGETS)
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(1, 5)}, name="m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert set(_labels(ws, plan).values()) == DDB_ACTIONS
    return plan


def _tables(ddb: Any) -> dict[str, list[dict[str, Any]]]:
    return {t: ddb.items(t) for t in ("users", "profiles", "logins")}


def _expected(**tables: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Expected items in the order the `ddb` fixture lists them (it sorts, since a Scan has no order)."""
    return {
        t: sorted(items, key=lambda i: json.dumps({k: str(v) for k, v in sorted(i.items())}))
        for t, items in tables.items()
    }


def _moved(i: int) -> dict[str, Any]:
    return {"email": f"u{i}@new.com", "name": f"U{i}"}


# -- DynamoDB: a writer between plan and apply ----------------------------------------------------------------------


def test_dynamodb_writer_between_plan_and_apply_is_stale_and_keeps_its_value(ws, ddb, reliability):
    """After the plan, another client changes u1's item, creates an item at u2's new key, changes p1's planned email
    and adds an attribute to p3 (not one the plan changes). --on-stale abort writes nothing; --on-stale skip applies
    the rest; the other writer's items stay exactly as it left them; verify calls the three stale actions drifted."""
    plan = _ddb_setup(ws, ddb)
    ddb.put("users", {"email": "u1@old.com", "name": "U1 (renamed)"})
    ddb.put("users", {"email": "u2@new.com", "name": "someone else"})
    ddb.put("profiles", {"id": "p1", "email": "p1@elsewhere.com"})
    ddb.put("profiles", {**PROFILES[2], "floor": Decimal(3)})
    after_writer = _tables(ddb)

    # --on-stale abort: nothing written. (--skip-live: the live table is another applier's; see the test after next.)
    r = _apply(ws, plan, "--skip-live")
    assert r.code == 3, r.out + r.err
    assert _tables(ddb) == after_writer
    stale = {"users u1@old.com merge-and-move", "users u2@old.com merge-and-move", "profiles p1 update"}
    assert _statuses(ws, plan) == {a: "stale" if a in stale else "not-applied" for a in DDB_ACTIONS - {LIVE_SWAP}}
    assert sorted(a["detail"] for a in _report(plan)["actions"] if a["status"] == "stale") == [
        "email changed since the plan",
        "the item at the new key exists but the plan expected none",
        "the item differs from the plan in name",
    ]

    r = _apply(ws, plan, "--confirm-live", "--on-stale", "skip")
    assert r.code == 3, r.out + r.err
    assert _tables(ddb) == _expected(
        users=[
            {"email": "u1@old.com", "name": "U1 (renamed)"},
            {"email": "u2@new.com", "name": "someone else"},
            {"email": "u2@old.com", "name": "U2"},
            _moved(3),
            _moved(4),
        ],
        profiles=[
            {"id": "p1", "email": "p1@elsewhere.com"},
            {"id": "p2", "email": "u2@new.com"},
            {"id": "p3", "email": "u3@new.com", "watchers": ["u4@new.com", "x@y.com"], "floor": Decimal(3)},
        ],
        logins=[{"email": "u4@new.com", "pwd": "h4"}],
    )
    assert _statuses(ws, plan) == {a: "stale" if a in stale else "applied" for a in DDB_ACTIONS}
    code, states = _verify(ws, plan)
    assert code == 3 and states == {a: "drifted" if a in stale else "after" for a in DDB_ACTIONS}
    reliability("concurrent writer between plan and apply (DynamoDB)", "stale reported, other writer's value kept")


# -- DynamoDB: a writer during apply --------------------------------------------------------------------------------


def test_dynamodb_writer_during_apply_is_stale_and_keeps_its_value(ws, ddb, reliability):
    """apply's checks pass; then, at the exact moment of each write, another client changes that item first: u3 just
    before the transaction that moves it (with u1, u2 and u4), p2 just before its UpdateItem, and on the live table
    an item appears at u4's new key just before the swap's Put. Each of those is stale and keeps the other writer's
    value; every other action is applied (the transaction's other moves go through on the retry)."""
    plan = _ddb_setup(ws, ddb)
    interleaved: list[str] = []

    def writer(model: Any, params: dict[str, Any], **_: Any) -> None:
        # Runs in apply's thread just before the request is sent: the other client's write lands first, alone.
        body = json.loads(params["body"])
        if model.name == "TransactWriteItems" and not interleaved:
            interleaved.append(f"u3 before a transaction of {len(body['TransactItems'])} writes")
            ddb.put("users", {"email": "u3@old.com", "name": "U3 (renamed)"})
        elif model.name == "UpdateItem" and body["TableName"] == "profiles" and body["Key"] == {"id": {"S": "p2"}}:
            interleaved.append("p2")
            ddb.put("profiles", {"id": "p2", "email": "p2@elsewhere.com"})
        elif model.name == "PutItem" and body["TableName"] == "logins":
            interleaved.append("logins")
            ddb.put("logins", {"email": "u4@new.com", "pwd": "someone else"})

    hook_dynamodb(ws, "before-call.dynamodb", writer)
    # --on-stale skip: with abort, the first stale item found while writing holds back the rest of the target,
    # its live table included (the next test). --concurrency 1: each write in turn, so each writer lands exactly
    # before its own (test_dynamodb_requests_in_flight has many writers against many requests in flight).
    r = _apply(ws, plan, "--confirm-live", "--on-stale", "skip", "--concurrency", "1")
    # One transaction held all four moves (a Put and a Delete each); each write was preceded by its writer once.
    assert interleaved == ["u3 before a transaction of 8 writes", "p2", "logins"]
    assert r.code == 3, r.out + r.err
    assert _tables(ddb) == _expected(
        users=[_moved(1), _moved(2), {"email": "u3@old.com", "name": "U3 (renamed)"}, _moved(4)],
        profiles=[
            {"id": "p1", "email": "u1@new.com"},
            {"id": "p2", "email": "p2@elsewhere.com"},
            {"id": "p3", "email": "u3@new.com", "watchers": ["u4@new.com", "x@y.com"]},
        ],
        logins=[{"email": "u4@new.com", "pwd": "someone else"}, {"email": "u4@old.com", "pwd": "h4"}],
    )
    stale = {"users u3@old.com merge-and-move", "profiles p2 update", "logins u4@old.com live-swap"}
    assert _statuses(ws, plan) == {a: "stale" if a in stale else "applied" for a in DDB_ACTIONS}
    code, states = _verify(ws, plan)
    assert code == 3 and states == {a: "drifted" if a in stale else "after" for a in DDB_ACTIONS}
    reliability("concurrent writer during apply (DynamoDB)", "stale reported, other writer's value kept")


def test_dynamodb_on_stale_abort_writes_nothing_to_the_target_live_table_included(ws, ddb, reliability):
    """One item of the target's non-live table changes after the plan. With --on-stale abort (the default) the README
    promises that nothing is written to the target; the live swap, confirmed with --confirm-live, is part of that
    target and must not run either: the login table keeps u4@old.com."""
    plan = _ddb_setup(ws, ddb)
    ddb.put("profiles", {"id": "p1", "email": "p1@elsewhere.com"})
    after_writer = _tables(ddb)
    r = _apply(ws, plan, "--confirm-live")
    assert r.code == 3, r.out + r.err
    statuses = _statuses(ws, plan)
    assert statuses["profiles p1 update"] == "stale"
    assert _tables(ddb)["profiles"] == after_writer["profiles"] and _tables(ddb)["users"] == after_writer["users"]
    assert statuses[LIVE_SWAP] == "not-applied", r.out
    assert _tables(ddb) == after_writer
    reliability("concurrent writer between plan and apply (DynamoDB)", "stale, --on-stale abort: nothing written")


# -- two appliers at once -------------------------------------------------------------------------------------------


def test_two_appliers_on_one_postgres_target_the_second_is_refused_and_writes_nothing(ws, db, reliability):
    """While the first apply holds its transaction open (written and verified, just before commit), a second
    `emailsync apply` of the same plan starts in another process. It is refused with exit 1 and a message naming
    the first apply's session; it writes no row, no ledger entry, no journal and no report. The first then commits
    the plan exactly."""
    plan = _pg_setup(ws, db)
    seen: dict[str, Any] = {}
    real_finish = PgLedger.finish

    def finish(self: PgLedger, status: str, counts: dict[str, int]) -> None:
        if not seen:  # mid-apply: the first's changes are written, uncommitted, and it holds the lock
            seen["first"] = (self.run.run_id, self.conn.info.backend_pid)
            seen["second"] = _cli(ws, "apply", str(plan), "--targets", "targets.yaml", "--auto-approve")
            seen["during"] = (_rows(db), _ledger(db), _journals(plan), (plan.parent / "report.json").exists())
        real_finish(self, status, counts)

    ws.monkeypatch.setattr(PgLedger, "finish", finish)
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    run_id, apply_pid = seen["first"]
    second = seen["second"]
    assert second.returncode == 1, second.stdout + second.stderr
    assert "Traceback" not in second.stderr and second.stdout == ""
    assert second.stderr.startswith(
        f"error: target 'core' is locked: another emailsync apply is running on this database: emailsync apply "
        f"{run_id} (database user postgres, pid {apply_pid}, "
    ), second.stderr
    # While the first was still open, the second had changed nothing: the committed rows were the original ones,
    # the ledger held only the first's running entry, and only the first's journal existed; no report yet.
    rows, ledger, journals, report_existed = seen["during"]
    assert rows == PG_ROWS and ledger == [(run_id, "running")] and not report_existed
    assert len(journals) == 1 and _run_id(journals[0]) == run_id
    # After the first: exactly the planned result, one run in the ledger, one journal, the first's report.
    assert _rows(db) == PG_DONE
    assert _ledger(db) == [(run_id, "complete")]
    assert _journals(plan) == journals
    assert _report(plan)["run_id"] == run_id
    assert _statuses(ws, plan) == {label: "applied" for label in PG_ACTIONS}
    reliability("two appliers at once", "second refused, exit 1, nothing written", detail="PostgreSQL")


def test_two_appliers_on_one_dynamodb_target_the_second_is_refused_and_writes_nothing(ws, ddb, reliability):
    """The first apply holds the lock item in the ledger table; just before its first write (the moves'
    transaction), a second `emailsync apply` of the same plan starts in another process. It is refused with exit 1
    and a message naming the first apply (its pid and run), and writes nothing: no item, no ledger entry, no
    journal, no report. The first then applies the plan exactly and releases the lock."""
    plan = _ddb_setup(ws, ddb)
    seen: dict[str, Any] = {}

    def second_applier(**_: Any) -> None:
        if not seen:
            seen["second"] = _cli(
                ws, "apply", str(plan), "--targets", "targets.yaml", "--auto-approve", "--confirm-live"
            )
            seen["during"] = (
                _tables(ddb),
                ddb.items("emailsync-ledger"),
                _journals(plan),
                (plan.parent / "report.json").exists(),
            )

    hook_dynamodb(ws, "before-call.dynamodb.TransactWriteItems", second_applier)
    r = _apply(ws, plan, "--confirm-live", "--concurrency", "1")  # the transaction is the first write, alone
    assert r.code == 0, r.out + r.err
    (journal,) = _journals(plan)
    run_id = _run_id(journal)
    second = seen["second"]
    assert second.returncode == 1, second.stdout + second.stderr
    assert "Traceback" not in second.stderr and second.stdout == ""
    assert "error: target 'hr' is locked by another emailsync apply: " in second.stderr
    assert f"(pid {os.getpid()}, run {run_id}, since " in second.stderr, second.stderr
    # While the first held the lock, the second had written nothing: the items were the original ones, the ledger
    # table held only the first's lock and run, only the first's journal existed, and no report.
    tables, ledger, journals, report_existed = seen["during"]
    assert tables == _expected(users=USERS, profiles=PROFILES, logins=LOGINS) and not report_existed
    assert sorted((i["pk"], i.get("run_id")) for i in ledger) == [
        ("lock", run_id),
        (f"run#{_report(plan)['plan_digest']}", run_id),
    ]
    assert journals == [journal]
    assert _tables(ddb) == _expected(
        users=[_moved(i) for i in range(1, 5)],
        profiles=[
            {"id": "p1", "email": "u1@new.com"},
            {"id": "p2", "email": "u2@new.com"},
            {"id": "p3", "email": "u3@new.com", "watchers": ["u4@new.com", "x@y.com"]},
        ],
        logins=[{"email": "u4@new.com", "pwd": "h4"}],
    )
    assert _report(plan)["run_id"] == run_id
    assert _statuses(ws, plan) == {a: "applied" for a in DDB_ACTIONS}
    ledger = ddb.items("emailsync-ledger")
    assert [(i["pk"].split("#")[0], i["run_id"], i["status"]) for i in ledger] == [("run", run_id, "complete")]
    reliability("two appliers at once", "second refused, exit 1, nothing written", detail="DynamoDB")
