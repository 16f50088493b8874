"""Plan and apply against real PostgreSQL: every test asserts the tables' final contents."""

from __future__ import annotations

import json

EMP = "- table: public.employees\n  columns: [email, manager_email]\n"


def _emp(db, rows):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, manager_email text, name text NOT NULL)")
    for r in rows:
        db.execute("INSERT INTO employees VALUES (%s, %s, %s, %s)", r)


def _apply(ws, plan, *extra):
    # --force: these tests rerun plans on purpose; the ledger's replay refusal has tests of its own (test_audit).
    return ws.run("apply", str(plan), "--auto-approve", "--force", *extra)


def test_chain_is_simultaneous_substitution_ordered_for_unique_index(db, ws):
    _emp(db, [(1, "a@x.com", "b@x.com", "A"), (2, "b@x.com", "a@x.com", "B"), (3, "q@x.com", "b@x.com", "Q")])
    ws.postgres_targets({"core": db}, EMP)
    ws.mappings({"a@x.com": "b@x.com", "b@x.com": "c@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    steps = {(a["key"]["id"], a["column"]): a["step"] for a in ws.plan_json(plan)["actions"]}
    assert steps[(2, "email")] < steps[(1, "email")]  # b leaves before a arrives
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email, manager_email FROM employees ORDER BY id") == [
        (1, "b@x.com", "c@x.com"),
        (2, "c@x.com", "b@x.com"),
        (3, "q@x.com", "c@x.com"),
    ]


def test_merge_keeps_first_mapping_and_deletes_the_other_with_full_row_in_plan(db, ws):
    _emp(db, [(1, "a@x.com", None, "A"), (2, "b@x.com", None, "B")])
    ws.postgres_targets({"core": db}, EMP)
    ws.mappings([{"old": "b@x.com", "new": "m@x.com"}, {"old": "a@x.com", "new": "m@x.com"}])
    r, plan = ws.plan()
    acts = ws.plan_json(plan)["actions"]
    dels = [a for a in acts if a["kind"] == "delete-on-conflict"]
    assert len(dels) == 1 and dels[0]["key"] == {"id": 1}
    assert dels[0]["row"] == {"id": 1, "email": "a@x.com", "manager_email": None, "name": "A"}
    assert "employees_email_key" in dels[0]["reason"]
    assert "Rows to be deleted" in (plan.parent / "plan.md").read_text()
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(2, "m@x.com")]


def test_conflict_with_existing_row_deletes_old_row_like_the_old_script(db, ws):
    _emp(
        db,
        [
            (1, "old@x.com", None, "Old"),
            (2, "new@x.com", None, "New"),
            (3, "boss@x.com", "old@x.com", "Boss"),
        ],
    )
    ws.postgres_targets({"core": db}, EMP)
    ws.mappings({"old@x.com": "new@x.com"})
    r, plan = ws.plan()
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email, manager_email FROM employees ORDER BY id") == [
        (2, "new@x.com", None),
        (3, "boss@x.com", "new@x.com"),
    ]


def test_on_conflict_skip_leaves_row_and_lists_it(db, ws):
    _emp(db, [(1, "old@x.com", None, "Old"), (2, "new@x.com", None, "New")])
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n  on_conflict: skip\n")
    ws.mappings({"old@x.com": "new@x.com"})
    r, plan = ws.plan("--detailed-exitcode")
    assert r.code == 0  # nothing to do: the only change is skipped
    data = ws.plan_json(plan)
    assert data["actions"] == [] and data["skipped"][0]["key"] == {"id": 1}
    assert "Skipped because of conflicts" in (plan.parent / "plan.md").read_text()
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "old@x.com"), (2, "new@x.com")]


def test_on_conflict_fail_refuses_the_plan(db, ws):
    _emp(db, [(1, "old@x.com", None, "Old"), (2, "new@x.com", None, "New")])
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n  on_conflict: fail\n")
    ws.mappings({"old@x.com": "new@x.com"})
    r, plan = ws.plan()
    assert r.code == 1 and "on_conflict: fail" in r.err and "employees_email_key" in r.err
    assert not plan.exists()


