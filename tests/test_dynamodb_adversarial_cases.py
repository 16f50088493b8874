"""The DynamoDB planner and applier on adversarial cases against the moto server.

Every test asserts the final table contents. Tests that fail show a bug (see the docstring of each).
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import pytest
from helpers import hook_dynamodb

import emailsync.stores.dynamodb.client as ddb_client
from emailsync.stores import registry


def _targets(ws, tables_yaml: str, match: str = "exact") -> None:
    ws.targets(
        f"version: 1\nmappings: email_mappings.json\nmatch: {match}\ndynamodb:\n  - name: hr\n"
        "    region: us-east-1\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n    tables:\n"
        + "".join("      " + ln + "\n" for ln in tables_yaml.strip("\n").splitlines())
    )


def _apply(ws, plan, *extra):
    return ws.run("apply", str(plan), "--auto-approve", *extra)


def _report(plan) -> dict[str, Any]:
    return json.loads((plan.parent / "report.json").read_text())


def _statuses(plan) -> list[str]:
    return sorted(a["status"] for a in _report(plan)["actions"])


def _plan_ok(ws):
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    return plan


def _hook(ws, event: str, handler) -> None:
    hook_dynamodb(ws, event, handler)


def _unhook(ws) -> None:
    ws.monkeypatch.setattr(registry, "client_for", ddb_client.client_for)


class Crash(Exception):
    pass


def _raw_items(ddb, table: str) -> list[dict[str, Any]]:
    """Items as plain values, binary as bytes (conftest's items() cannot sort Binary values)."""
    from boto3.dynamodb.types import Binary, TypeDeserializer

    de = TypeDeserializer()

    def plain(v: Any) -> Any:
        if isinstance(v, Binary):
            return bytes(v)
        if isinstance(v, set):
            return {plain(x) for x in v}
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    items = ddb.client.scan(TableName=table, ConsistentRead=True)["Items"]
    return sorted((plain({k: de.deserialize(v) for k, v in i.items()}) for i in items), key=repr)


# --- chains and reruns ---------------------------------------------------------------------------------------


def test_chain_through_template_keys_rerun_is_all_already_applied(ddb, ws):
    """Regression: a rerun after a complete chain apply reports the first hop as stale.

    a -> b, b -> c: b's item moves to USER#c, then a's item moves into USER#b. On a rerun, the b -> c action finds
    an item at its old key USER#b (a's moved item), which differs from the planned row, so _classify_move calls it
    stale and --on-stale abort (the default) exits 3.
    """
    ddb.create("users", "PK", "SK")
    ddb.put(
        "users",
        {"PK": "USER#a@x.com", "SK": "P", "from": "a", "mail": "a@x.com"},
        {"PK": "USER#b@x.com", "SK": "P", "from": "b", "mail": "b@x.com"},
    )
    _targets(ws, '- table: users\n  attributes: [{name: PK, template: "USER#{email}"}, mail]\n')
    ws.mappings([{"old": "a@x.com", "new": "b@x.com"}, {"old": "b@x.com", "new": "c@x.com"}])
    plan = _plan_ok(ws)
    assert _apply(ws, plan).code == 0
    final = [
        {"PK": "USER#b@x.com", "SK": "P", "from": "a", "mail": "b@x.com"},
        {"PK": "USER#c@x.com", "SK": "P", "from": "b", "mail": "c@x.com"},
    ]
    assert ddb.items("users") == final
    r = _apply(ws, plan)
    assert ddb.items("users") == final
    assert r.code == 0, r.out
    assert _statuses(plan) == ["already-applied"] * 2


def test_crash_between_steps_of_a_chain_resumes(ddb, ws):
    """Regression: a chain of three moves killed after its second step cannot be resumed.

    c -> d (step 0) and b -> c (step 1) are done; on the rerun c -> d finds b's item at its old key USER#c and is
    classified stale, so with --on-stale abort a -> b is never applied and the rerun exits 3.
    """
    ddb.create("users", "PK")
    ddb.put("users", *({"PK": f"USER#{x}@x.com", "from": x} for x in "abc"))
    _targets(ws, '- table: users\n  attributes: [{name: PK, template: "USER#{email}"}]\n')
    ws.mappings({"a@x.com": "b@x.com", "b@x.com": "c@x.com", "c@x.com": "d@x.com"})
    plan = _plan_ok(ws)
    assert sorted(a["step"] for a in ws.plan_json(plan)["actions"]) == [0, 1, 2]
    calls = []

    def crash_after_second(**_):
        calls.append(1)
        if len(calls) == 2:
            raise Crash("killed between step 1 and step 2")

    _hook(ws, "after-call.dynamodb.TransactWriteItems", crash_after_second)
    with pytest.raises(Crash):
        _apply(ws, plan)
    assert ddb.items("users") == [
        {"PK": "USER#a@x.com", "from": "a"},
        {"PK": "USER#c@x.com", "from": "b"},
        {"PK": "USER#d@x.com", "from": "c"},
    ]
    _unhook(ws)
    ws.monkeypatch.setattr(registry, "client_for", ddb_client.client_for)
    r = _apply(ws, plan)
    assert ddb.items("users") == [
        {"PK": "USER#b@x.com", "from": "a"},
        {"PK": "USER#c@x.com", "from": "b"},
        {"PK": "USER#d@x.com", "from": "c"},
    ]
    assert r.code == 0, r.out
    assert _statuses(plan) == ["already-applied", "already-applied", "applied"]


def test_crash_after_first_step_of_a_chain_resumes(ddb, ws):
    ddb.create("users", "email")
    ddb.put("users", {"email": "a@x.com", "from": "a"}, {"email": "b@x.com", "from": "b"})
    _targets(ws, "- table: users\n  attributes: [email]\n")
    ws.mappings({"a@x.com": "b@x.com", "b@x.com": "c@x.com"})
    plan = _plan_ok(ws)
    calls = []

    def crash_after_first(**_):
        calls.append(1)
        if len(calls) == 1:
            raise Crash("killed between steps")

    _hook(ws, "after-call.dynamodb.TransactWriteItems", crash_after_first)
    with pytest.raises(Crash):
        _apply(ws, plan)
    assert ddb.items("users") == [{"email": "a@x.com", "from": "a"}, {"email": "c@x.com", "from": "b"}]
    _unhook(ws)
    r = _apply(ws, plan)
    assert r.code == 0, r.out
    assert ddb.items("users") == [{"email": "b@x.com", "from": "a"}, {"email": "c@x.com", "from": "b"}]
    assert _statuses(plan) == ["already-applied", "applied"]


def test_merge_into_leaving_key_then_rerun(ddb, ws):
    """BUG (same cause as the chain rerun): p -> m and q -> m while m's own item moves m -> z."""
    ddb.create("users", "email")
    ddb.put(
        "users",
        {"email": "p@x.com", "from": "p", "only_p": "1"},
        {"email": "q@x.com", "from": "q", "only_q": "1"},
        {"email": "m@x.com", "from": "m"},
    )
    _targets(ws, "- table: users\n  attributes: [email]\n")
    ws.mappings(
        [
            {"old": "p@x.com", "new": "m@x.com"},
            {"old": "q@x.com", "new": "m@x.com"},
            {"old": "m@x.com", "new": "z@x.com"},
        ]
    )
    plan = _plan_ok(ws)
    final = [
        {"email": "m@x.com", "from": "p", "only_p": "1", "only_q": "1"},
        {"email": "z@x.com", "from": "m"},
    ]
    assert _apply(ws, plan).code == 0
    assert ddb.items("users") == final
    r = _apply(ws, plan)
    assert ddb.items("users") == final
    assert r.code == 0, r.out


# --- plan-time crashes and refusals --------------------------------------------------------------------------


def test_numeric_sort_key_with_email_in_partition_key(ddb, ws):
    """Regression: KeyError traceback. _check_key reads nk[range_key]["S"] even when the sort key is a Number (or
    Binary) that the plan never changes."""
    ddb.client.create_table(
        TableName="events",
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "ts", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "PK", "AttributeType": "S"},
            {"AttributeName": "ts", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.put("events", {"PK": "a@x.com", "ts": Decimal(1), "v": "x"}, {"PK": "a@x.com", "ts": Decimal(2), "v": "y"})
    _targets(ws, "- table: events\n  attributes: [PK]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    plan = _plan_ok(ws)
    assert _apply(ws, plan).code == 0
    assert ddb.items("events") == [
        {"PK": "b@x.com", "ts": Decimal(1), "v": "x"},
        {"PK": "b@x.com", "ts": Decimal(2), "v": "y"},
    ]


def test_numeric_partition_key_with_email_in_sort_key(ddb, ws):
    """Regression: same KeyError, for a Number partition key when only the sort key holds the email (a Binary
    partition key: the next test, on DynamoDB Local, since moto's server cannot scan Binary keys)."""
    ddb.client.create_table(
        TableName="members",
        KeySchema=[{"AttributeName": "org", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "org", "AttributeType": "N"},
            {"AttributeName": "SK", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.put("members", {"org": Decimal(7), "SK": "MEMBER#a@x.com", "role": "admin"})
    _targets(ws, '- table: members\n  attributes: [{name: SK, template: "MEMBER#{email}"}]\n')
    ws.mappings({"a@x.com": "b@x.com"})
    plan = _plan_ok(ws)
    assert _apply(ws, plan).code == 0
    assert ddb.items("members") == [{"org": Decimal(7), "SK": "MEMBER#b@x.com", "role": "admin"}]


def test_binary_partition_key_with_email_in_sort_key(real_ddb, ws):
    """A Binary partition key (and binary attributes) kept exactly while the sort key moves: read back from scans,
    batched reads and the read-back as bytes, written as bytes. moto's server cannot scan Binary keys."""
    ddb = real_ddb
    ddb.client.create_table(
        TableName="members",
        KeySchema=[{"AttributeName": "org", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "org", "AttributeType": "B"},
            {"AttributeName": "SK", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    for org in (b"\x00org", b"\xffB\x01"):
        ddb.client.put_item(
            TableName="members",
            Item={
                "org": {"B": org},
                "SK": {"S": "MEMBER#a@x.com"},
                "tags": {"BS": [b"\x01", b"\x02"]},
                "nested": {"M": {"raw": {"B": b"\x00\x00"}, "list": {"L": [{"B": b"\x07"}, {"S": "a@x.com"}]}}},
            },
        )
    _targets(ws, '- table: members\n  attributes: [{name: SK, template: "MEMBER#{email}"}]\n')
    ws.mappings({"a@x.com": "b@x.com"})
    plan = _plan_ok(ws)
    assert _apply(ws, plan).code == 0
    assert _apply(ws, plan, "--force").code == 0  # a rerun reads the moved items back and finds them done
    items = ddb.client.scan(TableName="members", ConsistentRead=True)["Items"]
    assert sorted((i["org"]["B"], i["SK"]["S"]) for i in items) == [
        (b"\x00org", "MEMBER#b@x.com"),
        (b"\xffB\x01", "MEMBER#b@x.com"),
    ]
    for i in items:
        assert sorted(i["tags"]["BS"]) == [b"\x01", b"\x02"]
        assert i["nested"] == {"M": {"raw": {"B": b"\x00\x00"}, "list": {"L": [{"B": b"\x07"}, {"S": "a@x.com"}]}}}


def test_casefold_case_only_rename_of_a_key_replans_to_nothing(ddb, ws):
    """Regression: with match: casefold a case-only rename (allowed by the mappings) matches the already-renamed value
    again. For a key, the item 'moves' to its own key, prev[k] = k, and the plan is refused as a cycle; so a
    re-plan after a successful apply is an error instead of an empty plan."""
    ddb.create("users", "PK")
    ddb.put("users", {"PK": "USER#Ann@x.com", "n": "1"})
    _targets(ws, '- table: users\n  attributes: [{name: PK, template: "USER#{email}"}]\n', match="casefold")
    ws.mappings({"Ann@x.com": "ann@x.com"})
    plan = _plan_ok(ws)
    assert _apply(ws, plan).code == 0
    assert ddb.items("users") == [{"PK": "USER#ann@x.com", "n": "1"}]
    r, plan2 = ws.plan("--detailed-exitcode")
    assert r.code == 0, r.out + r.err  # nothing left to do
    assert ddb.items("users") == [{"PK": "USER#ann@x.com", "n": "1"}]


def test_casefold_both_case_variants_of_a_key_merge(ddb, ws):
    """BUG (same cause): items under USER#Ann@ and USER#ann@ with Ann@ -> ann@ (casefold) should merge into
    USER#ann@ (the existing one wins); the plan is refused as a cycle instead."""
    ddb.create("users", "PK")
    ddb.put("users", {"PK": "USER#Ann@x.com", "n": "1", "a": "x"}, {"PK": "USER#ann@x.com", "n": "2"})
    _targets(ws, '- table: users\n  attributes: [{name: PK, template: "USER#{email}"}]\n', match="casefold")
    ws.mappings({"Ann@x.com": "ann@x.com"})
    plan = _plan_ok(ws)
    assert _apply(ws, plan).code == 0
    assert ddb.items("users") == [{"PK": "USER#ann@x.com", "n": "2", "a": "x"}]


def test_casefold_case_only_rename_of_an_attribute_replans_to_nothing(ddb, ws):
    """Regression: same cause on a plain attribute: after apply, every re-plan still lists a no-op update (old == new),
    so `plan --detailed-exitcode` never reaches 0."""
    ddb.create("users", "id")
    ddb.put("users", {"id": "1", "email": "Ann@x.com"})
    _targets(ws, "- table: users\n  attributes: [email]\n", match="casefold")
    ws.mappings({"Ann@x.com": "ann@x.com"})
    plan = _plan_ok(ws)
    assert _apply(ws, plan).code == 0
    assert ddb.items("users") == [{"id": "1", "email": "ann@x.com"}]
    r, plan2 = ws.plan("--detailed-exitcode")
    assert r.code == 0, ws.plan_json(plan2)["actions"] if plan2.exists() else r.err


# --- merges --------------------------------------------------------------------------------------------------


def test_merge_order_follows_the_key_mapping_not_other_attributes(ddb, ws):
    """Regression: movers are ordered by min(entries), and entries include mappings used by non-key attributes. q's
    item also holds x@y.com (mapping 0) in `alt`, so q's move (key mapping 2) goes first and wins the merge over
    p (key mapping 1), contrary to "the mapping listed first first"."""
    ddb.create("users", "email")
    ddb.put(
        "users",
        {"email": "p@x.com", "from": "p"},
        {"email": "q@x.com", "from": "q", "alt": "x@y.com"},
    )
    _targets(ws, "- table: users\n  attributes: [email, alt]\n")
    ws.mappings(
        [
            {"old": "x@y.com", "new": "x2@y.com"},
            {"old": "p@x.com", "new": "m@x.com"},
            {"old": "q@x.com", "new": "m@x.com"},
        ]
    )
    plan = _plan_ok(ws)
    assert _apply(ws, plan).code == 0
    assert ddb.items("users") == [{"email": "m@x.com", "from": "p", "alt": "x2@y.com"}]


def test_merge_of_two_into_existing_item_with_its_own_changes_and_nulls(ddb, ws):
    ddb.create("users", "email")
    ddb.put(
        "users",
        {"email": "p@x.com", "from": "p", "phone": "111", "nick": None, "only_p": "1", "backup": "p@x.com"},
        {"email": "q@x.com", "from": "q", "phone": "222", "nick": "Q", "only_q": "1", "backup": "q@x.com"},
        {"email": "m@x.com", "from": "m", "phone": None, "backup": "q@x.com", "tags": ["p@x.com", Decimal(3)]},
    )
    _targets(ws, "- table: users\n  attributes: [email, backup, tags]\n")
    ws.mappings([{"old": "p@x.com", "new": "m@x.com"}, {"old": "q@x.com", "new": "m@x.com"}])
    plan = _plan_ok(ws)
    acts = ws.plan_json(plan)["actions"]
    assert sorted((a["key"]["email"]["S"], a["kind"]) for a in acts) == [
        ("m@x.com", "update"),  # the existing item's own change runs first
        ("p@x.com", "merge-and-move"),
        ("q@x.com", "merge-and-move"),
    ]
    final = [
        {
            "email": "m@x.com",
            "from": "m",
            "phone": "111",  # null in the existing item: filled from the first arrival
            "nick": "Q",  # null in p's item, then filled from q's
            "only_p": "1",
            "only_q": "1",
            "backup": "m@x.com",  # the existing item's own change, applied before the arrivals merge into it
            "tags": ["m@x.com", Decimal(3)],
        }
    ]
    assert _apply(ws, plan).code == 0
    assert ddb.items("users") == final
    r = _apply(ws, plan)
    assert r.code == 0 and _statuses(plan) == ["already-applied"] * 3
    assert ddb.items("users") == final


def test_folded_update_of_existing_item_is_applied_when_the_arrival_is_stale_and_skipped(ddb, ws):
    """Regression: the existing item's own email change is folded into the arrival's Put and never planned on its own.
    When the arriving item is stale and --on-stale skip applies "the rest", the existing item keeps its old
    email in `backup` and the report does not mention it (only the move is listed, as stale)."""
    ddb.create("users", "email")
    ddb.put(
        "users",
        {"email": "p@x.com", "from": "p"},
        {"email": "m@x.com", "from": "m", "backup": "old@x.com"},
    )
    _targets(ws, "- table: users\n  attributes: [email, backup]\n")
    ws.mappings({"p@x.com": "m@x.com", "old@x.com": "new@x.com"})
    plan = _plan_ok(ws)
    ddb.put("users", {"email": "p@x.com", "from": "p", "edited": "yes"})  # someone edits p after the plan
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3
    assert ddb.items("users") == [
        {"email": "m@x.com", "from": "m", "backup": "new@x.com"},
        {"email": "p@x.com", "from": "p", "edited": "yes"},
    ]


def test_both_keys_change_onto_an_existing_item(ddb, ws):
    ddb.create("members", "PK", "SK")
    ddb.put(
        "members",
        {"PK": "USER#a@x.com", "SK": "MGR#b@x.com", "v": "moved", "extra": "1"},
        {"PK": "USER#a2@x.com", "SK": "MGR#b2@x.com", "v": "existing"},
        {"PK": "USER#a@x.com", "SK": "MGR#z@x.com", "v": "half"},
    )
    _targets(
        ws,
        '- table: members\n  attributes: [{name: PK, template: "USER#{email}"}, {name: SK, template: "MGR#{email}"}]\n',
    )
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com"})
    plan = _plan_ok(ws)
    final = [
        {"PK": "USER#a2@x.com", "SK": "MGR#b2@x.com", "v": "existing", "extra": "1"},
        {"PK": "USER#a2@x.com", "SK": "MGR#z@x.com", "v": "half"},
    ]
    assert _apply(ws, plan).code == 0
    assert ddb.items("members") == final
    assert _apply(ws, plan).code == 0 and _statuses(plan) == ["already-applied"] * 2
    assert ddb.items("members") == final


# --- values, types, names ------------------------------------------------------------------------------------


def test_numbers_binary_sets_and_nulls_survive_a_move_and_a_rerun(ddb, ws):
    ddb.create("users", "email")
    ddb.client.put_item(
        TableName="users",
        Item={
            "email": {"S": "a@x.com"},
            "price": {"N": "1.50"},
            "big": {"N": "1E+2"},
            "nums": {"NS": ["1.0", "2", "3.25"]},
            "blob": {"B": b"\x00\xffdata"},
            "blobs": {"BS": [b"\x01", b"\x02"]},
            "nothing": {"NULL": True},
            "flag": {"BOOL": False},
            "nested": {"M": {"n": {"N": "0.10"}, "l": {"L": [{"N": "7.0"}, {"S": "a@x.com"}]}}},
        },
    )
    _targets(ws, "- table: users\n  attributes: [email, nested.l]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    plan = _plan_ok(ws)
    assert _apply(ws, plan).code == 0
    items = _raw_items(ddb, "users")
    assert len(items) == 1
    it = items[0]
    assert it["email"] == "b@x.com" and it["price"] == Decimal("1.5") and it["big"] == Decimal(100)
    assert it["nums"] == {Decimal(1), Decimal(2), Decimal("3.25")}
    assert it["blob"] == b"\x00\xffdata" and it["blobs"] == {b"\x01", b"\x02"}
    assert it["nothing"] is None and it["flag"] is False
    assert it["nested"] == {"n": Decimal("0.1"), "l": [Decimal(7), "b@x.com"]}  # a list inside a map
    r = _apply(ws, plan)
    assert r.code == 0 and _statuses(plan) == ["already-applied"]
    assert len(_raw_items(ddb, "users")) == 1


def test_updates_of_lists_sets_nested_paths_and_missing_maps(ddb, ws):
    ddb.create("users", "id")
    ddb.put(
        "users",
        {"id": "1", "watchers": ["a@x.com", Decimal(5), None, {"e": "a@x.com"}, "a@x.com"]},
        {"id": "2", "cc": {"a@x.com", "b@x.com", "c@x.com"}},  # a and b both map to n: the set collapses
        {"id": "3", "profile": {"contact": {"email": "a@x.com"}, "city": "Oslo"}},
        {"id": "4", "profile": {"city": "Rome"}},  # intermediate map missing
        {"id": "5", "profile": None},
        {"id": "6", "profile": "a@x.com"},  # not a map
        {"id": "7", "watchers": "a@x.com", "cc": ["a@x.com"]},  # string where a list is expected, list for set
    )
    _targets(ws, "- table: users\n  attributes: [watchers, cc, profile.contact.email]\n")
    ws.mappings({"a@x.com": "n@x.com", "b@x.com": "n@x.com"})
    plan = _plan_ok(ws)
    final = [
        {"id": "1", "watchers": ["n@x.com", Decimal(5), None, {"e": "a@x.com"}, "n@x.com"]},
        {"id": "2", "cc": {"n@x.com", "c@x.com"}},
        {"id": "3", "profile": {"contact": {"email": "n@x.com"}, "city": "Oslo"}},
        {"id": "4", "profile": {"city": "Rome"}},
        {"id": "5", "profile": None},
        {"id": "6", "profile": "a@x.com"},
        {"id": "7", "watchers": "n@x.com", "cc": ["n@x.com"]},
    ]
    assert _apply(ws, plan).code == 0
    assert sorted(ddb.items("users"), key=lambda i: i["id"]) == final
    r = _apply(ws, plan)
    assert r.code == 0 and set(_statuses(plan)) == {"already-applied"}
    r, plan2 = ws.plan("--detailed-exitcode")
    assert r.code == 0, r.out + r.err


def test_reserved_words_hyphens_and_dots_in_attribute_names(ddb, ws):
    ddb.create("data", "name", "status")
    ddb.put(
        "data",
        {"name": "a@x.com", "status": "ACTIVE", "data": "a@x.com", "e-mail": "a@x.com", "first.name": "A", "size": 1},
        {"name": "z@x.com", "status": "ACTIVE", "data": {"value": "a@x.com"}, "e-mail": "q@x.com"},
    )
    _targets(ws, "- table: data\n  client_attribute: status\n  attributes: [name, data, e-mail, data.value]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    plan = _plan_ok(ws)
    final = [
        {
            "name": "b@x.com",
            "status": "ACTIVE",
            "data": "b@x.com",
            "e-mail": "b@x.com",
            "first.name": "A",
            "size": Decimal(1),
        },
        {"name": "z@x.com", "status": "ACTIVE", "data": {"value": "b@x.com"}, "e-mail": "q@x.com"},
    ]
    assert _apply(ws, plan).code == 0
    assert ddb.items("data") == final
    assert _apply(ws, plan).code == 0 and set(_statuses(plan)) == {"already-applied"}


def test_client_attribute_number_missing_and_other_types(ddb, ws):
    ddb.create("users", "PK")
    ddb.put(
        "users",
        {"PK": "1", "clientId": Decimal(1), "email": "a@x.com"},
        {"PK": "2", "clientId": "1", "email": "a@x.com"},
        {"PK": "3", "email": "a@x.com"},  # no client: only unscoped mappings apply
        {"PK": "4", "clientId": True, "email": "a@x.com"},
        {"PK": "5", "clientId": Decimal(2), "email": "a@x.com"},
    )
    _targets(ws, "- table: users\n  client_attribute: clientId\n  attributes: [email]\n")
    ws.mappings([{"old": "a@x.com", "new": "c1@x.com", "client_id": 1}])
    plan = _plan_ok(ws)
    assert _apply(ws, plan).code == 0
    assert {i["PK"]: i["email"] for i in ddb.items("users")} == {
        "1": "c1@x.com",
        "2": "c1@x.com",
        "3": "a@x.com",
        "4": "a@x.com",
        "5": "a@x.com",
    }


def test_casefold_with_templates_and_sets(ddb, ws):
    ddb.create("users", "PK", "SK")
    ddb.put(
        "users",
        {"PK": "USER#A@X.com", "SK": "P", "cc": {"a@x.COM", "A@x.com", "k@x.com"}},
        {"PK": "user#a@x.com", "SK": "P"},  # the template's literal part is matched exactly
    )
    _targets(ws, '- table: users\n  attributes: [{name: PK, template: "USER#{email}"}, cc]\n', match="casefold")
    ws.mappings({"a@x.com": "b@x.com"})
    plan = _plan_ok(ws)
    assert _apply(ws, plan).code == 0
    assert ddb.items("users") == [
        {"PK": "USER#b@x.com", "SK": "P", "cc": {"b@x.com", "k@x.com"}},
        {"PK": "user#a@x.com", "SK": "P"},
    ]


# --- concurrency ---------------------------------------------------------------------------------------------


def test_item_deleted_by_someone_else_is_stale_and_nothing_is_created(ddb, ws):
    ddb.create("users", "email")
    ddb.put("users", {"email": "a@x.com", "v": "1"}, {"email": "b@x.com", "v": "2", "alt": "a@x.com"})
    _targets(ws, "- table: users\n  attributes: [email, alt]\n")
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com"})
    plan = _plan_ok(ws)
    ddb.client.delete_item(TableName="users", Key={"email": {"S": "a@x.com"}})
    r = _apply(ws, plan)
    assert r.code == 3 and ddb.items("users") == [{"email": "b@x.com", "v": "2", "alt": "a@x.com"}]
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3
    assert ddb.items("users") == [{"email": "b2@x.com", "v": "2", "alt": "a2@x.com"}]
    assert _statuses(plan) == ["applied", "stale"]


def test_item_created_under_the_new_key_is_never_overwritten(ddb, ws):
    ddb.create("users", "email")
    ddb.put("users", {"email": "p@x.com", "v": "p"}, {"email": "q@x.com", "v": "q"})
    _targets(ws, "- table: users\n  attributes: [email]\n")
    ws.mappings([{"old": "p@x.com", "new": "m@x.com"}, {"old": "q@x.com", "new": "m@x.com"}])
    plan = _plan_ok(ws)
    ddb.put("users", {"email": "m@x.com", "v": "someone"})
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3
    assert ddb.items("users") == [
        {"email": "m@x.com", "v": "someone"},
        {"email": "p@x.com", "v": "p"},
        {"email": "q@x.com", "v": "q"},
    ]
    assert _statuses(plan) == ["stale", "stale"]


def test_existing_item_changed_between_plan_and_apply_aborts(ddb, ws):
    ddb.create("users", "email")
    ddb.put("users", {"email": "p@x.com", "v": "p"}, {"email": "m@x.com", "v": "m"}, {"email": "k@x.com"})
    _targets(ws, "- table: users\n  attributes: [email]\n")
    ws.mappings({"p@x.com": "m@x.com", "k@x.com": "k2@x.com"})
    plan = _plan_ok(ws)
    ddb.put("users", {"email": "m@x.com", "v": "changed"})
    r = _apply(ws, plan)
    assert r.code == 3
    assert ddb.items("users") == [
        {"email": "k@x.com"},
        {"email": "m@x.com", "v": "changed"},
        {"email": "p@x.com", "v": "p"},
    ]


def test_wide_item_fallback_without_version_attribute(ddb, ws):
    ddb.create("wide", "email")
    wide = {"email": "a@x.com", "alt": "a@x.com", **{f"attr-{i:03d}": str(i) for i in range(400)}}
    ddb.put("wide", wide, {"email": "b@x.com", **{f"attr-{i:03d}": "b" for i in range(400)}})
    _targets(ws, "- table: wide\n  attributes: [email, alt]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    plan = _plan_ok(ws)
    assert _apply(ws, plan).code == 0
    assert ddb.items("wide") == [{"email": "b@x.com", "alt": "b@x.com", **{f"attr-{i:03d}": "b" for i in range(400)}}]
    assert _apply(ws, plan).code == 0 and _statuses(plan) == ["already-applied"]


def test_planning_twice_gives_identical_actions(ddb, ws):
    ddb.create("users", "PK", "SK")
    ddb.put(
        "users",
        *({"PK": f"USER#u{i}@x.com", "SK": "P", "alt": f"u{(i + 1) % 30}@x.com"} for i in range(30)),
        {"PK": "USER#m@x.com", "SK": "P"},
    )
    _targets(ws, '- table: users\n  segments: 4\n  attributes: [{name: PK, template: "USER#{email}"}, alt]\n')
    ws.mappings([{"old": f"u{i}@x.com", "new": "m@x.com" if i % 3 == 0 else f"v{i}@x.com"} for i in range(30)])
    p1, p2 = _plan_ok(ws), _plan_ok(ws)
    assert ws.plan_json(p1)["actions"] == ws.plan_json(p2)["actions"]


def test_binary_values_in_plan_are_base64(ddb, ws):
    ddb.create("users", "email")
    ddb.put("users", {"email": "a@x.com", "b": b"\x00\x01"})
    _targets(ws, "- table: users\n  attributes: [email]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    plan = _plan_ok(ws)
    (a,) = ws.plan_json(plan)["actions"]
    assert a["row"]["b"] == {"B": base64.b64encode(b"\x00\x01").decode()}
    assert _apply(ws, plan).code == 0
    assert _raw_items(ddb, "users") == [{"email": "b@x.com", "b": b"\x00\x01"}]


def test_unrelated_attribute_changed_between_plan_and_apply_is_not_needs_review(ddb, ws):
    """BUG (false alarm): an update's condition deliberately covers only the changed attributes, so a concurrent
    change to another attribute (a login timestamp) lets the update through, as designed. _verify then compares
    the item with the plan's row (not with the pre-write image read in preflight) plus the changes, finds
    lastLogin different and reports needs-review with exit 3, although the write was exactly right."""
    ddb.create("users", "id")
    ddb.put("users", {"id": "1", "email": "a@x.com", "lastLogin": "mon"})
    _targets(ws, "- table: users\n  attributes: [email]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    plan = _plan_ok(ws)
    ddb.put("users", {"id": "1", "email": "a@x.com", "lastLogin": "tue"})
    r = _apply(ws, plan)
    assert ddb.items("users") == [{"id": "1", "email": "b@x.com", "lastLogin": "tue"}]  # kept, not overwritten
    assert r.code == 0, r.out
    assert _statuses(plan) == ["applied"]
