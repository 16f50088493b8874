"""Tables whose changes need no decision in Python get their plan lines from PostgreSQL (stores/postgres/lines.py).
Those lines must be the very bytes the Python path writes for the same rows: the same ids, keys, steps, values and
order, on the awkward values (quotes, backslashes, control characters, non-ASCII, nested documents, small decimals,
NULL array elements, composite and text keys), and the same errors when a new email does not fit."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from helpers import assert_user_error, plan_lines, table_dump

from emailsync.plan import SKIPPED_KIND, loads
from emailsync.stores.postgres import lines, planner
from emailsync.stores.postgres.store import PostgresStore

SCHEMA = [
    "CREATE EXTENSION IF NOT EXISTS citext",
    # a unique column with a chain: b moves away before a arrives, so a→b runs a level later everywhere
    "CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE)",
    "INSERT INTO users VALUES (1, 'a@x.com'), (2, 'b@x.com')",
    """CREATE TABLE events (id bigint PRIMARY KEY, actor text, note varchar(40), emails text[], doc jsonb,
       tags citext[])""",
    """INSERT INTO events VALUES
       (1, 'a@x.com', 'b@x.com', ARRAY['a@x.com', NULL, 'zoë@x.com', 'a@x.com'],
        '{"by": "a@x.com", "n": 1.50, "tiny": 0.00000015, "zero": 0.0000000, "neg": -2.5e-9, "big": 1e30,
          "deep": {"list": ["b@x.com", {"q": "say \\"hi\\"\\\\ \\t\\u0001"}, [true, false, null]],
                   "a@x.com": "key stays", "émoji 🙂": "zoë@x.com"}, "": "", "z": []}', ARRAY['A@X.com']::citext[]),
       (2, 'nobody@x.com', NULL, ARRAY['x@y.com'], '["a@x.com", 0.1, {"b": "a@x.com"}]', NULL),
       (3, 'zoë@x.com', 'A@x.com', '{}', '"b@x.com"', ARRAY['zoë@x.com', 'B@X.COM']::citext[]),
       (-4, 'b@x.com', 'zoë@x.com', ARRAY['c@x.com'], '{"x": {"y": {}}, "w": "a@x.com"}', '{}')""",
    # a text key that needs escaping, and a composite key whose column names need quoting
    'CREATE TABLE "we""ird" (k text PRIMARY KEY, "E-mail" text)',
    """INSERT INTO "we""ird" VALUES ('k"1\\', 'a@x.com'), ('ü', 'b@x.com'), ('plain', 'zoë@x.com')""",
    'CREATE TABLE pairs ("Key A" int, b text, email text, PRIMARY KEY ("Key A", b))',
    "INSERT INTO pairs VALUES (1, 'x', 'a@x.com'), (1, 'y', 'b@x.com'), (2, 'x', 'ZOË@x.com')",
]

TABLES = """\
- {table: users, columns: [email]}
- {table: events, columns: [actor, note, emails, doc, tags]}
- {table: '"we""ird"', columns: [E-mail]}
- {table: pairs, columns: [email]}
"""

MAPPINGS = {"a@x.com": "b@x.com", "b@x.com": "c@x.com", "zoë@x.com": "zoé@x.com", "ghost@x.com": "g@x.com"}


def _plan_both_ways(db, ws, monkeypatch, tables=TABLES, match="exact"):
    """The plan made with PostgreSQL's lines, then with every table read into Python: (lines, lines, fills)."""
    ws.postgres_targets({"core": db}, tables, match=match)
    ws.mappings(MAPPINGS)
    fills = []
    real = lines.TableLines._fill

    def spy(self, kind, cols, write):  # the real method, counted; a section begun ahead of the levels is not
        if threading.current_thread().name != "emailsync-prefetch":
            fills.append((self.meta.display, kind, tuple(cols)))
        return real(self, kind, cols, write)

    monkeypatch.setattr(lines.TableLines, "_fill", spy)
    r, in_sql = ws.plan()
    assert r.code == 0, r.out + r.err
    monkeypatch.setattr(PostgresStore, "sql_lines", False)
    r, in_python = ws.plan()
    assert r.code == 0, r.out + r.err
    monkeypatch.setattr(PostgresStore, "sql_lines", True)
    return plan_lines(in_sql), plan_lines(in_python), fills, in_sql


