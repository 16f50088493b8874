"""Review findings: adversarial plan/apply cases against real PostgreSQL.

Every test asserts the CORRECT behaviour and the final table contents. Tests marked "BUG" in their docstring
fail on the reviewed code; the others are regression tests for tricky cases that work.
"""

from __future__ import annotations

import json


def _apply(ws, plan, *extra):
    # --force: these tests rerun plans on purpose; the ledger's replay refusal has tests of its own (test_audit).
    return ws.run("apply", str(plan), "--auto-approve", "--force", *extra)


def _report(plan):
    return json.loads((plan.parent / "report.json").read_text())


def _acts(ws, plan):
    return ws.plan_json(plan)["actions"]


# --- findings ----------------------------------------------------------------------------------------------


def test_email_primary_key_chain_into_slot_of_deleted_row_applies(db, ws):
    """Regression: verify looks a deleted row up by its key, finds the row that moved onto that key, rolls back."""
    db.execute("CREATE TABLE settings (email text PRIMARY KEY, theme text)")
    db.execute("INSERT INTO settings VALUES ('a@x.com', 'dark'), ('b@x.com', 'light'), ('c@x.com', 'blue')")
    ws.postgres_targets({"core": db}, "- table: settings\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com", "b@x.com": "c@x.com"})  # b -> c collides with c: b's row is deleted
    r, plan = ws.plan()
    assert r.code == 0, r.err
    kinds = {a["key"]["email"]: a["kind"] for a in _acts(ws, plan)}
    assert kinds == {"a@x.com": "update", "b@x.com": "delete-on-conflict"}
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT email, theme FROM settings ORDER BY email") == [("b@x.com", "dark"), ("c@x.com", "blue")]
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert {a["status"] for a in _report(plan)["actions"]} == {"already-applied"}


def test_rerun_chain_on_email_primary_key_with_identical_other_columns_is_already_applied(db, ws):
    """Regression: on re-run the row now at key b (formerly a) equals b's planned image and is classified pending."""
    db.execute("CREATE TABLE subscribers (email text PRIMARY KEY)")
    db.execute("INSERT INTO subscribers VALUES ('a@x.com'), ('b@x.com')")
    ws.postgres_targets({"core": db}, "- table: subscribers\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com", "b@x.com": "c@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT email FROM subscribers ORDER BY 1") == [("b@x.com",), ("c@x.com",)]
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert {a["status"] for a in _report(plan)["actions"]} == {"already-applied"}
    assert db.rows("SELECT email FROM subscribers ORDER BY 1") == [("b@x.com",), ("c@x.com",)]


def test_on_stale_skip_does_not_delete_merge_loser_when_winner_is_stale(db, ws):
    """Regression: the delete of the merge loser runs although the winner it yielded to was skipped as stale."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, name text)")
    db.execute("INSERT INTO employees VALUES (1, 'b@x.com', 'B'), (2, 'a@x.com', 'A')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings([{"old": "b@x.com", "new": "m@x.com"}, {"old": "a@x.com", "new": "m@x.com"}])
    r, plan = ws.plan()
    assert {a["key"]["id"]: a["kind"] for a in _acts(ws, plan)} == {1: "update", 2: "delete-on-conflict"}
    db.execute("UPDATE employees SET email = 'z@x.com' WHERE id = 1")  # the winner changed: it will not move
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3
    # Nobody holds m@x.com now: deleting A's row no longer resolves any conflict, it just loses the row.
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "z@x.com"), (2, "a@x.com")]


def test_delete_on_conflict_is_stale_when_the_conflicting_row_no_longer_holds_the_value(db, ws):
    """Regression: the reviewed reason for a delete ('m is held by row 2') is not re-checked at apply."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, name text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com', 'A'), (2, 'm@x.com', 'M')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@x.com": "m@x.com"})
    r, plan = ws.plan()
    assert [a["kind"] for a in _acts(ws, plan)] == ["delete-on-conflict"]
    db.execute("UPDATE employees SET email = 'other@x.com' WHERE id = 2")  # the conflict is gone
    r = _apply(ws, plan)
    assert r.code == 3, r.out
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@x.com"), (2, "other@x.com")]


