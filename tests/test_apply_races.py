"""Two applies of one plan racing each other: the second is refused with one clear error, and the stores end exactly
as the plan says, applied once. Real PostgreSQL; DynamoDB Local for the DynamoDB races (moto is not thread-safe)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import Database, Dynamo
from helpers import cli_process, hook_dynamodb

from emailsync.stores.postgres.ledger import PgLedger

AREA = "two appliers at once"


def _journals(plan: Path) -> list[Path]:
    return sorted(plan.parent.glob("apply-*.jsonl"))


def _waiting_appliers(db: Database, but: str) -> int:
    """Sessions of other emailsync applies than run `but` (each names its run in application_name)."""
    rows = db.rows(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'emailsync apply %%' "
        "AND application_name <> %s",
        (f"emailsync apply {but}",),
    )
    return int(rows[0][0])


def test_a_second_apply_that_gets_the_lock_after_the_first_finished_is_refused_as_a_replay(
    ws: Any, db: Database, reliability: Any
) -> None:
    """The second apply starts while the first holds the lock, so the first's journal has no end yet; it gets the lock
    once the first has committed. It must read the journals and ledger then, see a finished run, and refuse."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@old.com'), (2, 'b@old.com'), (3, 'keep@x.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@old.com": "a@new.com", "b@old.com": "b@new.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    seen: dict[str, Any] = {}
    real_finish = PgLedger.finish

    def finish(self: PgLedger, status: str, counts: dict[str, int]) -> None:
        if not seen:  # the first holds the lock, its changes written and uncommitted, its journal open
            seen["first"] = self.run.run_id
            seen["second"] = cli_process(ws, "apply", str(plan), "--auto-approve")
            deadline = time.monotonic() + 30
            while _waiting_appliers(db, self.run.run_id) == 0:  # the second has read what it reads early and waits
                assert time.monotonic() < deadline, "the second apply never reached the lock"
                time.sleep(0.05)
        real_finish(self, status, counts)

    ws.monkeypatch.setattr(PgLedger, "finish", finish)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    out, err = seen["second"].communicate(timeout=60)
    assert seen["second"].returncode == 1, out + err
    assert "Traceback" not in err and out == ""
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "has already been applied completely; nothing was written" in errors[0], err
    applied = [(1, "a@new.com"), (2, "b@new.com"), (3, "keep@x.com")]
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == applied
    assert db.rows("SELECT run_id, status FROM emailsync.ledger") == [(seen["first"], "complete")]
    (journal,) = _journals(plan)  # the second wrote no journal, and the report is the first's
    assert json.loads(journal.read_text().splitlines()[0])["run_id"] == seen["first"]
    assert json.loads((plan.parent / "report.json").read_text())["run_id"] == seen["first"]
    reliability(AREA, "second refused as a replay, exit 1, nothing written", detail="lock taken after the first ended")


# --- DynamoDB: the first applies of a target create its ledger table -----------------------------------------


def _ddb_setup(ws: Any, d: Dynamo) -> Path:
    d.create("profiles", "email")
    d.put("profiles", {"email": "a@old.com", "name": "Ann"}, {"email": "keep@x.com", "name": "Kim"})
    ws.targets(
        "version: 1\nmappings: email_mappings.json\ndynamodb:\n  - name: hr\n    region: us-east-1\n"
        "    endpoint_url: ${DYNAMODB_ENDPOINT}\n    ledger_table: emailsync-ledger\n    tables:\n"
        "      - table: profiles\n        attributes: [email]\n"
    )
    ws.mappings({"a@old.com": "a@new.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


APPLIED = [{"email": "a@new.com", "name": "Ann"}, {"email": "keep@x.com", "name": "Kim"}]


def _complete_runs(d: Dynamo) -> list[str]:
    return [i["run_id"] for i in d.items("emailsync-ledger") if i.get("status") == "complete"]


def test_a_ledger_table_created_by_another_apply_a_moment_ago_is_used_not_an_error(
    ws: Any, ddb_local: Dynamo, reliability: Any
) -> None:
    plan = _ddb_setup(ws, ddb_local)
    created: list[str] = []

    def other_apply_creates_it_first(params: Any, **_: Any) -> None:
        if not created:  # between our DescribeTable (not found) and our CreateTable
            created.append(params["TableName"])
            ddb_local.create(params["TableName"], "pk", "sk")

    hook_dynamodb(ws, "before-parameter-build.dynamodb.CreateTable", other_apply_creates_it_first)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert created == ["emailsync-ledger"] and "ResourceInUse" not in r.err
    assert ddb_local.items("profiles") == APPLIED
    assert len(_complete_runs(ddb_local)) == 1
    reliability(AREA, "ledger table created by the other: used, applied once", detail="DynamoDB CreateTable race")


def test_two_first_applies_at_once_one_applies_the_other_is_refused(
    ws: Any, ddb_local: Dynamo, reliability: Any
) -> None:
    rounds = 3
    for n in range(rounds):
        if n:  # each round from scratch: no ledger table yet (each plan gets a folder of its own)
            for table in ("profiles", "emailsync-ledger"):
                ddb_local.client.delete_table(TableName=table)
        plan = _ddb_setup(ws, ddb_local)
        procs = [cli_process(ws, "apply", str(plan), "--auto-approve") for _ in range(2)]
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 1], results
        (refused,) = [err for code, _, err in results if code == 1]
        assert "Traceback" not in refused and "ResourceInUse" not in refused, refused
        errors = [ln for ln in refused.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, refused
        assert "is locked by another emailsync apply" in errors[0] or "already been applied" in errors[0], refused
        assert ddb_local.items("profiles") == APPLIED
        assert len(_complete_runs(ddb_local)) == 1
    reliability(AREA, "one applied, the other refused, exit 1", cases=rounds, detail="DynamoDB, ledger table new")
