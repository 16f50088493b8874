"""`emailsync discover` on hard input: hostile identifiers, odd catalogs, merges into hand-written files, --write on
the file system, and secrets. Real PostgreSQL and moto; no mocks of our own code.

A test named test_bug_* documents a defect the review found (all fixed since) and keeps it from coming back;
the others pin down behaviour that works and must keep working."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from botocore.awsrequest import AWSResponse
from helpers import assert_user_error, hook_dynamodb, plan_doc

from emailsync.config import load_targets


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body


def run(ws: Any, *args: str) -> Any:
    """ws.run, with an escaped exception reported as what it is for the user: a traceback."""
    try:
        return ws.run(*args)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"`emailsync {' '.join(args)}` crashed with a traceback: {type(e).__name__}: {e}")


def core_targets(ws: Any, db: Any, tables: str = "") -> Path:
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    return ws.targets("version: 1\nmappings: m.json\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n" + tables)


def discovered(ws: Any, *args: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(table, column) -> evidence, from `discover --json`."""
    r = run(ws, "discover", "--json", *args)
    assert r.code == 0, r.out + r.err
    return {
        (tb["table"], c["name"]): c for t in json.loads(r.out)["targets"] for tb in t["tables"] for c in tb["columns"]
    }


def proposed(ws: Any, *args: str) -> set[tuple[str, str]]:
    return {k for k, c in discovered(ws, *args).items() if c["proposed"]}


def plan_actions(ws: Any) -> list[dict[str, Any]]:
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    return plan_doc(plan)["actions"]


def written_tables(path: Path, target: int = 0, kind: str = "postgres") -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    return {t["table"]: t for t in doc[kind][target].get("tables") or []}


def write_ok(ws: Any, *args: str) -> Any:
    r = run(ws, "discover", "--write", *args)
    assert r.code == 0, r.out + r.err
    return r


# --- PostgreSQL: what is read, what is proposed ----------------------------------------------------------------


def test_odd_identifiers_are_written_so_that_plan_finds_every_column_and_a_rerun_changes_nothing(db, ws):
    """Quotes, dots, spaces, uppercase, unicode, reserved words and YAML-looking names survive the round trip
    through targets.yaml into the plan, and a second --write is a no-op (byte-identical file, no new backup)."""
    db.execute('CREATE SCHEMA "Sales Dept"')
    db.execute(
        'CREATE TABLE "Sales Dept"."Cust.Omers""x" (id int PRIMARY KEY, "E-Mail Address" text, '
        '"ÉmailÜ" varchar(80)[], "yes" text)'
    )
    db.execute("""INSERT INTO "Sales Dept"."Cust.Omers""x" VALUES (1, 'a@x.com', ARRAY['a@x.com'], 'a@x.com')""")
    db.execute('CREATE TABLE "user" (id int PRIMARY KEY, "on" text, "null" citext, "#x: y" text, "1e3" text)')
    db.execute("""INSERT INTO "user" VALUES (1, 'a@x.com', 'a@x.com', 'a@x.com', 'a@x.com')""")
    path = core_targets(ws, db)
    ws.mappings({"a@x.com": "z@x.com"}, name="m.json")
    write_ok(ws)
    assert {(t, c) for t, e in written_tables(path).items() for c in e["columns"]} == {
        ('"Sales Dept"."Cust.Omers""x"', "E-Mail Address"),
        ('"Sales Dept"."Cust.Omers""x"', "ÉmailÜ"),
        ('"Sales Dept"."Cust.Omers""x"', "yes"),
        ("public.user", "on"),
        ("public.user", "null"),
        ("public.user", "#x: y"),
        ("public.user", "1e3"),
    }
    changed = {(a["table"], a["column"], json.dumps(a["new"])) for a in plan_actions(ws)}
    assert changed == {
        ('"Sales Dept"."Cust.Omers""x"', "E-Mail Address", '"z@x.com"'),
        ('"Sales Dept"."Cust.Omers""x"', "ÉmailÜ", '["z@x.com"]'),
        ('"Sales Dept"."Cust.Omers""x"', "yes", '"z@x.com"'),
        ("public.user", "on", '"z@x.com"'),
        ("public.user", "null", '"z@x.com"'),
        ("public.user", "#x: y", '"z@x.com"'),
        ("public.user", "1e3", '"z@x.com"'),
    }
    before, backups = path.read_bytes(), sorted(ws.path.glob("targets.yaml.*.bak"))
    r = write_ok(ws)
    assert "nothing to add" in r.out
    assert path.read_bytes() == before and sorted(ws.path.glob("targets.yaml.*.bak")) == backups


