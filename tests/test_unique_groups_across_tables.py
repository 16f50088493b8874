"""unique_groups: columns of several tables that share one address namespace (GitLab keeps an address on one user,
across users.email and emails.email), decided at plan time like a unique index: on_conflict fail lists every row
that would share an address, skip leaves those rows unchanged and plan.md names the row holding the address. Without
a group, the tables' own unique indexes alone decide, and both rows end up with the address."""

from __future__ import annotations

import json

import pytest
from helpers import assert_user_error, plan_doc, plan_lines

from emailsync.plan import SKIPPED_KIND, loads

SCHEMA = [
    "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text)",
    "CREATE TABLE emails (id int PRIMARY KEY, user_id int NOT NULL REFERENCES users ON DELETE CASCADE, "
    "email text NOT NULL UNIQUE)",
    """INSERT INTO users VALUES (1, 'a@x.com', 'A'), (2, 'b@x.com', 'B'), (3, 'c@x.com', 'C'), (5, 'p@x.com', 'P'),
       (6, 'Keep@x.com', 'K')""",
    """INSERT INTO emails VALUES (7, 2, 'm@x.com'), (8, 3, 'd@x.com'), (9, 5, 'q@x.com'), (10, 1, 'z@x.com')""",
]

TABLES = "- {table: users, columns: [email]}\n- {table: emails, columns: [email]}\n"

MAPPINGS = [
    {"old": "a@x.com", "new": "m@x.com"},  # onto B's secondary address: A is left as it is
    {"old": "c@x.com", "new": "n@x.com"},  # C's primary and secondary (d) both go to n: the first mapping wins
    {"old": "d@x.com", "new": "n@x.com"},
    {"old": "q@x.com", "new": "keep@x.com"},  # onto K's address, in another case: compared ignoring case
    {"old": "z@x.com", "new": "a@x.com"},  # onto A's address, which A keeps once A is left unchanged: decided again
    {"old": "p@x.com", "new": "p2@x.com"},  # nothing in the way
]


def _estate(db, ws, on_conflict: str | None) -> None:
    for stmt in SCHEMA:
        db.execute(stmt)
    path = ws.postgres_targets({"gitlab": db}, TABLES)
    if on_conflict is not None:
        path.write_text(
            path.read_text()
            + "unique_groups:\n  - name: gitlab-addresses\n"
            + (f"    on_conflict: {on_conflict}\n" if on_conflict != "default" else "")
            + "    members:\n      - {target: gitlab, table: users, column: email}\n"
            "      - {target: gitlab, table: emails, column: email}\n"
        )
    ws.mappings(MAPPINGS)


def _rows(db):
    return (
        db.rows("SELECT id, email FROM users ORDER BY id"),
        db.rows("SELECT id, user_id, email FROM emails ORDER BY id"),
    )


def test_skip_leaves_every_row_that_would_share_an_address_and_names_the_holder(db, ws):
    _estate(db, ws, "skip")
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    body = [loads(x) for x in plan_lines(plan)[1:]]
    skipped = {(s["table"], s["key"]["id"]): s["reason"] for s in body if s["kind"] == SKIPPED_KIND}
    assert skipped == {
        ("public.users", 1): 'unique_groups[0] (gitlab-addresses): m@x.com is already held by public.emails {"id":7}',
        ("public.emails", 8): "unique_groups[0] (gitlab-addresses): n@x.com is taken by public.users "
        '{"id":3}, whose mapping comes first',
        ("public.emails", 9): "unique_groups[0] (gitlab-addresses): keep@x.com is already held by "
        'public.users {"id":6}',
        ("public.emails", 10): 'unique_groups[0] (gitlab-addresses): a@x.com is already held by public.users {"id":1}',
    }
    md = (plan.parent / "plan.md").read_text()
    assert (
        "| gitlab / public.users | `id=1` | email | `a@x.com` → `m@x.com` | `unique_groups[0] (gitlab-addresses): "
        'm@x.com is already held by public.emails {"id":7}` |'
    ) in md.splitlines()
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert _rows(db) == (
        [(1, "a@x.com"), (2, "b@x.com"), (3, "n@x.com"), (5, "p2@x.com"), (6, "Keep@x.com")],
        [(7, 2, "m@x.com"), (8, 3, "d@x.com"), (9, 5, "q@x.com"), (10, 1, "z@x.com")],
    )


