"""Every user mistake: one `error:` message naming the place and the fix, exit 1, no traceback,
nothing written.

All tests run the real CLI against a real (embedded) PostgreSQL. `plan` errors must leave no plans/ folder;
`apply` refusals must leave every database exactly as it was (checked with a SELECT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import assert_user_error, employees, plan_doc

EMPLOYEES = "- table: public.employees\n  columns: [email]\n"
ROWS = [(1, "a@old.com"), (2, "b@old.com"), (3, "keep@x.com")]
MAPPING = {"a@old.com": "a@new.com", "b@old.com": "b@new.com"}


# --- helpers ------------------------------------------------------------------------------------------------


def make_employees(db: Any, extra_cols: str = "") -> None:
    db.execute(f"CREATE TABLE employees (id int PRIMARY KEY, email text{extra_cols})")
    for i, email in ROWS:
        db.execute("INSERT INTO employees (id, email) VALUES (%s, %s)", (i, email))


def assert_no_plan_written(ws: Any, plan_path: Path) -> None:
    assert not plan_path.exists()
    assert not plan_path.with_name("plan.md").exists()
    assert not (ws.path / "plans").exists(), sorted(p.name for p in (ws.path / "plans").rglob("*"))


def plan_fails(ws: Any, *fragments: str, extra: tuple[str, ...] = ()) -> str:
    r, out = ws.plan(*extra)
    message = assert_user_error(r, *fragments)
    assert_no_plan_written(ws, out)
    return message


@pytest.fixture
def emp_ws(ws: Any, db: Any) -> Any:
    """A workspace with a valid targets.yaml over an employees table; tests then break one thing."""
    make_employees(db)
    ws.postgres_targets({"core": db}, EMPLOYEES)
    ws.mappings(MAPPING)
    return ws


# --- targets.yaml -------------------------------------------------------------------------------------------


def test_bad_yaml(ws: Any, db: Any) -> None:
    make_employees(db)
    ws.mappings(MAPPING)
    ws.targets("version: 1\nmappings: email_mappings.json\npostgres:\n  - name: core\n    tables: [\n")
    plan_fails(ws, "targets.yaml", "YAML syntax error", "line ")
    assert employees(db) == ROWS


def test_unknown_key_names_its_path(ws: Any, db: Any) -> None:
    make_employees(db)
    ws.mappings(MAPPING)
    ws.postgres_targets({"core": db}, "- table: public.employees\n  colums: [email]\n")
    msg = plan_fails(ws, "targets.yaml", "postgres[0].tables[0].colums", "unknown key 'colums'")
    assert "'columns'" in msg  # the fix: did you mean 'columns'?


def test_missing_env_var_is_named(ws: Any, db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    make_employees(db)
    ws.mappings(MAPPING)
    monkeypatch.delenv("EMAILSYNC_TEST_UNSET_DSN", raising=False)
    ws.targets(
        "version: 1\nmappings: email_mappings.json\npostgres:\n"
        "  - name: core\n    dsn: ${EMAILSYNC_TEST_UNSET_DSN}\n    tables:\n"
        "      - table: public.employees\n        columns: [email]\n"
    )
    plan_fails(ws, "targets.yaml", "postgres[0].dsn", "EMAILSYNC_TEST_UNSET_DSN", "not set")


def test_targets_file_missing(ws: Any) -> None:
    ws.mappings(MAPPING)
    plan_fails(ws, "nope.yaml", "targets file not found", extra=("--targets", "nope.yaml"))


# --- mappings -----------------------------------------------------------------------------------------------


def test_mappings_invalid_json(emp_ws: Any) -> None:
    emp_ws.mappings('{"a@old.com": "a@new.com",\n')
    plan_fails(emp_ws, "email_mappings.json", "invalid JSON", "line ")


def test_mappings_csv_with_semicolons(emp_ws: Any) -> None:
    emp_ws.mappings("old_email;new_email\na@old.com;a@new.com\n", name="map.csv")
    plan_fails(emp_ws, "map.csv", "semicolons", "comma", extra=("--mappings", "map.csv"))


def test_mappings_repeated_key_in_object(emp_ws: Any) -> None:
    emp_ws.mappings('{"a@old.com": "a@new.com", "a@old.com": "other@new.com"}')
    plan_fails(emp_ws, "email_mappings.json", 'key "a@old.com"', "appears 2 times")


def test_mappings_cycle_is_named(emp_ws: Any, db: Any) -> None:
    emp_ws.mappings({"a@old.com": "b@old.com", "b@old.com": "a@old.com"})
    plan_fails(emp_ws, "email_mappings.json", "cycle", "a@old.com → b@old.com → a@old.com")
    assert employees(db) == ROWS


def test_mappings_value_not_an_email(emp_ws: Any) -> None:
    emp_ws.mappings({"a@old.com": "not-an-email"})
    plan_fails(emp_ws, "email_mappings.json", "not an email address", "not-an-email", 'key "a@old.com"')


def test_mappings_one_old_two_news(emp_ws: Any) -> None:
    emp_ws.mappings(
        [
            {"old_email": "a@old.com", "new_email": "a@new.com"},
            {"old_email": "a@old.com", "new_email": "a2@new.com"},
        ]
    )
    plan_fails(
        emp_ws,
        "email_mappings.json",
        "[1]",
        "[0]",
        "a@new.com",
        "a2@new.com",
        "one old address cannot become two different new addresses",
    )


# --- the configuration against the database -----------------------------------------------------------------


def test_unknown_table(ws: Any, db: Any) -> None:
    make_employees(db)
    ws.mappings(MAPPING)
    ws.postgres_targets({"core": db}, "- table: public.nosuch\n  columns: [email]\n")
    plan_fails(ws, "postgres[0].tables[0]", "'public.nosuch'", "does not exist", db.name)


def test_unknown_column_lists_existing_ones(ws: Any, db: Any) -> None:
    make_employees(db, ", manager_email text")
    ws.mappings(MAPPING)
    ws.postgres_targets({"core": db}, "- table: public.employees\n  columns: [mail]\n")
    msg = plan_fails(ws, "postgres[0].tables[0].columns", "'mail'", "does not exist")
    assert "id, email, manager_email" in msg


def test_column_not_text_like(ws: Any, db: Any) -> None:
    make_employees(db, ", age integer")
    ws.mappings(MAPPING)
    ws.postgres_targets({"core": db}, "- table: public.employees\n  columns: [email, age]\n")
    plan_fails(ws, "postgres[0].tables[0].columns", "'age'", "integer", "not text-like", "remove it")


def test_table_without_primary_key_needs_key(ws: Any, db: Any) -> None:
    db.execute("CREATE TABLE contacts (email text, name text)")
    db.execute("INSERT INTO contacts VALUES ('a@old.com', 'A')")
    ws.mappings(MAPPING)
    ws.postgres_targets({"core": db}, "- table: public.contacts\n  columns: [email]\n")
    plan_fails(ws, "postgres[0].tables[0]", "no primary key", "key:")
    assert db.rows("SELECT * FROM contacts") == [("a@old.com", "A")]


def test_json_column_is_refused(ws: Any, db: Any) -> None:
    db.execute("CREATE TABLE docs (id int PRIMARY KEY, data json)")
    db.execute("""INSERT INTO docs VALUES (1, '{"to": "a@old.com"}')""")
    ws.mappings(MAPPING)
    ws.postgres_targets({"core": db}, "- table: public.docs\n  columns: [data]\n")
    plan_fails(ws, "postgres[0].tables[0].columns", "'data'", "json is not supported", "jsonb")
    assert db.rows("SELECT data::text FROM docs") == [('{"to": "a@old.com"}',)]


# --- connecting ---------------------------------------------------------------------------------------------


def dsn_targets(ws: Any, monkeypatch: pytest.MonkeyPatch, dsn: str) -> None:
    monkeypatch.setenv("CORE_DSN", dsn)
    ws.targets(
        "version: 1\nmappings: email_mappings.json\npostgres:\n"
        "  - name: core\n    dsn: ${CORE_DSN}\n    tables:\n"
        "      - table: public.employees\n        columns: [email]\n"
    )


def test_unreachable_database(ws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ws.mappings(MAPPING)
    dsn_targets(ws, monkeypatch, "host=/nonexistent dbname=x user=postgres")
    plan_fails(ws, "'core'", "cannot connect", "/nonexistent", "'x'")


def test_password_never_printed(ws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ws.mappings(MAPPING)
    dsn_targets(ws, monkeypatch, "postgresql://bob:S3cretPW@127.0.0.1:1/x")
    r, out = ws.plan()
    assert_user_error(r, "'core'", "cannot connect", "127.0.0.1")
    assert "S3cretPW" not in r.out
    assert "S3cretPW" not in r.err
    assert_no_plan_written(ws, out)


def test_password_never_printed_in_a_bad_targets_file(ws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DSN under a misspelt key is still a secret when the file is reported as invalid."""
    ws.mappings(MAPPING)
    ws.targets(
        "version: 1\nmappings: email_mappings.json\npostgres:\n"
        "  - name: core\n    dns: postgresql://bob:S3cretPW@127.0.0.1:1/x\n    tables:\n"
        "      - table: public.employees\n        columns: [email]\n"
    )
    r, out = ws.plan()
    assert_user_error(r, "postgres[0].dns", "unknown key")
    assert "S3cretPW" not in r.out + r.err
    assert_no_plan_written(ws, out)


