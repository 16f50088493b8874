"""The live login table: verified swaps, run last, only with their own confirmation (moto server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import hook_dynamodb

import emailsync.cli

LIVE = """version: 1
mappings: m.json
{pg}dynamodb:
  - name: auth
    endpoint_url: ${{DYNAMODB_ENDPOINT}}
    tables:
      - table: userAuthentication
        live: true
        client_attribute: clientId
        attributes: [email]
      - table: hr-profiles
        attributes: [email]
"""


def _setup(ddb, ws, mappings, auth_items, pg: str = "") -> Path:
    ddb.create("userAuthentication", "email", "clientId")
    ddb.create("hr-profiles", "id")
    ddb.put("userAuthentication", *auth_items)
    ddb.put("hr-profiles", {"id": "p1", "email": "a@old.com"})
    ws.targets(LIVE.format(pg=pg))
    ws.mappings(mappings, name="m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


def _journal(plan: Path) -> list[dict]:
    (path,) = plan.parent.glob("apply-*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _statuses(plan: Path) -> list[str]:
    return sorted(a["status"] for a in json.loads((plan.parent / "report.json").read_text())["actions"])


def test_swap_without_existing_item_is_journaled_and_listed_first(ddb, ws):
    plan = _setup(ddb, ws, {"a@old.com": "a@new.com"}, [{"email": "a@old.com", "clientId": "1", "pwd": "h1"}])
    acts = ws.plan_json(plan)["actions"]
    assert sorted((a["table"], a["kind"], a["live"]) for a in acts) == [
        ("hr-profiles", "update", False),
        ("userAuthentication", "live-swap", True),
    ]
    md = (plan.parent / "plan.md").read_text()
    assert md.index("LIVE") < md.index("auth / hr-profiles")
    r = ws.run("apply", str(plan), "--auto-approve", "--confirm-live")
    assert r.code == 0, r.out + r.err
    assert ddb.items("userAuthentication") == [{"email": "a@new.com", "clientId": "1", "pwd": "h1"}]
    assert ddb.items("hr-profiles") == [{"id": "p1", "email": "a@new.com"}]
    steps = [(e["write"], e["phase"]) for e in _journal(plan) if e.get("live")]
    assert steps == [("put", "before"), ("put", "after"), ("delete", "before"), ("delete", "after")]
    r = ws.run("apply", str(plan), "--auto-approve", "--confirm-live")
    assert r.code == 0 and _statuses(plan) == ["already-applied", "already-applied"]


def test_merge_into_existing_item_and_client_scope(ddb, ws):
    items = [
        {"email": "a@old.com", "clientId": "1", "pwd": "h1", "mfa": "sms"},
        {"email": "a@new.com", "clientId": "1", "pwd": None, "role": "admin"},
        {"email": "a@old.com", "clientId": "2", "pwd": "h2"},  # another client: not in scope
    ]
    plan = _setup(ddb, ws, [{"old": "a@old.com", "new": "a@new.com", "client_id": "1"}], items)
    r = ws.run("apply", str(plan), "--auto-approve", "--confirm-live")
    assert r.code == 0, r.out + r.err
    assert ddb.items("userAuthentication") == [
        {"email": "a@new.com", "clientId": "1", "pwd": "h1", "role": "admin", "mfa": "sms"},
        {"email": "a@old.com", "clientId": "2", "pwd": "h2"},
    ]


def test_without_confirm_live_nothing_is_written_anywhere(ddb, ws, db):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@old.com')")
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    pg = "postgres:\n  - name: core\n    dsn: ${CORE_DSN}\n    tables: [{table: employees, columns: [email]}]\n"
    plan = _setup(ddb, ws, {"a@old.com": "a@new.com"}, [{"email": "a@old.com", "clientId": "1"}], pg=pg)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 1 and "--confirm-live" in r.err and "--skip-live" in r.err
    assert db.rows("SELECT email FROM employees") == [("a@old.com",)]
    assert ddb.items("hr-profiles") == [{"id": "p1", "email": "a@old.com"}]
    assert ddb.items("userAuthentication") == [{"email": "a@old.com", "clientId": "1"}]
    # The approver applies the rest first, then the live part in a second run of the same plan.
    r = ws.run("apply", str(plan), "--auto-approve", "--skip-live")
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT email FROM employees") == [("a@new.com",)]
    assert ddb.items("userAuthentication") == [{"email": "a@old.com", "clientId": "1"}]
    r = ws.run("apply", str(plan), "--auto-approve", "--confirm-live")
    assert r.code == 0, r.out + r.err
    assert ddb.items("userAuthentication") == [{"email": "a@new.com", "clientId": "1"}]
    assert _statuses(plan) == ["already-applied", "already-applied", "applied"]


def test_interactive_confirmation_needs_exactly_YES(ddb, ws, monkeypatch):
    plan = _setup(ddb, ws, {"a@old.com": "a@new.com"}, [{"email": "a@old.com", "clientId": "1"}])
    monkeypatch.setattr(emailsync.cli, "_interactive", lambda: True)
    r = ws.run("apply", str(plan), "--auto-approve", input="yes\n")
    assert r.code == 1 and "not confirmed" in r.err and "LIVE" in r.out
    assert ddb.items("userAuthentication") == [{"email": "a@old.com", "clientId": "1"}]
    assert ddb.items("hr-profiles") == [{"id": "p1", "email": "a@old.com"}]
    r = ws.run("apply", str(plan), "--auto-approve", input="YES\n")
    assert r.code == 0, r.out + r.err
    assert ddb.items("userAuthentication") == [{"email": "a@new.com", "clientId": "1"}]


def test_mismatch_after_the_write_keeps_both_items(ddb, ws):
    plan = _setup(ddb, ws, {"a@old.com": "a@new.com"}, [{"email": "a@old.com", "clientId": "1", "pwd": "h1"}])
    done = []

    def concurrent_writer(**_):
        if not done:
            done.append(1)
            ddb.put("userAuthentication", {"email": "a@new.com", "clientId": "1", "pwd": "other"})

    hook_dynamodb(ws, "after-call.dynamodb.PutItem", concurrent_writer)
    r = ws.run("apply", str(plan), "--auto-approve", "--confirm-live")
    assert r.code == 3 and "needs-review" in r.out
    assert ddb.items("userAuthentication") == [
        {"email": "a@new.com", "clientId": "1", "pwd": "other"},
        {"email": "a@old.com", "clientId": "1", "pwd": "h1"},
    ]
    report = json.loads((plan.parent / "report.json").read_text())
    (flagged,) = [a for a in report["actions"] if a["status"] == "needs-review"]
    assert "pwd" in flagged["detail"] and "both items kept" in flagged["detail"]
    assert ("verify", "mismatch") in [(e["write"], e["phase"]) for e in _journal(plan) if e.get("live")]


def test_interrupted_swap_resumes_with_the_delete(ddb, ws):
    plan = _setup(ddb, ws, {"a@old.com": "a@new.com"}, [{"email": "a@old.com", "clientId": "1", "pwd": "h1"}])

    class Crash(Exception):
        pass

    def crash(**_):
        raise Crash("killed after the put, before the delete")

    unhook = hook_dynamodb(ws, "after-call.dynamodb.PutItem", crash)
    with pytest.raises(Crash):
        ws.run("apply", str(plan), "--auto-approve", "--confirm-live")
    assert len(ddb.items("userAuthentication")) == 2  # both exist: nothing lost
    unhook()
    r = ws.run("apply", str(plan), "--auto-approve", "--confirm-live")
    assert r.code == 0, r.out + r.err
    assert ddb.items("userAuthentication") == [{"email": "a@new.com", "clientId": "1", "pwd": "h1"}]
