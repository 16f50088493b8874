"""apply checks a plan's lines while it gets on with the rest (reaching the databases, loading the lines): a problem
in the lines is still the one error a person hears, even when something else was refused meanwhile, and nothing is
written to any database."""

from __future__ import annotations

from typing import Any

from helpers import assert_user_error, plan_lines, write_plan_lines


def _broken_plan(ws: Any, db: Any) -> Any:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@old.com'), (2, 'b@old.com')")
    ws.postgres_targets({"hr": db}, "- {table: employees, columns: [email]}")
    ws.mappings({"a@old.com": "a@new.com", "b@old.com": "b@new.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    lines = plan_lines(plan)
    lines[1] = lines[1].replace('"step":1', '"step":"one"')  # the header re-sealed: only the line's check sees it
    write_plan_lines(plan, lines, reseal=True)
    return plan


def test_a_broken_line_is_the_error_even_when_an_option_is_refused_too(ws: Any, db: Any) -> None:
    plan = _broken_plan(ws, db)
    r = ws.run("apply", str(plan), "--auto-approve", "--approver", " ")
    assert_user_error(r, str(plan), "line 2", "not a valid plan line at step")
    assert "--approver" not in r.err
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@old.com"), (2, "b@old.com")]
    assert db.rows("SELECT to_regclass('emailsync.ledger')") == [(None,)]


def test_a_broken_line_is_the_error_before_anything_reaches_the_database(ws: Any, db: Any) -> None:
    plan = _broken_plan(ws, db)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert_user_error(r, str(plan), "line 2", "not a valid plan line at step")
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@old.com"), (2, "b@old.com")]
    assert db.rows("SELECT to_regclass('emailsync.ledger')") == [(None,)]
