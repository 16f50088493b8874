"""The audit trail under faults: rollback plans under kill -9, DynamoDB chains and merges rolled back, the
journal's record of what was written, insert-row, whole-row comparisons, ledgers and the replay refusal (real
PostgreSQL, moto DynamoDB, the CLI in-process; kill -9 through tests/crash_harness.py in a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from helpers import DDB_ONLY, assert_user_error, hook_dynamodb
from helpers import apply_confirmed as _apply
from helpers import raw_items as _raw_items
from helpers import rollback_plan as _rollback
from helpers import table_dump as _dump

HARNESS = Path(__file__).with_name("crash_harness.py")


def _plan(ws: Any) -> Path:
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    return plan


def _report(plan: Path) -> dict[str, str]:
    report = json.loads((plan.parent / "report.json").read_text())
    return {a["id"]: a["status"] for a in report["actions"]}


def _verify_counts(ws: Any, plan: Path) -> dict[str, int]:
    r = ws.run("verify", str(plan), "--format", "json")
    return json.loads(r.out)["counts"]


def _subprocess(ws: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ws.path, env=os.environ.copy(), capture_output=True, text=True, timeout=120
    )


def _crash(ws: Any, kill_point: str, plan: Path, *extra: str) -> None:
    """`emailsync apply PLAN` in a subprocess, killed with SIGKILL at `kill_point` (tests/crash_harness.py)."""
    p = _subprocess(
        ws, str(HARNESS), kill_point, "--", "apply", str(plan), "--targets", "targets.yaml", "--auto-approve",
        "--confirm-live", "--parallel", "1", *extra,  # kill points counted one database after another
    )  # fmt: skip
    assert p.returncode == -signal.SIGKILL, (kill_point, p.returncode, p.stdout, p.stderr)


def _rerun(ws: Any, plan: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _subprocess(
        ws, "-m", "emailsync", "apply", str(plan), "--targets", "targets.yaml", "--auto-approve", "--confirm-live",
        *extra,
    )  # fmt: skip


def _pg(ws: Any, db: Any, tables: str, mappings: Any) -> Path:
    ws.postgres_targets({"core": db}, tables)
    ws.mappings(mappings)
    return _plan(ws)


PROFILES = "      - table: profiles\n        attributes: [email, backup]\n"


def _ddb(ws: Any, tables: str, mappings: Any) -> Path:
    ws.targets(DDB_ONLY.format(tables=tables))
    ws.mappings(mappings, name="m.json")
    return _plan(ws)


# == DynamoDB: chains and merges, applied, rolled back, re-checked ===================================================


def test_three_link_chain_of_moves_is_after_once_applied(ws, ddb):
    """Chain a->b, b->c, c->d (d free) in a non-live table: three steps, applied cleanly (exit 0). Once applied,
    `verify` must find every action `after` and a --force rerun (= the rerun after a kill -9 that struck after
    the last transaction) must report everything already-applied, exit 0.
    Was: c->d is judged `drifted` / `stale` (exit 3): the item now at c is b's, moved there by b->c, but
    DynamoApplier._refilled only accepts that when b->c's own old key (b) is empty, and b is refilled by a->b.
    It only works for chains of two links."""
    ddb.create("profiles", "email")
    ddb.put("profiles", {"email": "a@o.com", "n": 1}, {"email": "b@o.com", "n": 2}, {"email": "c@o.com", "n": 3})
    plan = _ddb(ws, PROFILES, {"a@o.com": "b@o.com", "b@o.com": "c@o.com", "c@o.com": "d@o.com"})
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    after = _raw_items(ddb, "profiles")
    assert [i["email"]["S"] for i in sorted(after, key=lambda i: i["n"]["N"])] == ["b@o.com", "c@o.com", "d@o.com"]
    assert _verify_counts(ws, plan) == {"after": 3, "before": 0, "drifted": 0}
    r = _apply(ws, plan, "--force")
    assert r.code == 0, r.out + r.err
    assert set(_report(plan).values()) == {"already-applied"}
    assert _raw_items(ddb, "profiles") == after


def test_rollback_of_a_chain_ending_in_a_merge_is_after_once_applied(ws, ddb):
    """Chain a->b, b->c where c exists (b merges into c). Forward and rollback apply cleanly. Once the rollback is
    applied, verify of the rollback plan must say every action is `after` and a --force rerun of it must change
    nothing and exit 0. Was: the move back of a (b -> a) is `drifted`/`stale`: the item now under b is b's own
    (put back by the next move back), but _refilled only recognises it when the next move back's old key (c) is
    empty, and that move back leaves c's pre-merge item there (`remains`)."""
    ddb.create("profiles", "email")
    ddb.put(
        "profiles",
        {"email": "a@o.com", "name": "A"},
        {"email": "b@o.com", "name": "B", "x": 1},
        {"email": "c@o.com", "name": "C", "floor": 3},
    )
    before = _raw_items(ddb, "profiles")
    plan = _ddb(ws, PROFILES, {"a@o.com": "b@o.com", "b@o.com": "c@o.com"})
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    r = _apply(ws, rb)
    assert r.code == 0, r.out + r.err
    assert _raw_items(ddb, "profiles") == before
    assert _verify_counts(ws, plan) == {"after": 0, "before": 2, "drifted": 0}
    assert _verify_counts(ws, rb) == {"after": 2, "before": 0, "drifted": 0}
    r = _apply(ws, rb, "--force")
    assert r.code == 0, r.out + r.err
    assert _raw_items(ddb, "profiles") == before


