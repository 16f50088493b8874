"""apply --parallel: PostgreSQL databases applied at the same time, each in its own transaction, journaled by one
writer whose records never interleave; one database's stale rows hold back only that database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import plan_doc


def _estate(ws: Any, make_db: Any, n: int = 3) -> tuple[list[Any], Path]:
    dbs = [make_db() for _ in range(n)]
    for db in dbs:
        db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
        for i in range(1, 41):
            db.execute("INSERT INTO employees VALUES (%s, %s)", (i, f"u{i}@old.com"))
    ws.postgres_targets({f"db{k}": db for k, db in enumerate(dbs)}, "- {table: employees, columns: [email]}")
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(1, 41)})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return dbs, plan


def _journal(plan: Path) -> list[dict[str, Any]]:
    (path,) = sorted(plan.parent.glob("apply-*.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]  # every line whole: none interleaved


def test_databases_applied_in_parallel_each_record_their_own_transaction(ws: Any, make_db: Any) -> None:
    dbs, plan = _estate(ws, make_db)
    r = ws.run("apply", str(plan), "--auto-approve", "--parallel", "3")
    assert r.code == 0, r.out + r.err
    for db in dbs:
        assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(i, f"u{i}@new.com") for i in range(1, 41)]
    writes = [e for e in _journal(plan) if e["event"] == "write"]
    for k in range(3):
        mine = [e for e in writes if e["target"] == f"db{k}"]
        assert [e["phase"] for e in mine] == ["before", "after"]
        assert len(mine[0]["actions"]) == 40 and set(mine[1]["outcomes"].values()) == {"applied"}
    report = json.loads(plan.with_name("report.json").read_text())
    assert sorted(a["id"] for a in report["actions"]) == sorted(a["id"] for a in plan_doc(plan)["actions"])
    again = ws.run("apply", str(plan), "--auto-approve", "--parallel", "3")  # every ledger records it complete
    assert again.code == 1 and "has already been applied completely" in again.err


def test_stale_rows_in_one_database_hold_back_only_that_database(ws: Any, make_db: Any) -> None:
    dbs, plan = _estate(ws, make_db, 2)
    dbs[1].execute("UPDATE employees SET email = 'changed@x.com' WHERE id = 7")
    r = ws.run("apply", str(plan), "--auto-approve", "--parallel", "2")
    assert r.code == 3, r.out + r.err
    assert dbs[0].rows("SELECT email FROM employees ORDER BY id") == [(f"u{i}@new.com",) for i in range(1, 41)]
    left = [(i, "changed@x.com" if i == 7 else f"u{i}@old.com") for i in range(1, 41)]
    assert dbs[1].rows("SELECT id, email FROM employees ORDER BY id") == left  # rolled back whole (--on-stale abort)
    report = json.loads(plan.with_name("report.json").read_text())
    by_target = {t["target"]: t for t in report["targets"]}
    assert by_target["db0"]["committed"] and not by_target["db1"]["committed"]


def test_ctrl_c_stops_every_worker_and_a_rerun_finishes_the_plan(ws: Any, make_db: Any) -> None:
    """Three databases applied at once; db1 waits for a row another session holds while db0 and db2 commit. Ctrl-C
    then: one line, exit 130, db1's transaction rolled back and its connection gone (no worker left running), the
    others kept. The same command again finishes db1 and re-checks the others."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psycopg

    from emailsync.errors import INTERRUPTED

    dbs, plan = _estate(ws, make_db)
    old = [(i, f"u{i}@old.com") for i in range(1, 41)]
    new = [(i, f"u{i}@new.com") for i in range(1, 41)]
    script = Path(sys.executable).with_name("emailsync")
    args = [str(script), "apply", str(plan), "--auto-approve", "--quiet", "--parallel", "3"]
    with psycopg.connect(dbs[1].dsn) as holder, psycopg.connect(dbs[1].dsn, autocommit=True) as watcher:
        holder.execute("SELECT * FROM employees WHERE id = 7 FOR UPDATE")
        proc = subprocess.Popen(
            args, cwd=ws.path, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        waits = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        deadline = time.monotonic() + 60
        while not (
            watcher.execute(waits).fetchone()[0]  # type: ignore[index]
            and dbs[0].rows("SELECT id, email FROM employees ORDER BY id") == new
            and dbs[2].rows("SELECT id, email FROM employees ORDER BY id") == new
        ):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "db1 never waited while the others committed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert (proc.returncode, err.decode()) == (130, INTERRUPTED)
        others = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        assert watcher.execute(others).fetchone() == (1,)  # only the holder: apply's session ended with it
        holder.rollback()
    assert dbs[1].rows("SELECT id, email FROM employees ORDER BY id") == old
    assert [db.rows("SELECT id, email FROM employees ORDER BY id") == new for db in (dbs[0], dbs[2])] == [True, True]

    again = subprocess.run(args, cwd=ws.path, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    for db in dbs:
        assert db.rows("SELECT id, email FROM employees ORDER BY id") == new
    # db1 records the cancelled transaction as failed; the interrupted run never reached its end, so the rerun
    # resumes it (no replay refused) and records itself.
    assert dbs[1].rows("SELECT status FROM emailsync.ledger ORDER BY started_at") == [("failed",), ("complete",)]