@pytest.mark.parametrize("on_conflict", ["fail", "default"])
def test_fail_lists_every_row_that_would_share_an_address_and_writes_nothing(db, ws, on_conflict):
    _estate(db, ws, on_conflict)
    before = _rows(db)
    r, plan = ws.plan()
    msg = assert_user_error(r, "unique_groups[0] (gitlab-addresses) has on_conflict: fail", "choose on_conflict: skip")
    for fragment in (
        'public.users {"id":1}: unique_groups[0] (gitlab-addresses): m@x.com is already held by public.emails',
        'public.emails {"id":8}: unique_groups[0] (gitlab-addresses): n@x.com is taken by public.users {"id":3}',
        'public.emails {"id":9}: unique_groups[0] (gitlab-addresses): keep@x.com is already held by public.users',
    ):
        assert fragment in msg
    assert not plan.exists()
    assert _rows(db) == before


def test_without_a_group_each_table_decides_alone_and_rows_share_addresses(db, ws):
    _estate(db, ws, None)
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    users, emails = _rows(db)
    shared = {e for _, e in users} & {e for _, _, e in emails}
    assert shared == {"m@x.com", "n@x.com"}  # what the group prevents


@pytest.mark.parametrize(
    ("group", "fragments"),
    [
        (
            "{members: [{target: gitlab, table: users, column: name}]}",
            ("unique_groups[0].members[0]", "users.name is not among the table's columns", "add it there"),
        ),
        (
            "{members: [{target: nope, table: users, column: email}]}",
            ("unique_groups[0].members[0]", "no target is named 'nope'"),
        ),
        (
            "{on_conflict: maybe, members: [{target: gitlab, table: users, column: email}]}",
            ("unique_groups[0].on_conflict", "'maybe' is not one of fail, skip, delete"),
        ),
        (
            "{members: [{target: gitlab, table: users, column: email, owner: uid}]}",
            ("unique_groups[0].members[0].owner", "public.users has no column 'uid'"),
        ),
        (
            "{members: [{target: gitlab, table: accounts, column: email}]}",
            ("unique_groups[0].members[0]", "lists no table 'accounts'"),
        ),
    ],
)
def test_group_mistakes_are_named_in_targets_yaml(db, ws, group, fragments):
    _estate(db, ws, None)
    path = ws.path / "targets.yaml"
    path.write_text(path.read_text() + f"unique_groups:\n  - {group}\n")
    r, plan = ws.plan()
    assert_user_error(r, "targets.yaml", *fragments)
    assert not plan.exists()


def test_a_group_column_that_holds_more_than_one_address_is_refused_when_planning(db, ws):
    db.execute("CREATE TABLE teams (id int PRIMARY KEY, emails text[])")
    path = ws.postgres_targets({"gitlab": db}, "- {table: teams, columns: [emails]}\n")
    path.write_text(
        path.read_text() + "unique_groups:\n  - members: [{target: gitlab, table: teams, column: emails}]\n"
    )
    ws.mappings({"a@x.com": "b@x.com"})
    r, _ = ws.plan()
    assert_user_error(r, "unique_groups[0].members[0]", "public.teams.emails is text[]", "one address each")