def test_child_row_skipped_on_conflict_is_not_cascade_deleted_with_its_parent(db, ws):
    """Regression: parent deleted (ON DELETE CASCADE), planned child row skipped by its own unique index: lost
    silently."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE NOT NULL)")
    db.execute(
        "CREATE TABLE leave (id int PRIMARY KEY, email text NOT NULL REFERENCES employees(email) ON DELETE CASCADE,"
        " day text NOT NULL, UNIQUE (email, day))"
    )
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com'), (2, 'm@x.com')")
    db.execute("INSERT INTO leave VALUES (10, 'a@x.com', 'mon'), (11, 'm@x.com', 'mon'), (12, 'a@x.com', 'tue')")
    ws.postgres_targets(
        {"core": db},
        "- table: employees\n  columns: [email]\n- table: leave\n  columns: [email]\n  on_conflict: skip\n",
    )
    ws.mappings({"a@x.com": "m@x.com"})
    r, plan = ws.plan()
    if r.code == 1:  # refusing the plan, naming the key, is correct too
        assert "leave_email_fkey" in r.err
        return
    _apply(ws, plan)
    # Row 10 was planned as "skipped: left unchanged"; it must not disappear.
    assert (10, "a@x.com", "mon") in db.rows("SELECT id, email, day FROM leave")


def test_child_row_skipped_on_conflict_under_no_action_key_is_refused_at_plan(db, ws):
    """Regression: the plan is accepted although a skipped child keeps referencing a deleted parent; apply then
    fails."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE NOT NULL)")
    db.execute(
        "CREATE TABLE leave (id int PRIMARY KEY, email text NOT NULL REFERENCES employees(email),"
        " day text NOT NULL, UNIQUE (email, day))"
    )
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com'), (2, 'm@x.com')")
    db.execute("INSERT INTO leave VALUES (10, 'a@x.com', 'mon'), (11, 'm@x.com', 'mon')")
    ws.postgres_targets(
        {"core": db},
        "- table: employees\n  columns: [email]\n- table: leave\n  columns: [email]\n  on_conflict: skip\n",
    )
    ws.mappings({"a@x.com": "m@x.com"})
    r, plan = ws.plan()
    assert r.code == 1 and "leave_email_fkey" in r.err, r.out + r.err


