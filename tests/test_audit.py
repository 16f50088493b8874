"""The audit trail: journal, ledger and locks in the targets, verify, diff and rollback (real PostgreSQL, moto)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from helpers import apply_confirmed as _apply
from helpers import assert_user_error, plan_doc
from helpers import raw_items as _raw_items

from emailsync.stores.postgres.ledger import pg_lock_key

TARGETS = """version: 1
mappings: m.json
postgres:
  - name: core
    dsn: ${{CORE_DSN}}
    tables:
      - {{table: employees, columns: [email], on_conflict: delete}}
      - {{table: settings, columns: [email]}}
{ddb}"""

DDB = """dynamodb:
  - name: auth
    endpoint_url: ${DYNAMODB_ENDPOINT}
    ledger_table: emailsync-ledger
    tables:
      - table: profiles
        attributes: [email]
      - table: logins
        live: true
        attributes: [email]
"""

MAPPINGS = {"a@old.com": "a@new.com", "b@old.com": "b@new.com", "c@old.com": "c@new.com"}


def _estate(db: Any) -> None:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, name text, salary numeric(12,2))")
    db.execute(
        "INSERT INTO employees VALUES (1, 'a@old.com', 'A', 10.50), (2, 'b@old.com', 'B old', 20), "
        "(3, 'b@new.com', 'B new', 30), (4, 'keep@x.com', 'K', 1)"
    )
    # email primary key with a chain: c@old -> c@new while the row of a@old moves into a@new
    db.execute("CREATE TABLE settings (email text PRIMARY KEY, theme text)")
    db.execute("INSERT INTO settings VALUES ('a@old.com', 'dark'), ('c@old.com', 'light'), ('z@x.com', 'blue')")


def _pg_state(db: Any) -> tuple[list[Any], list[Any]]:
    return (
        db.rows("SELECT id, email, name, salary::text FROM employees ORDER BY id"),
        db.rows("SELECT email, theme FROM settings ORDER BY email"),
    )


def _ddb_estate(ddb: Any) -> None:
    ddb.create("profiles", "email")
    ddb.create("logins", "email")
    ddb.put(
        "profiles",
        {"email": "a@old.com", "name": "A", "tags": {"x", "y"}},
        {"email": "b@old.com", "name": "B", "team": "red"},
        {"email": "b@new.com", "name": "B new", "floor": 3},  # a merge: b@old moves into the existing b@new
        {"email": "other@x.com", "backup": "c@old.com"},  # an update of a non-key attribute
    )
    ddb.put("logins", {"email": "a@old.com", "pwd": "h1"}, {"email": "keep@x.com", "pwd": "h2"})


def _setup(ws: Any, db: Any, ddb: Any | None = None) -> Path:
    _estate(db)
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    if ddb is not None:
        _ddb_estate(ddb)
    ws.targets(TARGETS.format(ddb=DDB if ddb is not None else ""))
    ws.mappings(MAPPINGS, name="m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


def _journal(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for p in sorted(folder.glob("apply-*.jsonl")) for ln in p.read_text().splitlines()]


def _ledger(db: Any) -> list[tuple[Any, ...]]:
    return db.rows("SELECT plan_digest, status, applied_by, approver, counts FROM emailsync.ledger ORDER BY started_at")


# -- journal and ledger --------------------------------------------------------------------------------------------


def test_apply_journals_who_and_every_outcome_and_records_the_ledger(ws, db):
    plan = _setup(ws, db)
    digest = ws.plan_json(plan)["digest"]
    r = _apply(ws, plan, "--approver", "Dana Reviewer")
    assert r.code == 0, r.out + r.err
    entries = _journal(plan.parent)
    start = entries[0]
    assert start["event"] == "run-start" and start["plan_digest"] == digest
    assert start["approver"] == "Dana Reviewer" and start["user"] and start["host"] and start["pid"]
    writes = [(e["phase"], e["target"]) for e in entries if e["event"] == "write"]
    assert writes == [("before", "core"), ("after", "core")]
    ids = sorted(a["id"] for a in ws.plan_json(plan)["actions"])
    outcomes = [e for e in entries if e["event"] == "outcome"]
    assert sorted(e["id"] for e in outcomes) == ids and {e["status"] for e in outcomes} == {"applied"}
    assert entries[-1]["event"] == "run-end" and entries[-1]["exit_code"] == 0
    report = json.loads((plan.parent / "report.json").read_text())
    assert report["applied_by"]["approver"] == "Dana Reviewer" and report["run_id"] == start["run_id"]
    ((d, status, by, approver, counts),) = _ledger(db)
    assert (d, status, approver) == (digest, "complete", "Dana Reviewer") and counts == {"applied": len(ids)}


def test_replay_of_a_finished_plan_is_refused_unless_forced(ws, db):
    plan = _setup(ws, db)
    assert _apply(ws, plan).code == 0
    after = _pg_state(db)
    r = _apply(ws, plan)
    msg = assert_user_error(r, "already been applied completely", "--force", "core: complete on")
    assert "root" in msg or os.environ.get("USER", "") in msg
    assert len(_ledger(db)) == 1 and _pg_state(db) == after
    r = _apply(ws, plan, "--force")
    assert r.code == 0 and "already-applied" in r.out
    assert [s for _, s, *_ in _ledger(db)] == ["complete", "complete"] and _pg_state(db) == after
    runs = [e for e in _journal(plan.parent) if e["event"] == "run-start"]
    assert [e["force"] for e in runs] == [False, True]


def test_ledger_false_writes_no_ledger(ws, db):
    _estate(db)
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    ws.targets(TARGETS.format(ddb="").replace("    tables:\n", "    ledger: false\n    tables:\n", 1))
    ws.mappings(MAPPINGS, name="m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'emailsync'") == [(0,)]
    assert _apply(ws, plan).code == 0  # no ledger, no replay refusal: the rerun finds everything applied


def test_stale_run_is_recorded_incomplete_and_may_run_again(ws, db):
    plan = _setup(ws, db)
    db.execute("UPDATE employees SET email = 'moved@x.com' WHERE id = 1")
    r = _apply(ws, plan)
    assert r.code == 3
    assert [s for _, s, *_ in _ledger(db)] == ["incomplete"]
    db.execute("UPDATE employees SET email = 'a@old.com' WHERE id = 1")
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert [s for _, s, *_ in _ledger(db)] == ["incomplete", "complete"]


def test_concurrent_applier_is_refused_by_the_postgres_lock(ws, db):
    plan = _setup(ws, db)
    before = _pg_state(db)
    with psycopg.connect(db.dsn, autocommit=True) as holder:
        holder.execute("SELECT set_config('application_name', 'emailsync apply deadbeef', false)")
        holder.execute("SELECT pg_advisory_lock(%s, %s)", pg_lock_key("core"))
        r = _apply(ws, plan)
        assert_user_error(r, "'core' is locked", "emailsync apply deadbeef", "pid")
        assert _pg_state(db) == before
    assert _apply(ws, plan).code == 0


def test_dynamodb_lock_held_elsewhere_is_refused_and_unlock_releases_only_that_lock(ws, db, ddb):
    plan = _setup(ws, db, ddb)
    ddb.create("emailsync-ledger", "pk", "sk")
    ddb.put(
        "emailsync-ledger",
        {
            "pk": "lock",
            "sk": "auth",
            "lock_id": "L123",
            "user": "ops",
            "host": "other-host",
            "pid": 42,
            "run_id": "r1",
            "acquired_at": "2026-11-24T10:00:00Z",
        },
    )
    pg_before, profiles_before = _pg_state(db), ddb.items("profiles")
    r = _apply(ws, plan)
    assert_user_error(r, "'auth' is locked", "ops@other-host", "emailsync unlock auth --lock-id L123")
    assert _pg_state(db) == pg_before and ddb.items("profiles") == profiles_before
    r = ws.run("unlock", "auth", "--lock-id", "WRONG")
    assert_user_error(r, "lock id L123, not WRONG", "nothing was changed")
    r = ws.run("unlock", "auth", "--lock-id", "L123")
    assert r.code == 0 and "released" in r.out
    assert [i for i in ddb.items("emailsync-ledger") if i["pk"] == "lock"] == []
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    ledger = ddb.items("emailsync-ledger")
    assert [i["status"] for i in ledger if i["pk"].startswith("run#")] == ["complete"]
    assert [i for i in ledger if i["pk"] == "lock"] == []  # released at the end
    r = ws.run("unlock", "core", "--lock-id", "x")
    assert_user_error(r, "PostgreSQL", "nothing to unlock")


def test_dynamodb_lock_of_a_dead_process_on_this_host_is_taken_over(ws, db, ddb):
    import socket

    plan = _setup(ws, db, ddb)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    r = _apply(ws, plan, "--skip-live")  # creates the ledger table
    assert r.code == 0, r.out + r.err
    ddb.put(
        "emailsync-ledger",
        {
            "pk": "lock",
            "sk": "auth",
            "lock_id": "OLD",
            "user": "me",
            "host": socket.gethostname(),
            "pid": int(dead.stdout),
            "run_id": "r0",
            "acquired_at": "2026-11-24T10:00:00Z",
        },
    )
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert {i["email"] for i in ddb.items("logins")} == {"a@new.com", "keep@x.com"}


# -- verify, diff, show ----------------------------------------------------------------------------------------------


def test_verify_before_and_after_and_drift(ws, db, ddb):
    plan = _setup(ws, db, ddb)
    n = len(ws.plan_json(plan)["actions"])
    r = ws.run("verify", str(plan))
    assert r.code == 3 and f"0 after (applied), {n} before (not applied), 0 drifted" in r.out
    assert _apply(ws, plan).code == 0
    r = ws.run("verify", str(plan), "--format", "json")
    assert r.code == 0
    out = json.loads(r.out)
    assert out["counts"] == {"after": n, "before": 0, "drifted": 0}
    db.execute("UPDATE employees SET email = 'someone@else.com' WHERE id = 1")
    r = ws.run("verify", str(plan))
    assert r.code == 3 and "1 drifted" in r.out and "someone@else.com" in r.out


def test_diff_of_two_plans_made_from_different_data(ws, db):
    first = _setup(ws, db)
    db.execute("INSERT INTO employees VALUES (9, 'c@old.com', 'C', 5)")
    db.execute("UPDATE employees SET name = 'A renamed' WHERE id = 1")
    r, second = ws.plan()
    assert r.code == 0
    r = ws.run("diff", str(first), str(second), "--format", "json")
    assert r.code == 2
    d = json.loads(r.out)
    assert [(a["table"], a["key"], a["new"]) for a in d["added"]] == [("public.employees", {"id": 9}, "c@new.com")]
    assert d["removed"] == [] and d["changed"] == []
    r = ws.run("diff", str(first), str(first))
    assert r.code == 0


def test_plan_archives_its_diff_against_the_previous_plan(ws, db):
    _estate(db)
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    ws.targets(TARGETS.format(ddb=""))
    ws.mappings(MAPPINGS, name="m.json")
    r = ws.run("plan")
    assert r.code == 0 and "Changes since" not in r.out
    db.execute("INSERT INTO employees VALUES (9, 'c@old.com', 'C', 5)")
    r = ws.run("plan")
    assert r.code == 0 and "Changes since the previous plan" in r.out, r.out
    folders = list((ws.path / "plans").iterdir())
    # Both plans may share a second, so which folder is newer is read from the files, not from the names.
    (new,) = [f for f in folders if (f / "diff.json").exists()]
    (old,) = [f for f in folders if f != new]
    d = json.loads((new / "diff.json").read_text())
    assert d["old_digest"] == plan_doc(old / "plan.jsonl.gz")["digest"]
    assert [a["key"] for a in d["added"]] == [{"id": 9}]
    assert old.name in (new / "diff.md").read_text()


def test_show_formats_and_history(ws, db):
    plan = _setup(ws, db)
    assert _apply(ws, plan, "--approver", "Dana").code == 0
    r = ws.run("show", str(plan), "--format", "text")
    assert r.code == 0 and "delete-on-conflict" in r.out and "approver Dana" in r.out and "applied" in r.out
    r = ws.run("show", str(plan), "--format", "markdown")
    assert "## Apply history" in r.out and "| Dana |" in r.out
    r = ws.run("show", str(plan), "--format", "json")
    # JSON Lines: the plan's header, its lines exactly as the file holds them, then the apply history.
    header, *body, history = r.out.splitlines()
    with gzip.open(plan, "rt", encoding="utf-8") as f:
        file_lines = f.read().splitlines()
    assert json.loads(header)["digest"] == ws.plan_json(plan)["digest"]
    assert [header, *body] == file_lines
    assert json.loads(history)["apply_history"][0]["approver"] == "Dana"


# -- replan check ------------------------------------------------------------------------------------------------------


def test_replan_check_refuses_when_the_data_changed_and_passes_after_partial_apply(ws, db):
    plan = _setup(ws, db)
    db.execute("INSERT INTO employees VALUES (9, 'c@old.com', 'C', 5)")
    before = _pg_state(db)
    r = _apply(ws, plan, "--replan-check")
    assert_user_error(r, "--replan-check", "is new since the review")
    assert _pg_state(db) == before
    db.execute("DELETE FROM employees WHERE id = 9")
    r = _apply(ws, plan, "--replan-check")
    assert r.code == 0, r.out + r.err
    r = _apply(ws, plan, "--replan-check", "--force")  # everything applied: the fresh plan is empty
    assert r.code == 0, r.out + r.err


# -- rollback --------------------------------------------------------------------------------------------------------


def test_rollback_round_trip_restores_rows_and_items_exactly(ws, db, ddb):
    plan = _setup(ws, db, ddb)
    kinds = {(a["table"], a["kind"]) for a in ws.plan_json(plan)["actions"]}
    assert {
        ("public.employees", "delete-on-conflict"),
        ("profiles", "merge-and-move"),
        ("logins", "live-swap"),
    } <= kinds
    pg_dump = "SELECT to_jsonb(t)::text FROM {} t ORDER BY 1"
    before_pg = [db.rows(pg_dump.format(t)) for t in ("employees", "settings")]
    before_ddb = [_raw_items(ddb, t) for t in ("profiles", "logins")]
    assert _apply(ws, plan).code == 0
    assert [_raw_items(ddb, t) for t in ("profiles", "logins")] != before_ddb
    r = ws.run("rollback", str(plan.parent))
    assert r.code == 0, r.out + r.err
    rb = Path(r.out.split("Plan: ")[1].split()[0])
    body = ws.plan_json(rb)
    assert body["rollback_of"]["plan_digest"] == ws.plan_json(plan)["digest"]
    assert {a["kind"] for a in body["actions"]} >= {"insert-row", "restore-item", "update"}
    r = _apply(ws, rb)
    assert r.code == 0, r.out + r.err
    assert [db.rows(pg_dump.format(t)) for t in ("employees", "settings")] == before_pg
    assert [_raw_items(ddb, t) for t in ("profiles", "logins")] == before_ddb
    r = ws.run("verify", str(plan), "--format", "json")
    assert json.loads(r.out)["counts"] == {"after": 0, "before": len(ws.plan_json(plan)["actions"]), "drifted": 0}
    r = _apply(ws, rb, "--force")  # a rerun of the rollback changes nothing
    assert r.code == 0 and [db.rows(pg_dump.format(t)) for t in ("employees", "settings")] == before_pg


def test_rollback_leaves_rows_changed_since_the_apply_stale(ws, db):
    plan = _setup(ws, db)
    assert _apply(ws, plan).code == 0
    r = ws.run("rollback", str(plan.parent))
    rb = Path(r.out.split("Plan: ")[1].split()[0])
    db.execute("UPDATE employees SET email = 'changed@x.com' WHERE id = 1")
    r = _apply(ws, rb, "--on-stale", "skip")
    assert r.code == 3 and "stale" in r.out
    assert db.rows("SELECT email FROM employees WHERE id = 1") == [("changed@x.com",)]
    assert db.rows("SELECT email FROM employees WHERE id = 2") == [("b@old.com",)]  # re-inserted


def test_rollback_of_an_unapplied_plan_is_refused(ws, db):
    plan = _setup(ws, db)
    assert_user_error(ws.run("rollback", str(plan.parent)), "never applied")


def test_a_hand_written_lock_item_without_pid_or_lock_id_is_reported_not_a_traceback(ws, db, ddb):
    plan = _setup(ws, db, ddb)
    ddb.create("emailsync-ledger", "pk", "sk")
    ddb.put("emailsync-ledger", {"pk": "lock", "sk": "auth", "user": "ops", "host": "h", "pid": "not-a-number"})
    before = ddb.items("profiles")
    r = _apply(ws, plan)
    assert_user_error(r, "'auth' is locked", "ops@h")
    # Nothing at all is written to PostgreSQL: not even its ledger table, made only once every target is locked.
    assert ddb.items("profiles") == before and db.rows("SELECT to_regclass('emailsync.ledger')") == [(None,)]
