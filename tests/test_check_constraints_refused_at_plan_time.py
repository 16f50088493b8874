"""A table's CHECK constraints see the row a plan would leave: a new address one of them refuses is refused when
planning (exit 1, one error naming the table, the constraint and the rows), never found at apply. Rows the plan does
not change, and constraints that come out NULL, do not count."""

from __future__ import annotations

import pytest
from helpers import assert_user_error


def _estate(db) -> None:
    db.execute("CREATE EXTENSION IF NOT EXISTS citext")
    db.execute(
        "CREATE TABLE users (id int PRIMARY KEY, email citext CHECK (char_length(email) <= 12), "
        "backup text, emails text[], doc jsonb, "
        "CONSTRAINT few CHECK (cardinality(emails) < 3 OR emails[3] <> 'z@x.com'), "
        "CONSTRAINT owner_domain CHECK (doc->>'owner' IS NULL OR doc->>'owner' LIKE '%@x.com'))"
    )
    db.execute(
        """INSERT INTO users VALUES
           (1, 'a@x.com', 'c@x.com', ARRAY['a@x.com'], '{"owner": "a@x.com"}'),
           (2, 'b@x.com', NULL, ARRAY['x@x.com', 'y@x.com', 'b@x.com'], NULL),
           (3, 'long@x.com', 'c@x.com', NULL, '{"owner": "o@x.com"}'),
           (4, 'ok@x.com', 'ok@x.com', NULL, NULL)"""
    )
    # NOT VALID: row 4 breaks it already (untouched by any plan here, so never counted); later writes are checked.
    db.execute("ALTER TABLE users ADD CONSTRAINT two_addresses CHECK (email::text <> backup) NOT VALID")


TABLES = "- {table: users, columns: [email, backup, emails, {name: doc, path: owner}]}\n"


@pytest.mark.parametrize(
    ("mappings", "fragments"),
    [
        # too long for char_length(email) <= 12 (the column itself is citext, so no type limit catches it)
        (
            {"long@x.com": "much.longer@x.com"},
            ("users_email_check", 'row {"id":3}', "char_length((email)::text) <= 12"),
        ),
        # email and backup would be equal (row 1: email a→c, its backup is c)
        ({"a@x.com": "c@x.com"}, ("two_addresses", 'row {"id":1}')),
        # an array element, and a jsonb path
        ({"b@x.com": "z@x.com"}, ("few", 'row {"id":2}')),
        ({"o@x.com": "o@y.org"}, ("owner_domain", 'row {"id":3}')),
    ],
)
def test_a_new_value_a_check_constraint_refuses_is_refused_when_planning(db, ws, mappings, fragments):
    _estate(db)
    ws.postgres_targets({"core": db}, TABLES)
    ws.mappings(mappings)
    r, plan = ws.plan()
    msg = assert_user_error(r, "tables[0] (public.users)", "CHECK", *fragments)
    assert "fix the mappings" in msg
    assert not plan.exists()
    assert db.rows("SELECT count(*) FROM users WHERE email = 'ok@x.com'") == [(1,)]


def test_every_row_and_constraint_is_listed_at_once_and_untouched_rows_do_not_count(db, ws):
    _estate(db)
    db.execute("INSERT INTO users SELECT g, 'p' || g || '@x.com', NULL, NULL, NULL FROM generate_series(10, 40) g")
    ws.postgres_targets({"core": db}, TABLES)
    ws.mappings({**{f"p{g}@x.com": f"p{g}.too.long@x.com" for g in range(10, 41)}, "a@x.com": "c@x.com"})
    r, _ = ws.plan()
    msg = assert_user_error(r, "users_email_check", "two_addresses")
    assert msg.count("would break CHECK users_email_check") == 20
    assert "... and 11 more rows breaking users_email_check" in msg
    assert 'row {"id":4}' not in msg  # already breaking two_addresses, but the plan does not change it


def test_values_the_constraints_accept_plan_and_apply(db, ws):
    _estate(db)
    ws.postgres_targets({"core": db}, TABLES)
    ws.mappings({"a@x.com": "d@x.com", "b@x.com": "e@x.com", "o@x.com": "p@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    assert db.rows("SELECT id, email::text, backup, emails, doc FROM users ORDER BY id") == [
        (1, "d@x.com", "c@x.com", ["d@x.com"], {"owner": "d@x.com"}),
        (2, "e@x.com", None, ["x@x.com", "y@x.com", "e@x.com"], None),
        (3, "long@x.com", "c@x.com", None, {"owner": "p@x.com"}),
        (4, "ok@x.com", "ok@x.com", None, None),
    ]


def test_a_row_the_plan_deletes_is_not_held_to_the_constraint(db, ws):
    """Row 1 would break email <> backup at m@x.com, but row 2 holds m@x.com already: row 1 is deleted
    (on_conflict: delete), so no row is left to break it, and the plan goes ahead."""
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, backup text, CHECK (email <> backup))")
    db.execute("INSERT INTO users VALUES (1, 'a@x.com', 'm@x.com'), (2, 'm@x.com', 'z@x.com')")
    ws.postgres_targets({"core": db}, "- {table: users, columns: [email]}\n")
    ws.mappings({"a@x.com": "m@x.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    assert db.rows("SELECT id, email, backup FROM users ORDER BY id") == [(2, "m@x.com", "z@x.com")]


def test_a_constraint_over_a_generated_column_is_left_to_apply(db, ws):
    db.execute(
        "CREATE TABLE users (id int PRIMARY KEY, email text, "
        "domain text GENERATED ALWAYS AS (split_part(email, '@', 2)) STORED, CHECK (domain <> 'banned.org'))"
    )
    db.execute("INSERT INTO users (id, email) VALUES (1, 'a@x.com')")
    ws.postgres_targets({"core": db}, "- {table: users, columns: [email]}\n")
    ws.mappings({"a@x.com": "a@banned.org"})
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err  # not evaluated at plan time (the generated value is PostgreSQL's to compute)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 3 and "users_domain_check" in r.out  # apply finds it, and writes nothing
    assert db.rows("SELECT email FROM users") == [("a@x.com",)]