def test_rollback_of_two_merges_into_an_existing_item_is_after_once_applied(ws, ddb):
    """m1 and m2 both merge into the existing item e. The rollback moves m2 back (leaving e+m1 under e), then m1
    (leaving e). Once applied, verify of the rollback plan must be all `after` and a --force rerun exit 0.
    Was: m2's move back is `drifted`/`stale`: e holds the original item, which is neither m2's planned `remains`
    (e+m1) nor its item; _classify_move's already-applied test only knows the `remains` of the same action and
    _left_for only looks at earlier moves back, not later ones."""
    ddb.create("profiles", "email")
    ddb.put(
        "profiles",
        {"email": "m1@o.com", "one": 1},
        {"email": "m2@o.com", "two": 2, "one": 9},
        {"email": "e@n.com", "there": True},
    )
    before = _raw_items(ddb, "profiles")
    plan = _ddb(ws, PROFILES, {"m1@o.com": "e@n.com", "m2@o.com": "e@n.com"})
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    r = _apply(ws, rb)
    assert r.code == 0, r.out + r.err
    assert _raw_items(ddb, "profiles") == before
    assert _verify_counts(ws, rb) == {"after": 2, "before": 0, "drifted": 0}
    r = _apply(ws, rb, "--force")
    assert r.code == 0, r.out + r.err
    assert _raw_items(ddb, "profiles") == before


def test_kill_9_after_the_last_move_back_then_rerun_finishes(ws, ddb):
    """The rollback of the chain a->b, b->c (c existing) killed with SIGKILL right after its last transaction
    (everything written, no report). The rerun must finish: exit 0, every move back already-applied, items as
    before the original apply. Was: exit 3, the first move back reported stale (same cause as above)."""
    ddb.create("profiles", "email")
    ddb.put(
        "profiles",
        {"email": "a@o.com", "name": "A"},
        {"email": "b@o.com", "name": "B", "x": 1},
        {"email": "c@o.com", "name": "C", "floor": 3},
    )
    before = _raw_items(ddb, "profiles")
    plan = _ddb(ws, PROFILES, {"a@o.com": "b@o.com", "b@o.com": "c@o.com"})
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    _crash(ws, "ddb-after:TransactWriteItems@profiles:2", rb)
    assert _raw_items(ddb, "profiles") == before
    p = _rerun(ws, rb)
    assert p.returncode == 0, p.stdout + p.stderr
    assert set(_report(rb).values()) == {"already-applied"}
    assert _raw_items(ddb, "profiles") == before


# == PostgreSQL: insert-row and whole-row comparisons ================================================================


def test_rollback_puts_a_deleted_row_back_under_an_email_key_another_row_moved_into(ws, db):
    """settings keyed by email: x@o -> w@o collides with the existing w@o (x@o's row is deleted), and y@o -> x@o
    moves into the key that freed. The rollback moves y's row back first and then re-inserts x@o's row. Expected:
    exit 0 and the table exactly as before. Was: the insert-row is classified `stale` up front (PostgresApplier.
    _classify judges it against the row now under its key, y's, which an earlier step of the same plan moves
    away), so the rollback is refused (exit 3) and can never be applied; the two actions also share a rowid in
    _es_act (same key), mixing their post keys."""
    db.execute("CREATE TABLE settings (email text PRIMARY KEY, theme text)")
    db.execute("INSERT INTO settings VALUES ('x@o.com', 'X'), ('w@o.com', 'W'), ('y@o.com', 'Y')")
    before = _dump(db, "settings")
    plan = _pg(ws, db, "- {table: settings, columns: [email]}", {"x@o.com": "w@o.com", "y@o.com": "x@o.com"})
    kinds = sorted(a["kind"] for a in ws.plan_json(plan)["actions"])
    assert kinds == ["delete-on-conflict", "update"], kinds
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT email, theme FROM settings ORDER BY 1") == [("w@o.com", "W"), ("x@o.com", "Y")]
    rb = _rollback(ws, plan)
    r = _apply(ws, rb)
    assert r.code == 0, r.out + r.err
    assert _dump(db, "settings") == before