# --- apply refusals -----------------------------------------------------------------------------------------


def make_plan(ws: Any) -> Path:
    r, path = ws.plan()
    assert r.code == 0, (r.out, r.err)
    assert ws.plan_json(path)["actions"], "the test needs a plan with changes"
    return path


def assert_nothing_applied(path: Path) -> None:
    assert not path.with_name("report.json").exists()


def test_apply_without_auto_approve_and_no_terminal(emp_ws: Any, db: Any) -> None:
    path = make_plan(emp_ws)
    r = emp_ws.run("apply", str(path), input="yes\n")  # even a typed "yes" is not a terminal
    assert_user_error(r, "no terminal", "--auto-approve")
    assert employees(db) == ROWS
    assert_nothing_applied(path)


def test_apply_against_another_database(ws: Any, make_db: Any, reliability: Any) -> None:
    planned, other = make_db(), make_db()
    make_employees(planned)
    make_employees(other)
    ws.mappings(MAPPING)
    ws.postgres_targets({"core": planned}, EMPLOYEES)
    path = make_plan(ws)
    ws.postgres_targets({"core": other}, EMPLOYEES)
    r = ws.run("apply", str(path), "--auto-approve")
    msg = assert_user_error(r, "does not match", "'core'", other.name, planned.name, "re-plan")
    assert "targets.yaml" in msg
    assert employees(planned) == ROWS
    assert employees(other) == ROWS
    assert_nothing_applied(path)
    reliability(
        "hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="pointed at another database"
    )


