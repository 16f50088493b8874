"""A DynamoDB target's requests go out many at a time (--concurrency, default 32): on DynamoDB Local, against other
writers changing the same items meanwhile, and killed with writes in flight. Every test asserts every item.

moto is not thread-safe under concurrent writes, so these tests need DynamoDB Local (Java): where it cannot be had
they say so and do not run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from helpers import DDB_ONLY, assert_user_error, cli_process

N_USERS, N_PROFILES, N_LOGINS = 240, 240, 60
X = "x@else.com"  # an address no mapping changes

TABLES = """\
      - table: users
        attributes: [email]
      - table: profiles
        attributes: [email, alt]
      - table: logins
        live: true
        attributes: [email]
"""


@pytest.fixture
def local(real_ddb: Any) -> Any:
    return real_ddb


def _create(ddb: Any) -> None:
    ddb.create("users", "email")
    ddb.create("profiles", "id")
    ddb.create("logins", "email", "clientId")


def _seed(ddb: Any) -> dict[str, str]:
    """Moves (a tenth of them merging into an item already at the new address), updates of an attribute and of a
    list, and live swaps; returns the mappings."""
    _create(ddb)
    mappings = {}
    users = []
    for i in range(N_USERS):
        mappings[f"u{i}@old.com"] = f"u{i}@new.com"
        users.append({"email": f"u{i}@old.com", "name": f"user {i}", "n": i})
        if i % 10 == 0:
            users.append({"email": f"u{i}@new.com", "name": f"already {i}", "team": "blue"})
    profiles = []
    for i in range(N_PROFILES):
        mappings[f"p{i}@old.com"] = f"p{i}@new.com"
        profiles.append({"id": f"P{i}", "email": f"p{i}@old.com", "alt": [f"p{i}@old.com", X], "v": 1})
    logins = []
    for i in range(N_LOGINS):
        mappings[f"l{i}@old.com"] = f"l{i}@new.com"
        logins.append({"email": f"l{i}@old.com", "clientId": f"c{i % 3}", "hash": f"h{i}"})
    _batch_put(ddb, "users", users)
    _batch_put(ddb, "profiles", profiles)
    _batch_put(ddb, "logins", logins)
    return mappings


def _batch_put(ddb: Any, table: str, items: list[dict[str, Any]]) -> None:
    ser = ddb._ser
    for i in range(0, len(items), 25):
        reqs = [{"PutRequest": {"Item": {k: ser.serialize(v) for k, v in it.items()}}} for it in items[i : i + 25]]
        ddb.client.batch_write_item(RequestItems={table: reqs})


def _dump(ddb: Any) -> dict[str, list[dict[str, Any]]]:
    return {t: ddb.items(t) for t in ("users", "profiles", "logins")}


def _setup(ddb: Any, ws: Any) -> Path:
    ws.targets(DDB_ONLY.format(tables=TABLES))
    ws.mappings(_seed(ddb), "m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    return plan


def _report(plan: Path) -> dict[str, str]:
    """action id -> status, of the latest apply."""
    return {a["id"]: a["status"] for a in json.loads((plan.parent / "report.json").read_text())["actions"]}


def _by_old_key(ws: Any, plan: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(table, the item's old key text) -> its action."""
    out = {}
    for a in ws.plan_json(plan)["actions"]:
        key = a["key"].get("email", a["key"].get("id"))["S"]
        out[(a["table"], key)] = a
    return out