def test_child_moves_to_value_the_parent_does_not_hold_is_refused_at_plan(db, ws):
    """Regression: parent deleted by a lower() index conflict; children move to 'M@x.com' but the parent holds
    'm@x.com'."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE NOT NULL)")
    db.execute("CREATE UNIQUE INDEX employees_email_lower ON employees (lower(email))")
    db.execute("CREATE TABLE leave (id int PRIMARY KEY, email text NOT NULL REFERENCES employees(email))")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com'), (2, 'm@x.com')")
    db.execute("INSERT INTO leave VALUES (10, 'a@x.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n- table: leave\n  columns: [email]\n")
    ws.mappings({"a@x.com": "M@x.com"})
    r, plan = ws.plan()
    assert r.code == 1 and "leave_email_fkey" in r.err, r.out + r.err


def test_self_referencing_on_update_cascade_with_child_column_not_configured_applies(db, ws):
    """Regression: the planner accepts ON UPDATE CASCADE (warning only) but verify rejects the cascaded
    manager_email."""
    db.execute(
        "CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE NOT NULL,"
        " manager_email text REFERENCES employees(email) ON UPDATE CASCADE)"
    )
    db.execute("INSERT INTO employees VALUES (2, 'b@x.com', NULL), (1, 'a@x.com', 'b@x.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0 and "ON UPDATE CASCADE" in r.err
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email, manager_email FROM employees ORDER BY id") == [
        (1, "a2@x.com", "b2@x.com"),
        (2, "b2@x.com", None),
    ]


def test_generated_column_derived_from_email_does_not_fail_verification(db, ws):
    """Regression: a STORED generated column over email changes with the update; verify calls it a mismatch."""
    db.execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL,"
        " domain text GENERATED ALWAYS AS (split_part(email, '@', 2)) STORED)"
    )
    db.execute("INSERT INTO accounts (id, email) VALUES (1, 'a@old.com')")
    ws.postgres_targets({"core": db}, "- table: accounts\n  columns: [email]\n")
    ws.mappings({"a@old.com": "a@new.com"})
    r, plan = ws.plan()
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email, domain FROM accounts") == [(1, "a@new.com", "new.com")]


def test_unique_index_on_generated_column_decides_conflicts(db, ws):
    """Regression: the post-change row keeps the generated column's old value, so the conflict is not seen."""
    db.execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL,"
        " email_lower text GENERATED ALWAYS AS (lower(email)) STORED UNIQUE)"
    )
    db.execute("INSERT INTO accounts (id, email) VALUES (1, 'a@x.com'), (2, 'B@x.com')")
    ws.postgres_targets({"core": db}, "- table: accounts\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert [(a["key"]["id"], a["kind"]) for a in _acts(ws, plan)] == [(1, "delete-on-conflict")]


def test_column_named_t_is_supported(db, ws):
    """Regression: to_jsonb(t) / jsonb_populate_record(t, ...) resolve to the column "t", not the row alias."""
    db.execute("CREATE TABLE events (id int PRIMARY KEY, email text UNIQUE, t text)")
    db.execute("INSERT INTO events VALUES (1, 'a@x.com', 'x'), (2, 'm@x.com', 'y'), (3, 'b@x.com', 'z')")
    ws.postgres_targets({"core": db}, "- table: events\n  columns: [email]\n")
    ws.mappings({"a@x.com": "m@x.com", "b@x.com": "b2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    dels = [a for a in _acts(ws, plan) if a["kind"] == "delete-on-conflict"]
    assert dels[0]["row"] == {"id": 1, "email": "a@x.com", "t": "x"}  # the whole row for review
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email, t FROM events ORDER BY id") == [(2, "m@x.com", "y"), (3, "b2@x.com", "z")]


def test_column_named_t_without_unique_index_applies(db, ws):
    """Regression: classify reads to_jsonb(t) as the column's text, calls every row stale, then crashes in
    _stale_text."""
    db.execute("CREATE TABLE events (id int PRIMARY KEY, email text, t text)")
    db.execute("INSERT INTO events VALUES (1, 'a@x.com', 'x')")
    ws.postgres_targets({"core": db}, "- table: events\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    r = _apply(ws, plan)  # today: AttributeError: 'str' object has no attribute 'get'
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email, t FROM events") == [(1, "b@x.com", "x")]


def test_column_named_es_kid_is_supported(db, ws):
    """Regression: the unique-index analysis selects c._es_kid next to the table's own columns: ambiguous column."""
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, _es_kid int)")
    db.execute("INSERT INTO users VALUES (1, 'a@x.com', 7)")
    ws.postgres_targets({"core": db}, "- table: users\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email, _es_kid FROM users") == [(1, "a2@x.com", 7)]


def test_table_named_a_with_unique_index_is_supported(db, ws):
    """Regression: the unique-index analysis joins `mv a` with the unaliased table: "table name a specified twice"."""
    db.execute('CREATE TABLE "a" (id int PRIMARY KEY, email text UNIQUE)')
    db.execute("INSERT INTO a VALUES (1, 'a@x.com')")
    ws.postgres_targets({"core": db}, "- table: public.a\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email FROM a") == [(1, "a2@x.com")]


def test_new_email_too_long_for_varchar_array_elements_is_a_plan_error(db, ws):
    """Regression: only text columns are checked against their type; varchar(n)[] fails at apply instead."""
    db.execute("CREATE TABLE teams (id int PRIMARY KEY, members varchar(12)[])")
    db.execute("INSERT INTO teams VALUES (1, ARRAY['a@x.com'])")
    ws.postgres_targets({"core": db}, "- table: teams\n  columns: [members]\n")
    ws.mappings({"a@x.com": "a.very.long.address@x.com"})
    r, plan = ws.plan()
    assert r.code == 1 and "widen the column" in r.err, r.out + r.err


def test_row_leaving_a_partial_index_frees_its_slot(db, ws):
    """Regression: a row whose new value falls outside the index predicate is treated as still holding its slot."""
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL)")
    db.execute("CREATE UNIQUE INDEX users_corp_email ON users (email) WHERE email LIKE '%@corp.com'")
    db.execute("INSERT INTO users VALUES (1, 'a@corp.com'), (2, 'b@corp.com')")
    ws.postgres_targets({"core": db}, "- table: users\n  columns: [email]\n")
    # b leaves the corporate domain (out of the index); a takes over b's corporate address.
    ws.mappings({"b@corp.com": "b@home.org", "a@corp.com": "b@corp.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert sorted(a["kind"] for a in _acts(ws, plan)) == ["update", "update"]
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email FROM users ORDER BY id") == [(1, "b@corp.com"), (2, "b@home.org")]


def test_unique_index_on_a_partition_decides_conflicts(db, ws):
    """Regression: unique indexes that exist only on partitions are not read; apply hits a duplicate key."""
    db.execute(
        "CREATE TABLE users (tenant int NOT NULL, id int NOT NULL, email text NOT NULL, PRIMARY KEY (tenant, id))"
        " PARTITION BY LIST (tenant)"
    )
    db.execute("CREATE TABLE users_1 PARTITION OF users FOR VALUES IN (1)")
    db.execute("CREATE UNIQUE INDEX users_1_email ON users_1 (email)")
    db.execute("INSERT INTO users VALUES (1, 1, 'a@x.com'), (1, 2, 'b@x.com')")
    ws.postgres_targets({"core": db}, "- table: users\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    r, plan = ws.plan()
    if r.code == 1:  # refusing to plan a table whose partitions have their own unique indexes is acceptable
        assert "users_1_email" in r.err
        return
    assert [(a["key"]["id"], a["kind"]) for a in _acts(ws, plan)] == [(1, "delete-on-conflict")]
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email FROM users ORDER BY id") == [(2, "b@x.com")]


def test_merge_winner_deleted_by_another_index_does_not_also_delete_the_loser(db, ws):
    """Regression: conflict decisions depend on index-name order; here both merge rows are deleted, nobody gets m."""
    db.execute("CREATE TABLE people (id int PRIMARY KEY, email text NOT NULL, backup text)")
    db.execute("CREATE UNIQUE INDEX a_email ON people (email)")  # analysed first (name order)
    db.execute("CREATE UNIQUE INDEX b_backup ON people (backup)")
    db.execute("INSERT INTO people VALUES (1, 'a@x.com', 'x@x.com'), (2, 'b@x.com', NULL), (3, 'q@x.com', 'y@x.com')")
    ws.postgres_targets({"core": db}, "- table: people\n  columns: [email, backup]\n")
    ws.mappings(
        [
            {"old": "a@x.com", "new": "m@x.com"},
            {"old": "b@x.com", "new": "m@x.com"},
            {"old": "x@x.com", "new": "y@x.com"},
        ]
    )
    r, plan = ws.plan()
    assert r.code == 0, r.err
    # Row 1's backup collides with row 3, so row 1 is deleted; then m@x.com is free for row 2.
    assert {a["key"]["id"]: a["kind"] for a in _acts(ws, plan)} == {1: "delete-on-conflict", 2: "update"}
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email, backup FROM people ORDER BY id") == [
        (2, "m@x.com", None),
        (3, "q@x.com", "y@x.com"),
    ]


# --- tricky cases that work (regression tests) ------------------------------------------------------------


def test_self_referencing_fk_chain_and_merge_then_rerun(db, ws):
    db.execute(
        "CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE NOT NULL,"
        " manager_email text REFERENCES employees(email))"
    )
    db.execute(
        "INSERT INTO employees VALUES (1, 'a@x.com', NULL), (2, 'b@x.com', 'a@x.com'), (3, 'c@x.com', 'b@x.com'),"
        " (4, 'm@x.com', 'c@x.com'), (5, 'd@x.com', 'd@x.com')"
    )
    db.execute("UPDATE employees SET manager_email = 'b@x.com' WHERE id = 1")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email, manager_email]\n")
    # chain a -> b -> c (c -> m collides with row 4: row 3 is deleted); d manages itself
    ws.mappings({"a@x.com": "b@x.com", "b@x.com": "c@x.com", "c@x.com": "m@x.com", "d@x.com": "d2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    expected = [
        (1, "b@x.com", "c@x.com"),
        (2, "c@x.com", "b@x.com"),
        (4, "m@x.com", "m@x.com"),
        (5, "d2@x.com", "d2@x.com"),
    ]
    assert db.rows("SELECT id, email, manager_email FROM employees ORDER BY id") == expected
    r = _apply(ws, plan)
    assert r.code == 0 and {a["status"] for a in _report(plan)["actions"]} == {"already-applied"}
    assert db.rows("SELECT id, email, manager_email FROM employees ORDER BY id") == expected


def test_fk_child_in_other_table_with_parent_delete_and_chain_then_rerun(db, ws):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE NOT NULL)")
    db.execute("CREATE TABLE leave (id int PRIMARY KEY, email text NOT NULL REFERENCES employees(email))")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com'), (2, 'b@x.com'), (3, 'n@x.com')")
    db.execute("INSERT INTO leave VALUES (10, 'a@x.com'), (11, 'b@x.com'), (12, 'n@x.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n- table: leave\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com", "b@x.com": "n@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "b@x.com"), (3, "n@x.com")]
    assert db.rows("SELECT id, email FROM leave ORDER BY id") == [(10, "b@x.com"), (11, "n@x.com"), (12, "n@x.com")]
    r = _apply(ws, plan)
    assert r.code == 0 and {a["status"] for a in _report(plan)["actions"]} == {"already-applied"}


def test_nulls_not_distinct_composite_index(db, ws):
    db.execute("CREATE TABLE members (id int PRIMARY KEY, tenant int, email text NOT NULL)")
    db.execute("CREATE UNIQUE INDEX members_t_e ON members (tenant, email) NULLS NOT DISTINCT")
    db.execute("INSERT INTO members VALUES (1, NULL, 'a@x.com'), (2, NULL, 'b@x.com'), (3, 1, 'a@x.com')")
    ws.postgres_targets({"core": db}, "- table: members\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    r, plan = ws.plan()
    assert {a["key"]["id"]: a["kind"] for a in _acts(ws, plan)} == {1: "delete-on-conflict", 3: "update"}
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, tenant, email FROM members ORDER BY id") == [(2, None, "b@x.com"), (3, 1, "b@x.com")]


def test_two_email_columns_in_one_composite_unique_index(db, ws):
    db.execute("CREATE TABLE pairs (id int PRIMARY KEY, email text, manager_email text, UNIQUE (email, manager_email))")
    db.execute(
        "INSERT INTO pairs VALUES (1, 'a@x.com', 'a@x.com'), (2, 'b@x.com', 'b@x.com'), (3, 'a@x.com', 'b@x.com')"
    )
    ws.postgres_targets({"core": db}, "- table: pairs\n  columns: [email, manager_email]\n")
    ws.mappings({"a@x.com": "b@x.com", "b@x.com": "c@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email, manager_email FROM pairs ORDER BY id") == [
        (1, "b@x.com", "b@x.com"),
        (2, "c@x.com", "c@x.com"),
        (3, "b@x.com", "c@x.com"),
    ]


def test_quoted_identifiers_reserved_words_and_internal_like_names(db, ws):
    db.execute('CREATE SCHEMA "My.Schema"')
    db.execute(
        'CREATE TABLE "My.Schema"."Emp ""Q"" Table" ("Order" int PRIMARY KEY, "E-Mail" text UNIQUE, "user" text,'
        ' a text, p text, "select" text[])'
    )
    db.execute(
        "INSERT INTO \"My.Schema\".\"Emp \"\"Q\"\" Table\" VALUES (1, 'a@x.com', 'a@x.com', 'keep', 'keep',"
        " ARRAY['a@x.com', NULL, 'a@x.com']), (2, 'm@x.com', NULL, NULL, NULL, NULL), (3, 'b@x.com', NULL, 'x', 'y',"
        " NULL)"
    )
    ws.postgres_targets({"core": db}, '- table: \'"My.Schema"."Emp ""Q"" Table"\'\n  columns: [E-Mail, user, select]\n')
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "m@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows(
        'SELECT "Order", "E-Mail", "user", a, p, "select" FROM "My.Schema"."Emp ""Q"" Table" ORDER BY 1'
    ) == [
        (1, "a2@x.com", "a2@x.com", "keep", "keep", ["a2@x.com", None, "a2@x.com"]),
        (2, "m@x.com", None, None, None, None),
    ]
    assert _apply(ws, plan).code == 0


def test_casefold_arrays_with_duplicates_and_nested_jsonb(db, ws):
    db.execute("CREATE TABLE docs (id int PRIMARY KEY, tags text[], body jsonb)")
    db.execute(
        """INSERT INTO docs VALUES (1, ARRAY['A@x.com', NULL, 'a@X.com', 'k@x.com'],
        '{"to": [{"who": "A@X.COM"}, ["a@x.com", 3]], "A@x.com": "k@x.com", "n": 1.10}')"""
    )
    ws.postgres_targets({"core": db}, "- table: docs\n  columns: [tags, body]\n", match="casefold")
    ws.mappings({"a@x.com": "z@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert _apply(ws, plan).code == 0
    tags, body = db.rows("SELECT tags, body FROM docs")[0]
    assert tags == ["z@x.com", None, "z@x.com", "k@x.com"]
    assert body == {"to": [{"who": "z@x.com"}, ["z@x.com", 3]], "A@x.com": "k@x.com", "n": 1.10}
    assert db.rows("SELECT body->>'n' FROM docs") == [("1.10",)]


def test_configured_key_table_stale_skip_and_rerun(db, ws):
    db.execute("CREATE TABLE log (event_id int NOT NULL, actor text, target text)")
    db.execute("INSERT INTO log VALUES (1, 'a@x.com', 'b@x.com'), (2, 'b@x.com', NULL), (3, 'a@x.com', NULL)")
    ws.postgres_targets({"core": db}, "- table: log\n  columns: [actor, target]\n  key: [event_id]\n")
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com"})
    r, plan = ws.plan()
    db.execute("UPDATE log SET actor = 'other@x.com' WHERE event_id = 2")
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3
    assert db.rows("SELECT event_id, actor, target FROM log ORDER BY 1") == [
        (1, "a2@x.com", "b2@x.com"),
        (2, "other@x.com", None),
        (3, "a2@x.com", None),
    ]
    r = _apply(ws, plan, "--on-stale", "skip")
    assert sorted(a["status"] for a in _report(plan)["actions"]) == ["already-applied"] * 3 + ["stale"]


def test_partitioned_table_with_email_in_partitioned_primary_key_chain(db, ws):
    db.execute(
        "CREATE TABLE prefs (tenant int NOT NULL, email text NOT NULL, v text, PRIMARY KEY (tenant, email))"
        " PARTITION BY LIST (tenant)"
    )
    db.execute("CREATE TABLE prefs_1 PARTITION OF prefs FOR VALUES IN (1)")
    db.execute("CREATE TABLE prefs_2 PARTITION OF prefs FOR VALUES IN (2)")
    db.execute("INSERT INTO prefs VALUES (1, 'a@x.com', 'p'), (1, 'b@x.com', 'q'), (2, 'a@x.com', 'r')")
    ws.postgres_targets({"core": db}, "- table: prefs\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com", "b@x.com": "c@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert _apply(ws, plan).code == 0
    expected = [(1, "b@x.com", "p"), (1, "c@x.com", "q"), (2, "b@x.com", "r")]
    assert db.rows("SELECT tenant, email, v FROM prefs ORDER BY 1, 2") == expected
    r = _apply(ws, plan)
    assert r.code == 0 and {a["status"] for a in _report(plan)["actions"]} == {"already-applied"}


def test_after_trigger_writing_an_audit_table_does_not_disturb_verification(db, ws):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("CREATE TABLE audit (n serial, old text, new text)")
    db.execute(
        "CREATE FUNCTION aud() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO audit (old, new) VALUES (OLD.email, NEW.email); RETURN NULL; END $$"
    )
    db.execute("CREATE TRIGGER t_aud AFTER UPDATE ON employees FOR EACH ROW EXECUTE FUNCTION aud()")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com'), (2, 'b@x.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com", "b@x.com": "c@x.com"})
    r, plan = ws.plan()
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "b@x.com"), (2, "c@x.com")]
    assert db.rows("SELECT old, new FROM audit ORDER BY n") == [("b@x.com", "c@x.com"), ("a@x.com", "b@x.com")]


def test_before_trigger_rewriting_the_email_rolls_back(db, ws):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute(
        "CREATE FUNCTION low() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "NEW.email := upper(NEW.email); RETURN NEW; END $$"
    )
    db.execute("CREATE TRIGGER t_low BEFORE UPDATE ON employees FOR EACH ROW EXECUTE FUNCTION low()")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    r, plan = ws.plan()
    r = _apply(ws, plan)
    assert r.code == 3 and _report(plan)["actions"][0]["status"] == "failed"
    assert db.rows("SELECT id, email FROM employees") == [(1, "a@x.com")]


def test_citext_primary_key_chain_and_rerun(db, ws):
    db.execute("CREATE TABLE logins (email citext PRIMARY KEY, n int)")
    db.execute("INSERT INTO logins VALUES ('A@x.com', 1), ('B@x.com', 2)")
    ws.postgres_targets({"core": db}, "- table: logins\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com", "b@x.com": "c@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT email::text, n FROM logins ORDER BY n") == [("b@x.com", 1), ("c@x.com", 2)]
    r = _apply(ws, plan)
    assert r.code == 0 and {a["status"] for a in _report(plan)["actions"]} == {"already-applied"}