def test_casefold_matches_any_case_and_exact_does_not(make_db, ws):
    exact_db, fold_db = make_db(), make_db()
    for d in (exact_db, fold_db):
        _emp(d, [(1, "Alice@Old.COM", None, "A"), (2, "bob@old.com", None, "B")])
    ws.mappings({"alice@old.com": "alice@new.com"})
    ws.postgres_targets({"core": exact_db}, EMP, match="exact")
    r, plan = ws.plan("--detailed-exitcode")
    assert r.code == 0 and ws.plan_json(plan)["actions"] == []
    ws.postgres_targets({"core": fold_db}, EMP, match="casefold")
    r, plan = ws.plan("--detailed-exitcode")
    assert r.code == 2
    assert _apply(ws, plan).code == 0
    assert fold_db.rows("SELECT email FROM employees ORDER BY id") == [("alice@new.com",), ("bob@old.com",)]


def test_citext_column_matches_case_insensitively_and_conflicts_in_its_terms(db, ws):
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email citext UNIQUE)")
    db.execute("INSERT INTO users VALUES (1, 'Ann@Old.com'), (2, 'BEN@new.com'), (3, 'carl@old.com')")
    ws.postgres_targets({"core": db}, "- table: users\n  columns: [email]\n")
    ws.mappings({"ann@old.com": "ann@new.com", "carl@old.com": "ben@NEW.com"})
    r, plan = ws.plan()
    kinds = {a["key"]["id"]: a["kind"] for a in ws.plan_json(plan)["actions"]}
    assert kinds == {1: "update", 3: "delete-on-conflict"}  # ben@NEW.com equals BEN@new.com under citext
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email::text FROM users ORDER BY id") == [
        (1, "ann@new.com"),
        (2, "BEN@new.com"),
    ]


def test_lower_expression_unique_index_decides_conflicts(db, ws):
    db.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL)")
    db.execute("CREATE UNIQUE INDEX accounts_email_lower ON accounts (lower(email))")
    db.execute("INSERT INTO accounts VALUES (1, 'a@old.com'), (2, 'B@New.com'), (3, 'c@old.com')")
    ws.postgres_targets({"core": db}, "- table: accounts\n  columns: [email]\n")
    ws.mappings({"a@old.com": "b@new.com", "c@old.com": "c@new.com"})
    r, plan = ws.plan()
    acts = {a["key"]["id"]: a for a in ws.plan_json(plan)["actions"]}
    assert acts[1]["kind"] == "delete-on-conflict" and "accounts_email_lower" in acts[1]["reason"]
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email FROM accounts ORDER BY id") == [(2, "B@New.com"), (3, "c@new.com")]


def test_swap_under_case_insensitive_index_is_refused(db, ws):
    db.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL)")
    db.execute("CREATE UNIQUE INDEX ON accounts (lower(email))")
    db.execute("INSERT INTO accounts VALUES (1, 'a@x.com'), (2, 'b@x.com')")
    ws.postgres_targets({"core": db}, "- table: accounts\n  columns: [email]\n")
    ws.mappings({"a@x.com": "B@x.com", "b@x.com": "A@x.com"})  # not a cycle in exact terms, a swap in lower()
    r, plan = ws.plan()
    assert r.code == 1 and "cannot be ordered" in r.err and not plan.exists()


def test_composite_and_partial_unique_indexes(db, ws):
    db.execute(
        "CREATE TABLE members (id int PRIMARY KEY, tenant int NOT NULL, email text NOT NULL, active bool NOT NULL)"
    )
    db.execute("CREATE UNIQUE INDEX members_tenant_email ON members (tenant, email) WHERE active")
    db.execute(
        "INSERT INTO members VALUES (1, 1, 'a@x.com', true), (2, 1, 'b@x.com', true), (3, 2, 'a@x.com', true),"
        " (4, 3, 'a@x.com', true), (5, 3, 'b@x.com', false)"
    )
    ws.postgres_targets({"core": db}, "- table: members\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    r, plan = ws.plan()
    kinds = {a["key"]["id"]: a["kind"] for a in ws.plan_json(plan)["actions"]}
    # tenant 1 already has an active b; tenant 2 has none; in tenant 3 the b row is inactive (outside the index)
    assert kinds == {1: "delete-on-conflict", 3: "update", 4: "update"}
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, tenant, email FROM members ORDER BY id") == [
        (2, 1, "b@x.com"),
        (3, 2, "b@x.com"),
        (4, 3, "b@x.com"),
        (5, 3, "b@x.com"),
    ]


