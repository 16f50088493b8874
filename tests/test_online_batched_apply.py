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
- table: cards
  columns: [holder]
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
    db.execute("CREATE TABLE badges (id int PRIMARY KEY, owner text REFERENCES employees (email) ON UPDATE CASCADE)")
    db.execute("INSERT INTO badges SELECT i, 'u' || i || '@old.com' FROM generate_series(0, 39) i")
    # A foreign key checked at the end of each statement (NO ACTION): a batch holding a card but not the row it
    # points at would fail; related rows (one address) always share a batch.
    db.execute("CREATE TABLE cards (id int PRIMARY KEY, holder text NOT NULL REFERENCES employees (email))")
    db.execute(
        "INSERT INTO cards VALUES (1, 'a@x.com'), (2, 'b@x.com'), (3, 'p@x.com')"
        + "".join(f", ({10 + i}, 'u{i}@old.com')" for i in range(0, 40, 3))
    )
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
    return table_dump(db, "employees", "settings", "badges", "cards", "requests")


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


def paused(ws: Any, db: Any, plan: Any, sig: int, batches: int, rate: str) -> str:
    """`apply PLAN --batch-size 5 --max-rate RATE` in its own process, sent `sig` once `batches` batches have
    committed; it must stop with exit code 130. Its stderr."""
    from helpers import cli_process

    proc = cli_process(ws, "apply", str(plan), "--auto-approve", "--batch-size", "5", "--max-rate", rate)
    _wait_for_batches(db, batches)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    return err


def test_sigterm_pauses_after_the_batch_in_flight_and_a_rerun_goes_on(make_db: Any, ws: Any) -> None:
    """SIGTERM mid-run: the batch in flight commits, the run stops with exit code 130 and says how to go on; status
    shows the batches done; `apply PLAN` without --batch-size goes on at the same size and ends where one
    transaction would."""
    import signal

    want = reference(make_db, ws)
    db = make_db()
    plan = planned(ws, db)
    # 5 rows a second: the run takes about a minute, so the signal lands mid-run.
    err = paused(ws, db, plan, signal.SIGTERM, 2, "5")
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
    assert dump(db) == want
    r = ws.run("status", str(plan), "--json")
    t = json.loads(r.out)["targets"][0]
    assert t["state"] == "complete" and t["batches_done"] == t["batches"] and t["rows_done"] == t["rows_total"]


def test_a_rerun_with_another_batch_size_is_refused(make_db: Any, ws: Any) -> None:
    import signal

    db = make_db()
    plan = planned(ws, db)
    paused(ws, db, plan, signal.SIGINT, 1, "10")
    before = dump(db)
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "7")
    assert r.code == 1
    assert "--batch-size 5" in r.err and "nothing was written" in r.err and "Traceback" not in r.err
    assert dump(db) == before


def _wait_for_batches(db: Any, n: int, seconds: float = 30) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (
            db.rows("SELECT to_regclass('emailsync.batches') IS NOT NULL")[0][0]
            and db.rows("SELECT count(*) FROM emailsync.batches")[0][0] >= n
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} batch(es) not committed within {seconds} s")


def reference(make_db: Any, ws: Any) -> list[Any]:
    """The rows a one-transaction apply of the estate ends with."""
    ref = make_db()
    seed(ref)
    ws.mappings(MAPPINGS)
    ws.postgres_targets({"core": ref}, TABLES)
    _, plan = ws.plan()
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    return dump(ref)


def test_a_replica_lagging_holds_the_batches_back_and_apply_says_so(make_db: Any, ws: Any) -> None:
    """--max-replica-lag: while the lag the target reports is above it, no batch starts, and apply says why; once it
    drops, the batches run. The lag is read with the target's replica_lag_query, here from a table the test sets."""
    import threading
    import time

    want = reference(make_db, ws)
    db = make_db()
    plan = planned(ws, db)
    db.execute("CREATE TABLE lag_probe (seconds float8)")
    db.execute("INSERT INTO lag_probe VALUES (30)")
    text = ws.path.joinpath("targets.yaml").read_text()
    ws.targets(text.replace("    tables:", "    replica_lag_query: SELECT seconds FROM lag_probe\n    tables:"))
    caught_up: list[float] = []

    def catch_up() -> None:
        time.sleep(2.5)
        db.execute("UPDATE lag_probe SET seconds = 0.5")
        caught_up.append(time.time())

    t = threading.Thread(target=catch_up)
    t.start()
    start = time.monotonic()
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "20", "--max-replica-lag", "2")
    t.join()
    assert r.code == 0, r.out + r.err
    assert time.monotonic() - start >= 2.5
    assert "core: waiting: replica lag 30.0 s is above --max-replica-lag 2 s" in r.err
    first = db.rows("SELECT extract(epoch FROM min(started_at))::float8 FROM emailsync.batches")[0][0]
    assert first >= caught_up[0] - 0.05  # nothing started while the replica lagged
    assert dump(db) == want


