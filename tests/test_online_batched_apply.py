"""apply --batch-size: a database changed in batches that each commit alone, ending exactly where one transaction
would, with every batch recorded in the ledger so a rerun goes on where a run stopped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from helpers import table_dump

MAPPINGS = {
    "a@x.com": "b@x.com",  # a chain: b moves to c first, then a to b
    "b@x.com": "c@x.com",
    "p@x.com": "m@x.com",  # a merge
    "q@x.com": "m@x.com",
    "d@old.com": "d@new.com",  # d@new.com is taken: delete-on-conflict
    **{f"u{i}@old.com": f"u{i}@new.com" for i in range(40)},
}

TABLES = """\
- table: employees
  columns: [email, manager_email]
  on_conflict: delete
- table: settings
  columns: [email]
  on_conflict: delete
- table: badges
  columns: [owner]
- table: requests
  columns: [email, approvers, meta]
"""


def seed(db: Any) -> None:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, manager_email text, name text)")
    rows = [
        (1, "a@x.com", "b@x.com", "Ann"),
        (2, "b@x.com", "u0@old.com", "Ben"),
        (3, "p@x.com", None, "Pat"),
        (4, "q@x.com", "p@x.com", "Quinn"),
        (5, "d@old.com", None, "Dee"),
        (6, "d@new.com", "d@old.com", "Dee New"),
        (99, "keep@y.com", None, "Keep"),
        *((10 + i, f"u{i}@old.com", f"u{i + 1}@old.com" if i < 39 else "keep@y.com", f"U{i}") for i in range(40)),
    ]
    with db.connect() as c, c.cursor() as cur:
        cur.executemany("INSERT INTO employees VALUES (%s, %s, %s, %s)", rows)
    db.execute("CREATE TABLE settings (email text PRIMARY KEY, theme text)")
    db.execute(
        "INSERT INTO settings VALUES ('a@x.com', 'dark'), ('b@x.com', 'light'), ('c@x.com', 'blue'), "
        "('u1@old.com', 'green'), ('u2@old.com', 'red'), ('zz@y.com', 'plain'), ('u3@new.com', 'taken')"
    )
    db.execute(
        "CREATE TABLE badges (id int PRIMARY KEY, owner text REFERENCES employees (email) ON UPDATE CASCADE)"
    )
    db.execute("INSERT INTO badges SELECT i, 'u' || i || '@old.com' FROM generate_series(0, 39) i")
    db.execute("CREATE TABLE requests (id int PRIMARY KEY, email text, approvers text[], meta jsonb)")
    with db.connect() as c, c.cursor() as cur:
        cur.executemany(
            "INSERT INTO requests VALUES (%s, %s, %s, %s)",
            [
                (i, f"u{i}@old.com", [f"u{(i * 7) % 40}@old.com", "keep@y.com"], json.dumps({"cc": "a@x.com", "n": i}))
                for i in range(40)
            ],
        )


def dump(db: Any) -> list[Any]:
    return table_dump(db, "employees", "settings", "badges", "requests")


@pytest.mark.parametrize("size", [1, 3, 25])
def test_batches_end_where_one_transaction_ends(make_db: Any, ws: Any, size: int) -> None:
    one, batched = make_db(), make_db()
    seed(one)
    seed(batched)
    ws.mappings(MAPPINGS)
    ws.postgres_targets({"core": one}, TABLES)
    r, plan_one = ws.plan()
    assert r.code == 0, r.err
    r = ws.run("apply", str(plan_one), "--auto-approve")
    assert r.code == 0, r.out + r.err
    ws.postgres_targets({"core": batched}, TABLES)
    r, plan = ws.plan()
    assert r.code == 0, r.err
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", str(size))
    assert r.code == 0, r.out + r.err
    assert dump(batched) == dump(one)
    got = batched.rows("SELECT count(*), min(batches), max(batch_size) FROM emailsync.batches")
    print(got, r.err)
    assert got[0][0] == got[0][1] and got[0][2] == size


def planned(ws: Any, db: Any) -> Any:
    seed(db)
    ws.mappings(MAPPINGS)
    ws.postgres_targets({"core": db}, TABLES)
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


def test_sigterm_pauses_after_the_batch_in_flight_and_a_rerun_goes_on(make_db: Any, ws: Any) -> None:
    """SIGTERM mid-run: the batch in flight commits, the run stops with exit code 130 and says how to go on; status
    shows the batches done; `apply PLAN` without --batch-size goes on at the same size and ends where one
    transaction would."""
    import signal
    import time

    from helpers import cli_process

    ref, db = make_db(), make_db()
    seed(ref)
    ws.mappings(MAPPINGS)
    ws.postgres_targets({"core": ref}, TABLES)
    _, ref_plan = ws.plan()
    assert ws.run("apply", str(ref_plan), "--auto-approve").code == 0
    plan = planned(ws, db)
    # 5 rows a second: the run takes about half a minute, so the signal lands mid-run.
    proc = cli_process(ws, "apply", str(plan), "--auto-approve", "--batch-size", "5", "--max-rate", "5")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if db.rows("SELECT to_regclass('emailsync.batches') IS NOT NULL")[0][0] and db.rows(
            "SELECT count(*) FROM emailsync.batches"
        )[0][0] >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "SIGTERM: pausing" in err and "paused: the batches that ran are committed" in err
    assert f"emailsync apply {plan}" in err
    done = db.rows("SELECT count(*), min(batches) FROM emailsync.batches")[0]
    assert 2 <= done[0] < done[1]
    assert db.rows("SELECT status FROM emailsync.ledger") == [("paused",)]
    # status: the batches and rows done, read from the ledger
    r = ws.run("status", str(plan))
    assert r.code == 0, r.err
    assert f"{done[0]} of {done[1]}" in r.out and "paused" in r.out
    r = ws.run("status", str(plan), "--json")
    t = json.loads(r.out)["targets"][0]
    assert t["state"] == "paused" and t["batches_done"] == done[0] and t["batches"] == done[1]
    assert t["rows_done"] < t["rows_total"]
    # the rerun: the committed batches are not run again
    first_run = db.rows("SELECT batch, run_id FROM emailsync.batches ORDER BY batch")
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT batch, run_id FROM emailsync.batches ORDER BY batch")[: len(first_run)] == first_run
    assert db.rows("SELECT count(*) FROM emailsync.batches")[0][0] == done[1]
    assert dump(db) == dump(ref)
    r = ws.run("status", str(plan), "--json")
    t = json.loads(r.out)["targets"][0]
    assert t["state"] == "complete" and t["batches_done"] == t["batches"] and t["rows_done"] == t["rows_total"]


def test_a_rerun_with_another_batch_size_is_refused(make_db: Any, ws: Any) -> None:
    import signal
    import time

    from helpers import cli_process

    db = make_db()
    plan = planned(ws, db)
    proc = cli_process(ws, "apply", str(plan), "--auto-approve", "--batch-size", "5", "--max-rate", "10")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if db.rows("SELECT to_regclass('emailsync.batches') IS NOT NULL")[0][0] and db.rows(
            "SELECT count(*) FROM emailsync.batches"
        )[0][0] >= 1:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    before = dump(db)
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "7")
    assert r.code == 1
    assert "--batch-size 5" in r.err and "nothing was written" in r.err and "Traceback" not in r.err
    assert dump(db) == before