@pytest.mark.parametrize("owners", [True, False])
def test_rows_of_one_owner_may_share_an_address_when_the_group_names_owners(db, ws, owners):
    """GitLab keeps a user's primary address in emails too: users.id and emails.user_id say whose row it is, and a
    user's own two rows moving together are no conflict. Without owners they are two holders, and one is left."""
    for stmt in SCHEMA[:2]:
        db.execute(stmt)
    db.execute("INSERT INTO users VALUES (2, 'b@x.com', 'B'), (3, 'c@x.com', 'C')")
    db.execute("INSERT INTO emails VALUES (7, 2, 'b@x.com'), (8, 3, 'c@x.com')")
    path = ws.postgres_targets({"gitlab": db}, TABLES)
    own = (", owner: id", ", owner: user_id") if owners else ("", "")
    path.write_text(
        path.read_text() + "unique_groups:\n  - on_conflict: skip\n    members:\n"
        f"      - {{target: gitlab, table: users, column: email{own[0]}}}\n"
        f"      - {{target: gitlab, table: emails, column: email{own[1]}}}\n"
    )
    ws.mappings({"b@x.com": "b2@x.com"})  # B renamed: B's row in users and B's row in emails move together
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    skipped = [
        (s["table"], s["key"]["id"], s["reason"]) for s in map(loads, plan_lines(plan)[1:]) if s["kind"] == SKIPPED_KIND
    ]
    if owners:
        assert skipped == []
    else:  # two rows, so one holder too many: the users row comes first (same mapping, first table)
        reason = 'unique_groups[0]: b2@x.com is taken by public.users {"id":2}, whose mapping comes first'
        assert skipped == [("public.emails", 7, reason)]
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    expected_emails = [(7, 2, "b2@x.com" if owners else "b@x.com"), (8, 3, "c@x.com")]
    assert _rows(db) == ([(2, "b2@x.com"), (3, "c@x.com")], expected_emails)


def _dynamo_estate(ddb, ws, on_conflict: str) -> None:
    ddb.create("people", "id")
    ddb.create("logins", "pk")
    ddb.put(
        "people",
        {"id": "1", "email": "a@x.com"},
        {"id": "2", "email": "b@x.com"},
        {"id": "3", "email": "c@x.com"},
    )
    # logins: the address inside a templated attribute, and whose login it is (owner: person)
    ddb.put(
        "logins",
        {"pk": "L1", "login": "USER#m@x.com", "person": "2"},
        {"pk": "L3", "login": "USER#c@x.com", "person": "3"},
    )
    ws.targets(
        "version: 1\nmappings: email_mappings.json\ndynamodb:\n  - name: hr\n    region: us-east-1\n"
        "    endpoint_url: ${DYNAMODB_ENDPOINT}\n    tables:\n      - {table: people, attributes: [email]}\n"
        "      - table: logins\n        attributes: [{name: login, template: 'USER#{email}'}]\n"
        f"unique_groups:\n  - on_conflict: {on_conflict}\n    members:\n"
        "      - {target: hr, table: people, attribute: email, owner: id}\n"
        "      - {target: hr, table: logins, attribute: login, owner: person}\n"
    )
    # a → m, which person 2's login holds; c → n, for person 3 in both tables (one owner: no conflict)
    ws.mappings({"a@x.com": "m@x.com", "c@x.com": "n@x.com"})


def test_dynamodb_items_across_tables_skip_an_address_another_owner_keeps(ddb, ws):
    _dynamo_estate(ddb, ws, "skip")
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    skipped = [
        (s["table"], s["key"], s["reason"]) for s in map(loads, plan_lines(plan)[1:]) if s["kind"] == SKIPPED_KIND
    ]
    assert skipped == [
        ("people", {"id": {"S": "1"}}, 'unique_groups[0]: m@x.com is already held by logins {"pk":{"S":"L1"}}')
    ]
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    assert ddb.items("people") == [
        {"id": "1", "email": "a@x.com"},
        {"id": "2", "email": "b@x.com"},
        {"id": "3", "email": "n@x.com"},
    ]
    assert ddb.items("logins") == [
        {"pk": "L1", "login": "USER#m@x.com", "person": "2"},
        {"pk": "L3", "login": "USER#n@x.com", "person": "3"},
    ]


def test_dynamodb_group_with_on_conflict_fail_lists_the_items_and_writes_nothing(ddb, ws):
    _dynamo_estate(ddb, ws, "fail")
    r, plan = ws.plan()
    assert_user_error(
        r,
        "unique_groups[0] has on_conflict: fail",
        'people {"id":{"S":"1"}}: unique_groups[0]: m@x.com is already held by logins {"pk":{"S":"L1"}}',
    )
    assert not plan.exists()
    assert ddb.items("people")[0] == {"id": "1", "email": "a@x.com"}