def test_without_replicas_the_lag_read_from_pg_stat_replication_holds_nothing_back(make_db: Any, ws: Any) -> None:
    want = reference(make_db, ws)
    db = make_db()
    plan = planned(ws, db)
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "20", "--max-replica-lag", "0")
    assert r.code == 0, r.out + r.err
    assert "replica lag" not in r.err
    assert dump(db) == want


def test_a_batch_that_waits_too_long_for_a_lock_is_retried_after_a_back_off(make_db: Any, ws: Any) -> None:
    """Another transaction holds a planned row for 2 s: the batch holding that row times out after --lock-timeout,
    rolls back, and is tried again after 1 s, then 2 s; it commits once the row is free. Nothing waits longer than
    the lock timeout at a time."""
    import threading
    import time

    want = reference(make_db, ws)
    db = make_db()
    plan = planned(ws, db)
    other = db.connect()
    other.autocommit = False
    other.execute("SELECT * FROM employees WHERE email = 'u20@old.com' FOR UPDATE")

    def release() -> None:
        time.sleep(2.0)
        other.rollback()

    t = threading.Thread(target=release)
    t.start()
    try:
        r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "20", "--lock-timeout", "300ms")
    finally:
        t.join()
        other.close()
    assert r.code == 0, r.out + r.err
    assert "canceling statement due to lock timeout; trying again in 1 s (retry 1)" in r.err
    assert dump(db) == want


def test_without_retries_a_locked_batch_stops_the_apply_and_a_rerun_finishes(make_db: Any, ws: Any) -> None:
    want = reference(make_db, ws)
    db = make_db()
    plan = planned(ws, db)
    other = db.connect()
    other.autocommit = False
    other.execute("SELECT * FROM employees WHERE email = 'u20@old.com' FOR UPDATE")
    try:
        r = ws.run(
            "apply", str(plan), "--auto-approve", "--batch-size", "20", "--lock-timeout", "200ms", "--retries", "0"
        )
    finally:
        other.rollback()
        other.close()
    assert r.code == 3
    assert "lock timeout" in r.out and "stay committed and none after it ran" in r.out
    done, of = db.rows("SELECT count(*), min(batches) FROM emailsync.batches")[0]
    assert 0 < done < of  # the batches before the locked one committed
    assert db.rows("SELECT status FROM emailsync.ledger") == [("failed",)]
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert dump(db) == want


def test_json_events_and_the_report_say_how_the_batches_went(make_db: Any, ws: Any) -> None:
    db = make_db()
    plan = planned(ws, db)
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "30", "--json")
    assert r.code == 0, r.err
    events = [json.loads(line) for line in r.err.splitlines() if line.startswith("{")]
    batches = [e for e in events if e["event"] == "batch"]
    assert [e["batch"] for e in batches] == list(range(1, len(batches) + 1))
    assert batches[-1]["rows_done"] == batches[-1]["rows_todo"] and batches[-1]["eta_s"] == 0
    assert all(e["rows_per_s"] > 0 and e["target"] == "core" for e in batches)
    report = json.loads(r.out)
    b = report["targets"][0]["batches"]
    assert b == {"batch_size": 30, "batches": len(batches), "committed": len(batches), "resumed": 0}
    first = db.rows("SELECT DISTINCT run_id FROM emailsync.batches")
    r = ws.run("apply", str(plan), "--auto-approve", "--force", "--batch-size", "30")
    assert r.code == 0, r.out + r.err
    assert f"{len(batches)} of {len(batches)} batches of about 30 actions committed." in r.out
    assert "not changed all at once" in r.out
    # --force ran every batch again (each found already applied) and recorded this run's batches instead
    again = db.rows("SELECT DISTINCT run_id FROM emailsync.batches")
    assert len(again) == 1 and again != first
    assert db.rows("SELECT count(*) FROM emailsync.batches")[0][0] == len(batches)


def test_option_mistakes_are_one_error_and_write_nothing(make_db: Any, ws: Any) -> None:
    from helpers import snapshot

    db = make_db()
    plan = planned(ws, db)
    before = snapshot(db)
    for args, says in (
        (("--lock-timeout", "5 seconds"), "--lock-timeout '5 seconds' is not a duration"),
        (("--statement-timeout", "1;DROP"), "--statement-timeout '1;DROP' is not a duration"),
        (("--batch-size", "0"), "--batch-size"),
        (("--max-rate", "0"), "--max-rate"),
        (("--retries", "-1"), "--retries"),
    ):
        r = ws.run("apply", str(plan), "--auto-approve", *args)
        assert r.code == 1, (args, r.out, r.err)
        assert r.err.startswith("error:") and says in r.err and "Traceback" not in r.err
    assert snapshot(db) == before