def _same_plans(a: list[str], b: list[str]) -> None:
    ha, hb = loads(a[0]), loads(b[0])
    for h in (ha, hb):
        for k in ("created_at", "digest"):
            h.pop(k)
        h["summary"] = sorted(h["summary"], key=lambda s: (s["table"], s["column"], s["kind"]))
    assert ha == hb
    assert a[1:] == b[1:]


def _same_as_without_helpers(db, ws, monkeypatch, plan) -> None:
    """The plan is the same bytes when made by planning's connection alone, and no connection is left behind."""
    monkeypatch.setattr(PostgresStore, "plan_helpers", False)
    r, alone = ws.plan()
    assert r.code == 0, r.out + r.err
    _same_plans(plan_lines(plan), plan_lines(alone))
    assert db.rows("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'emailsync'") == [(0,)]


def test_lines_from_postgresql_are_the_python_paths_bytes(db, ws, monkeypatch):
    for stmt in SCHEMA:
        db.execute(stmt)
    a, b, fills, plan = _plan_both_ways(db, ws, monkeypatch)
    # One COPY per (table, kind); users has a unique index, so only its rows that meet another row are read into
    # Python (here: a arrives where b leaves), and PostgreSQL merges their lines into the section. (The costliest
    # section may also have been begun while users was read, assuming every level 0: the chain gave levels, so that
    # was dropped; not counted here.)
    assert sorted(fills) == [
        ('public."we""ird"', "update", ("E-mail",)),
        ("public.events", "array-replace", ("emails", "tags")),
        ("public.events", "update", ("actor", "note", "doc")),
        ("public.pairs", "update", ("email",)),
        ("public.users", "update", ("email",)),
    ]
    _same_plans(a, b)
    body = [loads(x) for x in a[1:]]
    # the chain orders a→b after b→c, in the tables PostgreSQL wrote too
    steps = {(x["table"], x["column"], x["key"].get("id")): x["step"] for x in body}
    assert steps[("public.events", "actor", 1)] == 4  # a→b: one level later
    assert steps[("public.events", "actor", -4)] == 1  # b→c
    doc = next(x for x in body if x["column"] == "doc" and x["key"] == {"id": 1})
    assert doc["new"]["deep"] == {
        "list": ["c@x.com", {"q": 'say "hi"\\ \t\u0001'}, [True, False, None]],
        "a@x.com": "key stays",
        "émoji 🙂": "zoé@x.com",
    }
    assert '"tiny":1.5E-7' in next(x for x in a if '"column":"doc"' in x and '"key":{"id":1}' in x)
    # and the plan applies: every row as the mapping says
    r = ws.run("apply", str(plan), "--auto-approve", "--force")
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, actor, note, emails, tags::text[] FROM events ORDER BY id") == [
        (-4, "c@x.com", "zoé@x.com", ["c@x.com"], []),
        (1, "b@x.com", "c@x.com", ["b@x.com", None, "zoé@x.com", "b@x.com"], ["b@x.com"]),  # citext: any case
        (2, "nobody@x.com", None, ["x@y.com"], None),
        (3, "zoé@x.com", "A@x.com", [], ["zoé@x.com", "c@x.com"]),
    ]
    assert db.rows("SELECT doc FROM events WHERE id = 2") == [(["b@x.com", 0.1, {"b": "b@x.com"}],)]
    assert db.rows('SELECT k, "E-mail" FROM "we""ird" ORDER BY k') == [
        ('k"1\\', "b@x.com"),
        ("plain", "zoé@x.com"),
        ("ü", "c@x.com"),
    ]


