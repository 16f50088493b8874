"""DynamoDB faults moto does not produce, injected through botocore event hooks on our real client."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from helpers import hook_dynamodb
from reliability import Record


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any):
        yield self._body


def _error(request: Any, code: str, reasons: list[str] | None = None) -> AWSResponse:
    body: dict[str, Any] = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": f"injected {code}"}
    if reasons:
        body["CancellationReasons"] = [{"Code": r} for r in reasons]
    headers = {"x-amzn-requestid": "injected", "content-type": "application/x-amz-json-1.0"}
    return AWSResponse(request.url, 400, headers, _Raw(json.dumps(body).encode()))


def _setup(ddb, ws, n: int = 6) -> Any:
    ddb.create("users", "email")
    ddb.put("users", *({"email": f"u{i}@old.com", "i": Decimal(i)} for i in range(n)))
    ws.targets(
        "version: 1\nmappings: m.json\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n"
        "    tables: [{table: users, attributes: [email]}]\n"
    )
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(n)}, name="m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


def _emails(ddb) -> list[str]:
    return sorted(i["email"] for i in ddb.items("users"))


def _statuses(plan) -> list[str]:
    return sorted(a["status"] for a in json.loads((plan.parent / "report.json").read_text())["actions"])


def _journal_agrees(plan, code: int) -> None:
    """The last run's journal (apply-*.jsonl) records the outcomes report.json lists, each action once, and its
    end with the exit code."""
    report = json.loads((plan.parent / "report.json").read_text())
    journal = sorted(plan.parent.glob("apply-*.jsonl"))[-1]
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    outcomes = [(e["id"], e["status"]) for e in entries if e["event"] == "outcome"]
    assert sorted(outcomes) == sorted((a["id"], a["status"]) for a in report["actions"])
    assert len({i for i, _ in outcomes}) == len(outcomes)
    assert [e["exit_code"] for e in entries if e["event"] == "run-end"] == [code]


def test_transaction_conflict_is_retried_until_it_goes_through(ddb, ws, reliability: Record):
    plan = _setup(ddb, ws)
    seen = []

    def conflict_twice(request, **_):
        seen.append(1)
        if len(seen) <= 2:
            return _error(request, "TransactionCanceledException", ["TransactionConflict"] * 12)
        return None

    hook_dynamodb(ws, "before-send.dynamodb.TransactWriteItems", conflict_twice)
    r = ws.run("apply", str(plan), "--auto-approve", "--concurrency", "1")  # one transaction, tried three times
    assert r.code == 0, r.out + r.err
    assert len(seen) == 3
    # every item moved whole, once: six items before and after, each with its own number
    assert ddb.items("users") == [{"email": f"u{i}@new.com", "i": Decimal(i)} for i in range(6)]
    assert _statuses(plan) == ["applied"] * 6
    _journal_agrees(plan, 0)
    reliability("DynamoDB fault: TransactionConflict", "retried, nothing lost", detail="small table, conflict twice")


def test_throttling_is_retried_by_botocore(ddb, ws, reliability: Record):
    ddb.create("users", "id")
    ddb.put("users", {"id": "1", "email": "a@x.com"})
    ws.targets(
        "version: 1\nmappings: m.json\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n"
        "    tables: [{table: users, attributes: [email]}]\n"
    )
    ws.mappings({"a@x.com": "b@x.com"}, name="m.json")
    r, plan = ws.plan()
    seen = []

    def throttle_once(request, **_):
        seen.append(1)
        return _error(request, "ProvisionedThroughputExceededException") if len(seen) == 1 else None

    hook_dynamodb(ws, "before-send.dynamodb.UpdateItem", throttle_once)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert len(seen) == 2 and ddb.items("users") == [{"id": "1", "email": "b@x.com"}]
    assert _statuses(plan) == ["applied"]
    _journal_agrees(plan, 0)
    reliability("DynamoDB fault: throttling", "retried, nothing lost", detail="small table, UpdateItem throttled once")


def test_persistent_failure_is_reported_and_changes_nothing(ddb, ws):
    plan = _setup(ddb, ws)
    hook_dynamodb(
        ws,
        "before-send.dynamodb.TransactWriteItems",
        lambda request, **_: _error(request, "TransactionCanceledException", ["ValidationError"] + ["None"] * 11),
    )
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 3 and _statuses(plan) == ["failed"] * 6
    assert _emails(ddb) == [f"u{i}@old.com" for i in range(6)]


def test_writer_between_check_and_transaction_makes_only_that_item_stale(ddb, ws):
    plan = _setup(ddb, ws)
    done = []

    def concurrent_writer(**_):
        if not done:
            done.append(1)
            ddb.put("users", {"email": "u2@old.com", "i": Decimal(99)})  # another writer, just before our write

    hook_dynamodb(ws, "before-call.dynamodb.TransactWriteItems", concurrent_writer)
    # One request at a time: the writer lands before the first transaction is sent, whichever item it holds.
    r = ws.run("apply", str(plan), "--auto-approve", "--on-stale", "skip", "--concurrency", "1")
    assert r.code == 3
    items = ddb.items("users")
    assert {"email": "u2@old.com", "i": Decimal(99)} in items  # kept, never overwritten
    assert _emails(ddb) == sorted([f"u{i}@new.com" for i in range(6) if i != 2] + ["u2@old.com"])
    assert _statuses(plan) == ["applied"] * 5 + ["stale"]


def test_interrupted_apply_resumes_without_loss_or_duplicates(ddb, ws):
    plan = _setup(ddb, ws, n=120)  # three transactions of at most 50 moves

    class Crash(Exception):
        pass

    count = []

    def crash_after_first(**_):
        count.append(1)
        if len(count) == 1:
            raise Crash("killed after the first transaction")

    unhook = hook_dynamodb(ws, "after-call.dynamodb.TransactWriteItems", crash_after_first)
    with pytest.raises(Crash):
        ws.run("apply", str(plan), "--auto-approve", "--concurrency", "1")  # one transaction at a time
    mid = _emails(ddb)
    assert len(mid) == 120 and sum(e.endswith("@new.com") for e in mid) == 50  # one whole transaction, no more
    unhook()  # the next run is a clean process
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert _emails(ddb) == sorted(f"u{i}@new.com" for i in range(120))
    assert _statuses(plan).count("already-applied") == 50 and _statuses(plan).count("applied") == 70


def test_unprocessed_keys_while_planning_are_read_again(ddb, ws, reliability: Record):
    ddb.create("users", "email")
    # Items over 4 KB: scanned as projections, then the ones that change read whole with BatchGetItem.
    ddb.put("users", *({"email": f"u{i}@old.com", "pad": "x" * 5000} for i in range(5)))
    ws.targets(
        "version: 1\nmappings: m.json\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n"
        "    tables: [{table: users, attributes: [email]}]\n"
    )
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(5)}, name="m.json")
    seen = []

    def unprocessed_once(request, **_):
        seen.append(1)
        if len(seen) > 1:
            return None
        body = json.loads(request.body)
        payload = json.dumps({"Responses": {"users": []}, "UnprocessedKeys": body["RequestItems"]}).encode()
        return AWSResponse(request.url, 200, {"content-type": "application/x-amz-json-1.0"}, _Raw(payload))

    hook_dynamodb(ws, "before-send.dynamodb.BatchGetItem", unprocessed_once)
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert len(ws.plan_json(plan)["actions"]) == 5 and len(seen) >= 2
    assert sorted(a["key"]["email"]["S"] for a in ws.plan_json(plan)["actions"]) == [f"u{i}@old.com" for i in range(5)]
    assert _emails(ddb) == [f"u{i}@old.com" for i in range(5)]  # planning writes nothing
    reliability("DynamoDB fault: UnprocessedKeys", "read again while planning: the plan is complete")


def test_a_change_between_write_and_verification_is_needs_review(ddb, ws):
    plan = _setup(ddb, ws, n=2)
    done = []

    def meddle(**_):
        if not done:
            done.append(1)
            ddb.put("users", {"email": "u0@new.com", "i": Decimal(7), "extra": "someone else"})

    hook_dynamodb(ws, "after-call.dynamodb.TransactWriteItems", meddle)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 3 and "needs-review" in r.out
    report = json.loads((plan.parent / "report.json").read_text())
    flagged = [a for a in report["actions"] if a["status"] == "needs-review"]
    assert len(flagged) == 1 and "differs from the plan in extra, i" in flagged[0]["detail"]
    # Nothing is undone or overwritten: the other writer's item stays for a person to review.
    assert {"email": "u0@new.com", "i": Decimal(7), "extra": "someone else"} in ddb.items("users")


def test_attribute_added_to_the_existing_item_before_the_move_survives(ddb, ws):
    ddb.create("users", "email")
    ddb.put("users", {"email": "a@old.com", "name": "A"}, {"email": "a@new.com", "team": "red"})
    ws.targets(
        "version: 1\nmappings: m.json\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n"
        "    tables: [{table: users, attributes: [email]}]\n"
    )
    ws.mappings({"a@old.com": "a@new.com"}, name="m.json")
    r, plan = ws.plan()
    done = []

    def add_attribute(**_):
        if not done:
            done.append(1)
            ddb.put("users", {"email": "a@new.com", "team": "red", "mfa": "totp"})  # just before our write

    hook_dynamodb(ws, "before-call.dynamodb.TransactWriteItems", add_attribute)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 3 and "needs-review" in r.out
    # The merge set its attributes; it did not replace the item, so the other writer's attribute is still there.
    assert ddb.items("users") == [{"email": "a@new.com", "team": "red", "mfa": "totp", "name": "A"}]