def test_a_rollback_plan_restores_the_batches_a_paused_apply_committed(make_db: Any, ws: Any) -> None:
    import signal

    from helpers import rollback_plan

    db = make_db()
    plan = planned(ws, db)
    before = dump(db)
    paused(ws, db, plan, signal.SIGINT, 3, "10")
    assert dump(db) != before
    back = rollback_plan(ws, plan)
    r = ws.run("apply", str(back), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert dump(db) == before


def test_plan_md_advises_batches_for_a_large_database(make_db: Any, ws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from emailsync import render

    db = make_db()
    monkeypatch.setattr(render, "BATCH_ADVICE_ACTIONS", 100)  # the estate has a few hundred; the default is 50,000
    plan = planned(ws, db)
    n = sum(r["count"] for r in ws.plan_json(plan)["summary"] if r["kind"] != "skipped-conflict")
    assert n > 100
    md = plan.with_name("plan.md").read_text()
    assert f"**Large database changes**: `core` ({n:,} actions)" in md
    assert "--batch-size 10000" in md and "not changed all at once" in md
    monkeypatch.setattr(render, "BATCH_ADVICE_ACTIONS", 50_000)
    _, small = ws.plan()
    assert "Large database changes" not in small.with_name("plan.md").read_text()


DDB_TABLES = """\
      - table: profiles
        attributes: [email]
"""


def test_a_dynamodb_target_pauses_between_batches_of_items_and_goes_on(ddb: Any, ws: Any) -> None:
    """--batch-size on a DynamoDB target: its writes go out that many items at a time, SIGTERM stops between two
    batches (exit code 130), and the rerun writes the rest; every item ends changed exactly once."""
    import signal
    import time

    from helpers import DDB_ONLY, cli_process

    ddb.create("profiles", "id")
    n = 40
    ddb.put("profiles", *({"id": f"p{i}", "email": f"u{i}@old.com"} for i in range(n)))
    ws.targets(DDB_ONLY.format(tables=DDB_TABLES))
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(n)}, "m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    proc = cli_process(
        ws, "apply", str(plan), "--auto-approve", "--batch-size", "4", "--max-rate", "10", "--concurrency", "1"
    )

    def moved() -> int:
        return sum(1 for it in ddb.items("profiles") if it["email"].endswith("@new.com"))

    deadline = time.monotonic() + 30
    while moved() < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "paused: the batches that ran are committed" in err
    done = moved()
    assert 8 <= done < n and done % 4 == 0  # whole batches only
    report = json.loads(plan.with_name("report.json").read_text())
    statuses = {a["status"] for a in report["actions"]}
    assert statuses == {"applied", "not-applied"} and report.get("paused") is True
    r = ws.run("status", str(plan), "--json")
    assert r.code == 0, r.err
    (t,) = json.loads(r.out)["targets"]
    assert t["store"] == "dynamodb" and t["state"] == "incomplete" and t["rows_done"] == done
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "4")
    assert r.code == 0, r.out + r.err
    assert sorted((it["id"], it["email"]) for it in ddb.items("profiles")) == sorted(
        (f"p{i}", f"u{i}@new.com") for i in range(n)
    )
    (t,) = json.loads(ws.run("status", str(plan), "--json").out)["targets"]
    assert t["state"] == "complete" and t["runs"] == 2


def test_a_role_granted_the_ledger_alone_is_told_what_to_grant_for_batches(make_db: Any, ws: Any) -> None:
    """An administrator set up the ledger before batches came, granting the apply role emailsync.ledger only: a
    batched apply is refused with the grant to make, nothing written; without --batch-size it applies."""
    from helpers import snapshot

    db = make_db()
    role = f"r_{db.name}"
    plan = planned(ws, db)
    db.execute("CREATE SCHEMA emailsync")
    db.execute(
        "CREATE TABLE emailsync.ledger (run_id text NOT NULL, target text NOT NULL, plan_digest text NOT NULL, "
        "status text NOT NULL, started_at timestamptz NOT NULL, finished_at timestamptz, applied_by text NOT NULL, "
        "host text NOT NULL, approver text, tool_version text NOT NULL, counts jsonb, PRIMARY KEY (run_id, target))"
    )
    db.execute(f"CREATE ROLE {role} LOGIN")
    db.execute(f'REVOKE CREATE ON DATABASE "{db.name}" FROM PUBLIC')
    db.execute(f"GRANT USAGE ON SCHEMA emailsync TO {role}")
    db.execute(f"GRANT SELECT, INSERT, UPDATE ON emailsync.ledger TO {role}")
    db.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
    ws.monkeypatch.setenv("CORE_DSN", db.dsn.replace("user=postgres", f"user={role}"))
    before = snapshot(db)
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "10")
    assert r.code == 1 and "grant SELECT, INSERT (and DELETE, for --force) on emailsync.batches" in r.err
    assert "Traceback" not in r.err
    assert snapshot(db) == before
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err