def test_case_insensitive_columns_and_casefold_match_the_python_path(db, ws, monkeypatch):
    for stmt in SCHEMA:
        db.execute(stmt)
    a, b, fills, plan = _plan_both_ways(db, ws, monkeypatch, match="casefold")
    assert fills
    _same_plans(a, b)
    r = ws.run("apply", str(plan), "--auto-approve", "--force")
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT id, tags::text[], note FROM events ORDER BY id") == [
        (-4, [], "zoé@x.com"),
        (1, ["b@x.com"], "c@x.com"),
        (2, None, None),
        (3, ["zoé@x.com", "c@x.com"], "b@x.com"),
    ]
    assert db.rows("SELECT email FROM pairs ORDER BY 1") == [("b@x.com",), ("c@x.com",), ("zoé@x.com",)]


@pytest.mark.parametrize(
    ("schema", "fragments"),
    [
        (
            ["CREATE TABLE t (id int PRIMARY KEY, e varchar(7))", "INSERT INTO t VALUES (1, 'a@x.com')"],
            ["public.t.e (character varying(7)) cannot hold a new email", "'c@x.com.au'", "cut short"],
        ),
        (
            ["CREATE TABLE t (id int PRIMARY KEY, e varchar(7)[])", "INSERT INTO t VALUES (1, ARRAY['a@x.com'])"],
            ["public.t.e (character varying(7)[]) cannot hold a new email", "cut short"],
        ),
        (
            ["CREATE TABLE t (id int PRIMARY KEY, e text[])", "INSERT INTO t VALUES (1, '{{a@x.com,b},{c,d}}')"],
            ['public.t.e holds a 2-dimensional array at key {"id":1}'],
        ),
        (
            [
                "CREATE DOMAIN strict_email AS text CHECK (VALUE NOT LIKE 'c@%')",
                "CREATE TABLE t (id int PRIMARY KEY, x text, e strict_email)",
                "INSERT INTO t VALUES (1, 'zz', 'b@x.com')",
            ],
            ["public.t.e (strict_email) cannot hold a new email", "violates check constraint"],
        ),
        (
            [  # a unique column cut short and a domain refusing the other's new email: the cut is named as such
                "CREATE DOMAIN strict_email AS text CHECK (VALUE NOT LIKE 'c@%')",
                "CREATE TABLE t (id int PRIMARY KEY, e varchar(7) UNIQUE, x strict_email)",
                "INSERT INTO t VALUES (1, 'a@x.com', 'b@x.com')",
            ],
            ["public.t.e (character varying(7)) cannot hold a new email", "'c@x.com.au'", "cut short"],
        ),
    ],
)
def test_a_new_email_that_does_not_fit_is_refused_alike(db, ws, monkeypatch, schema, fragments):
    for stmt in schema:
        db.execute(stmt)
    ws.postgres_targets(
        {"core": db}, "- {table: t, columns: [e, x]}" if " x " in schema[-2] else "- {table: t, columns: [e]}"
    )
    ws.mappings({"a@x.com": "c@x.com.au", "b@x.com": "c@x.com"})
    before = table_dump(db, "t")
    messages = []
    for in_sql in (True, False):
        monkeypatch.setattr(PostgresStore, "sql_lines", in_sql)
        r, out = ws.plan()
        messages.append(assert_user_error(r, *fragments))
        assert not out.exists()
    assert messages[0] == messages[1]
    assert table_dump(db, "t") == before


