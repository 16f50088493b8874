"""DynamoDB (non-live) against the moto server: every test asserts the final table contents."""

from __future__ import annotations

import json
from decimal import Decimal

from helpers import hook_dynamodb


def _targets(ws, tables_yaml: str, extra_pg: str = "") -> None:
    ws.targets(
        "version: 1\nmappings: email_mappings.json\n" + extra_pg + "dynamodb:\n  - name: hr\n"
        "    region: us-east-1\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n    tables:\n"
        + "".join("      " + ln + "\n" for ln in tables_yaml.strip("\n").splitlines())
    )


def _apply(ws, plan, *extra):
    return ws.run("apply", str(plan), "--auto-approve", *extra)


def _report(plan):
    return json.loads((plan.parent / "report.json").read_text())


def test_key_move_without_and_with_existing_item_merges_like_the_old_script(ddb, ws):
    ddb.create("users", "email")
    ddb.put(
        "users",
        {"email": "a@old.com", "name": "Ann", "phone": "111", "nick": None},
        {"email": "b@old.com", "name": "Ben", "phone": "222", "team": "red"},
        {"email": "b@new.com", "name": "Ben N", "phone": None},
        {"email": "z@other.com", "name": "Zed"},
    )
    _targets(ws, "- table: users\n  attributes: [email]\n")
    ws.mappings({"a@old.com": "a@new.com", "b@old.com": "b@new.com"})
    r, plan = ws.plan("--detailed-exitcode")
    assert r.code == 2, r.err
    acts = {a["key"]["email"]["S"]: a for a in ws.plan_json(plan)["actions"]}
    assert {k: a["kind"] for k, a in acts.items()} == {"a@old.com": "merge-and-move", "b@old.com": "merge-and-move"}
    assert acts["a@old.com"]["existing"] is None
    assert acts["b@old.com"]["existing"]["name"] == {"S": "Ben N"}
    assert acts["b@old.com"]["merged"]["phone"] == {"S": "222"}  # null in the existing item: filled from the old
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert ddb.items("users") == [
        {"email": "a@new.com", "name": "Ann", "phone": "111", "nick": None},
        {"email": "b@new.com", "name": "Ben N", "phone": "222", "team": "red"},
        {"email": "z@other.com", "name": "Zed"},
    ]
    r = _apply(ws, plan)  # resume / rerun: nothing done twice
    assert r.code == 0 and {a["status"] for a in _report(plan)["actions"]} == {"already-applied"}
    assert len(ddb.items("users")) == 3