def test_email_as_primary_key_with_chain(db, ws):
    db.execute("CREATE TABLE settings (email text PRIMARY KEY, theme text)")
    db.execute("INSERT INTO settings VALUES ('a@x.com', 'dark'), ('b@x.com', 'light'), ('n@x.com', 'blue')")
    ws.postgres_targets({"core": db}, "- table: settings\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com", "b@x.com": "c@x.com", "z@x.com": "n@x.com"})
    r, plan = ws.plan()
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT email, theme FROM settings ORDER BY email") == [
        ("b@x.com", "dark"),
        ("c@x.com", "light"),
        ("n@x.com", "blue"),
    ]
    r = _apply(ws, plan)  # re-run: found under the new keys, nothing changes
    assert r.code == 0 and "already-applied" in r.out
    assert db.rows("SELECT count(*) FROM settings") == [(3,)]


def test_arrays_and_jsonb(db, ws):
    db.execute("CREATE TABLE projects (id int PRIMARY KEY, members text[], watchers varchar(100)[], payload jsonb)")
    db.execute(
        """INSERT INTO projects VALUES
        (1, ARRAY['z@x.com', 'a@x.com', NULL, 'b@x.com'], ARRAY['a@x.com'],
         '{"actor": "a@x.com", "a@x.com": 1, "nested": {"to": ["b@x.com", "k@x.com"], "n": 1.50}}'),
        (2, ARRAY['k@x.com'], NULL, '"b@x.com"'),
        (3, NULL, ARRAY['k@x.com'], '{"n": 2}')"""
    )
    ws.postgres_targets({"core": db}, "- table: projects\n  columns: [members, watchers, payload]\n")
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com"})
    r, plan = ws.plan()
    kinds = sorted((a["key"]["id"], a["column"], a["kind"]) for a in ws.plan_json(plan)["actions"])
    assert kinds == [
        (1, "members", "array-replace"),
        (1, "payload", "update"),
        (1, "watchers", "array-replace"),
        (2, "payload", "update"),
    ]
    assert _apply(ws, plan).code == 0, r.err
    rows = {r[0]: r[1:] for r in db.rows("SELECT id, members, watchers, payload FROM projects")}
    assert rows[1][0] == ["z@x.com", "a2@x.com", None, "b2@x.com"]
    assert rows[1][1] == ["a2@x.com"]
    assert rows[1][2] == {
        "actor": "a2@x.com",
        "a@x.com": 1,
        "nested": {"to": ["b2@x.com", "k@x.com"], "n": 1.50},
    }
    assert rows[2][1:] == (None, "b2@x.com")
    assert rows[3] == (None, ["k@x.com"], {"n": 2})


def _fk_schema(db, on_update: str) -> None:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE NOT NULL)")
    db.execute(f"CREATE TABLE leave (id int PRIMARY KEY, email text NOT NULL REFERENCES employees(email) {on_update})")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com'), (2, 'b@x.com')")
    db.execute("INSERT INTO leave VALUES (10, 'a@x.com'), (11, 'a@x.com'), (12, 'b@x.com')")


def test_foreign_key_no_action_parent_and_child_change_together(db, ws):
    _fk_schema(db, "")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n- table: leave\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a2@x.com"), (2, "b@x.com")]
    assert db.rows("SELECT id, email FROM leave ORDER BY id") == [
        (10, "a2@x.com"),
        (11, "a2@x.com"),
        (12, "b@x.com"),
    ]


def test_foreign_key_no_action_with_child_not_configured_is_refused(db, ws):
    _fk_schema(db, "")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert r.code == 1 and "leave_email_fkey" in r.err and "add 'email' of leave" in r.err
    assert not plan.exists()


def test_foreign_key_on_update_cascade_updates_parent_only(db, ws):
    _fk_schema(db, "ON UPDATE CASCADE")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0 and "ON UPDATE CASCADE" in r.err
    assert [a["table"] for a in ws.plan_json(plan)["actions"]] == ["public.employees"]
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email FROM leave ORDER BY id") == [
        (10, "a2@x.com"),
        (11, "a2@x.com"),
        (12, "b@x.com"),
    ]


def test_foreign_key_on_delete_conflict_moves_children_to_the_survivor(db, ws):
    _fk_schema(db, "")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n- table: leave\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com"})  # a's row conflicts with b and is deleted; a's leave moves to b
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT id, email FROM employees") == [(2, "b@x.com")]
    assert db.rows("SELECT id, email FROM leave ORDER BY id") == [
        (10, "b@x.com"),
        (11, "b@x.com"),
        (12, "b@x.com"),
    ]


