"""A plain table that nothing but its own UPDATE can change during an apply (no trigger or rule on any table the apply
can write, no child table, no row-level security, no deferrable constraint) is written first, by one UPDATE conditional
on every planned old value, without locking and imaging its rows beforehand, and read back column by column. It is
kept only if every planned row was found so; otherwise it is undone to a savepoint and judged row by row. Each test
asserts the final rows; which way a table went is observed on the applier (the real write runs), never replaced."""

from __future__ import annotations

import json
from typing import Any

import pytest

from emailsync.stores.postgres.applier import PostgresApplier

SCHEMA = [
    "CREATE EXTENSION IF NOT EXISTS citext",
    "CREATE DOMAIN mail AS text CHECK (VALUE LIKE '%@%')",
    "CREATE TABLE people (id int PRIMARY KEY, email mail UNIQUE, alt varchar(40), fixed char(12), ci citext, n int)",
    "CREATE TABLE lists (id bigint PRIMARY KEY, tags citext[], names varchar(40)[], n int)",
    "CREATE TABLE docs (k text PRIMARY KEY, doc jsonb, n int)",
    "INSERT INTO people VALUES (1, 'a@x.com', 'b@x.com', 'a@x.com', 'B@X.com', 1), (2, 'b@x.com', NULL, 'c@x.com', "
    "'a@x.com', 2), (3, 'q@x.com', 'a@x.com', NULL, NULL, 3)",
    "INSERT INTO lists VALUES (10, ARRAY['A@x.com', 'q@x.com']::citext[], ARRAY['b@x.com', NULL, 'a@x.com'], 1), "
    "(11, '{}', ARRAY['q@x.com'], 2)",
    """INSERT INTO docs VALUES ('d1', '{"by": "a@x.com", "to": ["b@x.com", "q@x.com"], "n": 1.50}', 1),
       ('d2', '"c@x.com"', 2), ('d3', NULL, 3)""",
]
TABLES = (
    "- table: people\n  columns: [email, alt, fixed, ci]\n"
    "- table: lists\n  columns: [tags, names]\n"
    "- table: docs\n  columns: [doc]\n"
)
MAPPINGS = {"a@x.com": "a2@x.com", "b@x.com": "b2@x.com", "c@x.com": "c2@x.com"}
SNAPSHOT = {
    "people": "SELECT id, email, alt, fixed, ci::text, n FROM people ORDER BY id",
    "lists": "SELECT id, tags::text[], names, n FROM lists ORDER BY id",
    "docs": "SELECT k, doc::text, n FROM docs ORDER BY k",
}


@pytest.fixture
def closed_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """(table, kept) for each table written the closed way, in order."""
    seen: list[tuple[str, bool]] = []
    real = PostgresApplier._write_closed

    def observed(self: PostgresApplier, i: int, m: Any, actions: int) -> bool:
        kept = real(self, i, m, actions)
        seen.append((m.name, kept))
        return kept

    monkeypatch.setattr(PostgresApplier, "_write_closed", observed)
    return seen


def _apply(ws, plan, *extra):
    return ws.run("apply", str(plan), "--auto-approve", "--force", *extra)


def _snapshot(db) -> dict[str, list[tuple[Any, ...]]]:
    return {t: db.rows(q) for t, q in SNAPSHOT.items()}


def _statuses(plan) -> dict[str, str]:
    return {a["id"]: a["status"] for a in json.loads((plan.parent / "report.json").read_text())["actions"]}


def _estate(db, extra: tuple[str, ...] = ()) -> None:
    for s in SCHEMA + list(extra):
        db.execute(s)


def _planned(db, ws, extra: tuple[str, ...] = (), tables: str = TABLES):
    _estate(db, extra)
    ws.postgres_targets({"core": db}, tables)
    ws.mappings(MAPPINGS)
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


def test_closed_tables_are_written_at_once_and_end_as_the_judged_way_leaves_them(db, ws, closed_writes, monkeypatch):
    """Domains, varchar(n), char(n), citext, citext[] and jsonb, one and several columns per table: the closed way
    and the way that locks, images and judges every row leave the same rows and the same report."""
    plan = _planned(db, ws)
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert sorted(closed_writes) == [("docs", True), ("lists", True), ("people", True)]
    closed = _snapshot(db)
    assert closed["people"] == [
        (1, "a2@x.com", "b2@x.com", "a2@x.com    ", "b2@x.com", 1),  # citext: any case
        (2, "b2@x.com", None, "c2@x.com    ", "a2@x.com", 2),
        (3, "q@x.com", "a2@x.com", None, None, 3),
    ]
    assert closed["docs"] == [
        ("d1", '{"n": 1.50, "by": "a2@x.com", "to": ["b2@x.com", "q@x.com"]}', 1),
        ("d2", '"c2@x.com"', 2),
        ("d3", None, 3),
    ]
    report = _statuses(plan)
    assert set(report.values()) == {"applied"}

    # The same plan on the same rows, every table judged row by row first.
    for t in ("people", "lists", "docs"):
        db.execute(f"DROP TABLE {t}")
    db.execute("DROP DOMAIN mail")
    _estate(db)
    monkeypatch.setattr(PostgresApplier, "_closed_tables", lambda self, plain: [])
    closed_writes.clear()
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert closed_writes == []
    assert _snapshot(db) == closed
    assert _statuses(plan) == report