def test_sort_key_move_template_nested_list_and_string_set(ddb, ws):
    ddb.create("hr-users", "PK", "SK")
    ddb.put(
        "hr-users",
        {
            "PK": "USER#a@old.com",
            "SK": "PROFILE",
            "userId": "a@old.com",
            "profile": {"contactEmail": "a@old.com", "city": "Oslo"},
            "watchers": ["x@y.com", "a@old.com", "a@old.com"],
            "cc": {"a@old.com", "q@y.com"},
        },
        {"PK": "ORG#1", "SK": "MEMBER#a@old.com", "role": "admin"},
        {"PK": "USER#keep@y.com", "SK": "PROFILE", "userId": "keep@y.com", "cc": {"a@old.com", "a@new.com"}},
    )
    _targets(
        ws,
        """
- table: hr-users
  attributes:
    - {name: PK, template: "USER#{email}"}
    - {name: SK, template: "MEMBER#{email}"}
    - userId
    - profile.contactEmail
    - watchers
    - cc
""",
    )
    ws.mappings({"a@old.com": "a@new.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    kinds = sorted((a["key"]["PK"]["S"], a["kind"]) for a in ws.plan_json(plan)["actions"])
    assert kinds == [
        ("ORG#1", "merge-and-move"),
        ("USER#a@old.com", "merge-and-move"),
        ("USER#keep@y.com", "array-replace"),
    ]
    assert _apply(ws, plan).code == 0
    assert ddb.items("hr-users") == [
        {"PK": "ORG#1", "SK": "MEMBER#a@new.com", "role": "admin"},
        {
            "PK": "USER#a@new.com",
            "SK": "PROFILE",
            "userId": "a@new.com",
            "profile": {"contactEmail": "a@new.com", "city": "Oslo"},
            "watchers": ["x@y.com", "a@new.com", "a@new.com"],
            "cc": {"a@new.com", "q@y.com"},
        },
        {"PK": "USER#keep@y.com", "SK": "PROFILE", "userId": "keep@y.com", "cc": {"a@new.com"}},  # set: no duplicates
    ]


def test_chain_moves_b_before_a_and_merge_of_two_olds(ddb, ws):
    ddb.create("users", "email")
    ddb.put(
        "users",
        {"email": "a@x.com", "from": "a", "n": Decimal("1")},
        {"email": "b@x.com", "from": "b", "n": Decimal("2")},
        {"email": "p@x.com", "from": "p", "only_p": "yes"},
        {"email": "q@x.com", "from": "q", "only_q": "yes"},
    )
    _targets(ws, "- table: users\n  attributes: [email]\n  segments: 3\n")
    ws.mappings(
        [
            {"old": "a@x.com", "new": "b@x.com"},
            {"old": "b@x.com", "new": "c@x.com"},
            {"old": "p@x.com", "new": "m@x.com"},
            {"old": "q@x.com", "new": "m@x.com"},
        ]
    )
    r, plan = ws.plan()
    steps = {a["key"]["email"]["S"]: a["step"] for a in ws.plan_json(plan)["actions"]}
    assert steps["b@x.com"] < steps["a@x.com"] and steps["p@x.com"] < steps["q@x.com"]
    reads = ws.plan_json(plan)["reads"]
    assert reads[0]["method"] == "scan" and reads[0]["segments"] == 3 and reads[0]["items_read"] == 4
    assert _apply(ws, plan).code == 0
    assert ddb.items("users") == [
        {"email": "b@x.com", "from": "a", "n": Decimal("1")},
        {"email": "c@x.com", "from": "b", "n": Decimal("2")},
        {"email": "m@x.com", "from": "p", "only_p": "yes", "only_q": "yes"},  # first mapping wins, rest filled
    ]


def test_client_scope(ddb, ws):
    ddb.create("users", "PK")
    ddb.put(
        "users",
        {"PK": "1#a@x.com", "clientId": "1", "email": "a@x.com"},
        {"PK": "2#a@x.com", "clientId": "2", "email": "a@x.com"},
        {"PK": "3#a@x.com", "clientId": "3", "email": "a@x.com"},
    )
    _targets(ws, "- table: users\n  client_attribute: clientId\n  attributes: [email]\n")
    ws.mappings(
        [{"old": "a@x.com", "new": "a1@x.com", "client_id": "1"}, {"old": "a@x.com", "new": "a2@x.com", "client_id": 2}]
    )
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert _apply(ws, plan).code == 0
    assert [i["email"] for i in ddb.items("users")] == ["a1@x.com", "a2@x.com", "a@x.com"]


def test_client_id_without_client_attribute_conflicting_news_is_an_error(ddb, ws):
    ddb.create("users", "PK")
    ddb.put("users", {"PK": "k", "email": "a@x.com"})
    _targets(ws, "- table: users\n  attributes: [email]\n")
    ws.mappings(
        [
            {"old": "a@x.com", "new": "a1@x.com", "client_id": "1"},
            {"old": "a@x.com", "new": "a2@x.com", "client_id": "2"},
        ]
    )
    r, plan = ws.plan()
    assert r.code == 1 and "client_id is ignored" in r.err and not plan.exists()


def test_stale_items_are_never_overwritten(ddb, ws):
    ddb.create("users", "email")
    ddb.put(
        "users",
        {"email": "a@x.com", "v": "1"},
        {"email": "b@x.com", "v": "1", "alt": "b@x.com"},
        {"email": "c@x.com", "v": "1"},
    )
    _targets(ws, "- table: users\n  attributes: [email, alt]\n")
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com", "c@x.com": "c2@x.com"})
    r, plan = ws.plan()
    ddb.put("users", {"email": "a@x.com", "v": "2"})  # another writer changes a's item after the plan
    r = _apply(ws, plan)
    assert r.code == 3
    assert sorted(i["email"] for i in ddb.items("users")) == ["a@x.com", "b@x.com", "c@x.com"]  # abort: no write
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3
    items = ddb.items("users")
    assert {"email": "a@x.com", "v": "2"} in items  # the other writer's change is kept
    assert {"email": "b2@x.com", "v": "1", "alt": "b2@x.com"} in items and {"email": "c2@x.com", "v": "1"} in items
    stale = [a for a in _report(plan)["actions"] if a["status"] == "stale"]
    assert len(stale) == 1 and "differs from the plan in v" in stale[0]["detail"]


def _transaction_sizes(ddb, ws, *apply_args: str) -> list[int]:
    """120 moves applied; the number of writes in each TransactWriteItems sent, after checking every item moved."""
    ddb.create("users", "email")
    ddb.put("users", *({"email": f"u{i}@old.com", "i": Decimal(i)} for i in range(120)))
    _targets(ws, "- table: users\n  attributes: [email]\n")
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(120)})
    r, plan = ws.plan()
    sizes = []

    def count(params, **kwargs):
        sizes.append(len(params["TransactItems"]))

    hook_dynamodb(ws, "provide-client-params.dynamodb.TransactWriteItems", count)
    assert _apply(ws, plan, *apply_args).code == 0
    assert [i["email"] for i in ddb.items("users")] == sorted(f"u{i}@new.com" for i in range(120))
    return sizes