def test_row_updated_then_deleted_in_a_table_with_an_updated_at_trigger(ws, db):
    """A row whose manager column is updated (m@o -> m@n) and which is then deleted on conflict (its email's new
    value is held by another row), in a table whose BEFORE UPDATE trigger bumps updated_at (listed in
    verify_ignore, as the README says). Expected: exit 0, the row deleted, the other row's manager updated.
    Was: exit 3, nothing written: the delete's own whole-row condition in PostgresApplier._run_step
    (`to_jsonb(t.*) = a.image || <applied updates>`) still compares every column, updated_at included, so after
    the trigger fired on the row's update the delete never matches and the row is reported stale. The same
    happens with a generated column computed from an updated column, and with a column an ON UPDATE CASCADE moved."""
    db.execute(
        "CREATE TABLE staff (id int PRIMARY KEY, email text UNIQUE, manager text, updated_at int NOT NULL DEFAULT 0)"
    )
    db.execute("INSERT INTO staff VALUES (1, 'x@o.com', 'm@o.com', 0), (2, 'w@o.com', 'm@o.com', 0)")
    db.execute(
        "CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN NEW.updated_at := OLD.updated_at + 1; RETURN NEW; END$$"
    )
    db.execute("CREATE TRIGGER t BEFORE UPDATE ON staff FOR EACH ROW EXECUTE FUNCTION bump()")
    plan = _pg(
        ws,
        db,
        "- {table: staff, columns: [email, manager], verify_ignore: [updated_at]}",
        {"x@o.com": "w@o.com", "m@o.com": "m@n.com"},
    )
    kinds = sorted(a["kind"] for a in ws.plan_json(plan)["actions"])
    assert kinds == ["delete-on-conflict", "update", "update"], kinds
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email, manager FROM staff ORDER BY id") == [(2, "w@o.com", "m@n.com")]


def test_row_updated_then_deleted_in_a_table_with_a_generated_column(ws, db):
    """The same with no trigger but a generated column computed from the updated column (manager_domain). Expected:
    exit 0, row 1 deleted, row 2's manager (and its domain) updated. Was: exit 3, nothing written: the delete's
    whole-row condition in _run_step overlays the applied manager update on the image but not the recomputed
    manager_domain, so it never matches (delete-on-conflict stale, the updates rolled back as not-applied)."""
    db.execute(
        "CREATE TABLE staff (id int PRIMARY KEY, email text UNIQUE, manager text, "
        "manager_domain text GENERATED ALWAYS AS (split_part(manager, '@', 2)) STORED)"
    )
    db.execute("INSERT INTO staff (id, email, manager) VALUES (1, 'x@o.com', 'm@o.com'), (2, 'w@o.com', 'm@o.com')")
    plan = _pg(ws, db, "- {table: staff, columns: [email, manager]}", {"x@o.com": "w@o.com", "m@o.com": "m@n.com"})
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email, manager, manager_domain FROM staff ORDER BY id") == [
        (2, "w@o.com", "m@n.com", "n.com")
    ]


def test_rollback_re_inserts_a_timestamptz_row_from_another_time_zone(ws, db):
    """A deleted row with a timestamptz column. The plan (and so the row image) was made in one session time zone;
    the rollback is applied later from a machine whose PostgreSQL session uses another (PGTZ). The instant is the
    same, so expected: exit 0 and the row back exactly. Was: to_jsonb renders timestamptz in the session's time
    zone, so the whole-row comparisons (here the read-back of the inserted row) differ textually: the rollback
    fails verification and is rolled back (exit 3). Nothing pins TimeZone in stores/postgres.connect()."""
    ws.monkeypatch.setenv("PGTZ", "America/New_York")
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, hired timestamptz)")
    db.execute(
        "INSERT INTO employees VALUES (1, 'a@o.com', '2020-01-02 03:04:05+00'), (2, 'a@n.com', '2021-01-01 00:00+00')"
    )
    before = db.rows("SELECT id, email, hired FROM employees ORDER BY id")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com"})
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    ws.monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    r = _apply(ws, rb)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email, hired FROM employees ORDER BY id") == before


# == the journal's record of what was written =========================================================================