UNIQUE_SCHEMA = [
    "CREATE EXTENSION IF NOT EXISTS citext",
    # keyed by email, with a row already at a new address (a merge), a chain and plain moves
    "CREATE TABLE settings (email text PRIMARY KEY, theme text, n numeric)",
    """INSERT INTO settings VALUES ('a@x.com', 'dark', 1.50), ('b@x.com', 'light', 0.00000015),
       ('m1@x.com', 'm1', NULL), ('m2@x.com', 'm2', 2), ('merged@x.com', 'here', 3), ('p1@x.com', 'p', 4),
       ('p2@x.com', 'p', 5)""",
    # a unique lower() index, a partial unique index and a composite one; a row changing a non-unique column only
    """CREATE TABLE accounts (id int PRIMARY KEY, email text, backup text, tenant int, primary_email citext,
       active bool)""",
    "CREATE UNIQUE INDEX ON accounts (lower(email))",
    "CREATE UNIQUE INDEX ON accounts (tenant, backup)",
    "CREATE UNIQUE INDEX ON accounts (primary_email) WHERE active",
    """INSERT INTO accounts VALUES
       (1, 'A@x.com', 'p1@x.com', 1, 'm1@x.com', true), (2, 'B@x.com', 'p2@x.com', 1, 'M2@x.com', true),
       (3, 'merged@x.com', 'zz@x.com', 1, 'merged@x.com', false), (4, 'q@x.com', 'm1@x.com', 2, 'q@x.com', true),
       (5, 'r@x.com', 'b@x.com', 1, 'r@x.com', true), (6, 'p1@x.com', 'r@x.com', 3, 'p1@x.com', true)""",
]

UNIQUE_MAPPINGS = {
    "a@x.com": "b@x.com",
    "b@x.com": "c@x.com",
    "m1@x.com": "merged@x.com",
    "m2@x.com": "merged@x.com",
    "p1@x.com": "p1new@x.com",
    "p2@x.com": "p2new@x.com",
}


@pytest.mark.parametrize("on_conflict", ["delete", "skip", "fail"])
def test_tables_with_unique_indexes_decide_only_their_troubled_rows_in_python(db, ws, monkeypatch, on_conflict):
    for stmt in UNIQUE_SCHEMA:
        db.execute(stmt)
    tables = (
        f"- {{table: settings, columns: [email], on_conflict: {on_conflict}}}\n"
        f"- {{table: accounts, columns: [email, backup, primary_email], on_conflict: {on_conflict}}}\n"
    )
    ws.postgres_targets({"core": db}, tables)
    ws.mappings(UNIQUE_MAPPINGS)
    before = table_dump(db, "settings", "accounts")
    read = []
    real = planner.PostgresPlanner._read_table

    def spy(self, conn, meta, bar, troubled=False):  # the real method, its rows counted
        rows = real(self, conn, meta, bar, troubled)
        read.append((meta.display, troubled, sorted(r.keystr for r in rows)))
        return rows

    monkeypatch.setattr(planner.PostgresPlanner, "_read_table", spy)
    outcomes = []
    for in_sql in (True, False):
        monkeypatch.setattr(PostgresStore, "sql_lines", in_sql)
        r, plan = ws.plan()
        outcomes.append((r.code, plan_lines(plan) if r.code == 0 else r.err))
    monkeypatch.setattr(PostgresStore, "sql_lines", True)
    # With PostgreSQL's lines, Python read only the rows that meet another: the chain, the merge, the row already
    # there (p1's and p2's plain moves, and rows changing nowhere near another, stay in the database).
    analysed = {table: keys for table, troubled, keys in read[:2]}
    assert all(troubled for _, troubled, _ in read[:2])
    assert analysed["public.settings"] == [
        '{"email":"a@x.com"}',
        '{"email":"b@x.com"}',
        '{"email":"m1@x.com"}',
        '{"email":"m2@x.com"}',
    ]
    assert len(analysed["public.accounts"]) < len(read[3][2])
    if on_conflict == "fail":
        assert outcomes[0][0] == outcomes[1][0] == 1
        assert outcomes[0][1] == outcomes[1][1]
        assert "on_conflict: fail" in outcomes[0][1]
        assert table_dump(db, "settings", "accounts") == before
        return
    _same_plans(outcomes[0][1], outcomes[1][1])
    body = [loads(x) for x in outcomes[0][1][1:]]
    kinds = {x["kind"] for x in body}
    assert ("delete-on-conflict" in kinds) == (on_conflict == "delete")
    # every settings row that moves carries its whole row, whichever way its line was made
    assert all(x.get("row") for x in body if x["table"] == "public.settings" and x["kind"] != SKIPPED_KIND)
    r = ws.run("apply", str(plan), "--auto-approve", "--force")
    assert r.code == 0, r.out + r.err
    settings = db.rows("SELECT email, theme FROM settings ORDER BY 1")
    if on_conflict == "delete":
        # m1 and m2 both wanted merged@x.com, which a row holds: both deleted; a→b after b→c
        assert settings == [
            ("b@x.com", "dark"),
            ("c@x.com", "light"),
            ("merged@x.com", "here"),
            ("p1new@x.com", "p"),
            ("p2new@x.com", "p"),
        ]
    else:
        assert settings == [
            ("b@x.com", "dark"),
            ("c@x.com", "light"),
            ("m1@x.com", "m1"),
            ("m2@x.com", "m2"),
            ("merged@x.com", "here"),
            ("p1new@x.com", "p"),
            ("p2new@x.com", "p"),
        ]