def test_delete_refused_when_other_rows_reference_the_row(db, ws):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE NOT NULL)")
    db.execute("CREATE TABLE reviews (id int PRIMARY KEY, employee_id int REFERENCES employees(id) ON DELETE CASCADE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com'), (2, 'b@x.com')")
    db.execute("INSERT INTO reviews VALUES (100, 1)")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@x.com": "b@x.com"})
    r, plan = ws.plan()
    assert r.code == 1 and "reviews_employee_id_fkey" in r.err and "on_conflict: skip" in r.err
    assert db.rows("SELECT count(*) FROM reviews") == [(1,)]


def test_stale_row_aborts_and_changes_nothing(db, ws):
    _emp(db, [(1, "a@x.com", None, "A"), (2, "b@x.com", None, "B")])
    ws.postgres_targets({"core": db}, EMP)
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com"})
    r, plan = ws.plan()
    db.execute("UPDATE employees SET email = 'someone@else.com' WHERE id = 2")  # another writer
    r = _apply(ws, plan)
    assert r.code == 3 and "stale" in r.out
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@x.com"), (2, "someone@else.com")]
    report = json.loads((plan.parent / "report.json").read_text())
    by_status = {a["status"] for a in report["actions"]}
    assert by_status == {"stale", "not-applied"}
    stale = [a for a in report["actions"] if a["status"] == "stale"][0]
    assert "someone@else.com" in stale["detail"]


def test_stale_row_skip_applies_the_rest_and_keeps_the_other_writers_value(db, ws):
    _emp(
        db,
        [
            (1, "a@x.com", None, "A"),
            (2, "b@x.com", None, "B"),
            (3, "old@x.com", None, "O"),
            (4, "n@x.com", None, "N"),
        ],
    )
    ws.postgres_targets({"core": db}, EMP)
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com", "old@x.com": "n@x.com"})
    r, plan = ws.plan()
    db.execute("UPDATE employees SET email = 'someone@else.com' WHERE id = 2")
    db.execute("UPDATE employees SET name = 'renamed' WHERE id = 3")  # the row to delete changed: keep it
    r = _apply(ws, plan, "--on-stale", "skip")
    assert r.code == 3
    assert db.rows("SELECT id, email, name FROM employees ORDER BY id") == [
        (1, "a2@x.com", "A"),
        (2, "someone@else.com", "B"),
        (3, "old@x.com", "renamed"),
        (4, "n@x.com", "N"),
    ]
    r = _apply(ws, plan, "--on-stale", "skip")  # again: applied ones are recognised, stale ones still stale
    report = json.loads((plan.parent / "report.json").read_text())
    assert sorted(a["status"] for a in report["actions"]) == ["already-applied", "stale", "stale"]


def test_verification_mismatch_rolls_back_unless_column_ignored(db, ws):
    _emp(db, [(1, "a@x.com", None, "A")])
    db.execute("ALTER TABLE employees ADD COLUMN updated int NOT NULL DEFAULT 0")
    db.execute(
        "CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated := OLD.updated + 1; "
        "RETURN NEW; END $$"
    )
    db.execute("CREATE TRIGGER t_bump BEFORE UPDATE ON employees FOR EACH ROW EXECUTE FUNCTION bump()")
    ws.postgres_targets({"core": db}, EMP)
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    r = _apply(ws, plan)
    assert r.code == 3
    report = json.loads((plan.parent / "report.json").read_text())
    assert report["actions"][0]["status"] == "failed" and "updated" in report["actions"][0]["detail"]
    assert db.rows("SELECT email, updated FROM employees") == [("a@x.com", 0)]
    ws.postgres_targets({"core": db}, EMP + "  verify_ignore: [updated]\n")
    r, plan = ws.plan()
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT email, updated FROM employees") == [("a2@x.com", 1)]


def test_two_databases_one_transaction_each(make_db, ws):
    core, leave = make_db(), make_db()
    _emp(core, [(1, "a@x.com", None, "A")])
    leave.execute("CREATE TABLE requests (id int PRIMARY KEY, email text)")
    leave.execute("INSERT INTO requests VALUES (1, 'a@x.com'), (2, 'a@x.com'), (3, 'c@x.com')")
    ws.targets(
        "version: 1\nmappings: m.csv\npostgres:\n"
        f"  - name: core\n    dsn: '{core.dsn}'\n    tables: [{{table: employees, columns: [email]}}]\n"
        f"  - name: leave\n    dsn: '{leave.dsn}'\n    tables: [{{table: requests, columns: [email]}}]\n"
    )
    ws.mappings("old_email,new_email\na@x.com,a2@x.com\n", name="m.csv")
    r, plan = ws.plan("--detailed-exitcode")
    assert r.code == 2
    assert _apply(ws, plan).code == 0
    assert core.rows("SELECT email FROM employees") == [("a2@x.com",)]
    assert leave.rows("SELECT id, email FROM requests ORDER BY id") == [
        (1, "a2@x.com"),
        (2, "a2@x.com"),
        (3, "c@x.com"),
    ]


