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
