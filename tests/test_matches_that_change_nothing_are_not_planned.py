"""A case-insensitive match of a mapping's new address itself (HAL@x.com → hal@x.com, on the row that already holds
hal@x.com) changes nothing, so it plans nothing: no action, no "changes" exit code, and verify after apply reports
nothing pending. Both ways of planning agree, for text, citext, arrays, jsonb documents and jsonb paths."""

from __future__ import annotations

import pytest
from helpers import plan_lines

from emailsync.plan import loads
from emailsync.stores.postgres.store import PostgresStore


@pytest.mark.parametrize("sql_lines", [True, False])
def test_a_match_that_would_write_the_same_value_is_not_planned(db, ws, monkeypatch, sql_lines):
    monkeypatch.setattr(PostgresStore, "sql_lines", sql_lines)
    db.execute("CREATE EXTENSION IF NOT EXISTS citext")
    db.execute("CREATE TABLE t (id int PRIMARY KEY, e text, c citext, a text[], d jsonb, p jsonb)")
    db.execute(
        """INSERT INTO t VALUES
           (1, 'hal@x.com', 'hal@x.com', ARRAY['hal@x.com'], '{"to": "hal@x.com"}', '{"owner": "hal@x.com"}'),
           (2, 'HAL@x.com', 'HAL@x.com', ARRAY['x@y.com', 'HAL@x.com'], '{"to": ["HAL@x.com", "hal@x.com"]}',
            '{"owner": "HAL@x.com"}')"""
    )
    ws.postgres_targets({"core": db}, "- {table: t, columns: [e, c, a, d, {name: p, path: owner}]}\n", match="casefold")
    ws.mappings({"HAL@x.com": "hal@x.com"})
    r, plan = ws.plan("--detailed-exitcode")
    assert r.code == 2, r.out + r.err  # changes: row 2's
    actions = [loads(x) for x in plan_lines(plan)[1:]]
    assert sorted((a["key"]["id"], a["column"]) for a in actions) == [(2, c) for c in ("a", "c", "d", "e", "p")]
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, e, c::text, a, d, p FROM t ORDER BY id") == [
        (1, "hal@x.com", "hal@x.com", ["hal@x.com"], {"to": "hal@x.com"}, {"owner": "hal@x.com"}),
        (
            2,
            "hal@x.com",
            "hal@x.com",
            ["x@y.com", "hal@x.com"],
            {"to": ["hal@x.com", "hal@x.com"]},
            {"owner": "hal@x.com"},
        ),
    ]
    assert ws.run("verify", str(plan)).code == 0
    r, again = ws.plan("--detailed-exitcode")
    assert r.code == 0, r.out + r.err  # nothing left to change


def test_a_key_column_whose_match_changes_nothing_does_not_make_the_row_a_keyed_move(db, ws, monkeypatch):
    """The row's key holds hal@x.com, which the mapping matches ignoring case and leaves as it is; only its `alt`
    moves. Both ways of planning leave the whole row out of that line (it is not a move by key)."""
    from helpers import plan_lines
    from test_plan_lines_made_in_sql import _same_plans

    db.execute("CREATE TABLE accounts (email text PRIMARY KEY, alt text UNIQUE)")
    db.execute("INSERT INTO accounts VALUES ('hal@x.com', 'A@x.com'), ('z@x.com', 'q@x.com')")
    ws.postgres_targets({"core": db}, "- {table: accounts, columns: [email, alt]}\n", match="casefold")
    ws.mappings({"HAL@x.com": "hal@x.com", "a@x.com": "b@x.com"})
    r, in_sql = ws.plan()
    assert r.code == 0, r.out + r.err
    monkeypatch.setattr(PostgresStore, "sql_lines", False)
    r, in_python = ws.plan()
    assert r.code == 0, r.out + r.err
    _same_plans(plan_lines(in_sql), plan_lines(in_python))
    (line,) = [loads(x) for x in plan_lines(in_sql)[1:]]
    assert (line["column"], line["old"], line["new"], "row" in line) == ("alt", "A@x.com", "b@x.com", False)
    assert ws.run("apply", str(in_sql), "--auto-approve").code == 0
    assert db.rows("SELECT email, alt FROM accounts ORDER BY email") == [
        ("hal@x.com", "b@x.com"),
        ("z@x.com", "q@x.com"),
    ]