def test_rollback_after_a_kill_and_an_aborted_rerun_still_undoes_the_committed_rows(ws, db):
    """Run 1 is killed (SIGKILL) right after its PostgreSQL transaction committed, before the journal's `after`
    line: both rows are changed, the journal says `maybe-applied`. Someone then changes row 2 again; run 2
    (--on-stale abort) finds row 1 already-applied and row 2 stale, writes nothing and reports row 1 as
    `not-applied`. Row 1 is still changed in the database, so `emailsync rollback` must revert it. Was: the
    rollback refuses ("nothing to roll back"): recorded_outcomes lets run 2's `not-applied` replace run 1's
    `maybe-applied` (only applied/already-applied/needs-review are sticky), and apply's abort path (PostgresApplier
    _abort; DynamoApplier.run likewise) reports already-applied actions as not-applied."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com'), (2, 'b@o.com')")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com", "b@o.com": "b@n.com"})
    _crash(ws, "pg-commit:1", plan)
    assert db.rows("SELECT email FROM employees ORDER BY id") == [("a@n.com",), ("b@n.com",)]
    db.execute("UPDATE employees SET email = 'someone@else.com' WHERE id = 2")
    r = _apply(ws, plan)
    assert r.code == 3, r.out + r.err
    r = ws.run("rollback", str(plan.parent))
    assert r.code == 0, r.out + r.err
    rb = Path(r.out.split("Plan: ")[1].split()[0])
    _apply(ws, rb, "--on-stale", "skip")
    assert db.rows("SELECT email FROM employees ORDER BY id") == [("a@o.com",), ("someone@else.com",)]


def test_rollback_includes_a_move_whose_transaction_outcome_was_unknown(ws, ddb):
    """The move's TransactWriteItems reaches DynamoDB and succeeds, but the response is lost (a read timeout after
    the server committed). Apply reports the move `failed` (exit 3): it cannot know. The item did move, so the
    rollback must move it back. Was: "nothing to roll back": DynamoApplier._transact journals the batch's
    `after` with the preflight status `pending`, then the outcome `failed`, and recorded_outcomes lets both
    replace the `maybe-applied` of the batch's `before` record."""
    ddb.create("profiles", "email")
    ddb.put("profiles", {"email": "a@o.com", "name": "A", "salary": 100})
    before = _raw_items(ddb, "profiles")
    plan = _ddb(ws, PROFILES, {"a@o.com": "a@n.com"})

    def lost_response(**kwargs: Any) -> None:
        raise botocore.exceptions.ReadTimeoutError(endpoint_url="http://dynamodb")

    unhook = hook_dynamodb(ws, "after-call.dynamodb.TransactWriteItems", lost_response)
    r = _apply(ws, plan)
    unhook()
    assert r.code == 3, r.out + r.err
    assert [i["email"] for i in ddb.items("profiles")] == ["a@n.com"]  # it did move
    r = ws.run("rollback", str(plan.parent))
    assert r.code == 0, r.out + r.err
    rb = Path(r.out.split("Plan: ")[1].split()[0])
    assert _apply(ws, rb).code == 0
    assert _raw_items(ddb, "profiles") == before


# == ledger and replay =================================================================================================


def test_plan_killed_before_its_report_then_rolled_back_is_not_applied_again(ws, db):
    """Run 1 is killed at the very end (every change committed, the ledger says complete, no report and no run-end).
    Instead of resuming, the team rolls it back (rollback plan applied). Re-applying the original plan now is a
    replay of a plan that was applied completely: refused (exit 1, nothing written; "undoing a rollback means making
    a new plan"). Regression: the killed run's exemption from the replay check (no run-end) let the plan apply a
    second time; a plan with a rollback made from it now needs --force."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com')")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com"})
    _crash(ws, "report", plan)
    assert db.rows("SELECT status FROM emailsync.ledger") == [("complete",)]
    rb = _rollback(ws, plan)
    assert _apply(ws, rb).code == 0
    assert db.rows("SELECT email FROM employees") == [("a@o.com",)]
    r = _apply(ws, plan)
    assert_user_error(r, "a rollback plan was made from this plan", "--force")
    assert db.rows("SELECT email FROM employees") == [("a@o.com",)]


# == kill -9 while a rollback plan is applied (probes) ===============================================================

MIXED = """version: 1
mappings: m.json
postgres:
  - name: core
    dsn: ${CORE_DSN}
    tables:
      - {table: employees, columns: [email, manager]}
dynamodb:
  - name: auth
    endpoint_url: ${DYNAMODB_ENDPOINT}
    ledger_table: emailsync-ledger
    tables:
      - table: profiles
        attributes: [email, backup]
      - table: logins
        live: true
        attributes: [email]
