"""Tables whose actions are plain value changes (no whole row, delete or insert; no email in a key or a foreign key) are
written by one conditional UPDATE each. Whenever that UPDATE does not write exactly the planned rows, the table goes
the step-by-step way instead, so every row is still classified and reported. Each test asserts the final rows."""

from __future__ import annotations

import json

import pytest
from helpers import plan_lines, write_plan_lines

TABLES = (
    "- table: leave_requests\n  columns: [email, approver_email]\n"
    "- table: audit_log\n  columns: [actor, payload]\n"
    "- table: teams\n  columns: [members]\n"
)


def _apply(ws, plan, *extra):
    return ws.run("apply", str(plan), "--auto-approve", "--force", *extra)


def _estate(db):
    db.execute("CREATE TABLE leave_requests (id int PRIMARY KEY, email text, approver_email text, days int)")
    db.execute("CREATE TABLE audit_log (id bigint PRIMARY KEY, actor text, payload jsonb)")
    db.execute("CREATE TABLE teams (name text PRIMARY KEY, members text[])")
    db.execute(
        "INSERT INTO leave_requests VALUES (1, 'a@x.com', 'b@x.com', 3), (2, 'b@x.com', 'a@x.com', 1), "
        "(3, 'c@x.com', NULL, 2), (4, 'a@x.com', 'z@x.com', 5)"
    )
    db.execute(
        """INSERT INTO audit_log VALUES (10, 'a@x.com', '{"by": "a@x.com", "n": 1.50}'),
           (11, 'q@x.com', '{"to": ["b@x.com", "q@x.com"]}'), (12, 'b@x.com', NULL)"""
    )
    db.execute("INSERT INTO teams VALUES ('core', '{a@x.com,q@x.com,b@x.com}'), ('ops', '{q@x.com}')")


def _report(plan):
    return json.loads((plan.parent / "report.json").read_text())


def _where(ws, plan, status):
    """(table, key, column) -> detail of the report's actions with this status, placed by the plan's lines."""
    planned = {a["id"]: a for a in ws.plan_json(plan)["actions"]}
    return {
        (a["table"], json.dumps(planned[a["id"]]["key"]), planned[a["id"]]["column"]): a.get("detail")
        for a in _report(plan)["actions"]
        if a["status"] == status
    }


def _planned(db, ws, mappings):
    """The estate, planned with these mappings: the plan's path."""
    _estate(db)
    ws.postgres_targets({"core": db}, TABLES)
    ws.mappings(mappings)
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


def test_plain_tables_are_written_verified_and_reported_per_action(db, ws):
    plan = _planned(db, ws, {"a@x.com": "a2@x.com", "b@x.com": "b2@x.com"})
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT * FROM leave_requests ORDER BY id") == [
        (1, "a2@x.com", "b2@x.com", 3),
        (2, "b2@x.com", "a2@x.com", 1),
        (3, "c@x.com", None, 2),
        (4, "a2@x.com", "z@x.com", 5),
    ]
    assert db.rows("SELECT id, actor, payload::text FROM audit_log ORDER BY id") == [
        (10, "a2@x.com", '{"n": 1.50, "by": "a2@x.com"}'),
        (11, "q@x.com", '{"to": ["b2@x.com", "q@x.com"]}'),
        (12, "b2@x.com", None),
    ]
    assert db.rows("SELECT name, members FROM teams ORDER BY name") == [
        ("core", ["a2@x.com", "q@x.com", "b2@x.com"]),
        ("ops", ["q@x.com"]),
    ]
    report = _report(plan)
    planned = {a["id"] for a in ws.plan_json(plan)["actions"]}
    assert len(planned) == 10
    assert {a["id"]: a["status"] for a in report["actions"]} == dict.fromkeys(planned, "applied")


def test_a_row_changed_since_the_plan_in_a_plain_table_is_stale_and_the_rest_of_the_table_is_written(db, ws):
    plan = _planned(db, ws, {"a@x.com": "a2@x.com", "b@x.com": "b2@x.com"})
    db.execute("UPDATE leave_requests SET approver_email = 'other@x.com' WHERE id = 1")  # another writer
    db.execute("DELETE FROM audit_log WHERE id = 12")
    r = _apply(ws, plan)  # --on-stale abort: nothing written anywhere
    assert r.code == 3
    assert db.rows("SELECT email FROM leave_requests ORDER BY id") == [
        ("a@x.com",),
        ("b@x.com",),
        ("c@x.com",),
        ("a@x.com",),
    ]
    assert db.rows("SELECT members FROM teams WHERE name = 'core'") == [(["a@x.com", "q@x.com", "b@x.com"],)]
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3
    assert db.rows("SELECT * FROM leave_requests ORDER BY id") == [
        (1, "a2@x.com", "other@x.com", 3),  # the other writer's value is kept; the row's other change is made
        (2, "b2@x.com", "a2@x.com", 1),
        (3, "c@x.com", None, 2),
        (4, "a2@x.com", "z@x.com", 5),
    ]
    assert db.rows("SELECT id, actor FROM audit_log ORDER BY id") == [(10, "a2@x.com"), (11, "q@x.com")]
    assert db.rows("SELECT members FROM teams WHERE name = 'core'") == [(["a2@x.com", "q@x.com", "b2@x.com"],)]
    assert _where(ws, plan, "stale") == {
        ("public.leave_requests", '{"id": 1}', "approver_email"): (
            'approver_email changed since the plan; it now holds "other@x.com"'
        ),
        ("public.audit_log", '{"id": 12}', "actor"): "the row no longer exists",
    }