def test_moves_are_batched_into_transactions_within_the_100_item_limit(ddb, ws):
    sizes = _transaction_sizes(ddb, ws, "--concurrency", "2")
    assert sorted(sizes) == [40, 100, 100]  # 50 moves (Put + Delete) per transaction, the real limit


def test_moves_are_spread_over_the_requests_in_flight(ddb, ws):
    sizes = _transaction_sizes(ddb, ws)  # 32 requests in flight: a transaction for each
    assert sizes == [8] * 30  # 120 moves, 4 a transaction: 30 transactions, for 32 workers


def test_new_key_too_long_is_a_plan_error(ddb, ws):
    ddb.create("users", "PK", "SK")
    ddb.put("users", {"PK": "a@x.com", "SK": "S#" + "x" * 1000 + "#a@x.com"})
    _targets(ws, "- table: users\n  attributes: [PK, {name: SK, template: 'S#" + "x" * 1000 + "#{email}'}]\n")
    ws.mappings({"a@x.com": "a-much-longer-address-than-before@example.com"})
    r, plan = ws.plan()
    assert r.code == 1 and "DynamoDB allows 1024" in r.err and not plan.exists()


def test_conditions_stay_within_the_4kb_expression_limit(ddb, ws):
    ddb.create("wide", "email")
    wide = {"email": "a@x.com", **{f"attribute_{i:03d}": str(i) for i in range(400)}}
    ddb.put("wide", wide)
    _targets(ws, "- table: wide\n  attributes: [email]\n  version_attribute: attribute_000\n")
    ws.mappings({"a@x.com": "b@x.com"})
    r, plan = ws.plan()
    lengths = []

    def measure(params, **_):
        for item in params["TransactItems"]:
            for req in item.values():
                lengths.append(len(req.get("ConditionExpression", "")))

    hook_dynamodb(ws, "provide-client-params.dynamodb.TransactWriteItems", measure)
    assert _apply(ws, plan).code == 0
    assert lengths and max(lengths) <= 4096
    assert ddb.items("wide") == [dict(wide, email="b@x.com")]


def test_postgres_first_then_dynamodb_in_one_plan(db, ddb, ws):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com')")
    ddb.create("users", "email")
    ddb.put("users", {"email": "a@x.com", "name": "A"})
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    _targets(
        ws,
        "- table: users\n  attributes: [email]\n",
        extra_pg="postgres:\n  - name: core\n    dsn: ${CORE_DSN}\n"
        "    tables: [{table: employees, columns: [email]}]\n",
    )
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert [a["store"] for a in ws.plan_json(plan)["actions"]] == ["postgres", "dynamodb"]
    md = (plan.parent / "plan.md").read_text()
    assert "hr / users (DynamoDB)" in md and "How DynamoDB tables were read" in md
    assert _apply(ws, plan).code == 0
    assert [t["target"] for t in _report(plan)["targets"]] == ["core", "hr"]
    assert db.rows("SELECT email FROM employees") == [("a2@x.com",)]
    assert ddb.items("users") == [{"email": "a2@x.com", "name": "A"}]


def test_unreachable_endpoint_and_missing_table_are_clear_errors(ddb, ws):
    _targets(ws, "- table: nope-table\n  attributes: [email]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    r, plan = ws.plan()
    assert r.code == 1 and "table not found" in r.err and "Traceback" not in r.err
    ws.monkeypatch.setenv("DYNAMODB_ENDPOINT", "http://127.0.0.1:9")
    r, plan = ws.plan()
    assert r.code == 1 and "cannot reach DynamoDB" in r.err and not plan.exists()


def test_a_merge_of_many_items_into_one_key_is_planned_in_order(ddb, ws):
    ddb.create("users", "email")
    ddb.put("users", *({"email": f"alias{i:04d}@old.com", "n": Decimal(i)} for i in range(1200)))
    _targets(ws, "- table: users\n  attributes: [email]\n")
    ws.mappings([{"old": f"alias{i:04d}@old.com", "new": "one@new.com"} for i in range(1200)])
    r, plan = ws.plan()
    assert r.code == 0, r.err
    acts = ws.plan_json(plan)["actions"]
    steps = {a["key"]["email"]["S"]: a["step"] for a in acts}
    assert steps == {f"alias{i:04d}@old.com": i for i in range(1200)}  # mapping order, one after the other
    assert acts[-1]["merged"]["n"] == {"N": "0"}  # the first arrival's attributes win in the final item