def test_table_without_primary_key_uses_configured_key(db, ws):
    db.execute("CREATE TABLE audit (event_id int NOT NULL, actor text)")
    db.execute("INSERT INTO audit VALUES (1, 'a@x.com'), (2, 'b@x.com')")
    ws.postgres_targets({"core": db}, "- table: audit\n  columns: [actor]\n  key: [event_id]\n")
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT event_id, actor FROM audit ORDER BY 1") == [(1, "a2@x.com"), (2, "b@x.com")]


def test_non_unique_configured_key_is_refused(db, ws):
    db.execute("CREATE TABLE audit (event_id int NOT NULL, actor text)")
    db.execute("INSERT INTO audit VALUES (1, 'a@x.com'), (1, 'b@x.com')")
    ws.postgres_targets({"core": db}, "- table: audit\n  columns: [actor]\n  key: [event_id]\n")
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert r.code == 1 and "does not identify rows uniquely" in r.err


def test_plan_writes_nothing_to_the_database(db, ws):
    _emp(db, [(1, "a@x.com", None, "A")])
    ws.postgres_targets({"core": db}, EMP)
    ws.mappings({"a@x.com": "a2@x.com"})
    before = db.rows("SELECT xmin::text, * FROM employees")
    r, plan = ws.plan()
    assert r.code == 0 and plan.exists()
    assert db.rows("SELECT xmin::text, * FROM employees") == before


def test_char_and_domain_columns_use_the_columns_own_type(db, ws):
    db.execute("CREATE DOMAIN corp_email AS text CHECK (VALUE LIKE '%@%')")
    db.execute("CREATE TABLE legacy (id int PRIMARY KEY, code char(16), contact corp_email)")
    db.execute("INSERT INTO legacy VALUES (1, 'a@x.com', 'a@x.com')")
    ws.postgres_targets({"core": db}, "- table: legacy\n  columns: [code, contact]\n")
    ws.mappings({"a@x.com": "ab@x.com"})
    r, plan = ws.plan()
    acts = {a["column"]: a for a in ws.plan_json(plan)["actions"]}
    assert acts["code"]["old"] == "a@x.com".ljust(16) and acts["code"]["new"] == "ab@x.com".ljust(16)
    assert _apply(ws, plan).code == 0
    assert db.rows("SELECT code, contact FROM legacy") == [("ab@x.com".ljust(16), "ab@x.com")]


def test_new_email_too_long_for_the_column_is_a_plan_error(db, ws):
    db.execute("CREATE TABLE short (id int PRIMARY KEY, email varchar(12))")
    db.execute("INSERT INTO short VALUES (1, 'a@x.com')")
    ws.postgres_targets({"core": db}, "- table: short\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a.very.long.address@x.com"})
    r, plan = ws.plan()
    assert r.code == 1 and "character varying(12)" in r.err and "widen the column" in r.err
    assert not plan.exists() and "Traceback" not in r.err


def test_lock_timeout_from_targets_fails_cleanly_while_another_transaction_holds_the_row(db, ws):
    _emp(db, [(1, "a@x.com", None, "A"), (2, "b@x.com", None, "B")])
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com"})
    r, plan = ws.plan()
    text = ws.path.joinpath("targets.yaml").read_text().replace("    tables:", "    lock_timeout: 300ms\n    tables:")
    ws.targets(text)
    other = db.connect()
    other.autocommit = False
    other.execute("SELECT * FROM employees WHERE id = 2 FOR UPDATE")  # another writer holds row 2
    try:
        r = _apply(ws, plan)
    finally:
        other.rollback()
        other.close()
    assert r.code == 3 and "lock timeout" in r.out
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@x.com"), (2, "b@x.com")]
    assert _apply(ws, plan).code == 0  # once the other writer is gone, the same plan applies
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a2@x.com"), (2, "b2@x.com")]