"""

MIXED_MAPPINGS = [
    {"old": "a@o.com", "new": "a@n.com"},  # employees: row 1 deleted (a@n.com is row 2's)
    {"old": "k@o.com", "new": "k@n.com"},  # employees: an update; profiles: an attribute update
    {"old": "c2@o.com", "new": "c3@o.com"},  # a chain of two moves, into a free key
    {"old": "c1@o.com", "new": "c2@o.com"},
    {"old": "m1@o.com", "new": "m@n.com"},  # two merges into a free key
    {"old": "m2@o.com", "new": "m@n.com"},
    {"old": "e@o.com", "new": "e@n.com"},  # a merge into an existing item
    {"old": "l@o.com", "new": "l@n.com"},  # live: a swap to a free key
    {"old": "f@o.com", "new": "f@n.com"},  # live: a swap into an existing item
]


def _mixed(ws: Any, db: Any, ddb: Any) -> tuple[Path, Any]:
    """A mixed estate (PostgreSQL, a DynamoDB table, a live table) and its plan; returns (plan, snapshot)."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, manager text, name text)")
    db.execute(
        "INSERT INTO employees VALUES (1, 'a@o.com', 'k@o.com', 'A'), (2, 'a@n.com', NULL, 'A2'), "
        "(3, 'k@o.com', 'k@o.com', 'K'), (4, 'z@z.com', NULL, 'Z')"
    )
    ddb.create("profiles", "email")
    ddb.put(
        "profiles",
        {"email": "c1@o.com", "from_c1": 1},
        {"email": "c2@o.com", "from_c2": 1, "backup": "k@o.com"},
        {"email": "m1@o.com", "from_m1": 1, "one": 1},
        {"email": "m2@o.com", "from_m2": 1, "one": 2, "two": 2},
        {"email": "e@o.com", "from_e": 1},
        {"email": "e@n.com", "from_en": 1, "backup": None},
        {"email": "u@x.com", "backup": "k@o.com", "keep": [1, "x"]},
    )
    ddb.create("logins", "email")
    ddb.put(
        "logins",
        {"email": "l@o.com", "from_l": 1, "pwd": "h1"},
        {"email": "f@o.com", "from_f": 1, "pwd": "h2"},
        {"email": "f@n.com", "from_fn": 1, "mfa": True},
        {"email": "keep@x.com", "pwd": "h3"},
    )
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    ws.targets(MIXED)
    ws.mappings(MIXED_MAPPINGS, name="m.json")

    def snapshot() -> Any:
        return _dump(db, "employees"), _raw_items(ddb, "profiles"), _raw_items(ddb, "logins")

    return _plan(ws), snapshot


def _finished(ws: Any, plan: Path, code: int) -> None:
    """The run exited `code`, and report.json lists every action of the plan once, applied or already-applied."""
    assert code == 0
    statuses = _report(plan)
    assert sorted(statuses) == sorted(a["id"] for a in ws.plan_json(plan)["actions"])
    assert set(statuses.values()) <= {"applied", "already-applied"}, statuses


ROLLBACK_KILLS = [
    "pg-step:1",  # inside the PostgreSQL transaction (insert-row and reverts)
    "ddb-after:TransactWriteItems@profiles:1",  # between two steps of moves back
    "ddb-after:PutItem@logins:1",  # live: the item put back at its old key, the new key not yet restored
    "ddb-after:PutItem@logins:3",  # live: the second swap, between its write and its delete
]


@pytest.mark.parametrize("kill_point", ROLLBACK_KILLS)
def test_kill_9_while_applying_a_rollback_then_rerun(ws, db, ddb, kill_point):
    """Probe: a rollback plan (insert-row, reverts, moves back out of a chain, two merges and a merge, a reverted
    attribute update, live moves back with and without a pre-merge item) killed at each point, then rerun: exit 0,
    every action once, the stores exactly as before the original apply; verify agrees with both plans."""
    plan, snapshot = _mixed(ws, db, ddb)
    before = snapshot()
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    _crash(ws, kill_point, rb)
    r = _apply(ws, rb)
    _finished(ws, rb, r.code)
    assert snapshot() == before
    n = len(ws.plan_json(plan)["actions"])
    assert _verify_counts(ws, plan) == {"after": 0, "before": n, "drifted": 0}
    assert _verify_counts(ws, rb)["after"] == len(ws.plan_json(rb)["actions"])


@pytest.mark.parametrize(
    "kill_point",
    [
        "ddb-after:TransactWriteItems@profiles:1",  # PostgreSQL committed, one step of moves done
        "ddb-after:UpdateItem@logins:1",  # a live merge written, the old item not yet deleted
    ],
)
def test_rollback_of_a_killed_apply(ws, db, ddb, kill_point):
    """Probe: the original apply is killed (no outcome lines, no run-end; the batch in flight is maybe-applied);
    the rollback, made from that journal without resuming, puts everything back, half-done live swaps included."""
    plan, snapshot = _mixed(ws, db, ddb)
    before = snapshot()
    _crash(ws, kill_point, plan)
    assert snapshot() != before
    rb = _rollback(ws, plan)
    r = _apply(ws, rb)
    _finished(ws, rb, r.code)
    assert snapshot() == before
    n = len(ws.plan_json(plan)["actions"])
    assert _verify_counts(ws, plan) == {"after": 0, "before": n, "drifted": 0}