def test_a_second_connection_fills_sections_ahead_and_the_plan_is_the_same(db, ws, monkeypatch):
    """With several sections to read, a helper connection in the same snapshot fills them from the last one backwards
    while planning's own connection goes forwards; their lines land in their place, so the plan's bytes do not
    depend on who filled what."""
    for stmt in SCHEMA:
        db.execute(stmt)
    ws.postgres_targets({"core": db}, TABLES)
    ws.mappings(MAPPINGS)
    helped = []
    real = lines.TableLines.on

    def on(self, conn):  # the real method, counted; not for a section begun ahead of the levels (dropped here)
        if threading.current_thread().name != "emailsync-prefetch":
            helped.append(self.meta.display)
        return real(self, conn)

    monkeypatch.setattr(lines.TableLines, "on", on)
    real_fill = lines.Ahead._fill

    def helper_first(self, key, fill, write):  # the main connection waits until the helper has done its part
        if self._thread is not None:
            self._thread.join(10)
        return real_fill(self, key, fill, write)

    monkeypatch.setattr(lines.Ahead, "_fill", helper_first)
    r, with_helper = ws.plan()
    assert r.code == 0, r.out + r.err
    # the helper filled every section that does not read this session's own tables (users' merges Python's lines)
    assert sorted(helped) == ['public."we""ird"', "public.events", "public.events", "public.pairs"]
    monkeypatch.setattr(lines.Ahead, "_fill", real_fill)
    _same_as_without_helpers(db, ws, monkeypatch, with_helper)


def test_a_ddl_statement_queued_during_planning_waits_for_it_and_nothing_hangs(db, ws, monkeypatch):
    """Planning locks every table for reading from its first statement, as a long SELECT would. An ALTER TABLE
    queued meanwhile waits for planning; the helper connection, which would queue behind that ALTER, gives its
    section back to planning's own connection after its lock wait (HELPER_LOCK_WAIT) instead of waiting for ever
    (the helper waiting on the ALTER, the ALTER on planning, planning on the helper)."""
    db.execute("CREATE TABLE a (id int PRIMARY KEY, arr text[], e text)")
    db.execute("INSERT INTO a VALUES (1, ARRAY['a@x.com'], 'a@x.com')")
    db.execute("CREATE TABLE b (id int PRIMARY KEY, e text, pad text)")
    db.execute("INSERT INTO b SELECT g, 'a@x.com', repeat('x', 500) FROM generate_series(1, 2000) g")
    db.execute("ANALYZE a")
    db.execute("ANALYZE b")
    ws.postgres_targets({"core": db}, "- {table: a, columns: [arr, e]}\n- {table: b, columns: [e]}")
    ws.mappings({"a@x.com": "b@x.com"})
    real = lines.TableLines._fill
    ddl: dict[str, object] = {}

    def alter():
        with psycopg.connect(db.dsn, autocommit=True) as c:
            c.execute("ALTER TABLE a ADD COLUMN z int")
            ddl["done"] = time.monotonic()

    def fill(self, kind, cols, write):  # the real method, with the timing that queued the ALTER between the two
        helper = threading.current_thread().name == "emailsync-lines"
        n = real(self, kind, cols, write)
        if helper and self.meta.name == "b":
            time.sleep(1)  # the helper's next section (of table a) comes once the ALTER is queued
        if not helper and self.meta.name == "a" and kind == "array-replace":
            threading.Thread(target=alter, daemon=True).start()
            time.sleep(2)
        return n

    monkeypatch.setattr(lines.TableLines, "_fill", fill)
    r, plan = ws.plan()
    finished = time.monotonic()
    assert r.code == 0, r.out + r.err
    deadline = time.monotonic() + 10
    while "done" not in ddl and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "done" in ddl and ddl["done"] >= finished - 0.5  # the ALTER ran once planning let go of its locks
    body = [loads(x) for x in plan_lines(plan)[1:]]
    assert sorted((x["table"], x["column"], x["key"]["id"]) for x in body) == [
        ("public.a", "arr", 1),
        ("public.a", "e", 1),
    ] + [("public.b", "e", i) for i in range(1, 2001)]