def test_without_a_group_plan_md_warns_of_rows_that_would_share_an_address(db, ws):
    _estate(db, ws, None)
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    warnings = [w for w in plan_doc(plan)["warnings"] if "would be held by" in w]
    # a@x.com is not one of them: without the group, A moves away from it as z arrives.
    assert [w.split(" (e.g. ")[0] for w in warnings] == [
        "target 'gitlab': keep@x.com would be held by 2 rows of identity columns that now hold different addresses",
        "target 'gitlab': m@x.com would be held by 2 rows of identity columns that now hold different addresses",
        "target 'gitlab': n@x.com would be held by 2 rows of identity columns that now hold different addresses",
    ]
    # one example row for each address held before
    assert '(e.g. public.users.email {"id": 3} (c@x.com); public.emails.email {"id": 8} (d@x.com))' in warnings[2]
    assert all(w.endswith("declare these columns a unique group (unique_groups: in targets.yaml)") for w in warnings)
    md = (plan.parent / "plan.md").read_text()
    assert "## Warnings" in md and "m@x.com" in md.split("## Warnings", 1)[1]


def test_with_a_group_declared_the_warning_gives_way_to_the_decision(db, ws):
    _estate(db, ws, "skip")
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    assert not [w for w in plan_doc(plan)["warnings"] if "would be held by" in w]


