"""The fast paths of the speed work (issue 7) keep the exact behaviour of the slow ones: pooled sessions that used
temporary tables, array key columns, over-long integers in plans. Each test failed on a first version of that work."""

from __future__ import annotations

import json

from helpers import assert_user_error, plan_lines, write_plan_lines

from emailsync.stores import registry


def _apply(ws, plan, *extra):
    return ws.run("apply", str(plan), "--auto-approve", "--force", *extra)


def _session_used_before(monkeypatch, *modules):
    """Connections as a session pooler (PgBouncer's default pool_mode=session, RDS Proxy, pgpool) hands them out: a
    server session an earlier client has used, here one that accessed a temporary table (as `emailsync plan`'s
    _es_map does) and dropped it again. DISCARD ALL, the pooler's reset, keeps the session's local buffers."""
    for mod in modules:
        real = mod.connect

        def connect(target, real=real):
            conn = real(target)
            conn.execute("CREATE TEMP TABLE earlier_client (x int)")
            conn.execute("INSERT INTO earlier_client VALUES (1)")
            conn.execute("DROP TABLE earlier_client")
            conn.commit()
            return conn

        monkeypatch.setattr(mod, "connect", connect)


# --- the PostgreSQL applier: temp_buffers via set_config ----------------------------------------------------


def _two_employees_planned(db, ws):
    """Two employees, both renamed, planned: returns the plan's path."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com'), (2, 'b@x.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com", "b@x.com": "b2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


def test_apply_on_a_session_that_already_used_temporary_tables_writes_the_plan(db, ws):
    """Found in review: _working_memory set temp_buffers, which PostgreSQL refuses ("cannot be changed after any
    temporary tables have been accessed in the session") once the session has touched a temporary table: every apply
    through a session pooler whose server session ran a plan (or anything with a temp table) failed and rolled back."""
    plan = _two_employees_planned(db, ws)
    _session_used_before(ws.monkeypatch, registry)
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a2@x.com"), (2, "b2@x.com")]
    report = json.loads((plan.parent / "report.json").read_text())
    assert [a["status"] for a in report["actions"]] == ["applied", "applied"]


def test_verify_on_a_session_that_already_used_temporary_tables_reports_the_states(db, ws):
    """Found in review: the same set_config in classify_only: `emailsync verify` fails instead of reporting "before"."""
    plan = _two_employees_planned(db, ws)
    _session_used_before(ws.monkeypatch, registry)  # verify connects through the same seam as apply
    r = ws.run("verify", str(plan), "--json")
    assert r.code == 3, r.out + r.err
    out = json.loads(r.out)
    assert out["counts"] == {"after": 0, "before": 2, "drifted": 0}, out
    # verify only reads: the rows are as they were
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@x.com"), (2, "b@x.com")]


# --- the PostgreSQL catalog and planner: native key reads ---------------------------------------------------


def test_plan_of_a_table_keyed_by_a_text_array_keeps_the_key_as_to_jsonb_renders_it(db, ws):
    """Found in review: a text[] key column counted as "native" (native_cast gives text[]), so the scan's row identity
    was a list (or a tuple holding one) and _read_table's dict lookup raised TypeError: unhashable type: 'list' - a
    traceback where the plan used to be made, with the key as to_jsonb renders it."""
    db.execute("CREATE TABLE tagged (tags text[] PRIMARY KEY, email text)")
    db.execute("INSERT INTO tagged VALUES ('{a,b}', 'a@x.com'), ('{c}', 'c@x.com'), ('{d}', 'keep@x.com')")
    ws.postgres_targets({"core": db}, "- table: tagged\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com", "c@x.com": "c2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    acts = ws.plan_json(plan)["actions"]
    assert sorted((a["key"]["tags"], a["old"], a["new"]) for a in acts) == [
        (["a", "b"], "a@x.com", "a2@x.com"),
        (["c"], "c@x.com", "c2@x.com"),
    ]


def test_plan_of_a_composite_key_with_a_text_array_column(db, ws):
    """Found in review: the same with a composite key (org int, tags text[]): the identity tuple holds a list."""
    db.execute("CREATE TABLE tagged (org int, tags text[], email text, PRIMARY KEY (org, tags))")
    db.execute("INSERT INTO tagged VALUES (1, '{a}', 'a@x.com'), (2, '{a}', 'a@x.com')")
    ws.postgres_targets({"core": db}, "- table: tagged\n  columns: [email]\n")
    ws.mappings({"a@x.com": "a2@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    acts = ws.plan_json(plan)["actions"]
    assert sorted((a["key"]["org"], a["key"]["tags"]) for a in acts) == [(1, ["a"]), (2, ["a"])]


# --- planfile.py: reading a plan's lines -------------------------------------------------------------------------


def _resealed(path, edit):
    """The plan file with its body lines changed by `edit`, and its body_sha256 and digest made to match again, as a
    careless tool (not a person editing by hand) would leave it: the line checks, not the digest, must refuse it."""
    lines = plan_lines(path)
    write_plan_lines(path, [lines[0], *edit(lines[1:])], reseal=True)


def _one_update(ws, db):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com'), (2, 'b@o.com')")
    ws.postgres_targets({"core": db}, "- {table: employees, columns: [email]}")
    ws.mappings({"a@o.com": "a@n.com", "b@o.com": "b@n.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


def test_plan_line_with_a_duplicate_key_is_refused_by_line(ws, db):
    """json keeps the last of two equal keys, so a line saying "new" twice would apply a value the reviewer may not
    have seen: a line that is not exactly as emailsync writes it is refused, naming the line and the key."""
    plan = _one_update(ws, db)
    _resealed(plan, lambda body: [body[0][:-1] + ',"new":"evil@x.com"}', *body[1:]])
    assert_user_error(
        ws.run("apply", str(plan), "--auto-approve"), "line 2: key 'new' appears more than once", "edited by hand"
    )
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@o.com"), (2, "b@o.com")]


def test_plan_line_with_an_over_long_number_is_refused_by_line(ws, db):
    """Python refuses to convert an integer of more than 4300 digits with a plain ValueError: one clear message
    naming the line, not a traceback."""
    plan = _one_update(ws, db)
    _resealed(plan, lambda body: [body[0].replace('"step":1', '"step":' + "1" * 5000), *body[1:]])
    assert_user_error(ws.run("show", str(plan)), "line 2", "edited by hand")


def test_plan_lines_out_of_order_or_repeated_are_refused(ws, db):
    """The body is sorted by section and id, which diff's merge walk relies on; a repeated line would apply twice."""
    plan = _one_update(ws, db)
    original = plan.read_bytes()
    _resealed(plan, lambda body: [body[0], body[0], *body[1:]])
    assert_user_error(ws.run("show", str(plan)), "line 3", "out of order or repeated")
    plan.write_bytes(original)
    _resealed(plan, lambda body: [body[1], body[0], *body[2:]])
    assert_user_error(ws.run("apply", str(plan), "--auto-approve"), "line 3", "out of order or repeated")
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@o.com"), (2, "b@o.com")]


def test_plan_whose_counts_disagree_with_its_lines_is_refused(ws, db):
    """A line removed (and the hashes made to match) leaves the header's counts wrong: refused before any write."""
    plan = _one_update(ws, db)
    _resealed(plan, lambda body: body[1:])
    assert_user_error(ws.run("apply", str(plan), "--auto-approve"), "counts do not match")
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@o.com"), (2, "b@o.com")]