def test_an_address_many_rows_share_is_one_batch_of_its_own(make_db: Any, ws: Any) -> None:
    """Rows of one address go together whatever the batch size: twelve rows of a shared address are one batch of
    twelve, and the other batches keep to the size."""
    db = make_db()
    db.execute("CREATE TABLE notes (id int PRIMARY KEY, author text)")
    db.execute(
        "INSERT INTO notes SELECT i, CASE WHEN i % 3 = 0 AND i <= 36 THEN 'noreply@old.com' "
        "ELSE 'p' || i || '@old.com' END FROM generate_series(1, 60) i"
    )
    ws.mappings({"noreply@old.com": "noreply@new.com", **{f"p{i}@old.com": f"p{i}@new.com" for i in range(1, 61)}})
    ws.postgres_targets({"core": db}, "- table: notes\n  columns: [author]\n")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "5")
    assert r.code == 0, r.out + r.err
    sizes = [n for (n,) in db.rows("SELECT rows_in FROM emailsync.batches ORDER BY batch")]
    assert 12 in sizes and sum(sizes) == 60 and all(n <= 5 for n in sizes if n != 12)
    assert db.rows("SELECT count(*) FROM notes WHERE author LIKE '%@new.com'") == [(60,)]


def test_a_unique_index_batches_cannot_follow_is_refused_before_anything_is_written(make_db: Any, ws: Any) -> None:
    from helpers import snapshot

    db = make_db()
    db.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text)")
    db.execute("CREATE UNIQUE INDEX accounts_undotted ON accounts ((replace(email, '.', '')))")
    db.execute("INSERT INTO accounts VALUES (1, 'a@old.com'), (2, 'b@old.com')")
    ws.mappings({"a@old.com": "a@new.com", "b@old.com": "b@new.com"})
    ws.postgres_targets({"core": db}, "- table: accounts\n  columns: [email]\n")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    before = snapshot(db)
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "1")
    assert r.code == 1 and "Traceback" not in r.err
    assert "public.accounts cannot be applied in batches: its unique index accounts_undotted" in r.err
    assert "apply this target without --batch-size" in r.err
    assert snapshot(db) == before
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    assert db.rows("SELECT email FROM accounts ORDER BY id") == [("a@new.com",), ("b@new.com",)]


def test_pacing_without_batches_and_an_unreadable_lag_query_are_refused(make_db: Any, ws: Any) -> None:
    from helpers import snapshot

    db = make_db()
    plan = planned(ws, db)
    before = snapshot(db)
    for flag in ("--max-rate", "--max-replica-lag"):
        r = ws.run("apply", str(plan), "--auto-approve", flag, "5")
        assert r.code == 1 and f"{flag} paces an apply in batches: pass --batch-size N" in r.err
    text = ws.path.joinpath("targets.yaml").read_text()
    ws.targets(text.replace("    tables:", "    replica_lag_query: SELECT 'soon'\n    tables:"))
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "10", "--max-replica-lag", "5")
    assert r.code == 1 and "Traceback" not in r.err
    assert "reading replica_lag_query for --max-replica-lag failed" in r.err and "nothing was written" in r.err
    assert snapshot(db) == before


def test_a_connection_lost_mid_run_is_reported_and_a_rerun_goes_on(make_db: Any, ws: Any) -> None:
    """The apply's backend is terminated between batches (a failover, an administrator): apply says so, exits 3 with
    a report of what it knows, the committed batches stay, and a rerun ends where one transaction ends."""
    import threading

    want = reference(make_db, ws)
    db = make_db()
    plan = planned(ws, db)
    killed: list[int] = []

    def terminate() -> None:
        _wait_for_batches(db, 3)
        killed.extend(
            pid
            for (pid,) in db.rows(
                "SELECT pg_terminate_backend(pid)::int * pid FROM pg_stat_activity "
                "WHERE application_name LIKE 'emailsync apply %%' AND datname = current_database()"
            )
        )

    t = threading.Thread(target=terminate)
    t.start()
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "10", "--max-rate", "40")
    t.join()
    assert killed and killed[0] > 0
    assert r.code == 3, r.out + r.err
    assert "the connection was lost during batch" in r.out and "Apply the plan again to go on" in r.out
    assert "Traceback" not in r.out + r.err
    done = db.rows("SELECT count(*) FROM emailsync.batches")[0][0]
    assert done >= 3
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert dump(db) == want
