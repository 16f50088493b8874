"""`emailsync show PLAN --target/--table/--kind`: a large plan read part by part, which is where plan.md sends a
reviewer when it is cut to fit a pull-request comment (real PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import assert_user_error, listing

from emailsync.plan import line_of
from emailsync.planfile import read_plan


def _estate(ws: Any, db: Any, make_db: Any) -> Path:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, manager_email text)")
    db.execute(
        "INSERT INTO employees SELECT g, 'u' || g || '@old.com', 'u' || (g % 7 + 1) || '@old.com' "
        "FROM generate_series(1, 3000) g"
    )
    db.execute("INSERT INTO employees VALUES (9001, 'u5@new.com', NULL)")  # u5's new address is taken: a delete
    db.execute("CREATE TABLE settings (email text PRIMARY KEY, theme text)")
    db.execute("INSERT INTO settings VALUES ('u1@old.com', 'dark'), ('u2@old.com', 'light'), ('u2@new.com', 'x')")
    other = make_db()
    other.execute("CREATE TABLE requests (id int PRIMARY KEY, email text)")
    other.execute("INSERT INTO requests SELECT g, 'u' || g || '@old.com' FROM generate_series(1, 50) g")
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    ws.monkeypatch.setenv("LEAVE_DSN", other.dsn)
    ws.targets(
        """version: 1
mappings: m.json
postgres:
  - name: core
    dsn: ${CORE_DSN}
    tables:
      - {table: employees, columns: [email, manager_email], on_conflict: delete}
      - {table: settings, columns: [email], on_conflict: skip}
  - name: leave
    dsn: ${LEAVE_DSN}
    tables:
      - {table: requests, columns: [email]}
"""
    )
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(1, 3001)}, name="m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    return plan


def test_plan_md_is_cut_and_says_how_to_read_the_rest(ws, db, make_db):
    plan = _estate(ws, db, make_db)
    md = (plan.parent / "plan.md").read_text()
    assert len(md) < 60_000
    assert "truncated to fit a pull-request comment" in md
    assert "emailsync show PLAN --format text --table TABLE --kind KIND" in md


def test_show_a_part_lists_exactly_that_part(ws, db, make_db):
    plan = _estate(ws, db, make_db)
    whole = read_plan(plan)
    r = ws.run("show", str(plan), "--format", "json", "--table", "public.employees", "--kind", "delete-on-conflict")
    assert r.code == 0, r.err
    # JSON Lines: a header for the part, then exactly its lines as the plan file holds them (no skipped change).
    head_line, *body = r.out.splitlines()
    part = json.loads(head_line)
    want = [a for a in whole.actions if a.table == "public.employees" and a.kind == "delete-on-conflict"]
    assert body == [line_of(a) for a in want] and len(want) == 1
    assert [json.loads(ln)["id"] for ln in body] == [a.id for a in want]
    assert part["plan_digest"] == whole.digest and set(part) == {"plan_digest", "selection", "summary"}
    assert part["selection"] == {"table": ["public.employees"], "kind": ["delete-on-conflict"]}
    assert [(s["table"], s["kind"], s["count"]) for s in part["summary"]] == [
        ("public.employees", "delete-on-conflict", 1)
    ]

    r = ws.run("show", str(plan), "--format", "text", "--kind", "skipped-conflict")
    assert r.code == 0, r.err
    lines = [ln for ln in r.out.splitlines() if ln.startswith(("skipped ", "  "))]
    assert lines == [ln for ln in lines if ln.startswith("skipped core/public.settings")] and len(lines) == 1

    r = ws.run("show", str(plan), "--format", "text", "--target", "leave")
    acts = [ln for ln in r.out.splitlines() if ln[:4].strip().isdigit()]
    assert len(acts) == 50 and all("leave/public.requests" in ln for ln in acts)

    r = ws.run("show", str(plan), "--format", "markdown", "--target", "leave")
    assert r.out.splitlines()[2] == "**50 updates in 1 target**"


def test_a_part_the_plan_does_not_have_is_refused_naming_what_it_has(ws, db, make_db):
    plan = _estate(ws, db, make_db)
    files = listing(ws.path)
    msg = assert_user_error(ws.run("show", str(plan), "--table", "public.employes"), "--table public.employes")
    assert "public.employees" in msg and "public.requests" in msg
    assert_user_error(ws.run("show", str(plan), "--kind", "delete"), "--kind delete", "delete-on-conflict")
    assert_user_error(ws.run("show", str(plan), "--target", "hr"), "--target hr", "core, leave")
    assert listing(ws.path) == files