def test_types_that_hold_addresses_are_proposed_and_nothing_else_is(db, ws):
    """Domains over text, citext[], varchar(n)[] and char(n) are proposed; generated columns, jsonb holding
    addresses only as object keys, arrays of NULLs, views, materialized views, foreign tables and partitions are
    not; an empty table whose column is named like an email field is proposed on its name alone."""
    db.execute("CREATE DOMAIN email_d AS text")
    db.execute(
        "CREATE TABLE k (id int PRIMARY KEY, a email_d, b citext[], c varchar(20)[], ch char(20), "
        "g text GENERATED ALWAYS AS (lower(a)) STORED, j jsonb, n text[])"
    )
    db.execute(
        "INSERT INTO k (id, a, b, c, ch, j, n) VALUES (1, 'a@x.com', ARRAY['a@x.com']::citext[], "
        """ARRAY['a@x.com'], 'a@x.com', '{"a@x.com": 1, "b@x.com": {"c@x.com": 2}}', ARRAY[NULL, NULL]::text[])"""
    )
    db.execute("CREATE VIEW v AS SELECT id, a AS email FROM k")
    db.execute("CREATE MATERIALIZED VIEW mv AS SELECT id, a AS email FROM k")
    db.execute("CREATE EXTENSION file_fdw")
    db.execute("CREATE SERVER files FOREIGN DATA WRAPPER file_fdw")
    db.execute("CREATE FOREIGN TABLE ft (email text) SERVER files OPTIONS (filename '/nonexistent/emails.csv')")
    db.execute("CREATE TABLE part (id int PRIMARY KEY, email text) PARTITION BY RANGE (id)")
    db.execute("CREATE TABLE part_1 PARTITION OF part FOR VALUES FROM (0) TO (100)")
    db.execute("INSERT INTO part VALUES (1, 'a@x.com')")
    db.execute("CREATE TABLE invites (id int PRIMARY KEY, invitee_email text, notes text)")
    core_targets(ws, db)
    found = discovered(ws)
    assert {k for k, c in found.items() if c["proposed"]} == {
        ("public.k", "a"),
        ("public.k", "b"),
        ("public.k", "c"),
        ("public.k", "ch"),
        ("public.part", "email"),
        ("public.invites", "invitee_email"),
    }
    assert {t for t, _ in found} == {"public.k", "public.part", "public.invites"}
    assert found[("public.k", "c")]["type"] == "character varying(20)[]"
    assert found[("public.invites", "invitee_email")]["sampled"] == 0


def test_a_large_table_never_analyzed_is_sampled_within_the_bound(db, ws):
    db.execute("CREATE TABLE big (id int PRIMARY KEY, contact text) WITH (autovacuum_enabled = off)")
    db.execute("INSERT INTO big SELECT g, 'u' || g || '@example.com' FROM generate_series(1, 20000) g")
    assert db.rows("SELECT reltuples FROM pg_class WHERE relname = 'big'") == [(-1.0,)]
    core_targets(ws, db)
    r = run(ws, "discover", "--json", "--sample", "100")
    assert r.code == 0, r.err
    (big,) = json.loads(r.out)["targets"][0]["tables"]
    assert 1 <= big["sampled"] <= 100 and big["method"].startswith("TABLESAMPLE SYSTEM")
    assert [(c["name"], c["proposed"], c["matched"]) for c in big["columns"]] == [("contact", True, big["sampled"])]


def test_bare_table_name_on_a_non_public_search_path_is_merged_not_duplicated(db, ws):
    db.execute("CREATE SCHEMA hr")
    db.execute("CREATE TABLE hr.staff (id int PRIMARY KEY, email text, alt_email text)")
    db.execute("CREATE TABLE public.staff (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO hr.staff VALUES (1, 'a@x.com', 'b@x.com')")
    db.execute("INSERT INTO public.staff VALUES (1, 'c@x.com')")
    db.execute(f'ALTER DATABASE "{db.name}" SET search_path = hr, public')
    path = core_targets(
        ws, db, "    tables:\n      - table: staff\n        columns: [email]\n        on_conflict: skip\n"
    )
    write_ok(ws)
    # `staff` is hr.staff on this search_path: it gains alt_email; public.staff is a different table.
    assert written_tables(path) == {
        "staff": {"table": "staff", "columns": ["email", "alt_email"], "on_conflict": "skip"},
        "public.staff": {"table": "public.staff", "columns": ["email"]},
    }


