"""What an apply's DynamoDB requests cost is in its report, table by table (requests, capacity units, throttled
attempts), and --max-wcu / --max-rcu keep it under a rate of capacity units a table can spare."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from botocore.awsrequest import AWSResponse
from helpers import DDB_ONLY, assert_user_error, hook_dynamodb

from emailsync.stores.dynamodb.meter import Bucket, Window

TABLES = """\
      - table: users
        attributes: [email]
      - table: profiles
        attributes: [email]
"""
N = 200


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any):
        yield self._body


def _throttled(request: Any) -> AWSResponse:
    body = {"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException", "message": "injected throttling"}
    headers = {"x-amzn-requestid": "injected", "content-type": "application/x-amz-json-1.0"}
    return AWSResponse(request.url, 400, headers, _Raw(json.dumps(body).encode()))


def _setup(ddb: Any, ws: Any, pad: int = 10) -> Any:
    ddb.create("users", "email")
    ddb.create("profiles", "id")
    ddb.put("users", *({"email": f"u{i}@old.com", "pad": "x" * pad} for i in range(N)))
    ddb.put("profiles", *({"id": f"P{i}", "email": f"u{i}@old.com"} for i in range(N)))
    ws.targets(DDB_ONLY.format(tables=TABLES))
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(N)}, "m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    return plan


def _check_applied(ddb: Any) -> None:
    assert ddb.items("users") == sorted(
        ({"email": f"u{i}@new.com", "pad": "x" * len(ddb.items("users")[0]["pad"])} for i in range(N)),
        key=lambda i: json.dumps({k: str(v) for k, v in sorted(i.items())}),
    )
    assert {i["id"]: i["email"] for i in ddb.items("profiles")} == {f"P{i}": f"u{i}@new.com" for i in range(N)}


def test_the_report_says_what_each_tables_requests_cost(real_ddb, ws):
    ddb = real_ddb
    plan = _setup(ddb, ws)
    throttled = []

    def throttle_twice(request: Any, **_: Any) -> AWSResponse | None:
        if len(throttled) < 2 and b'"profiles"' in request.body:
            throttled.append(1)
            return _throttled(request)
        return None

    hook_dynamodb(ws, "before-send.dynamodb.UpdateItem", throttle_twice)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    _check_applied(ddb)
    costs = {c["table"]: c for c in json.loads((plan.parent / "report.json").read_text())["requests"]}
    assert set(costs) == {"users", "profiles", "emailsync-ledger"}
    assert all(c["target"] == "auth" for c in costs.values())
    # profiles: 200 updates (2 of them throttled and sent again), 2 reads of 100 keys before, 2 after.
    assert costs["profiles"]["requests"] == 200 + 2 + 4 and costs["profiles"]["throttled"] == 2
    assert costs["profiles"]["write_units"] >= 200 and costs["profiles"]["read_units"] >= 400
    assert costs["users"]["throttled"] == 0 and costs["users"]["write_units"] > 0
    assert "DynamoDB requests" in r.out and "throttled" in r.out


def test_max_wcu_holds_the_writes_to_the_rate_given(real_ddb, ws):
    plan = _setup(real_ddb, ws, pad=2000)  # 2 KB items: a few write units each
    cap = 100.0
    start = time.monotonic()
    r = ws.run("apply", str(plan), "--auto-approve", "--max-wcu", str(cap))
    elapsed = time.monotonic() - start
    assert r.code == 0, r.out + r.err
    _check_applied(real_ddb)
    costs = {c["table"]: c for c in json.loads((plan.parent / "report.json").read_text())["requests"]}
    busiest = max(costs["users"]["write_units"], costs["profiles"]["write_units"])
    # A bucket holds one second of the cap: the rest of the busiest table's units need (units - cap) / cap seconds.
    assert busiest > 2 * cap, costs
    assert elapsed >= (busiest - cap) / cap * 0.9, (elapsed, busiest)
    assert costs["users"]["waited_s"] + costs["profiles"]["waited_s"] > 0  # the report says the cap held them back
    assert "waited s" in r.out


def test_a_bucket_lends_one_second_and_then_waits_for_its_rate():
    b = Bucket(50.0)
    assert b.wait() == 0.0
    b.charge(75.0)  # 50 saved up, 25 in debt: half a second at 50 a second
    start = time.monotonic()
    waited = b.wait()
    assert waited >= 0.4 and 0.4 <= time.monotonic() - start < 2.0


def test_caps_must_be_positive(ws):
    for option in ("--max-wcu", "--max-rcu"):
        r = ws.run("apply", "plan.jsonl.gz", option, "0")
        assert_user_error(r, option)
    assert_user_error(ws.run("plan", "--max-rcu", "-1"), "--max-rcu")


def test_throttling_halves_the_window_once_a_round_and_success_widens_it_again():
    w = Window(32)
    sent = [w.enter() for _ in range(32)]  # a full window in flight, not counted: nothing throttled yet
    assert not any(counted for _, counted in sent)
    for t, _ in sent[:10]:  # ten of them throttled together: one cut
        w.throttled(t)
    assert w.limit == 16
    for _, counted in sent:
        w.leave(counted)
    late = [w.enter() for _ in range(16)]  # counted from now on: the window is full at 16
    assert all(counted for _, counted in late)
    entered = threading.Event()
    threading.Thread(target=lambda: (w.enter(), entered.set()), daemon=True).start()
    assert not entered.wait(0.2), "a 17th request got in"
    w.leave(late[0][1])
    assert entered.wait(5), "a place freed lets the next request in"
    w.throttled(late[1][0])  # sent after the cut: the next round's throttle cuts again
    assert w.limit == 8
    for _ in range(200):
        w.went_through()
    assert 8 < w.limit <= 32 and int(w.limit) >= 16  # one more place per window's worth of answers
    for _ in range(5000):
        w.went_through()
    assert w.limit == 32  # never past --concurrency