def test_plans_made_with_requests_in_flight_equal_those_made_one_at_a_time(local, ws):
    """The same plan at any concurrency; each table scanned in a segment per MB of its size (or as configured)."""
    big = TABLES + "      - table: big\n        attributes: [email]\n"
    ws.targets(
        DDB_ONLY.format(tables=big.replace("      - table: users\n", "      - table: users\n        segments: 7\n"))
    )
    mappings = _seed(local)
    local.create("big", "email")
    pad = "x" * 1000
    _batch_put(local, "big", [{"email": f"b{i}@old.com", "pad": pad} for i in range(2500)])  # 2.5 MB
    mappings |= {f"b{i}@old.com": f"b{i}@new.com" for i in range(0, 2500, 50)}
    ws.mappings(mappings, "m.json")
    r1, one = ws.plan("--concurrency", "1")
    r2, many = ws.plan("--concurrency", "64")
    assert r1.code == 0 and r2.code == 0, r1.err + r2.err
    a1, a2 = ws.plan_json(one), ws.plan_json(many)
    assert a1["actions"] == a2["actions"] and len(a1["actions"]) == N_USERS + N_PROFILES + N_LOGINS + 50
    assert [(r["table"], r["segments"], r["items_read"]) for r in a2["reads"]] == [
        ("users", 7, N_USERS + N_USERS // 10),
        ("profiles", 1, N_PROFILES),  # under 1 MB: one page
        ("logins", 1, N_LOGINS),
        ("big", 3, 2500),
    ]
    assert [r["segments"] for r in a1["reads"]] == [7, 1, 1, 1]  # --concurrency 1: one request at a time


@pytest.mark.parametrize("value", ["0", "-3", "many", "1025"])
def test_concurrency_out_of_range_is_a_usage_error(ws, value):
    r = ws.run("apply", "plan.jsonl.gz", "--concurrency", value)
    assert_user_error(r, "--concurrency")


def test_other_writers_during_a_concurrent_apply_lose_nothing_and_are_never_overwritten(local, ws):
    """Eight writers change the planned items while the apply writes them 32 at a time: an item a writer changed
    first is reported stale and keeps the writer's change; every other item is moved or updated exactly once."""
    plan = _setup(local, ws)
    by_key = _by_old_key(ws, plan)
    client = local.client
    stop = threading.Event()
    # What each writer made stick: (table, old key) -> {attribute: value}. A writer owns its keys, so its own
    # order is each key's order.
    written: list[dict[tuple[str, str], dict[str, str]]] = [{} for _ in range(8)]

    def writer(w: int) -> None:
        rng = random.Random(w)
        mine = [k for i, k in enumerate(sorted(by_key)) if i % 8 == w and i % 3 == 0]  # a third of the items
        n = 0
        while not stop.is_set():
            table, key = rng.choice(mine)
            n += 1
            value = f"w{w}-{n}"
            attr, cond, names, values = "touched", "attribute_exists(#k)", {"#a": "touched"}, {":v": {"S": value}}
            if table == "profiles" and n % 2:
                # Half the profile writes change the address itself, only while it is still the old one.
                attr, cond, names = "email", "#a = :old", {"#a": "email"}
                values = {":v": {"S": f"{value}@writer.com"}, ":old": {"S": key.replace("P", "p") + "@old.com"}}
            if "#k" in cond:
                names["#k"] = "id" if table == "profiles" else "email"
            akey = by_key[(table, key)]["key"]
            try:
                client.update_item(
                    TableName=table,
                    Key=akey,
                    UpdateExpression="SET #a = :v",
                    ConditionExpression=cond,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                )
            except botocore.exceptions.ClientError as e:
                assert e.response["Error"]["Code"] == "ConditionalCheckFailedException"
                continue
            written[w].setdefault((table, key), {})[attr] = values[":v"]["S"]
            time.sleep(0.002)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)  # the writers are at work before the apply reads anything
        p = cli_process(ws, "apply", str(plan), "--auto-approve", "--confirm-live", "--on-stale", "skip")
        out, err = p.communicate(timeout=300)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert p.returncode in (0, 3), out + err
    done = {k: v for w in written for k, v in w.items()}
    assert done, "the writers changed nothing"
    status = _report(plan)
    items = _dump(local)
    users = {i["email"]: i for i in items["users"]}
    profiles = {i["id"]: i for i in items["profiles"]}
    logins = {(i["email"], i["clientId"]): i for i in items["logins"]}
    seen = {"stale": 0, "applied": 0}
    for (table, key), a in by_key.items():
        mine, s = done.get((table, key), {}), status[a["id"]]
        if table == "users":
            i = int(key[1:].split("@")[0])
            old, new = users.pop(key, None), users.pop(f"u{i}@new.com", None)
            merged = {"email": f"u{i}@new.com", "name": f"already {i}", "team": "blue"} if i % 10 == 0 else None
            if mine:  # changed by a writer before the apply moved it: stale, untouched, the writer's change kept
                assert s == "stale", (key, s)
                assert old == {"email": key, "name": f"user {i}", "n": i, **mine}
                assert new == merged
            else:
                assert s == "applied", (key, s)
                assert old is None
                assert new == {"email": f"u{i}@new.com", "name": f"user {i}", "n": i, **(merged or {})}
        elif table == "profiles":
            item = profiles.pop(key)
            i = int(key[1:])
            note = {"touched": mine["touched"]} if "touched" in mine else {}
            if "email" in mine:  # the writer changed the address first: stale, the writer's address kept
                assert s == "stale", (key, s)
                assert item == {
                    "id": key,
                    "email": mine["email"],
                    "alt": [f"p{i}@old.com", "x@else.com"],
                    "v": 1,
                    **note,
                }
            else:
                # A writer's change of another attribute between the apply's read and its read-back is reported
                # (needs-review); the address is changed either way, and the writer's value kept.
                assert s in ("applied", "needs-review") and (s == "applied" or note), (key, s)
                assert item == {
                    "id": key,
                    "email": f"p{i}@new.com",
                    "alt": [f"p{i}@new.com", "x@else.com"],
                    "v": 1,
                    **note,
                }
        else:
            i = int(key[1:].split("@")[0])
            c = f"c{i % 3}"
            old, new = logins.pop((key, c), None), logins.pop((f"l{i}@new.com", c), None)
            if mine:  # a live swap keeps both items when the old one changed after the new one was written
                assert s in ("stale", "needs-review"), (key, s)
                assert old == {"email": key, "clientId": c, "hash": f"h{i}", **mine}
                assert new == (None if s == "stale" else {"email": f"l{i}@new.com", "clientId": c, "hash": f"h{i}"})
            else:
                assert s == "applied", (key, s)
                assert old is None and new == {"email": f"l{i}@new.com", "clientId": c, "hash": f"h{i}"}
        seen["stale" if s == "stale" else "applied"] += s in ("stale", "applied")
    assert users == {} and profiles == {} and logins == {}, "items the plan does not account for"
    assert seen["stale"] and seen["applied"] > len(by_key) // 2, seen