# == recorded outcomes across journals (probe) ========================================================================


def test_applied_then_forced_already_applied_then_stale_is_still_rolled_back(ws, db):
    """Probe: run 1 applies, a forced run 2 finds it already-applied, the row is changed, a forced run 3 finds it
    stale; a last journal line cut short by a kill is ignored. The rollback still lists the revert (the write of
    run 1 is not undone by later runs that wrote nothing), and applying it reports it stale, never overwriting."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com'), (2, 'b@o.com')")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com", "b@o.com": "b@n.com"})
    assert _apply(ws, plan).code == 0
    assert _apply(ws, plan, "--force").code == 0
    db.execute("UPDATE employees SET email = 'x@x.com' WHERE id = 2")
    assert _apply(ws, plan, "--force", "--on-stale", "skip").code == 3
    last = sorted(plan.parent.glob("apply-*.jsonl"))[-1]
    with open(last, "a") as f:
        f.write('{"event": "outcome", "id": "')
    rb = _rollback(ws, plan)
    rj = ws.plan_json(rb)
    assert rj["rollback_of"]["actions_undone"] == 2 and len(rj["rollback_of"]["journals"]) == 3
    r = _apply(ws, rb, "--on-stale", "skip")
    assert r.code == 3 and "stale" in r.out, r.out
    assert db.rows("SELECT email FROM employees ORDER BY id") == [("a@o.com",), ("x@x.com",)]


# == ledgers, locks and the replay refusal (probes) ===================================================================


def test_two_postgres_targets_in_one_database_rollback_killed_and_resumed(ws, db):
    """Probe: two targets share one database. The rollback plan (insert-row in one, a revert in the other) is killed
    right after the first target committed; the rerun resumes (exit 0) although that target's ledger says complete;
    a copy of the rollback plan without its journals is refused as a replay, and so is the original plan."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, name text)")
    db.execute("CREATE TABLE contacts (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com', 'A'), (2, 'a@n.com', 'A2')")
    db.execute("INSERT INTO contacts VALUES (1, 'a@o.com'), (2, 'b@o.com')")
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    ws.targets(
        "version: 1\nmappings: email_mappings.json\npostgres:\n"
        "  - name: hr\n    dsn: ${CORE_DSN}\n    tables:\n      - {table: employees, columns: [email]}\n"
        "  - name: crm\n    dsn: ${CORE_DSN}\n    tables:\n      - {table: contacts, columns: [email]}\n"
    )
    ws.mappings({"a@o.com": "a@n.com", "b@o.com": "b@n.com"})
    before = _dump(db, "employees", "contacts")
    plan = _plan(ws)
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    _crash(ws, "pg-commit:1", rb)
    assert db.rows("SELECT target, status FROM emailsync.ledger WHERE status = 'complete' ORDER BY 1") == [
        ("crm", "complete"),
        ("hr", "complete"),
        ("hr", "complete"),
    ]
    p = _rerun(ws, rb)
    _finished(ws, rb, p.returncode)
    assert _dump(db, "employees", "contacts") == before
    for original in (rb, plan):
        copy = ws.path / "elsewhere" / original.parent.name / "plan.jsonl.gz"
        copy.parent.mkdir(parents=True)
        shutil.copy(original, copy)
        assert_user_error(_apply(ws, copy), "already been applied completely", "hr: complete", "crm: complete")
    assert _dump(db, "employees", "contacts") == before


def test_two_dynamodb_targets_sharing_a_ledger_only_target_sequences_and_replay(ws, ddb):
    """Probe: two DynamoDB targets share one ledger table. --only-target hr, --only-target auth --skip-live, then
    the live rest (killed before its report, resumed); then a replay is refused naming both targets, and no lock
    is left behind."""
    ddb.create("profiles", "email")
    ddb.create("logins", "email")
    ddb.create("sessions", "email")
    ddb.put("profiles", {"email": "a@o.com", "n": 1})
    ddb.put("logins", {"email": "a@o.com", "pwd": "h"})
    ddb.put("sessions", {"email": "a@o.com", "s": 1})
    ws.targets(
        "version: 1\nmappings: m.json\ndynamodb:\n"
        "  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n    ledger_table: emailsync-ledger\n"
        "    tables:\n      - {table: profiles, attributes: [email]}\n"
        "  - name: auth\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n    ledger_table: emailsync-ledger\n"
        "    tables:\n      - {table: sessions, attributes: [email]}\n"
        "      - {table: logins, live: true, attributes: [email]}\n"
    )
    ws.mappings({"a@o.com": "a@n.com"}, name="m.json")
    plan = _plan(ws)
    assert _apply(ws, plan, "--only-target", "hr").code == 0
    assert_user_error(_apply(ws, plan, "--only-target", "hr"), "already been applied completely", "hr: complete")
    assert _apply(ws, plan, "--only-target", "auth", "--skip-live").code == 0
    assert [i["email"] for i in ddb.items("logins")] == ["a@o.com"]
    _crash(ws, "report", plan)
    assert [i["email"] for i in ddb.items("logins")] == ["a@n.com"]
    r = _apply(ws, plan)
    _finished(ws, plan, r.code)
    assert_user_error(_apply(ws, plan), "already been applied completely", "hr: complete", "auth: complete")
    assert [i for i in ddb.items("emailsync-ledger") if i["pk"] == "lock"] == []
    assert [i["email"] for t in ("profiles", "sessions", "logins") for i in ddb.items(t)] == ["a@n.com"] * 3