def test_the_costliest_section_is_begun_while_the_other_tables_are_read(db, ws, monkeypatch):
    """Every level 0 (no chain across a unique index): the section a helper began while users was still being read
    is the one written into the plan, filled once, and the plan is the same bytes as without any helper."""
    for stmt in SCHEMA:
        db.execute(stmt)
    ws.postgres_targets({"core": db}, TABLES)
    ws.mappings({"a@x.com": "a2@x.com", "zoë@x.com": "zoé@x.com"})  # no chain: every level is 0
    begun = threading.Event()
    fills = []
    real_fill, real_troubled = lines.TableLines._fill, lines.TableLines.troubled

    def fill(self, kind, cols, write):
        fills.append((self.meta.display, kind, threading.current_thread().name))
        if threading.current_thread().name == "emailsync-prefetch":
            begun.set()
        return real_fill(self, kind, cols, write)

    def troubled(self, indexes):  # users is read only once the helper has begun the costliest section
        assert begun.wait(10), "no section was begun while reading"
        return real_troubled(self, indexes)

    monkeypatch.setattr(lines.TableLines, "_fill", fill)
    monkeypatch.setattr(lines.TableLines, "troubled", troubled)
    r, prefetched = ws.plan()
    assert r.code == 0, r.out + r.err
    assert sorted(f[:2] for f in fills) == [
        ('public."we""ird"', "update"),
        ("public.events", "array-replace"),
        ("public.events", "update"),
        ("public.pairs", "update"),
        ("public.users", "update"),
    ]
    assert ("public.events", "update", "emailsync-prefetch") in fills
    monkeypatch.setattr(lines.TableLines, "troubled", real_troubled)
    _same_as_without_helpers(db, ws, monkeypatch, prefetched)


def test_a_plan_refused_while_a_section_is_begun_leaves_no_connection_behind(db, ws, monkeypatch):
    """Planning stops with an error while the helper is filling a section: the helper's query is cancelled, its
    connection closed, and the error is the one planning found."""
    db.execute("CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE NOT NULL)")
    db.execute("CREATE TABLE reviews (id int PRIMARY KEY, person_id int REFERENCES people(id))")
    db.execute("CREATE TABLE audit (id int PRIMARY KEY, actor text, doc jsonb)")
    db.execute("INSERT INTO people VALUES (1, 'a@x.com'), (2, 'b@x.com')")
    db.execute("INSERT INTO reviews VALUES (100, 1)")
    db.execute(
        "INSERT INTO audit SELECT g, 'a@x.com', jsonb_build_object('by', 'a@x.com', 'n', g) "
        "FROM generate_series(1, 50000) g"
    )
    ws.postgres_targets({"core": db}, "- {table: people, columns: [email]}\n- {table: audit, columns: [actor, doc]}\n")
    ws.mappings({"a@x.com": "b@x.com"})  # a merge onto a row other rows reference: refused at plan time
    started = []
    real_init = lines.Prefetch.__init__

    def init(self, *args):
        real_init(self, *args)
        started.append(self.key)

    monkeypatch.setattr(lines.Prefetch, "__init__", init)
    r, _ = ws.plan()
    assert r.code == 1 and "reviews_person_id_fkey" in r.err, r.out + r.err
    assert started == [("core", "public.audit", "update")]
    for _ in range(50):  # a cancelled backend may take a moment to go
        if db.rows("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'emailsync'") == [(0,)]:
            break
        time.sleep(0.1)
    assert db.rows("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'emailsync'") == [(0,)]


