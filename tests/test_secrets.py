"""Credentials never appear in output, plans or reports, including when authentication fails."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def password_role(db):
    """A role that must log in with a password: scram for it alone, trust stays for the tests' own role."""
    db.execute("DROP ROLE IF EXISTS es_bob")
    db.execute("CREATE ROLE es_bob LOGIN PASSWORD 'Right-Pa55word'")
    db.execute(f'GRANT ALL ON DATABASE "{db.name}" TO es_bob')
    db.execute("GRANT ALL ON SCHEMA public TO es_bob")
    hba = Path(db.rows("SHOW hba_file")[0][0])
    original = hba.read_text()
    hba.write_text("local all es_bob scram-sha-256\n" + original)
    db.execute("SELECT pg_reload_conf()")
    yield db
    hba.write_text(original)
    db.execute("SELECT pg_reload_conf()")


def _setup(db, ws, password: str) -> None:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com')")
    db.execute("GRANT ALL ON employees TO es_bob")
    ws.monkeypatch.setenv("CORE_DSN", f"postgresql://es_bob:{password}@/{db.name}?host={db.host}")
    ws.targets(
        "version: 1\nmappings: m.json\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n"
        "    tables: [{table: employees, columns: [email]}]\n"
    )
    ws.mappings({"a@x.com": "a2@x.com"}, name="m.json")


def _all_artifacts(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and p.suffix != ".yaml")


def test_wrong_password_is_one_clear_error_without_the_password(password_role, ws, reliability):
    _setup(password_role, ws, "Wr0ng-Secret-XYZ")
    r, plan = ws.plan()
    assert r.code == 1 and "cannot connect" in r.err and "password authentication failed" in r.err
    assert "Wr0ng-Secret-XYZ" not in r.out + r.err and "Traceback" not in r.err
    assert not plan.exists()
    reliability(
        "secrets in artifacts",
        "connection refused: error names host and database, no credential",
        detail="wrong PostgreSQL password while planning",
    )


def test_right_password_never_reaches_plan_or_report(password_role, ws, reliability):
    _setup(password_role, ws, "Right-Pa55word")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    r2 = ws.run("apply", str(plan), "--auto-approve")
    assert r2.code == 0, r2.out + r2.err
    assert password_role.rows("SELECT email FROM employees") == [("a2@x.com",)]
    outputs = r.out + r.err + r2.out + r2.err + _all_artifacts(ws.path / "plans")
    assert "Right-Pa55word" not in outputs and "es_bob" not in outputs  # no user either: only host/port/db
    reliability(
        "secrets in artifacts",
        "no password, user or AWS key in any output, file, row or item",
        detail="plan and apply with a password DSN",
    )