def test_a_configured_key_is_kept_for_a_table_without_one(db, ws):
    db.execute("CREATE TABLE audit (actor text NOT NULL, at timestamptz NOT NULL, actor_email text, cc_email text)")
    db.execute("INSERT INTO audit VALUES ('x', now(), 'x@x.com', 'y@x.com')")
    path = core_targets(
        ws, db, "    tables:\n      - table: audit\n        key: [actor, at]\n        columns: [actor_email]\n"
    )
    write_ok(ws)
    assert written_tables(path) == {
        "audit": {"table": "audit", "key": ["actor", "at"], "columns": ["actor_email", "cc_email"]}
    }
    load_targets(path)


def test_a_flow_style_file_is_merged(db, ws):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, email text, backup_email text)")
    db.execute("INSERT INTO t VALUES (1, 'a@x.com', 'b@x.com')")
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    path = ws.targets(
        "{version: 1, mappings: m.json, postgres: [{name: core, dsn: '${CORE_DSN}', "
        "tables: [{table: t, columns: [email], verify_ignore: [id]}]}]}\n"
    )
    write_ok(ws)
    assert written_tables(path) == {"t": {"table": "t", "columns": ["email", "backup_email"], "verify_ignore": ["id"]}}


def test_a_locked_table_makes_discover_wait_no_longer_than_lock_timeout(db, ws):
    """A migration holding ACCESS EXCLUSIVE on one table: discover skips that table after lock_timeout, says so,
    and proposes the rest; it never hangs."""
    db.execute("CREATE TABLE a (id int PRIMARY KEY, email text)")
    db.execute("CREATE TABLE b (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO a VALUES (1, 'a@x.com')")
    path = core_targets(ws, db, "    lock_timeout: 200ms\n")
    before = path.read_text()
    with psycopg.connect(db.dsn) as other:
        other.execute("LOCK TABLE b IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        r = run(ws, "discover", "--write")
        elapsed = time.monotonic() - started
    assert elapsed < 5
    assert r.code == 0, r.err
    assert "public.a" in written_tables(path) and "public.b" not in written_tables(path)
    assert "# not proposed (core public.b): not read: canceling statement due to lock timeout" in path.read_text()
    assert path.read_text() != before
    assert db.rows("SELECT * FROM a") == [(1, "a@x.com")]


def test_bug_multidimensional_text_array_crashes_discover(db, ws):
    """BUG: a text[][] column with data makes discover crash with a TypeError traceback (_holds_email passes
    the inner lists to is_email)."""
    db.execute("CREATE TABLE grid (id int PRIMARY KEY, cc text[][])")
    db.execute("INSERT INTO grid VALUES (1, ARRAY[['a@x.com', 'b@x.com'], ['c@x.com', 'd@x.com']])")
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO users VALUES (1, 'u@x.com')")
    core_targets(ws, db)
    assert ("public.users", "email") in proposed(ws)


def test_bug_a_schema_without_usage_aborts_the_whole_discovery(db, ws):
    """BUG: SELECT granted on a table in a schema the role has no USAGE on counts as readable
    (has_table_privilege ignores the schema), so sampling it fails and the whole discovery dies with
    "permission denied for schema"; it should be reported as not read, like a table without SELECT."""
    db.execute("CREATE TABLE open_t (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO open_t VALUES (1, 'a@x.com')")
    db.execute("CREATE SCHEMA hidden")
    db.execute("CREATE TABLE hidden.t (id int PRIMARY KEY, email text)")
    db.execute("DROP ROLE IF EXISTS rv_reader")
    db.execute("CREATE ROLE rv_reader LOGIN")
    db.execute("GRANT SELECT ON open_t, hidden.t TO rv_reader")
    try:
        ws.monkeypatch.setenv("CORE_DSN", db.dsn.replace("user=postgres", "user=rv_reader"))
        ws.targets("version: 1\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n")
        r = run(ws, "discover")
        assert r.code == 0, r.err
        assert [t["table"] for t in yaml.safe_load(r.out)["postgres"][0]["tables"]] == ["public.open_t"]
        assert "# not read (core hidden.t)" in r.out
    finally:
        db.execute("DROP OWNED BY rv_reader")
        db.execute("DROP ROLE rv_reader")


def test_bug_inheritance_parent_is_proposed_from_its_childrens_rows(db, ws):
    """BUG: a table with inheritance children is sampled without ONLY, so the parent (which holds no rows) is
    proposed on the children's rows as well as the child itself; the written file makes the plan change the
    same physical row twice."""
    db.execute("CREATE TABLE parent (id int PRIMARY KEY, email text)")
    db.execute("CREATE TABLE child (extra int) INHERITS (parent)")
    db.execute("ALTER TABLE child ADD PRIMARY KEY (id)")
    db.execute("INSERT INTO child VALUES (1, 'a@x.com', 0)")
    core_targets(ws, db)
    ws.mappings({"a@x.com": "z@x.com"}, name="m.json")
    write_ok(ws)
    assert [(a["key"], a["column"], a["old"], a["new"]) for a in plan_actions(ws)] == [
        ({"id": 1}, "email", "a@x.com", "z@x.com")
    ]


def test_bug_parent_of_a_configured_partition_is_proposed_again(db, ws):
    """BUG: when targets.yaml already lists a partition (what plan itself advises for partition-local unique
    indexes), discover proposes the partitioned parent too; the plan then updates the same row twice."""
    db.execute("CREATE TABLE p (id int PRIMARY KEY, email text) PARTITION BY RANGE (id)")
    db.execute("CREATE TABLE p_1 PARTITION OF p FOR VALUES FROM (0) TO (100)")
    db.execute("INSERT INTO p VALUES (1, 'a@x.com')")
    core_targets(ws, db, "    tables:\n      - table: public.p_1\n        columns: [email]\n")
    ws.mappings({"a@x.com": "z@x.com"}, name="m.json")
    run(ws, "discover", "--write")
    assert [(a["key"], a["column"], a["new"]) for a in plan_actions(ws)] == [({"id": 1}, "email", "z@x.com")]


def test_bug_partitioned_table_with_partition_local_unique_index_is_proposed_but_cannot_plan(db, ws):
    """BUG: discover proposes a partitioned table whose partitions have unique indexes of their own; plan then
    refuses the written file. Like a table without a key, it should be left out with a note (or its partitions
    proposed instead)."""
    db.execute("CREATE TABLE p (id int, region text, email text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)")
    db.execute("CREATE TABLE p_eu PARTITION OF p FOR VALUES IN ('eu')")
    db.execute("CREATE UNIQUE INDEX ON p_eu (email)")
    db.execute("INSERT INTO p VALUES (1, 'eu', 'a@x.com')")
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO users VALUES (1, 'a@x.com')")
    core_targets(ws, db)
    ws.mappings({"a@x.com": "z@x.com"}, name="m.json")
    write_ok(ws)
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert ("public.users", "z@x.com") in {(a["table"], a["new"]) for a in ws.plan_json(plan)["actions"]}


# --- merging into hand-written files ----------------------------------------------------------------------------


def test_bug_yaml_merge_key_shares_the_tables_list_between_targets(make_db, ws):
    """BUG: `<<: *a` gives target b the very list object of target a's `tables:`; merge appends to it in place,
    so b gets a's tables, both get duplicates, and --write refuses ("the merged file would not load")."""
    a, b = make_db(), make_db()
    for d in (a, b):
        d.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
        d.execute("INSERT INTO users VALUES (1, 'a@x.com')")
    a.execute("CREATE TABLE only_a (id int PRIMARY KEY, email text)")
    ws.monkeypatch.setenv("A_DSN", a.dsn)
    ws.monkeypatch.setenv("B_DSN", b.dsn)
    path = ws.targets(
        "version: 1\nmappings: m.json\npostgres:\n"
        "  - &a\n    name: a\n    dsn: ${A_DSN}\n    lock_timeout: 2s\n    tables: []\n"
        "  - <<: *a\n    name: b\n    dsn: ${B_DSN}\n"
    )
    write_ok(ws)
    assert sorted(written_tables(path, 0)) == ["public.only_a", "public.users"]
    assert sorted(written_tables(path, 1)) == ["public.users"]
    assert yaml.safe_load(path.read_text())["postgres"][1]["lock_timeout"] == "2s"


def test_bug_aliased_columns_list_gains_columns_of_another_table(db, ws):
    """BUG: `columns: *cols` shares one list between two entries; a column proposed for one table is appended
    to the shared list, so the other table is written with a column it does not have and plan fails."""
    db.execute("CREATE TABLE a (id int PRIMARY KEY, email text, alt_email text)")
    db.execute("CREATE TABLE b (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO a VALUES (1, 'a@x.com', 'b@x.com')")
    db.execute("INSERT INTO b VALUES (1, 'c@x.com')")
    path = core_targets(
        ws,
        db,
        "    tables:\n      - table: a\n        columns: &cols [email]\n      - table: b\n        columns: *cols\n",
    )
    ws.mappings({"a@x.com": "z@x.com"}, name="m.json")
    write_ok(ws)
    assert {t: e["columns"] for t, e in written_tables(path).items()} == {"a": ["email", "alt_email"], "b": ["email"]}
    assert [(a["table"], a["column"]) for a in plan_actions(ws)] == [("public.a", "email")]


def test_bug_a_table_named_through_a_variable_is_listed_twice(ddb, ws):
    """BUG: an entry `table: ${STAGE}-profiles` (the usual per-stage naming) is matched by its substituted
    name (configured_as) against the raw text, never found, and appended again: the printed file lists the
    table twice and --write refuses ("tables listed twice"). The same holds for PostgreSQL `table: ${SCHEMA}.t`."""
    ddb.create("dev-profiles", "id")
    ddb.put("dev-profiles", {"id": "1", "email": "a@x.com", "backupEmail": "b@x.com"})
    ws.monkeypatch.setenv("STAGE", "dev")
    path = ws.targets(
        "version: 1\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n    tables:\n"
        "      - table: ${STAGE}-profiles\n        attributes: [email]\n"
    )
    write_ok(ws)
    assert yaml.safe_load(path.read_text())["dynamodb"][0]["tables"] == [
        {"table": "${STAGE}-profiles", "attributes": ["email", "backupEmail"]}
    ]


# --- secrets ---------------------------------------------------------------------------------------------------


def test_bug_target_filter_prints_the_literal_password_of_the_other_targets(make_db, ws):
    """BUG: with --target, only the chosen targets' passwords are redacted, but the whole file is printed: the
    literal password of every other target appears on stdout."""
    a, b = make_db(), make_db()
    a.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
    ws.targets(
        f"version: 1\npostgres:\n  - name: a\n    dsn: '{a.dsn} password=Hunter2Pw'\n"
        f"  - name: b\n    dsn: '{b.dsn} password=Other9Pw'\n"
    )
    r = run(ws, "discover", "--target", "a")
    assert r.code == 0, r.err
    assert "Hunter2Pw" not in r.out + r.err
    assert "Other9Pw" not in r.out + r.err


def test_bug_a_password_with_an_escaped_backslash_is_printed(db, ws):
    """BUG: screen redaction replaces the decoded password (Sec\\ret) in the text, but the file spells it as
    libpq requires (Sec\\\\ret), so the literal password is printed almost verbatim."""
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
    # In the DSN: password=Sec\\ret7Zq (libpq decodes it to Sec\ret7Zq).
    ws.targets(f"version: 1\npostgres:\n  - name: a\n    dsn: '{db.dsn} password=Sec\\\\ret7Zq'\n")
    r = run(ws, "discover")
    assert r.code == 0, r.err
    assert "ret7Zq" not in r.out + r.err


def test_bug_a_short_password_is_redacted_all_over_the_printed_file(db, ws):
    """BUG: screen redaction is a substring replace over the whole text, so the common development password
    `postgres` turns the top-level `postgres:` key into `***:`; the printed targets.yaml is no longer the
    merge (the same for a password that is a column or table name). Masking the dsn values in the document
    before rendering would show only the DSN as ***."""
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
    ws.targets(f"version: 1\npostgres:\n  - name: core\n    dsn: '{db.dsn} password=postgres'\n")
    r = run(ws, "discover")
    assert r.code == 0, r.err
    try:
        doc = yaml.safe_load(r.out)
    except yaml.YAMLError as e:
        pytest.fail(f"the printed targets.yaml does not parse ({e.problem}):\n{r.out}")
    assert [t["name"] for t in doc.get("postgres", [])] == ["core"], r.out
    assert doc["postgres"][0]["tables"] == [{"table": "public.users", "columns": ["email"]}]


def test_bug_backup_of_a_private_targets_file_is_world_readable(db, ws):
    """BUG: targets.yaml kept private (0600, it holds a literal password) is backed up with write_bytes, which
    creates the .bak with the default mode (0644): the password becomes readable by every local user."""
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
    path = ws.targets(f"version: 1\npostgres:\n  - name: a\n    dsn: '{db.dsn} password=pw'\n")
    path.chmod(0o600)
    write_ok(ws)
    (backup,) = ws.path.glob("targets.yaml.*.bak")
    assert "password=pw" in backup.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    assert backup.stat().st_mode & 0o777 == 0o600


# --- --dsn --------------------------------------------------------------------------------------------------------


def test_bug_two_dsns_get_the_same_environment_variable(pg_server, ws):
    """BUG: databases named app-hr and app_hr become targets app-hr and app_hr, but _env_name maps both to
    ${APP_HR_DSN}: the written file points both targets at one database."""
    host = pg_server.get_uri().split("host=", 1)[1]
    names = ["app-hr", "app_hr"]
    with psycopg.connect(f"host={host} dbname=postgres user=postgres", autocommit=True) as c:
        for n in names:
            c.execute(f'DROP DATABASE IF EXISTS "{n}"')
            c.execute(f'CREATE DATABASE "{n}"')
    try:
        for n in names:
            with psycopg.connect(f"host={host} dbname={n} user=postgres", autocommit=True) as c:
                c.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
        ws.monkeypatch.setenv("APP_HR_DSN", f"host={host} dbname=app_hr user=postgres")  # past the load check
        r = run(
            ws, "discover", "--write", *(x for n in names for x in ("--dsn", f"host={host} dbname={n} user=postgres"))
        )
        assert r.code == 0, r.err
        doc = yaml.safe_load((ws.path / "targets.yaml").read_text())
        assert [t["name"] for t in doc["postgres"]] == names
        dsns = [t["dsn"] for t in doc["postgres"]]
        assert len(set(dsns)) == 2, dsns
    finally:
        with psycopg.connect(f"host={host} dbname=postgres user=postgres", autocommit=True) as c:
            for n in names:
                c.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


def test_bug_an_empty_dsn_crashes_with_a_traceback(ws):
    """BUG: `--dsn "$PROD_DSN"` with the variable unset passes an empty string; PostgresTarget.model_validate
    in bare_postgres raises a pydantic ValidationError that nothing turns into a user error: a traceback."""
    assert_user_error(run(ws, "discover", "--dsn", ""), "--dsn")
    assert list(ws.path.iterdir()) == []


def test_bug_dsn_write_fails_until_the_variable_it_asks_for_is_set(db, ws):
    """BUG: `discover --dsn DSN --write` writes ${NAME_DSN} and then tells the user to set NAME_DSN, but
    write_targets checks the merge with load_targets, which substitutes variables: with NAME_DSN not yet set
    (the normal case) it refuses with "the merged file would not load ... please report this"."""
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO users VALUES (1, 'a@x.com')")
    var = db.name.upper() + "_DSN"
    ws.monkeypatch.delenv(var, raising=False)
    r = run(ws, "discover", "--dsn", db.dsn, "--write")
    assert r.code == 0, r.err
    assert f"Set {var}" in r.out
    doc = yaml.safe_load((ws.path / "targets.yaml").read_text())
    assert doc["postgres"] == [
        {"name": db.name, "dsn": f"${{{var}}}", "tables": [{"table": "public.users", "columns": ["email"]}]}
    ]
    ws.monkeypatch.setenv(var, db.dsn)
    ws.mappings({"a@x.com": "z@x.com"})
    assert [(a["table"], a["new"]) for a in plan_actions(ws)] == [("public.users", "z@x.com")]


# --- what lands in the file ---------------------------------------------------------------------------------------


def test_bug_a_column_name_with_a_newline_injects_yaml_into_the_written_file(db, ws):
    """BUG: the "not proposed" notes are written as header comments without neutralising line breaks; a
    column named "email_kind<newline>mappings: evil.json #" puts a live `mappings:` key into targets.yaml
    (render falls back to safe_dump, but keeps the same header)."""
    db.execute('CREATE TABLE t (id int PRIMARY KEY, email text, "email_kind\nmappings: evil.json #" text)')
    db.execute("INSERT INTO t VALUES (1, 'a@x.com', 'html')")
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    path = ws.targets("version: 1\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n")
    r = run(ws, "discover")
    assert r.code == 0, r.err
    assert "mappings" not in yaml.safe_load(r.out)
    write_ok(ws)
    assert load_targets(path).config.mappings is None


def test_bug_dynamodb_data_with_a_newline_injects_yaml_into_the_written_file(ddb, ws):
    """BUG: the same through data: values of two template shapes are quoted in a header note, so an item
    whose value holds a line break (any end user can write one) puts a `mappings:` key into targets.yaml."""
    ddb.create("refs", "id")
    ddb.put("refs", {"id": "1", "ref": "A#ann@x.com"}, {"id": "2", "ref": "B\nmappings: evil.json #|bob@x.com"})
    ddb.create("people", "id")
    ddb.put("people", {"id": "1", "email": "ann@x.com"})
    path = ws.targets("version: 1\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n")
    r = run(ws, "discover")
    assert r.code == 0, r.err
    assert "mappings" not in yaml.safe_load(r.out)
    write_ok(ws)
    assert load_targets(path).config.mappings is None


# --- --write on the file system ----------------------------------------------------------------------------------


def test_write_keeps_a_read_only_file_read_only(db, ws):
    """Replacing a read-only targets.yaml either refuses (one error, nothing written) or keeps it read-only."""
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
    path = core_targets(ws, db)
    before = path.read_text()
    path.chmod(0o444)
    r = run(ws, "discover", "--write")
    assert path.stat().st_mode & 0o777 == 0o444
    if r.code == 0:
        assert "public.users" in written_tables(path)
    else:
        assert_user_error(r)
        assert path.read_text() == before


def test_bug_write_through_a_symlink_checks_against_the_wrong_env_file(db, ws):
    """BUG: the DSN lives in the .env beside targets.yaml (a symlink into a config folder). discover reads it
    (load_targets looks beside the link), but write_targets resolves the link and checks the merge with the
    .env beside the real file, where the variable is not: --write refuses a file every other command loads."""
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
    real = ws.path / "config" / "targets.yaml"
    real.parent.mkdir()
    real.write_text("version: 1\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n")
    (ws.path / "targets.yaml").symlink_to(real)
    (ws.path / ".env").write_text(f"CORE_DSN='{db.dsn}'\n")
    ws.monkeypatch.delenv("CORE_DSN", raising=False)
    write_ok(ws)
    assert (ws.path / "targets.yaml").is_symlink()
    assert "public.users" in written_tables(real)


def test_write_never_overwrites_an_existing_backup(db, ws):
    db.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
    path = core_targets(ws, db)
    original = path.read_text()
    now = datetime.now(UTC)
    taken = [
        ws.path / f"targets.yaml.{(now + timedelta(seconds=s)).strftime('%Y%m%dT%H%M%SZ')}.bak" for s in range(-1, 4)
    ]
    for i, b in enumerate(taken):
        b.write_text(f"precious {i}\n")
    r = write_ok(ws)
    assert all(b.read_text() == f"precious {i}\n" for i, b in enumerate(taken))
    (new,) = set(ws.path.glob("targets.yaml.*.bak")) - set(taken)
    assert new.read_text() == original and str(new.name) in r.out
    assert "public.users" in written_tables(path)


# --- DynamoDB ------------------------------------------------------------------------------------------------------


def test_dynamodb_attribute_shapes_what_is_proposed_plans_and_a_rerun_changes_nothing(ddb, ws):
    """Nested maps are proposed by dotted path; attribute names containing dots, lists of maps, numbers and
    binary are never proposed; names that YAML would read as booleans stay strings; the plan finds them all."""
    ddb.create("people", "id")
    ddb.put(
        "people",
        {
            "id": "1",
            "e.mail": "a@x.com",
            "profile": {"contact": {"workEmail": "a@x.com", "n": 3}, "b": b"a@x.com"},
            "list_of_maps": [{"email": "a@x.com"}],
            "nums": 5,
            "yes": "a@x.com",
        },
        {"id": "2", "profile": {"contact": {"workEmail": "b@x.com"}}, "yes": "b@x.com"},
    )
    path = ws.targets("version: 1\nmappings: m.json\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n")
    assert proposed(ws) == {("people", "profile.contact.workEmail"), ("people", "yes")}
    write_ok(ws)
    assert written_tables(path, kind="dynamodb") == {
        "people": {"table": "people", "attributes": ["profile.contact.workEmail", "yes"]}
    }
    ws.mappings({"a@x.com": "z@x.com"}, name="m.json")
    assert len(plan_actions(ws)) == 1
    assert ws.run("apply", str(ws.plan()[1]), "--auto-approve").code == 0
    (one, two) = ddb.items("people")
    assert one["profile"]["contact"]["workEmail"] == "z@x.com" and one["yes"] == "z@x.com"
    assert one["e.mail"] == "a@x.com" and one["list_of_maps"] == [{"email": "a@x.com"}]
    assert two["yes"] == "b@x.com"
    before = path.read_bytes()
    r = write_ok(ws)
    assert "nothing to add" in r.out and path.read_bytes() == before


def test_dynamodb_scan_pages_and_the_sample_bound(ddb, ws):
    """Items beyond the first 1 MB Scan page are sampled; --sample bounds the items read."""
    ddb.create("big", "id")
    pad = "x" * 200_000
    for i in range(10):  # about 2 MB: at least two Scan pages; the addresses are on the later ones
        ddb.put("big", {"id": f"{i:03d}", "pad": pad, "email": "nobody"})
    for i in range(10, 30):
        ddb.put("big", {"id": f"{i:03d}", "email": f"u{i}@x.com"})
    assert "LastEvaluatedKey" in ddb.client.scan(TableName="big")  # more than one page
    ws.targets("version: 1\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n")
    r = run(ws, "discover", "--json")
    assert r.code == 0, r.err
    (big,) = json.loads(r.out)["targets"][0]["tables"]
    assert (big["sampled"], big["method"]) == (30, "Scan of every item")
    assert [(c["name"], c["sampled"], c["matched"], c["proposed"]) for c in big["columns"]] == [("email", 30, 20, True)]
    r = run(ws, "discover", "--json", "--sample", "5")
    (big,) = json.loads(r.out)["targets"][0]["tables"]
    assert (big["sampled"], big["method"]) == (5, "Scan, Limit")


def test_a_throttled_scan_is_retried(ddb, ws):
    """A busy production table answers a Scan with ProvisionedThroughputExceeded twice: discovery retries and
    still reads the table."""
    ddb.create("people", "id")
    ddb.put("people", {"id": "1", "email": "a@x.com"})
    ws.targets("version: 1\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n")
    seen: list[int] = []

    def throttle_twice(request: Any, **_: Any) -> Any:
        seen.append(1)
        if len(seen) > 2:
            return None
        body = {"__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException", "message": "x"}
        headers = {"x-amzn-requestid": "injected", "content-type": "application/x-amz-json-1.0"}
        return AWSResponse(request.url, 400, headers, _Raw(json.dumps(body).encode()))

    hook_dynamodb(ws, "before-send.dynamodb.Scan", throttle_twice)
    r = run(ws, "discover", "--json")
    assert r.code == 0, r.err
    assert len(seen) == 3
    assert [tb["table"] for tb in json.loads(r.out)["targets"][0]["tables"]] == ["people"]


def test_unreachable_dynamodb_endpoint_is_one_quick_error(ddb, ws):
    path = ws.targets("version: 1\ndynamodb:\n  - name: hr\n    endpoint_url: http://127.0.0.1:9\n")
    before = path.read_text()
    started = time.monotonic()
    r = run(ws, "discover", "--write")
    assert time.monotonic() - started < 20
    assert_user_error(r, "cannot reach DynamoDB", "127.0.0.1:9")
    assert path.read_text() == before and list(ws.path.glob("*.bak")) == []