def test_a_unique_value_taken_since_the_plan_is_stale_not_a_failed_apply(db, ws):
    """A unique index on an email column: the one UPDATE fails on the value another row took since the plan; that is
    undone and the table is classified row by row, which names the row holding the value."""
    db.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO accounts VALUES (1, 'a@x.com'), (2, 'b@x.com')")
    ws.postgres_targets({"core": db}, "- table: accounts\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    db.execute("INSERT INTO accounts VALUES (3, 'b2@x.com')")
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3, r.out + r.err
    assert db.rows("SELECT id, email FROM accounts ORDER BY id") == [(1, "a2@x.com"), (2, "b@x.com"), (3, "b2@x.com")]
    assert _where(ws, plan, "stale") == {
        ("public.accounts", '{"id": 2}', "email"): "another row now holds email = b2@x.com"
    }


def test_a_trigger_changing_another_column_of_a_plain_table_fails_verification_and_rolls_back(db, ws):
    plan = _planned(db, ws, {"c@x.com": "c2@x.com", "q@x.com": "q2@x.com"})
    db.execute(
        "CREATE FUNCTION double_days() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.days := OLD.days * 2; "
        "RETURN NEW; END $$"
    )
    db.execute("CREATE TRIGGER t_days BEFORE UPDATE ON leave_requests FOR EACH ROW EXECUTE FUNCTION double_days()")
    r = _apply(ws, plan)
    assert r.code == 3
    assert db.rows("SELECT id, email, days FROM leave_requests WHERE id = 3") == [(3, "c@x.com", 2)]
    assert db.rows("SELECT members FROM teams ORDER BY name") == [(["a@x.com", "q@x.com", "b@x.com"],), (["q@x.com"],)]
    failed = _where(ws, plan, "failed")
    assert list(failed) == [("public.leave_requests", '{"id": 3}', "email")]
    detail = failed[("public.leave_requests", '{"id": 3}', "email")]
    assert "days" in detail and "expected 2, found 4" in detail, detail
    statuses = {a["status"] for a in _report(plan)["actions"]}
    assert statuses == {"failed", "not-applied"}


def _touching_trigger(db, table: str, target: str, where: str) -> None:
    """An AFTER UPDATE trigger on `table` that changes `target`'s note: a side effect of this apply's own write."""
    db.execute(
        f"CREATE FUNCTION touch_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"UPDATE {target} SET note = 'touched' WHERE {where}; RETURN NEW; END $$"
    )
    db.execute(f"CREATE TRIGGER t_{table} AFTER UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION touch_{table}()")


@pytest.mark.parametrize("order", ["a first", "b first"])
def test_a_side_effect_of_one_tables_write_on_another_fails_verification_whatever_the_order(db, ws, order):
    """Found in review: every planned row is locked and imaged before any table is written, so a trigger that this
    apply's own write fires on another planned row is caught by verification, whichever table comes first."""
    db.execute("CREATE TABLE a (id int PRIMARY KEY, email text)")
    db.execute("CREATE TABLE b (id int PRIMARY KEY, email text, note text)")
    db.execute("INSERT INTO a VALUES (1, 'a@x.com')")
    db.execute("INSERT INTO b VALUES (1, 'a@x.com', 'n')")
    _touching_trigger(db, "a", "b", "id = NEW.id")
    ta, tb = "- table: a\n  columns: [email]\n", "- table: b\n  columns: [email]\n"
    ws.postgres_targets({"core": db}, ta + tb if order == "a first" else tb + ta)
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    r = _apply(ws, plan)
    assert r.code == 3, r.out + r.err
    assert "failed verification" in r.out + r.err
    assert db.rows("SELECT * FROM a") == [(1, "a@x.com")]
    assert db.rows("SELECT * FROM b") == [(1, "a@x.com", "n")]


def test_a_side_effect_on_a_table_applied_step_by_step_is_not_taken_for_another_writer(db, ws):
    """Found in review: b (keyed by email) goes the step-by-step way; a's write fires a trigger changing b. b was
    judged before a was written, so b is not called stale: its verification fails and nothing is committed."""
    db.execute("CREATE TABLE a (id int PRIMARY KEY, email text)")
    db.execute("CREATE TABLE b (email text PRIMARY KEY, note text)")
    db.execute("INSERT INTO a VALUES (1, 'a@x.com')")
    db.execute("INSERT INTO b VALUES ('a@x.com', 'n')")
    _touching_trigger(db, "a", "b", "true")
    ws.postgres_targets({"core": db}, "- table: b\n  columns: [email]\n- table: a\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3, r.out + r.err
    assert db.rows("SELECT * FROM a") == [(1, "a@x.com")]
    assert db.rows("SELECT * FROM b") == [("a@x.com", "n")]
    assert {a["status"] for a in _report(plan)["actions"]} == {"failed", "not-applied"}


def test_two_actions_with_one_id_in_a_plain_table_are_refused_before_any_write(db, ws):
    """Found in review: a plain table's actions never enter the action table, whose key refused a repeated id; the
    lines are checked for repeated ids now. The plan is edited and resealed, as someone who read planfile.py could."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO t VALUES (1, 'a@x.com'), (2, 'a@x.com')")
    ws.postgres_targets({"core": db}, "- table: t\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    lines = plan_lines(plan)
    first, second = json.loads(lines[1])["id"], json.loads(lines[2])["id"]
    lines[2] = lines[2].replace(second, first)
    write_plan_lines(plan, lines, reseal=True)
    r = _apply(ws, plan)
    assert r.code == 3, r.out + r.err
    assert f"two actions have the id '{first}'" in r.out + r.err
    assert db.rows("SELECT * FROM t ORDER BY id") == [(1, "a@x.com"), (2, "a@x.com")]
