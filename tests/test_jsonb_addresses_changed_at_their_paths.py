"""A jsonb column configured by path (`{name: doc, path: a.b}`): only the address at that path changes (a string
there, or each string of an array there); the rest of the document, including addresses elsewhere in it (a history,
an audit record), stays exactly as it was. Both ways of planning make the same lines; apply writes only the paths,
onto the document as it finds it, while each path still holds its planned old value."""

from __future__ import annotations

import json

import pytest
from helpers import assert_user_error, plan_lines
from test_plan_lines_made_in_sql import _same_plans

from emailsync.plan import loads
from emailsync.stores.postgres.store import PostgresStore

PROFILES = [
    "CREATE EXTENSION IF NOT EXISTS citext",
    "CREATE TABLE profiles (id int PRIMARY KEY, meta jsonb, note text)",
    """INSERT INTO profiles VALUES
       (1, '{"owner": "a@x.com", "previous": ["a@x.com", "old@x.com"], "signup": {"email": "a@x.com"},
             "team": {"reviewers": ["a@x.com", 7, "b@x.com", {"email": "a@x.com"}], "lead": "b@x.com"}, "n": 1.50}',
        'one'),
       (2, '{"owner": "nobody@x.com", "team": {"reviewers": [], "lead": "A@X.com"}}', 'case'),
       (3, '{"owner": ["a@x.com"], "team": "b@x.com"}', 'owner an array, team a string: lead is not there'),
       (4, '["a@x.com", {"owner": "a@x.com"}]', 'not an object at the top'),
       (5, '{"team": {"reviewers": {"0": "a@x.com"}}, "owner": null}', 'reviewers an object: no array there'),
       (6, NULL, 'no document'),
       (7, '{"we.ird": {"k\\"ey": "b@x.com"}, "owner": "b@x.com"}', 'awkward names')""",
]

TABLES = """\
- table: profiles
  columns:
    - {name: meta, path: owner}
    - {name: meta, path: team.reviewers}
    - {name: meta, path: team.lead}
"""

MAPPINGS = {"a@x.com": "b@x.com", "b@x.com": "c@x.com", "old@x.com": "gone@x.com"}


def _setup(db, ws, tables=TABLES, match="exact"):
    for stmt in PROFILES:
        db.execute(stmt)
    ws.postgres_targets({"core": db}, tables, match=match)
    ws.mappings(MAPPINGS)


def _docs(db):
    return dict(db.rows("SELECT id, meta FROM profiles ORDER BY id"))


def test_only_the_paths_change_and_everything_else_in_the_document_stays(db, ws, monkeypatch):
    _setup(db, ws)
    before = _docs(db)
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    monkeypatch.setattr(PostgresStore, "sql_lines", False)
    r, in_python = ws.plan()
    assert r.code == 0, r.out + r.err
    _same_plans(plan_lines(plan), plan_lines(in_python))
    actions = [loads(x) for x in plan_lines(plan)[1:]]
    assert sorted(a["key"]["id"] for a in actions) == [1, 3, 7]
    assert {a["kind"] for a in actions} == {"update"}
    assert {json.dumps(a["paths"]) for a in actions} == {'["owner", "team.reviewers", "team.lead"]'}
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    after = _docs(db)
    assert after[1] == {
        "owner": "b@x.com",
        "previous": ["a@x.com", "old@x.com"],  # not a configured path: history stays
        "signup": {"email": "a@x.com"},
        "team": {"reviewers": ["b@x.com", 7, "c@x.com", {"email": "a@x.com"}], "lead": "c@x.com"},
        "n": 1.50,
    }
    assert after[3] == {"owner": ["b@x.com"], "team": "b@x.com"}  # an array at a path: element by element
    assert after[7] == {"we.ird": {'k"ey': "b@x.com"}, "owner": "c@x.com"}
    for i in (2, 4, 5, 6):  # nothing at a path to remap (case differs, not an object, no array, no document)
        assert after[i] == before[i]
    # byte for byte: the numbers and keys of the document are PostgreSQL's own, untouched
    assert db.rows("SELECT meta->>'n' FROM profiles WHERE id = 1") == [("1.50",)]


