"""Failures after writing has begun: a clear outcome, a report of what happened, never a traceback."""

from __future__ import annotations

import json

from helpers import hook_dynamodb
from reliability import Record
from test_dynamodb_faults import _error, _journal_agrees


def test_connection_dropped_mid_apply_rolls_back_and_reports(db, ws, reliability: Record):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com'), (2, 'b@x.com')")
    # The server ends our own session in the middle of the write (a crash, a failover, an admin's kill).
    db.execute(
        "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$"
    )
    db.execute("CREATE TRIGGER t_die BEFORE UPDATE ON employees FOR EACH ROW EXECUTE FUNCTION die()")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com"})
    r, plan = ws.plan()
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 3 and "Traceback" not in r.out + r.err
    report = json.loads((plan.parent / "report.json").read_text())
    assert {a["status"] for a in report["actions"]} == {"failed"} and report["targets"][0]["error"]
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@x.com"), (2, "b@x.com")]
    # The database is back (the trigger gone): the same command finishes the plan, each row changed once.
    db.execute("DROP TRIGGER t_die ON employees")
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a2@x.com"), (2, "b2@x.com")]
    report = json.loads((plan.parent / "report.json").read_text())
    assert sorted(a["status"] for a in report["actions"]) == ["applied", "applied"]
    first, _ = sorted(plan.parent.glob("apply-*.jsonl"))
    entries = [json.loads(line) for line in first.read_text().splitlines()]
    assert [e["exit_code"] for e in entries if e["event"] == "run-end"] == [3]
    assert {e["status"] for e in entries if e["event"] == "outcome"} == {"failed"}
    _journal_agrees(plan, 0)  # the rerun's
    reliability("dropped database connection", "rolled back whole, rerun finished the plan", detail="small table")


def test_a_trigger_that_skips_a_planned_write_rolls_the_database_back(db, ws):
    """Every row a step updates was locked and checked, so a row the UPDATE did not write (a BEFORE trigger returning
    NULL, a rule) is something apply did not foresee: nothing is committed, for that table or any other."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("CREATE TABLE leave (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com'), (2, 'b@x.com'), (3, 'c@x.com')")
    db.execute("INSERT INTO leave VALUES (1, 'a@x.com')")
    db.execute(
        "CREATE FUNCTION keep_b() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF OLD.id = 2 THEN RETURN NULL; END IF; RETURN NEW; END $$"
    )
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n- table: leave\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com", "c@x.com": "c2@x.com"})
    r, plan = ws.plan()
    db.execute("CREATE TRIGGER t_keep_b BEFORE UPDATE ON employees FOR EACH ROW EXECUTE FUNCTION keep_b()")
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 3 and "Traceback" not in r.out + r.err
    report = json.loads((plan.parent / "report.json").read_text())
    assert {a["status"] for a in report["actions"]} == {"failed"}
    assert "1 locked row(s) were not written as planned" in report["targets"][0]["error"]
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@x.com"), (2, "b@x.com"), (3, "c@x.com")]
    assert db.rows("SELECT id, email FROM leave") == [(1, "a@x.com")]
    # Without the trigger the same plan applies whole.
    db.execute("DROP TRIGGER t_keep_b ON employees")
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT email FROM employees ORDER BY id") == [("a2@x.com",), ("b2@x.com",), ("c2@x.com",)]
    assert db.rows("SELECT email FROM leave") == [("a2@x.com",)]


def test_dynamodb_error_mid_apply_keeps_the_report_of_earlier_targets(db, ddb, ws):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com')")
    ddb.create("users", "id")
    ddb.put("users", {"id": "1", "email": "a@x.com"})
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    ws.targets(
        "version: 1\nmappings: m.json\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n"
        "    tables: [{table: employees, columns: [email]}]\n"
        "dynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n"
        "    tables: [{table: users, attributes: [email]}]\n"
    )
    ws.mappings({"a@x.com": "a2@x.com"}, name="m.json")
    r, plan = ws.plan()
    # Permissions revoked between the checks and the writes: the table's reads are now denied.
    hook_dynamodb(
        ws, "before-send.dynamodb.BatchGetItem", lambda request, **_: _error(request, "AccessDeniedException")
    )
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 3 and "Traceback" not in r.out + r.err
    report = json.loads((plan.parent / "report.json").read_text())
    by_target = {t["target"]: t for t in report["targets"]}
    assert by_target["core"]["committed"] and "access denied" in by_target["hr"]["error"]
    assert db.rows("SELECT email FROM employees") == [("a2@x.com",)]  # what was written is reported, not lost
    assert ddb.items("users") == [{"id": "1", "email": "a@x.com"}]


def test_unexpected_dynamodb_error_while_planning_is_a_clear_error(ddb, ws):
    ddb.create("users", "id")
    ddb.put("users", {"id": "1", "email": "a@x.com"})
    ws.targets(
        "version: 1\nmappings: m.json\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n"
        "    tables: [{table: users, attributes: [email]}]\n"
    )
    ws.mappings({"a@x.com": "a2@x.com"}, name="m.json")
    hook_dynamodb(ws, "before-send.dynamodb.Scan", lambda request, **_: _error(request, "ValidationException"))
    r, plan = ws.plan()
    assert r.code == 1 and "ValidationException" in r.err and not plan.exists()