# == insert-row (probes, and one finding) =============================================================================


def test_insert_row_with_identity_generated_defaults_and_triggers(ws, db):
    """Probe: the deleted row comes back into a table with an identity column (GENERATED ALWAYS), a generated
    column, defaults, a BEFORE INSERT OR UPDATE trigger that bumps a `revision` (verify_ignore) and an AFTER INSERT
    trigger writing an audit row. Expected: exit 0, the row back as it was (revision: the trigger's business)."""
    db.execute(
        "CREATE TABLE people (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text UNIQUE NOT NULL, "
        "low text GENERATED ALWAYS AS (lower(email)) STORED, joined date NOT NULL DEFAULT current_date, "
        "tags text[] DEFAULT '{}', revision int NOT NULL DEFAULT 0)"
    )
    db.execute("CREATE TABLE audit (n serial, what text)")
    db.execute(
        "CREATE FUNCTION rev() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN NEW.revision := COALESCE(NEW.revision, 0) + 1; RETURN NEW; END$$"
    )
    db.execute("CREATE TRIGGER r BEFORE INSERT OR UPDATE ON people FOR EACH ROW EXECUTE FUNCTION rev()")
    db.execute(
        "CREATE FUNCTION aud() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN INSERT INTO audit (what) VALUES (NEW.email); RETURN NULL; END$$"
    )
    db.execute("CREATE TRIGGER a AFTER INSERT ON people FOR EACH ROW EXECUTE FUNCTION aud()")
    db.execute(
        "INSERT INTO people (email, joined, tags) VALUES ('A@o.com', '2001-02-03', '{x,y}'), ('a@n.com', DEFAULT, NULL)"
    )
    rows = "SELECT id, email, low, joined, tags FROM people ORDER BY id"
    before = db.rows(rows)
    plan = _pg(ws, db, "- {table: people, columns: [email], verify_ignore: [revision]}", {"A@o.com": "a@n.com"})
    assert _apply(ws, plan).code == 0
    assert len(db.rows(rows)) == 1
    rb = _rollback(ws, plan)
    r = _apply(ws, rb)
    assert r.code == 0, r.out + r.err
    assert db.rows(rows) == before
    r = _apply(ws, rb, "--force")
    assert r.code == 0, r.out + r.err
    assert db.rows(rows) == before
    ids = db.rows("INSERT INTO people (email) VALUES ('new@x.com') RETURNING id")
    assert ids[0][0] > max(i for i, *_ in before)


def _fk_estate(ws: Any, db: Any, deferred: bool) -> tuple[Path, Path]:
    db.execute("CREATE TABLE depts (id int PRIMARY KEY)")
    db.execute("INSERT INTO depts VALUES (1), (2)")
    mode = " DEFERRABLE INITIALLY DEFERRED" if deferred else ""
    db.execute(f"CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, dept int REFERENCES depts{mode})")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com', 1), (2, 'a@n.com', 2), (3, 'k@o.com', 2)")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com", "k@o.com": "k@n.com"})
    assert _apply(ws, plan).code == 0
    db.execute("DELETE FROM depts WHERE id = 1")  # allowed: its only employee was deleted by the plan
    return plan, _rollback(ws, plan)


@pytest.mark.parametrize("deferred", [False, True], ids=["immediate", "deferred"])
def test_insert_row_whose_parent_is_gone_is_a_clear_report(ws, db, deferred):
    """Probe: the deleted row's parent (depts 1) was deleted after the apply. The rollback cannot put the row back:
    exit 3 with the constraint named, no traceback, and nothing half-written (the revert of the other row in the
    same database is rolled back with it). Once the parent is back, the same rollback plan applies."""
    plan, rb = _fk_estate(ws, db, deferred)
    after = _dump(db, "employees")
    r = _apply(ws, rb)
    assert r.code == 3, r.out + r.err
    assert "Traceback" not in r.out + r.err and "employees_dept_fkey" in r.out, r.out
    assert _dump(db, "employees") == after
    assert db.rows("SELECT status FROM emailsync.ledger ORDER BY started_at DESC LIMIT 1") == [("failed",)]
    db.execute("INSERT INTO depts VALUES (1)")
    r = _apply(ws, rb)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT * FROM employees ORDER BY id") == [(1, "a@o.com", 1), (2, "a@n.com", 2), (3, "k@o.com", 2)]


