"""The workflow as a person meets it: approval prompt, review rendering, the example files, the demo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import plan_doc

import emailsync.cli
from emailsync.sandbox import embedded_estate

ROOT = Path(__file__).resolve().parents[1]


def _setup(db, ws):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com'), (2, 'b@x.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


@pytest.mark.parametrize("answer", ["no", "YES", "y", ""])
def test_approval_prompt_accepts_only_yes(db, ws, monkeypatch, answer):
    plan = _setup(db, ws)
    monkeypatch.setattr(emailsync.cli, "_interactive", lambda: True)
    r = ws.run("apply", str(plan), input=answer + "\n")
    assert r.code == 1 and "cancelled" in r.err
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@x.com"), (2, "b@x.com")]
    assert not (plan.parent / "report.json").exists()


def test_approval_prompt_yes_applies(db, ws, monkeypatch):
    plan = _setup(db, ws)
    monkeypatch.setattr(emailsync.cli, "_interactive", lambda: True)
    r = ws.run("apply", str(plan), input="yes\n")
    assert r.code == 0, r.err
    assert "public.employees" in r.out  # the summary was shown before the question
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a2@x.com"), (2, "b@x.com")]
    report = json.loads((plan.parent / "report.json").read_text())
    assert [a["status"] for a in report["actions"]] == ["applied"]
    assert report["plan_digest"] == plan_doc(plan)["digest"]


def test_plan_md_fits_a_pull_request_comment(db, ws):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees SELECT g, 'user' || g || '@oldco.com' FROM generate_series(1, 3000) g")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({f"user{i}@oldco.com": f"user{i}@newco.com" for i in range(1, 3001)})
    r, plan = ws.plan()
    md = (plan.parent / "plan.md").read_text()
    assert len(md) < 60_000 and "truncated" in md and "**3000 updates in 1 target**" in md
    assert "### core: 3000 updates\n\n| table | column | kind | count |" in md
    assert "| public.employees | email | update | 3000 |" in md
    assert len(plan_doc(plan)["actions"]) == 3000
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    assert db.rows("SELECT count(*) FROM employees WHERE email LIKE '%@newco.com'") == [(3000,)]


def test_example_targets_file_plans_against_the_demo_estate(ws, monkeypatch):
    with embedded_estate() as (dsns, work):
        monkeypatch.setenv("TYMEPLUSHR_CORE_DSN", dsns["tymeplushr_core"])
        monkeypatch.setenv("TYMEPLUSHR_LEAVE_DSN", dsns["tymeplushr_leave"])
        shutil.copy(ROOT / "targets.yaml", ws.path / "targets.yaml")
        shutil.copy(ROOT / "email_mappings.json", ws.path / "email_mappings.json")
        r, plan = ws.plan("--detailed-exitcode")
        assert r.code == 2, r.err
        kinds = {(a["target"], a["table"], a["kind"]) for a in plan_doc(plan)["actions"]}
        assert ("tymeplushr-core", "public.employees", "delete-on-conflict") in kinds
        assert ("tymeplushr-leave", "public.leave_requests", "array-replace") in kinds


def test_demo_runs_the_workflow_and_cleans_up(ws, tmp_path):
    keep = tmp_path / "kept"
    r = ws.run("demo", "--keep", str(keep))
    assert r.code == 0, r.out + r.err
    assert "all behaved as expected" in r.out
    after = r.out.split("\nAfter:")[1]
    # PostgreSQL, the DynamoDB profiles (a merge-and-move) and the live login table all changed
    assert "2 | jane.smith@newco.com | ceo@newco.com | Jane Doe" in after
    assert "1 | jane.smith@newco.com | Sam Doe" in after  # the foreign key's child moved with its parent
    assert "delegates={jane.smith@newco.com, li@partner.org}, desk=42, email=raj.patel@newco.com" in after
    assert "clientId=acme, email=ceo@newco.com, passwordHash=$2b$12$ceo" in after
    assert "ceo@oldco.com" not in after.split("dynamodb userAuthentication:")[1]
    assert "20 after (applied), 0 before (not applied), 0 drifted" in r.out
    assert "already been applied completely" in r.err
    plans = sorted((keep / "plans").glob("*/plan.jsonl.gz"))
    assert len(plans) == 2  # the plan and its rollback
    (applied,) = [p for p in plans if (p.parent / "report.json").exists()]
    (rollback,) = [p for p in plans if p != applied]
    assert plan_doc(rollback)["rollback_of"]["plan_folder"] == applied.parent.name
    assert (keep / "targets.yaml").exists() and "DYNAMODB_ENDPOINT=" in (keep / ".env").read_text()