def test_killed_with_writes_in_flight_then_rerun_ends_exactly_as_an_uninterrupted_apply(local, ws):
    """kill -9 at seeded points of a concurrent apply (its journal's write records counted), then apply again:
    every item ends as an uninterrupted apply leaves it, and the rerun reports every action done."""
    plan = _setup(local, ws)
    apply_args = ["apply", "--auto-approve", "--confirm-live"]

    def fresh_plan(name: str) -> Path:
        # A copy of the plan in a folder of its own: each run's journals are its own.
        dest = ws.path / "runs" / name
        dest.mkdir(parents=True)
        shutil.copy(plan, dest / plan.name)
        return dest / plan.name

    def reset() -> None:
        local.drop_all_tables()
        _seed(local)

    reference = fresh_plan("reference")
    r = ws.run(apply_args[0], str(reference), *apply_args[1:])
    assert r.code == 0, r.out + r.err
    expected = _dump(local)
    journal = next(reference.parent.glob("apply-*.jsonl"))
    befores = sum('"phase": "before"' in line for line in journal.read_text().splitlines())
    assert befores > 20
    rng = random.Random(20)
    points = sorted(rng.sample(range(1, befores), 4))
    for point in points:
        reset()
        p = fresh_plan(f"kill-{point}")
        proc = cli_process(ws, apply_args[0], str(p), *apply_args[1:], "--quiet")
        deadline = time.monotonic() + 120
        killed = False
        while time.monotonic() < deadline and proc.poll() is None:
            j = next(p.parent.glob("apply-*.jsonl"), None)
            if j is not None and j.read_text().count('"phase": "before"') >= point:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.002)
        proc.communicate(timeout=60)
        assert killed, f"the apply ended before {point} write records"
        r = ws.run(apply_args[0], str(p), *apply_args[1:])
        assert r.code == 0, (point, r.out + r.err)
        assert _dump(local) == expected, f"killed after {point} write record(s)"
        statuses = set(_report(p).values())
        assert statuses <= {"applied", "already-applied"}, (point, statuses)


def test_tables_of_small_items_are_scanned_whole_and_large_ones_read_again_whole(local, ws):
    """Items of at most 4 KB on average are scanned whole (no second read); larger ones are scanned as projections
    and the items that change read again whole. Either way the plan holds the whole items."""
    local.create("small", "email")
    local.create("large", "email")
    _batch_put(local, "small", [{"email": f"s{i}@old.com", "note": "x" * 100} for i in range(40)])
    _batch_put(local, "small", [{"email": "s0@new.com", "team": "red"}])  # s0 merges into it
    _batch_put(local, "large", [{"email": f"g{i}@old.com", "note": "y" * 6000} for i in range(40)])
    tables = "      - table: small\n        attributes: [email]\n      - table: large\n        attributes: [email]\n"
    ws.targets(DDB_ONLY.format(tables=tables))
    ws.mappings({f"{p}{i}@old.com": f"{p}{i}@new.com" for p in "sg" for i in range(0, 40, 4)}, "m.json")
    reads: list[tuple[str, int]] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        for table, req in params["RequestItems"].items():
            reads.append((table, len(req["Keys"])))

    from helpers import hook_dynamodb

    hook_dynamodb(ws, "provide-client-params.dynamodb.BatchGetItem", count)
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    # small: nothing read after the scan (items already under a new key are found by the scan); large: the 10
    # moving items again, whole, then whatever is under their new keys.
    assert sorted(reads) == [("large", 10), ("large", 10)]
    acts = ws.plan_json(plan)["actions"]
    rows = {a["key"]["email"]["S"]: a["row"] for a in acts}
    assert len(rows) == 20
    merged = next(a for a in acts if a["key"]["email"]["S"] == "s0@old.com")
    assert merged["existing"] == {"email": {"S": "s0@new.com"}, "team": {"S": "red"}}
    assert merged["merged"] == {"email": {"S": "s0@new.com"}, "team": {"S": "red"}, "note": {"S": "x" * 100}}
    assert all(a["existing"] is None for a in acts if a["key"]["email"]["S"] not in ("s0@old.com", "g0@old.com"))
    assert all(row["note"]["S"] == ("x" * 100 if k.startswith("s") else "y" * 6000) for k, row in rows.items())