def test_insert_row_into_a_table_that_gained_a_column_with_a_default(ws, db):
    """After the apply, a column `active boolean NOT NULL DEFAULT true` is added (an ordinary migration). The
    deleted row's image predates it. The rollback puts the row back with the new column at its default, as every
    other row got it (exit 0). Regression: the insert gave a column missing from the image NULL instead of its
    default, and the read-back compared the whole row with the older image."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com'), (2, 'a@n.com')")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com"})
    assert _apply(ws, plan).code == 0
    db.execute("ALTER TABLE employees ADD COLUMN active boolean NOT NULL DEFAULT true")
    rb = _rollback(ws, plan)
    r = _apply(ws, rb)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT * FROM employees ORDER BY id") == [(1, "a@o.com", True), (2, "a@n.com", True)]


def test_insert_row_puts_back_a_json_column_as_it_was(ws, db):
    """A deleted row with a `json` (not jsonb) column: json keeps its text as written (key order, spacing,
    duplicate keys). A known limit, documented: the plan's row image is to_jsonb(row), so the row comes back with
    the json value's meaning kept but its text normalised (keys sorted, a duplicate key's last value kept):
    `{"b": 1, "a": 2, "a": 3}` returns as `{"a": 3, "b": 1}`, equal as jsonb."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, prefs json)")
    db.execute("""INSERT INTO employees VALUES (1, 'a@o.com', '{"b": 1, "a": 2, "a": 3}'), (2, 'a@n.com', NULL)""")
    before = db.rows("SELECT id, email, prefs::jsonb FROM employees ORDER BY id")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com"})
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    assert _apply(ws, rb).code == 0
    assert db.rows("SELECT id, email, prefs::jsonb FROM employees ORDER BY id") == before
    assert db.rows("SELECT prefs::text FROM employees WHERE id = 1") == [('{"a": 3, "b": 1}',)]


@pytest.mark.parametrize(
    ("foreign_key", "employee_columns"),
    [
        # The cascaded variant, without any update of the deleted row: employees.manager references users.email ON
        # UPDATE CASCADE (not configured: the database moves it, the plan warns). Was: exit 3, nothing written: by
        # step 2 the cascade has changed x@o's manager, and the delete's exact whole-row condition in _run_step
        # (unlike _classify, which leaves cascaded columns out) no longer matched, so the delete was reported stale.
        pytest.param("REFERENCES users (email) ON UPDATE CASCADE", "[email]", id="cascaded"),
        # NO ACTION with manager configured, so the plan changes parent and children in one statement. Was: the
        # rollback failed with "violates foreign key constraint employees_manager_fkey": build_rollback ordered the
        # insert-row by the reversed step of the delete, before the revert of boss@n -> boss@o, but the image it
        # re-inserts is the row from before the whole plan (manager boss@o), which no users row held yet.
        pytest.param("REFERENCES users (email)", "[email, manager]", id="configured"),
    ],
)
def test_row_deleted_on_conflict_whose_manager_moved_applies_and_rolls_back(ws, db, foreign_key, employee_columns):
    """employees.manager references users.email. The plan moves boss@o -> boss@n in users (step 1) and deletes
    employee x@o, whose new value w@o is taken (step 2). Expected: exit 0, x@o deleted, w@o's manager moved, and
    the rollback puts users and employees back exactly."""
    db.execute("CREATE TABLE users (email text PRIMARY KEY, name text)")
    db.execute(f"CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, manager text {foreign_key})")
    db.execute("INSERT INTO users VALUES ('boss@o.com', 'Boss')")
    db.execute("INSERT INTO employees VALUES (1, 'x@o.com', 'boss@o.com'), (2, 'w@o.com', 'boss@o.com')")
    before = _dump(db, "users", "employees")
    plan = _pg(
        ws,
        db,
        f"- {{table: users, columns: [email]}}\n- {{table: employees, columns: {employee_columns}}}",
        {"boss@o.com": "boss@n.com", "x@o.com": "w@o.com"},
    )
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email, manager FROM employees ORDER BY id") == [(2, "w@o.com", "boss@n.com")]
    rb = _rollback(ws, plan)
    r = _apply(ws, rb)
    assert r.code == 0, r.out + r.err
    assert _dump(db, "users", "employees") == before