def test_case_insensitive_match_reaches_the_paths_too(db, ws):
    _setup(db, ws, match="casefold")
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    assert _docs(db)[2] == {"owner": "nobody@x.com", "team": {"reviewers": [], "lead": "b@x.com"}}


def _statuses(plan) -> dict[int, str]:
    report = json.loads((plan.parent / "report.json").read_text())["actions"]
    ids = {loads(x)["id"]: loads(x)["key"]["id"] for x in plan_lines(plan)[1:]}
    return {ids[a["id"]]: a["status"] for a in report}


def test_a_document_changed_elsewhere_since_the_plan_gets_its_paths_written_and_keeps_the_change(db, ws):
    _setup(db, ws)
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    # The application writes documents after the plan: outside the paths (row 1), at a path (row 3), and one
    # that already holds the planned values at its paths plus something new (row 7).
    db.execute("UPDATE profiles SET meta = jsonb_set(meta, '{last_login}', '\"2026-12-06\"') WHERE id = 1")
    db.execute("UPDATE profiles SET meta = jsonb_set(meta, '{owner}', '[\"someone@x.com\"]') WHERE id = 3")
    db.execute("""UPDATE profiles SET meta = '{"we.ird": {"k\\"ey": "b@x.com"}, "owner": "c@x.com", "v": 2}'
                  WHERE id = 7""")
    r = ws.run("apply", str(plan), "--auto-approve", "--on-stale", "skip")
    assert r.code == 3, r.out + r.err  # applied, with a stale row reported
    assert _statuses(plan) == {1: "applied", 3: "stale", 7: "already-applied"}
    docs = _docs(db)
    assert docs[1] == {
        "owner": "b@x.com",
        "previous": ["a@x.com", "old@x.com"],
        "signup": {"email": "a@x.com"},
        "team": {"reviewers": ["b@x.com", 7, "c@x.com", {"email": "a@x.com"}], "lead": "c@x.com"},
        "n": 1.50,
        "last_login": "2026-12-06",  # the application's change is kept
    }
    assert docs[3] == {"owner": ["someone@x.com"], "team": "b@x.com"}  # stale: left as the application wrote it
    assert docs[7] == {"we.ird": {'k"ey': "b@x.com"}, "owner": "c@x.com", "v": 2}


def test_rollback_puts_the_paths_back_and_keeps_later_changes_elsewhere(db, ws):
    from helpers import rollback_plan

    _setup(db, ws)
    before = _docs(db)
    r, plan = ws.plan()
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    db.execute("UPDATE profiles SET meta = meta || '{\"seen\": true}' WHERE id = 1")
    back = rollback_plan(ws, plan)
    r = ws.run("apply", str(back), "--auto-approve")
    assert r.code == 0, r.out + r.err
    docs = _docs(db)
    assert docs[1] == {**before[1], "seen": True}
    assert docs[3] == before[3]


@pytest.mark.parametrize(
    ("schema", "columns", "fragments"),
    [
        (
            "CREATE TABLE profiles (id int PRIMARY KEY, meta json)",
            "[{name: meta, path: owner}]",
            ("tables[0].columns", "'meta'", "json", "convert it to jsonb"),
        ),
        (
            "CREATE TABLE profiles (id int PRIMARY KEY, meta text)",
            "[{name: meta, path: owner}]",
            ("tables[0].columns", "'meta'", "path", "jsonb columns"),
        ),
        (
            "CREATE TABLE profiles (id int PRIMARY KEY, meta jsonb, "
            "email text GENERATED ALWAYS AS (lower(meta->>'email')) STORED)",
            "[email]",
            ("tables[0].columns", "public.profiles.email", "generated column", "'meta'", "with a path"),
        ),
    ],
)
def test_paths_on_the_wrong_column_and_generated_columns_are_refused_at_plan_time(db, ws, schema, columns, fragments):
    db.execute(schema)
    ws.postgres_targets({"core": db}, f"- {{table: profiles, columns: {columns}}}\n")
    ws.mappings(MAPPINGS)
    r, plan = ws.plan()
    assert_user_error(r, *fragments)
    assert not plan.exists()


