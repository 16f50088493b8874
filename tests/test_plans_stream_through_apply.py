"""A PostgreSQL target's actions go from the plan file to its action table as they are read, never held in memory,
and what apply records of a large transaction is written in batches: each still says exactly what happened."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import plan_doc, rollback_plan

import emailsync.stores.postgres.journaling


def _journal(plan: Path) -> list[dict[str, Any]]:
    (path,) = sorted(plan.parent.glob("apply-*.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_large_transaction_is_journaled_in_batches_that_rollback_reads_whole(ws: Any, db: Any, monkeypatch) -> None:
    """BATCH lowered to 2: seven updates in one transaction are journaled as four before and four after records
    (2+2+2+1); the report lists all seven, and the rollback built from the journal undoes all seven."""
    monkeypatch.setattr(emailsync.stores.postgres.journaling, "BATCH", 2)
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    rows = [(i, f"u{i}@old.com") for i in range(1, 8)]
    for row in rows:
        db.execute("INSERT INTO employees VALUES (%s, %s)", row)
    ws.postgres_targets({"core": db}, "- {table: employees, columns: [email]}")
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(1, 8)})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    ids = sorted(a["id"] for a in plan_doc(plan)["actions"])

    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(i, f"u{i}@new.com") for i in range(1, 8)]
    writes = [e for e in _journal(plan) if e["event"] == "write" and e["store"] == "postgres"]
    before = [e for e in writes if e["phase"] == "before"]
    after = [e for e in writes if e["phase"] == "after"]
    assert [e["count"] for e in before] == [2, 2, 2, 1]
    assert sorted(a for e in before for a in e["actions"]) == ids
    assert [len(e["outcomes"]) for e in after] == [2, 2, 2, 1] and all(e["committed"] for e in after)
    assert sorted(a for e in after for a in e["outcomes"]) == ids
    assert {s for e in after for s in e["outcomes"].values()} == {"applied"}
    report = json.loads(plan.with_name("report.json").read_text())
    assert sorted(a["id"] for a in report["actions"]) == ids
    assert {(a["table"], a["status"]) for a in report["actions"]} == {("public.employees", "applied")}

    rb = rollback_plan(ws, plan)
    assert len(plan_doc(rb)["actions"]) == 7
    assert ws.run("apply", str(rb), "--auto-approve").code == 0
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == rows


def test_a_value_naming_another_target_does_not_move_an_action_between_targets(ws: Any, make_db: Any) -> None:
    """Target crm's rows hold the text "target":"hr" in a column named target, and their whole rows are in the plan
    (the email is the key). The lines are picked for each target by their bytes before PostgreSQL parses them:
    hr must apply only its own action and crm only its own, each counted once."""
    hr, crm = make_db(), make_db()
    hr.execute("CREATE TABLE people (email text PRIMARY KEY, target text)")
    hr.execute("INSERT INTO people VALUES ('a@old.com', 'x')")
    crm.execute("CREATE TABLE people (email text PRIMARY KEY, target text)")
    crm.execute("INSERT INTO people VALUES ('b@old.com', 'hr'), ('c@old.com', 'crm')")
    ws.postgres_targets({"hr": hr, "crm": crm}, "- {table: people, columns: [email]}")
    ws.mappings({"a@old.com": "a@new.com", "b@old.com": "b@new.com", "c@old.com": "c@new.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    lines = [a for a in plan_doc(plan)["actions"] if a["target"] == "crm"]
    assert any(a["row"] == {"email": "b@old.com", "target": "hr"} for a in lines)  # the needle is in crm's line

    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert hr.rows("SELECT email, target FROM people ORDER BY 1") == [("a@new.com", "x")]
    assert crm.rows("SELECT email, target FROM people ORDER BY 1") == [("b@new.com", "hr"), ("c@new.com", "crm")]
    report = json.loads(plan.with_name("report.json").read_text())
    assert sorted((a["target"], a["status"]) for a in report["actions"]) == [
        ("crm", "applied"),
        ("crm", "applied"),
        ("hr", "applied"),
    ]
    r = ws.run("verify", str(plan), "--json")
    assert r.code == 0, r.out + r.err
    assert json.loads(r.out)["counts"] == {"after": 3, "before": 0, "drifted": 0}