def test_documents_holding_one_mapped_address_are_rewritten_in_their_text_exactly(db, ws, monkeypatch):
    """A document holding one mapped address gets its new text by replacing that string's value tokens in the old
    text: never a member name, never part of a longer string or of an escaped one, every repeat in an array, at any
    depth. The lines are the Python path's bytes."""
    db.execute("CREATE TABLE docs (id int PRIMARY KEY, doc jsonb)")
    docs = [
        '["a@x.com", "a@x.com", "a@x.com", "a@x.com", 1, "a@x.com"]',
        '{"a@x.com": "a@x.com", "k": {"a@x.com": ["a@x.com"]}}',
        '{"q": "say \\"a@x.com\\"", "r": "xa@x.com", "s": "a@x.comx", "t": ["a@x.com,", "[a@x.com]"]}',
        '"a@x.com"',
        '{"deep": [[["a@x.com"]], {"x": [{"y": "a@x.com"}]}], "n": 1.50, "e": [], "o": {}}',
        '{"b\\\\s": "b\\\\s@x.com", "l": ["b\\\\s@x.com", "b\\\\s@x.com"], "m": "b\\\\s@x.co"}',
        '["a@x.com", "c@x.com", {"k": "a@x.com"}]',
        '{"z": "zoë@x.com", "y": ["zoë@x.com", "zoë@x.com"]}',
    ]
    for i, d in enumerate(docs):
        db.execute("INSERT INTO docs VALUES (%s, %s)", (i, d))
    ws.postgres_targets({"core": db}, "- {table: docs, columns: [doc]}\n- {table: other, columns: [email]}\n")
    db.execute("CREATE TABLE other (id int PRIMARY KEY, email text)")
    ws.mappings({"a@x.com": "A2@x.com", "b\\s@x.com": 'q"uote@x.com', "c@x.com": "d@x.com", "zoë@x.com": "z@x.com"})
    fills = []
    real = lines.TableLines._fill

    def spy(self, kind, cols, write):
        fills.append(self.meta.display)
        return real(self, kind, cols, write)

    monkeypatch.setattr(lines.TableLines, "_fill", spy)
    r, in_sql = ws.plan()
    assert r.code == 0, r.out + r.err
    assert "public.docs" in fills
    monkeypatch.setattr(PostgresStore, "sql_lines", False)
    r, in_python = ws.plan()
    assert r.code == 0, r.out + r.err
    a, b = plan_lines(in_sql), plan_lines(in_python)
    _same_plans(a, b)
    new = {loads(x)["key"]["id"]: loads(x)["new"] for x in a[1:]}
    assert new[0] == ["A2@x.com"] * 4 + [1, "A2@x.com"]
    assert new[1] == {"a@x.com": "A2@x.com", "k": {"a@x.com": ["A2@x.com"]}}
    assert 2 not in new  # no value is exactly the address
    assert new[3] == "A2@x.com"
    assert new[5] == {"b\\s": 'q"uote@x.com', "l": ['q"uote@x.com', 'q"uote@x.com'], "m": "b\\s@x.co"}
    assert new[6] == ["A2@x.com", "d@x.com", {"k": "A2@x.com"}]  # two addresses: rendered member by member