def test_generated_columns_follow_their_path_and_are_checked(db, ws):
    """Supabase's auth.identities: email is GENERATED ALWAYS AS (lower(identity_data->>'email')) STORED."""
    db.execute(
        "CREATE TABLE identities (id int PRIMARY KEY, identity_data jsonb NOT NULL, "
        "email text GENERATED ALWAYS AS (lower(identity_data->>'email')) STORED, "
        # a padded type: checked in the column's own type, not as the expression's text
        "domain char(12) GENERATED ALWAYS AS (split_part(identity_data->>'email', '@', 2)) STORED)"
    )
    db.execute(
        """INSERT INTO identities (id, identity_data) VALUES
           (1, '{"sub": "1", "email": "A@x.com", "email_verified": true}'),
           (2, '{"sub": "2", "email": "other@x.com"}')"""
    )
    ws.postgres_targets({"core": db}, "- {table: identities, columns: [{name: identity_data, path: email}]}\n")
    ws.mappings({"A@x.com": "New@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    md = (plan.parent / "plan.md").read_text()
    assert "identity_data.email" in md and "A@x.com" in md and "New@x.com" in md
    assert "email" in md and "follows" in md
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT domain FROM identities ORDER BY id") == [("x.com       ",), ("x.com       ",)]
    assert db.rows("SELECT id, identity_data, email FROM identities ORDER BY id") == [
        (1, {"sub": "1", "email": "New@x.com", "email_verified": True}, "new@x.com"),
        (2, {"sub": "2", "email": "other@x.com"}, "other@x.com"),
    ]


def test_a_unique_index_over_a_path_decides_conflicts_like_a_column(db, ws):
    db.execute("CREATE TABLE accounts (id int PRIMARY KEY, data jsonb NOT NULL)")
    db.execute("CREATE UNIQUE INDEX accounts_email ON accounts ((lower(data->>'email')))")
    db.execute(
        """INSERT INTO accounts VALUES (1, '{"email": "old@x.com", "plan": "pro"}'),
           (2, '{"email": "NEW@x.com", "plan": "free"}'), (3, '{"email": "keep@x.com"}')"""
    )
    ws.postgres_targets({"core": db}, "- {table: accounts, columns: [{name: data, path: email}]}\n")
    ws.mappings({"old@x.com": "new@x.com", "keep@x.com": "kept@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    kinds = sorted((loads(x)["key"]["id"], loads(x)["kind"]) for x in plan_lines(plan)[1:])
    assert kinds == [(1, "delete-on-conflict"), (3, "update")]
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    assert db.rows("SELECT id, data FROM accounts ORDER BY id") == [
        (2, {"email": "NEW@x.com", "plan": "free"}),
        (3, {"email": "kept@x.com"}),
    ]


def test_targets_yaml_mistakes_in_path_entries_are_named(ws):
    ws.targets(
        "version: 1\nmappings: m.json\npostgres:\n  - name: a\n    dsn: postgresql://x@localhost/db\n"
        "    tables:\n      - table: t\n        columns: [doc, {name: doc, path: a.b}]\n"
    )
    ws.mappings({}, "m.json")
    r = ws.run("plan")
    assert_user_error(r, "tables[0].columns", "listed whole and with path 'a.b'")


def test_a_generated_column_that_did_not_follow_fails_verification_and_nothing_is_kept(db, ws, monkeypatch):
    """Fault injection: apply is told the generated column's expression is upper(...), so the value PostgreSQL
    computed (lower) cannot match; the check must catch it and roll back."""
    from emailsync.stores.postgres import store

    db.execute(
        "CREATE TABLE identities (id int PRIMARY KEY, identity_data jsonb NOT NULL, "
        "email text GENERATED ALWAYS AS (lower(identity_data->>'email')) STORED)"
    )
    db.execute("""INSERT INTO identities (id, identity_data) VALUES (1, '{"email": "A@x.com"}')""")
    ws.postgres_targets({"core": db}, "- {table: identities, columns: [{name: identity_data, path: email}]}\n")
    ws.mappings({"A@x.com": "New@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    real = store.resolve_table

    def wrong(*args, **kwargs):
        meta = real(*args, **kwargs)
        meta.generated["email"] = meta.generated["email"].replace("lower", "upper")
        return meta

    monkeypatch.setattr(store, "resolve_table", wrong)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code != 0
    assert "public.identities.email is generated from identity_data" in json.dumps(
        json.loads((plan.parent / "report.json").read_text())
    )
    assert db.rows("SELECT identity_data, email FROM identities") == [({"email": "A@x.com"}, "a@x.com")]


def test_plan_md_shows_each_value_that_changes_inside_a_document(db, ws):
    _setup(db, ws, tables=TABLES + "- {table: whole, columns: [doc]}\n")
    db.execute("CREATE TABLE whole (id int PRIMARY KEY, doc jsonb)")
    db.execute("""INSERT INTO whole VALUES (1, '{"to": ["x@y.com", "a@x.com"], "by": "old@x.com", "n": 1}')""")
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    md = (plan.parent / "plan.md").read_text()
    row1 = next(line for line in md.splitlines() if line.startswith("| 1 | `id=1` | meta |"))
    assert row1.split(" | ")[-1] == (
        "`meta.owner`: `a@x.com` → `b@x.com`<br>`meta.team.lead`: `b@x.com` → `c@x.com`<br>"
        "`meta.team.reviewers[0]`: `a@x.com` → `b@x.com`<br>`meta.team.reviewers[2]`: `b@x.com` → `c@x.com` |"
    )
    assert "previous" not in row1 and "signup" not in row1  # untouched values are not shown
    row3 = next(line for line in md.splitlines() if line.startswith("| 1 | `id=3` | meta |"))
    assert "`meta.owner[0]`: `a@x.com` → `b@x.com` |" in row3
    whole = next(line for line in md.splitlines() if line.startswith("| 1 | `id=1` | doc |"))
    assert whole.endswith("`doc.by`: `old@x.com` → `gone@x.com`<br>`doc.to[1]`: `a@x.com` → `b@x.com` |")


def test_batched_apply_writes_the_same_documents(db, ws):
    _setup(db, ws)
    r, plan = ws.plan()
    db.execute("UPDATE profiles SET meta = meta || '{\"v\": 2}' WHERE id = 1")  # drift outside the paths
    r = ws.run("apply", str(plan), "--auto-approve", "--batch-size", "1")
    assert r.code == 0, r.out + r.err
    docs = _docs(db)
    assert docs[1]["v"] == 2 and docs[1]["owner"] == "b@x.com" and docs[1]["previous"] == ["a@x.com", "old@x.com"]
    assert docs[3] == {"owner": ["b@x.com"], "team": "b@x.com"}
    assert docs[7]["owner"] == "c@x.com"


def test_discover_proposes_the_paths_that_hold_addresses_with_their_evidence(db, ws):
    _setup(db, ws, tables="- {table: profiles, columns: [note]}\n")
    r = ws.run("discover", "--json")
    assert r.code == 0, r.err
    (table,) = [tb for t in json.loads(r.out)["targets"] for tb in t["tables"] if tb["table"] == "public.profiles"]
    paths = {c["path"]: (c["sampled"], c["matched"], c["proposed"]) for c in table["columns"] if c["name"] == "meta"}
    # Each path that held an address: in how many sampled documents it held a string (or strings), and an address.
    assert paths == {
        "owner": (4, 4, True),  # rows 1, 2, 3 (an array), 7
        "previous": (1, 1, True),  # the history a reviewer will want to take out: proposed, with its evidence
        "signup.email": (1, 1, True),
        "team": (1, 1, False),  # row 3's team is an address; team.lead holds more, and paths cannot nest
        "team.lead": (2, 2, True),
        "team.reviewers": (1, 1, True),
        "team.reviewers.0": (1, 1, False),  # row 5 (reviewers an object with a member "0"), inside team.reviewers
    }
    assert "we.ird" not in json.dumps(table)  # a member name with a dot: no path can spell it
    path = ws.targets((ws.path / "targets.yaml").read_text())
    r = ws.run("discover", "--write")
    assert r.code == 0, r.err
    # What it wrote plans: the proposal is a valid targets.yaml (nested paths would be refused).
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    assert "- name: meta  # new: jsonb; 4 of 4 sampled documents hold an address at this path\n" in path.read_text()


def test_a_path_part_that_looks_like_an_index_still_names_a_member_not_an_element(db, ws, monkeypatch):
    """`codes.0` is the member "0" of an object: an array's first element is not at that path."""
    db.execute("CREATE TABLE docs (id int PRIMARY KEY, d jsonb)")
    db.execute(
        """INSERT INTO docs VALUES (1, '{"codes": {"0": "a@x.com"}}'), (2, '{"codes": ["a@x.com"]}'),
           (3, '{"codes": {"0": ["a@x.com", 1]}}')"""
    )
    ws.postgres_targets({"core": db}, "- {table: docs, columns: [{name: d, path: codes.0}]}\n")
    ws.mappings({"a@x.com": "b@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    monkeypatch.setattr(PostgresStore, "sql_lines", False)
    r, in_python = ws.plan()
    _same_plans(plan_lines(plan), plan_lines(in_python))
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    assert db.rows("SELECT id, d FROM docs ORDER BY id") == [
        (1, {"codes": {"0": "b@x.com"}}),
        (2, {"codes": ["a@x.com"]}),
        (3, {"codes": {"0": ["b@x.com", 1]}}),
    ]


def test_a_document_reshaped_since_the_plan_is_stale_and_the_others_are_written(db, ws):
    """The application turned row 1's `team` into an array after the plan: its paths no longer hold their planned
    values, so it is stale; nothing fails, and the other documents are written."""
    _setup(db, ws)
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    db.execute("""UPDATE profiles SET meta = jsonb_set(meta, '{team}', '["x"]') WHERE id = 1""")
    r = ws.run("apply", str(plan), "--auto-approve", "--on-stale", "skip")
    assert r.code == 3, r.out + r.err
    assert _statuses(plan) == {1: "stale", 3: "applied", 7: "applied"}
    docs = _docs(db)
    assert docs[1]["team"] == ["x"] and docs[1]["owner"] == "a@x.com"
    assert docs[3] == {"owner": ["b@x.com"], "team": "b@x.com"}
    assert ws.run("verify", str(plan)).code == 3  # verify reads it as drifted, without a traceback


@pytest.mark.parametrize("sql_lines", [True, False])
def test_columns_named_like_the_planners_aliases_change_nothing(db, ws, monkeypatch, sql_lines):
    """A table whose columns are called x, e, m, v, t: the documents' strings are still found and remapped."""
    monkeypatch.setattr(PostgresStore, "sql_lines", sql_lines)
    db.execute("CREATE TABLE odd (id int PRIMARY KEY, x text, e text, m text, v text, t text, d jsonb, p jsonb)")
    db.execute(
        """INSERT INTO odd VALUES (1, 'x', 'e', 'm', 'v', 't', '{"to": ["a@x.com"], "n": {"k": "a@x.com"}}',
           '{"owner": "a@x.com"}')"""
    )
    ws.postgres_targets({"core": db}, "- {table: odd, columns: [d, {name: p, path: owner}]}\n")
    ws.mappings({"a@x.com": "b@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    assert db.rows("SELECT d, p FROM odd") == [({"to": ["b@x.com"], "n": {"k": "b@x.com"}}, {"owner": "b@x.com"})]


def test_discover_leaves_a_column_listed_whole_as_it_is(db, ws):
    """targets.yaml lists meta whole: proposing its paths beside it would make a file targets.yaml refuses."""
    _setup(db, ws, tables="- {table: profiles, columns: [meta]}\n")
    path = ws.path / "targets.yaml"
    r = ws.run("discover", "--write")
    assert r.code == 0, r.err
    assert "path: owner" not in path.read_text()
    r = ws.run("discover")
    assert "not proposed (core public.profiles.meta path owner): the column is listed whole already" in r.out
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err  # the file is still valid