def test_without_a_group_an_address_shared_in_a_gsi_key_is_warned_about(ddb, ws):
    """An attribute a global secondary index is keyed by is a lookup by address (Auth.js's GSI1PK = USER#<email>):
    two items under one value there are found together. Without a group, plan.md says which items would be."""
    ddb.client.create_table(
        TableName="auth",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "gk", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "byEmail",
                "KeySchema": [{"AttributeName": "gk", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.put(
        "auth",
        {"pk": "U1", "gk": "USER#a@x.com", "note": "b@x.com"},
        {"pk": "U2", "gk": "USER#b@x.com"},
        {"pk": "U3", "gk": "USER#c@x.com", "note": "a@x.com"},
    )
    ws.targets(
        "version: 1\nmappings: email_mappings.json\ndynamodb:\n  - name: hr\n    region: us-east-1\n"
        "    endpoint_url: ${DYNAMODB_ENDPOINT}\n    tables:\n"
        "      - table: auth\n        attributes: [{name: gk, template: 'USER#{email}'}, note]\n"
    )
    ws.mappings({"a@x.com": "b@x.com"})  # U1 onto U2's address; `note` is no lookup, so U3's note is no concern
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    assert plan_doc(plan)["warnings"] == [
        'target \'hr\': auth {"pk":{"S":"U1"}} moves to an address another item keeps or takes in an attribute a '
        'global secondary index is keyed by (b@x.com is already held by auth {"pk":{"S":"U2"}}); if the application '
        "keeps an address on one item, declare the attribute a unique group (unique_groups: in targets.yaml)"
    ]
    assert ws.run("apply", str(plan), "--auto-approve").code == 0  # a warning, not a refusal: U1 moves
    assert [i["gk"] for i in ddb.items("auth")] == ["USER#b@x.com", "USER#b@x.com", "USER#c@x.com"]


@pytest.mark.parametrize("batched", [False, True])
def test_delete_removes_the_row_moving_onto_an_address_another_table_keeps(db, ws, batched):
    from helpers import rollback_plan

    _estate(db, ws, "delete")
    before = _rows(db)
    # Only the losers that are no one's parent: emails rows (users rows are referenced, which a delete refuses).
    ws.mappings([{"old": "q@x.com", "new": "keep@x.com"}, {"old": "p@x.com", "new": "p2@x.com"}])
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    dels = [a for a in map(loads, plan_lines(plan)[1:]) if a["kind"] == "delete-on-conflict"]
    assert [(a["table"], a["key"], a["row"], a["conflict"]) for a in dels] == [
        (
            "public.emails",
            {"id": 9},
            {"id": 9, "user_id": 5, "email": "q@x.com"},
            {"key": {"id": 6}, "values": {"email": "Keep@x.com"}, "table": "public.users"},
        )
    ]
    assert 'keep@x.com is already held by public.users {"id":6}' in dels[0]["reason"]
    assert "Rows to be deleted" in (plan.parent / "plan.md").read_text()
    r = ws.run("apply", str(plan), "--auto-approve", *(["--batch-size", "1"] if batched else []))
    assert r.code == 0, r.out + r.err
    assert _rows(db) == (
        [(1, "a@x.com"), (2, "b@x.com"), (3, "c@x.com"), (5, "p2@x.com"), (6, "Keep@x.com")],
        [(7, 2, "m@x.com"), (8, 3, "d@x.com"), (10, 1, "z@x.com")],
    )
    # and the rollback plan puts the deleted row back
    r = ws.run("apply", str(rollback_plan(ws, plan)), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert _rows(db) == before


def test_delete_is_not_carried_out_once_the_row_keeping_the_address_has_let_it_go(db, ws):
    _estate(db, ws, "delete")
    ws.mappings([{"old": "q@x.com", "new": "keep@x.com"}])
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    db.execute("UPDATE users SET email = 'kept.elsewhere@x.com' WHERE id = 6")  # after the plan
    r = ws.run("apply", str(plan), "--auto-approve", "--on-stale", "skip")
    assert r.code == 3, r.out + r.err
    report = json.loads((plan.parent / "report.json").read_text())["actions"]
    assert [(a["status"], a["detail"]) for a in report] == [
        ("stale", "not deleted: the row that was to hold email = keep@x.com no longer does")
    ]
    assert _rows(db)[1] == [(7, 2, "m@x.com"), (8, 3, "d@x.com"), (9, 5, "q@x.com"), (10, 1, "z@x.com")]


def test_delete_refuses_rows_moving_together_onto_an_address_no_row_holds_yet(db, ws):
    _estate(db, ws, "delete")
    ws.mappings([{"old": "c@x.com", "new": "n@x.com"}, {"old": "d@x.com", "new": "n@x.com"}])
    r, plan = ws.plan()
    assert_user_error(
        r,
        "unique_groups[0] (gitlab-addresses) has on_conflict: delete",
        "a delete needs a row that keeps the address",
        'public.emails {"id":8}: unique_groups[0] (gitlab-addresses): n@x.com is taken by public.users {"id":3}',
    )
    assert not plan.exists()


def test_delete_is_for_postgresql_members_only(ddb, ws):
    _dynamo_estate(ddb, ws, "delete")
    r, plan = ws.plan()
    assert_user_error(r, "unique_groups[0].on_conflict: delete is for PostgreSQL columns only", "use fail or skip")


def test_delete_checks_the_holder_in_a_table_the_plan_does_not_change(db, ws):
    """Only emails changes: the row keeping the address is in users, which has no action of its own."""
    _estate(db, ws, "delete")
    ws.mappings([{"old": "q@x.com", "new": "keep@x.com"}])
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    assert {loads(x)["table"] for x in plan_lines(plan)[1:]} == {"public.emails"}
    r = ws.run("apply", str(plan), "--auto-approve", "--on-stale", "abort")
    assert r.code == 0, r.out + r.err
    assert _rows(db)[1] == [(7, 2, "m@x.com"), (8, 3, "d@x.com"), (10, 1, "z@x.com")]


def test_a_group_delete_that_would_take_the_row_another_delete_counts_on_is_refused(db, ws):
    """users' own unique index deletes user 2 (user 1 takes a@x.com first); the group would then delete user 1 too,
    because emails row 7 (user 2's) keeps that address: both would go."""
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, note text)")
    db.execute("CREATE TABLE emails (id int PRIMARY KEY, user_id int, email text UNIQUE)")
    db.execute("INSERT INTO users VALUES (1, 'o1@x.com', 'o1@x.com'), (2, 'o2@x.com', NULL)")
    db.execute("INSERT INTO emails VALUES (7, 2, 'a@x.com')")
    path = ws.postgres_targets(
        {"gitlab": db}, "- {table: users, columns: [email, note]}\n- {table: emails, columns: [email]}\n"
    )
    path.write_text(
        path.read_text() + "unique_groups:\n  - on_conflict: delete\n    members:\n"
        "      - {target: gitlab, table: users, column: email, owner: id}\n"
        "      - {target: gitlab, table: emails, column: email, owner: user_id}\n"
    )
    ws.mappings([{"old": "o1@x.com", "new": "a@x.com"}, {"old": "o2@x.com", "new": "a@x.com"}])
    r, plan = ws.plan()
    assert_user_error(r, "unique_groups[0] would delete public.users", "so both would go")
    assert not plan.exists()