def test_a_row_changed_since_the_plan_undoes_the_closed_write_and_the_table_is_judged_row_by_row(db, ws, closed_writes):
    plan = _planned(db, ws)
    db.execute("UPDATE people SET alt = 'other@x.com' WHERE id = 1")  # another writer, after the plan
    db.execute("DELETE FROM docs WHERE k = 'd2'")
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3, r.out + r.err
    assert sorted(closed_writes) == [("docs", False), ("lists", True), ("people", False)]
    rows = _snapshot(db)
    assert rows["people"] == [
        (1, "a2@x.com", "other@x.com", "a2@x.com    ", "b2@x.com", 1),  # the other writer's value is kept
        (2, "b2@x.com", None, "c2@x.com    ", "a2@x.com", 2),
        (3, "q@x.com", "a2@x.com", None, None, 3),
    ]
    assert rows["docs"] == [("d1", '{"n": 1.50, "by": "a2@x.com", "to": ["b2@x.com", "q@x.com"]}', 1), ("d3", None, 3)]
    assert sorted(s for s in _statuses(plan).values() if s != "applied") == ["stale", "stale"]


def test_a_unique_value_taken_since_the_plan_undoes_the_closed_write_and_is_reported_stale(db, ws, closed_writes):
    plan = _planned(db, ws)
    db.execute("INSERT INTO people VALUES (4, 'b2@x.com', NULL, NULL, NULL, 4)")  # takes a planned new email
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3, r.out + r.err
    assert ("people", False) in closed_writes
    assert db.rows("SELECT id, email FROM people ORDER BY id") == [
        (1, "a2@x.com"),
        (2, "b@x.com"),
        (3, "q@x.com"),
        (4, "b2@x.com"),
    ]
    assert list(_statuses(plan).values()).count("stale") == 1


TRIGGER = [
    "CREATE TABLE seen (n int)",
    "CREATE FUNCTION noted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO seen VALUES (1); "
    "RETURN NULL; END $$",
]


@pytest.mark.parametrize(
    "setup, why",
    [
        (TRIGGER + ["CREATE TRIGGER t AFTER UPDATE ON docs FOR EACH STATEMENT EXECUTE FUNCTION noted()"], "trigger"),
        (
            TRIGGER
            + [
                "CREATE TABLE child (id int PRIMARY KEY, person int REFERENCES people ON DELETE CASCADE)",
                "CREATE TRIGGER t AFTER DELETE ON child FOR EACH ROW EXECUTE FUNCTION noted()",
            ],
            "a trigger on a table a planned table cascades to",
        ),
        (["CREATE RULE r AS ON UPDATE TO lists DO ALSO NOTIFY lists_changed"], "rule"),
    ],
)
def test_a_trigger_or_rule_on_any_table_the_apply_can_write_turns_the_closed_way_off(db, ws, closed_writes, setup, why):
    plan = _planned(db, ws, tuple(setup))
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert closed_writes == [], why
    rows = _snapshot(db)
    assert rows["people"][0] == (1, "a2@x.com", "b2@x.com", "a2@x.com    ", "b2@x.com", 1)
    assert rows["lists"][0] == (10, ["a2@x.com", "q@x.com"], ["b2@x.com", None, "a2@x.com"], 1)
    assert set(_statuses(plan).values()) == {"applied"}


def test_row_level_security_or_a_deferrable_constraint_keeps_that_table_off_the_closed_way(db, ws, closed_writes):
    """A deferrable unique constraint would fail at commit, after the write was kept: the table is judged first, so a
    value taken since the plan is reported stale instead."""
    extra = (
        "ALTER TABLE lists ENABLE ROW LEVEL SECURITY",
        "CREATE TABLE accounts (id int PRIMARY KEY, email text UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO accounts VALUES (1, 'a@x.com'), (2, 'c@x.com')",
    )
    plan = _planned(db, ws, extra, TABLES + "- table: accounts\n  columns: [email]\n")
    db.execute("INSERT INTO accounts VALUES (3, 'c2@x.com')")
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3, r.out + r.err
    assert sorted(closed_writes) == [("docs", True), ("people", True)]
    assert db.rows("SELECT * FROM accounts ORDER BY id") == [(1, "a2@x.com"), (2, "c@x.com"), (3, "c2@x.com")]
    assert db.rows("SELECT id, names FROM lists ORDER BY id") == [
        (10, ["b2@x.com", None, "a2@x.com"]),
        (11, ["q@x.com"]),
    ]
    assert list(_statuses(plan).values()).count("stale") == 1


def test_a_closed_write_that_leaves_another_value_fails_verification_and_rolls_back(db, ws, closed_writes, monkeypatch):
    """Fault injected into the write (what it sets, upper-cased): the read-back by column names the row and column,
    and nothing is committed."""
    from psycopg import sql

    from emailsync.stores.postgres import applier

    real = applier._typed

    def upper(m: Any, c: str, value: sql.Composable) -> sql.Composable:
        typed = real(m, c, value)
        return sql.SQL("upper({})").format(typed) if m.columns[c].kind == "text" else typed

    plan = _planned(db, ws)
    before = _snapshot(db)
    monkeypatch.setattr(applier, "_typed", upper)
    r = _apply(ws, plan)
    assert r.code == 3, r.out + r.err
    assert "failed verification" in r.out + r.err
    assert ("people", True) in closed_writes
    assert _snapshot(db) == before
    report = json.loads((plan.parent / "report.json").read_text())["actions"]
    failed = [a["detail"] for a in report if a["status"] == "failed"]
    assert any("public.people" in d and "expected 'a2@x.com', found 'A2@X.COM'" in d for d in failed), failed
    assert {a["status"] for a in report} == {"failed", "not-applied"}