def test_apply_when_targets_no_longer_list_the_table(ws: Any, db: Any) -> None:
    make_employees(db)
    db.execute("CREATE TABLE contacts (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO contacts VALUES (1, 'a@old.com')")
    ws.mappings(MAPPING)
    ws.postgres_targets({"core": db}, EMPLOYEES)
    path = make_plan(ws)
    ws.postgres_targets({"core": db}, "- table: public.contacts\n  columns: [email]\n")
    r = apply_auto(ws, path)
    assert_user_error(r, "'public.employees'", "no longer lists", "targets file the plan was made from")
    assert employees(db) == ROWS
    assert db.rows("SELECT * FROM contacts") == [(1, "a@old.com")]
    assert_nothing_applied(path)


def test_apply_when_targets_no_longer_list_the_column(ws: Any, db: Any) -> None:
    make_employees(db, ", manager_email text")
    db.execute("UPDATE employees SET manager_email = 'a@old.com'")
    before = employees(db)
    ws.mappings(MAPPING)
    ws.postgres_targets({"core": db}, EMPLOYEES)
    path = make_plan(ws)
    assert {a["column"] for a in ws.plan_json(path)["actions"]} == {"email"}
    ws.postgres_targets({"core": db}, "- table: public.employees\n  columns: [manager_email]\n")
    r = apply_auto(ws, path)
    assert_user_error(r, "['email']", "'public.employees'", "targets file the plan was made from")
    assert employees(db) == before
    assert_nothing_applied(path)


def test_apply_when_targets_no_longer_define_the_target(ws: Any, db: Any) -> None:
    make_employees(db)
    ws.mappings(MAPPING)
    ws.postgres_targets({"core": db}, EMPLOYEES)
    path = make_plan(ws)
    ws.postgres_targets({"crm": db}, EMPLOYEES)
    r = apply_auto(ws, path)
    assert_user_error(r, "does not match", "'core'", "does not define")
    assert employees(db) == ROWS
    assert_nothing_applied(path)


def apply_auto(ws: Any, path: Path) -> Any:
    return ws.run("apply", str(path), "--auto-approve")


def test_apply_refusals_leave_the_plan_untouched(emp_ws: Any, db: Any) -> None:
    """A refused apply does not rewrite the plan either."""
    path = make_plan(emp_ws)
    raw = path.read_bytes()
    r = emp_ws.run("apply", str(path))
    assert_user_error(r, "--auto-approve")
    assert path.read_bytes() == raw
    assert plan_doc(path)["actions"]
    assert employees(db) == ROWS
