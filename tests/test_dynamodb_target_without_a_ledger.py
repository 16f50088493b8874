"""A DynamoDB target without `ledger_table` is applied through a ledger that records and locks nothing: apply warns
once, writes the items, creates no ledger table, and a rerun re-checks rather than being refused as a replay."""

from __future__ import annotations

import json
from typing import Any


def test_a_target_without_ledger_table_is_applied_with_a_warning_and_no_ledger(ddb: Any, ws: Any) -> None:
    ddb.create("users", "email")
    ddb.put("users", {"email": "a@old.com", "name": "Ann"}, {"email": "z@other.com", "name": "Zed"})
    ws.targets(
        "version: 1\nmappings: email_mappings.json\ndynamodb:\n  - name: hr\n    region: us-east-1\n"
        "    endpoint_url: ${DYNAMODB_ENDPOINT}\n    tables:\n      - table: users\n        attributes: [email]\n"
    )
    ws.mappings({"a@old.com": "a@new.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err

    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    warning = "DynamoDB target 'hr' has no ledger_table in targets.yaml: this apply is not recorded in the target"
    assert r.err.count(warning) == 1, r.err
    assert ddb.items("users") == [{"email": "a@new.com", "name": "Ann"}, {"email": "z@other.com", "name": "Zed"}]
    assert ddb.client.list_tables()["TableNames"] == ["users"]  # no ledger table made

    r = ws.run("apply", str(plan), "--auto-approve")  # nothing records the first run: re-checked, not refused
    assert r.code == 0, r.out + r.err
    report = json.loads(plan.with_name("report.json").read_text())
    assert [a["status"] for a in report["actions"]] == ["already-applied"]
    assert ddb.items("users") == [{"email": "a@new.com", "name": "Ann"}, {"email": "z@other.com", "name": "Zed"}]
