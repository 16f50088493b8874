"""`emailsync discover`: proposals from the catalog and bounded samples, on the seeded demo estate and on
purpose-built tables; the YAML it prints or writes; the mistakes it refuses."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from helpers import assert_user_error, plan_doc

from emailsync.config import load_targets
from emailsync.sandbox import compose_targets, full_estate, seed_dynamodb

EMPTY_TARGETS = """\
version: 1
mappings: email_mappings.json
postgres:
  - name: tymeplushr-core
    dsn: ${TYMEPLUSHR_CORE_DSN}
  - name: tymeplushr-leave
    dsn: ${TYMEPLUSHR_LEAVE_DSN}
    tables: []
dynamodb:
  - name: tymeplushr-dynamo
    endpoint_url: ${DYNAMODB_ENDPOINT}
    region: us-east-1
    ledger_table: emailsync-ledger
"""

# Every email column and attribute of the demo estate, and nothing else.
EXPECTED = {
    ("tymeplushr-core", "public.employees", "email"),
    ("tymeplushr-core", "public.employees", "manager_email"),
    ("tymeplushr-core", "public.user_settings", "email"),
    ("tymeplushr-core", "public.emergency_contacts", "employee_email"),
    ("tymeplushr-core", "public.projects", "members"),
    ("tymeplushr-core", "public.projects", "meta"),
    ("tymeplushr-leave", "public.leave_requests", "employee_email"),
    ("tymeplushr-leave", "public.leave_requests", "approver_emails"),
    ("tymeplushr-dynamo", "hr-profiles", "email"),
    ("tymeplushr-dynamo", "hr-profiles", "watchers"),
    ("tymeplushr-dynamo", "hr-profiles", "delegates"),
    ("tymeplushr-dynamo", "hr-profiles", "contact.managerEmail"),
    ("tymeplushr-dynamo", "userAuthentication", "email"),
}


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> Any:
    import urllib.request

    # moto keeps one store per process, shared by every server in it: tables an earlier test left would make the
    # estate's own seeding fail ("Table already exists").
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).read()
    with full_estate(tmp_path_factory.mktemp("estate")) as (dsns, url, work, env):
        yield dsns, url, work, env


@pytest.fixture
def est_ws(ws: Any, estate: Any) -> Any:
    import urllib.request

    import boto3

    _, url, work, env = estate
    for k, v in env.items():
        ws.monkeypatch.setenv(k, v)
    # moto keeps one store per process, shared by every server in it: start from the estate's tables alone.
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).read()
    seed_dynamodb(boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1"))
    shutil.copy(work / "email_mappings.json", ws.path / "email_mappings.json")
    return ws


def _proposed(discovery: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (t["name"], tb["table"], c["name"])
        for t in discovery["targets"]
        for tb in t["tables"]
        for c in tb["columns"]
        if c["proposed"]
    }


def _configured(doc: dict[str, Any]) -> set[tuple[str, str, str]]:
    out = set()
    for kind, field in (("postgres", "columns"), ("dynamodb", "attributes")):
        for t in doc.get(kind) or []:
            for tb in t.get("tables") or []:
                for c in tb[field]:
                    out.add((t["name"], tb["table"], c["name"] if isinstance(c, dict) else c))
    return out


def test_discover_finds_every_email_column_of_the_estate_and_nothing_else(est_ws):
    est_ws.targets(EMPTY_TARGETS)
    r = est_ws.run("discover", "--json")
    assert r.code == 0, r.err
    found = json.loads(r.out)
    assert _proposed(found) == EXPECTED
    # The demo's own targets.yaml, written by hand, configures exactly what discovery proposes.
    assert _configured(yaml.safe_load(compose_targets())) == EXPECTED
    cols = {
        (t["name"], tb["table"], c["name"]): c for t in found["targets"] for tb in t["tables"] for c in tb["columns"]
    }
    # Evidence: how many sampled values matched, per column.
    assert cols[("tymeplushr-core", "public.employees", "email")] | {} == {
        "name": "email",
        "type": "citext",
        "name_match": True,
        "sampled": 5,
        "matched": 5,
        "template": None,
        "path": None,
        "proposed": True,
        "configured": False,
        "why": "its name looks like an email field; 5 of 5 sampled values are addresses",
    }
    assert cols[("tymeplushr-core", "public.projects", "members")]["why"] == "2 of 2 sampled arrays hold an address"
    assert cols[("tymeplushr-dynamo", "hr-profiles", "delegates")]["type"] == "SS"
    # Named like an email field but holding none: considered, not proposed, and said so.
    fmt = cols[("tymeplushr-core", "public.user_settings", "email_format")]
    assert (fmt["proposed"], fmt["sampled"], fmt["matched"]) == (False, 3, 0)
    # Obviously not email: never even listed.
    listed = {c[2] for c in cols}
    assert not listed & {"full_name", "theme", "locale", "name", "contact_name", "contact_phone", "passwordHash"}
    assert not listed & {"clientId", "desk", "contact.phone", "id", "days"}
    # The ledger table holds no one's email and is never proposed.
    assert "emailsync-ledger" not in {tb["table"] for t in found["targets"] for tb in t["tables"]}


def test_discover_prints_yaml_with_evidence_and_writes_nothing(est_ws):
    path = est_ws.targets(EMPTY_TARGETS)
    r = est_ws.run("discover")
    assert r.code == 0, r.err
    assert path.read_text() == EMPTY_TARGETS  # printing never writes
    assert list(est_ws.path.glob("targets.yaml.*.bak")) == []
    doc = yaml.safe_load(r.out)
    assert _configured(doc) == EXPECTED
    assert doc["postgres"][0]["dsn"] == "${TYMEPLUSHR_CORE_DSN}"  # the variable, never the DSN it holds
    assert "- email  # new: citext; its name looks like an email field; 5 of 5 sampled values are addresses" in r.out
    assert "# not proposed (tymeplushr-core public.user_settings.email_format): text;" in r.out
    # A login table gets a reminder, never `live: true` on a guess.
    assert "add `live: true`" in r.out
    assert all("live" not in tb for t in doc["dynamodb"] for tb in t["tables"])


def test_discover_write_then_plan(est_ws):
    path = est_ws.targets(EMPTY_TARGETS)
    r = est_ws.run("discover", "--write")
    assert r.code == 0, r.err
    assert "14 added" in r.out  # projects.meta: its owner and reviewers paths
    (backup,) = est_ws.path.glob("targets.yaml.*.bak")
    assert backup.read_text() == EMPTY_TARGETS
    loaded = load_targets(path)  # a complete, valid targets file now
    employees = next(t for t in loaded.config.postgres[0].tables if t.table == "public.employees")
    # A newly found table with a unique email column: conflicts refuse the plan until a person chooses.
    assert employees.on_conflict == "fail"
    r = est_ws.run("plan", "--plans-dir", "plans")
    assert_user_error(r, "on_conflict: fail", "already held by the row")
    path.write_text(path.read_text().replace("on_conflict: fail", "on_conflict: delete"))
    r, plan = est_ws.plan()
    assert r.code == 0, r.err
    kinds = {(a["table"], a["kind"]) for a in plan_doc(plan)["actions"]}
    assert ("public.employees", "delete-on-conflict") in kinds
    assert ("hr-profiles", "merge-and-move") in kinds
    # Discovering again finds nothing new: the file is left alone, no new backup.
    before = path.read_bytes()
    r = est_ws.run("discover", "--write")
    assert r.code == 0 and "nothing to add" in r.out
    assert path.read_bytes() == before and len(list(est_ws.path.glob("targets.yaml.*.bak"))) == 1


def test_discover_merges_into_a_configured_file_without_changing_what_is_there(est_ws):
    text = """\
version: 1
mappings: email_mappings.json
match: casefold
postgres:
  - name: tymeplushr-core
    dsn: ${TYMEPLUSHR_CORE_DSN}
    lock_timeout: 2s
    tables:
      - table: employees
        columns: [email]
        on_conflict: skip
        verify_ignore: [full_name]
"""
    path = est_ws.targets(text)
    r = est_ws.run("discover", "--write", "--target", "tymeplushr-core")
    assert r.code == 0, r.err
    doc = yaml.safe_load(path.read_text())
    assert doc["match"] == "casefold" and doc["postgres"][0]["lock_timeout"] == "2s"
    first = doc["postgres"][0]["tables"][0]
    # The existing entry, matched by the table it resolves to (bare name on the search_path), keeps its
    # settings and gains the column it was missing, after the ones already listed.
    assert first == {
        "table": "employees",
        "columns": ["email", "manager_email"],
        "on_conflict": "skip",
        "verify_ignore": ["full_name"],
    }
    tables = [t["table"] for t in doc["postgres"][0]["tables"]]
    assert tables.count("employees") == 1 and "public.employees" not in tables
    assert set(tables) == {"employees", "public.user_settings", "public.emergency_contacts", "public.projects"}
    assert "dynamodb" not in doc  # --target: only that target was read
    assert "# key id (primary key); sampled 5 (all rows)" in path.read_text()


def test_discover_from_a_bare_dsn_never_shows_the_password(est_ws, estate):
    dsns, url, _, _ = estate
    secret = "S3cr3t-pw"
    r = est_ws.run(
        "discover",
        "--dsn",
        dsns["tymeplushr_leave"] + f" password={secret}",
        "--dynamodb-endpoint",
        url,
        "--dynamodb-region",
        "us-east-1",
    )
    assert r.code == 0, r.err
    assert secret not in r.out + r.err
    doc = yaml.safe_load(r.out)
    assert doc["postgres"] == [
        {
            "name": "tymeplushr_leave",
            "dsn": "${TYMEPLUSHR_LEAVE_DSN}",
            "tables": [{"table": "public.leave_requests", "columns": ["employee_email", "approver_emails"]}],
        }
    ]
    assert doc["dynamodb"][0]["endpoint_url"] == url
    assert not (est_ws.path / "targets.yaml").exists()
    # --write creates the file, pointing at a variable the user is told to set.
    r = est_ws.run("discover", "--dsn", dsns["tymeplushr_leave"] + f" password={secret}", "--write")
    assert r.code == 0, r.err
    written = (est_ws.path / "targets.yaml").read_text()
    assert secret not in written + r.out + r.err
    assert "Set TYMEPLUSHR_LEAVE_DSN" in r.out
    est_ws.monkeypatch.setenv("TYMEPLUSHR_LEAVE_DSN", dsns["tymeplushr_leave"])
    r, plan = est_ws.plan()
    assert r.code == 0, r.err
    assert {a["table"] for a in plan_doc(plan)["actions"]} == {"public.leave_requests"}


def test_sampling_is_bounded_and_keys_are_found(db, ws):
    db.execute("CREATE TABLE big (id bigint PRIMARY KEY, contact text, note text)")
    db.execute("INSERT INTO big SELECT g, 'user' || g || '@example.com', 'note ' || g FROM generate_series(1, 60000) g")
    db.execute("ANALYZE big")
    # No primary key, but a unique index over NOT NULL columns: that is the key.
    db.execute("CREATE TABLE badges (tenant text NOT NULL, badge int NOT NULL, holder text, UNIQUE (tenant, badge))")
    db.execute("INSERT INTO badges VALUES ('a', 1, 'x@example.com'), ('a', 2, 'y@example.com')")
    # No key at all: reported, not proposed (plan would refuse it).
    db.execute("CREATE TABLE audit (at timestamptz, actor_email text)")
    db.execute("INSERT INTO audit VALUES (now(), 'x@example.com')")
    # A name that says email and no rows to contradict it; and a mostly-not-email column (not proposed).
    db.execute("CREATE TABLE invites (id int PRIMARY KEY, invitee_email varchar(200), misc text)")
    db.execute(
        "INSERT INTO badges SELECT 'b', g, CASE WHEN g % 4 = 0 THEN 'z' || g || '@example.com' END "
        "FROM generate_series(1, 40) g"
    )
    db.execute("CREATE TABLE odd (id int PRIMARY KEY, misc text)")
    db.execute(
        "INSERT INTO odd SELECT g, CASE WHEN g % 3 = 0 THEN g || '@example.com' ELSE 'n/a' END "
        "FROM generate_series(1, 30) g"
    )
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    ws.targets("version: 1\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n")
    r = ws.run("discover", "--json", "--sample", "200")
    assert r.code == 0, r.err
    tables = {tb["table"]: tb for tb in json.loads(r.out)["targets"][0]["tables"]}
    big = tables["public.big"]
    assert big["sampled"] <= 200 and big["method"].startswith("TABLESAMPLE SYSTEM")
    assert [(c["name"], c["proposed"]) for c in big["columns"]] == [("contact", True)]
    assert big["columns"][0]["matched"] == big["columns"][0]["sampled"] == big["sampled"]
    assert (tables["public.badges"]["key"], tables["public.badges"]["key_source"]) == (
        ["tenant", "badge"],
        "unique index",
    )
    assert tables["public.audit"]["key_source"] == "none"
    assert [(c["name"], c["proposed"], c["why"]) for c in tables["public.invites"]["columns"]] == [
        ("invitee_email", True, "its name looks like an email field; no values to sample")
    ]
    assert [(c["name"], c["proposed"]) for c in tables["public.odd"]["columns"]] == [("misc", False)]
    assert tables["public.odd"]["columns"][0]["why"] == "only 10 of 30 sampled values are addresses"
    r = ws.run("discover", "--sample", "200")
    doc = yaml.safe_load(r.out)
    entries = {t["table"]: t for t in doc["postgres"][0]["tables"]}
    assert entries["public.badges"]["key"] == ["tenant", "badge"]
    assert "public.audit" not in entries and "public.odd" not in entries
    assert "# not proposed (core public.audit): no primary key" in r.out


def test_discover_needs_only_select_and_reports_what_it_may_not_read(db, ws):
    db.execute("CREATE TABLE open_t (id int PRIMARY KEY, email text)")
    db.execute("CREATE TABLE closed_t (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO open_t VALUES (1, 'a@x.com')")
    db.execute("INSERT INTO closed_t VALUES (1, 'b@x.com')")
    db.execute("DROP ROLE IF EXISTS discover_reader")
    db.execute("CREATE ROLE discover_reader LOGIN")
    db.execute("GRANT SELECT ON open_t TO discover_reader")
    ws.monkeypatch.setenv("CORE_DSN", db.dsn.replace("user=postgres", "user=discover_reader"))
    ws.targets("version: 1\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n")
    r = ws.run("discover")
    assert r.code == 0, r.err
    assert "# not read (core public.closed_t): no SELECT privilege" in r.out
    assert [t["table"] for t in yaml.safe_load(r.out)["postgres"][0]["tables"]] == ["public.open_t"]
    assert db.rows("SELECT * FROM open_t") == [(1, "a@x.com")] and db.rows("SELECT * FROM closed_t") == [(1, "b@x.com")]
    db.execute("REVOKE ALL ON open_t FROM discover_reader")
    db.execute("DROP ROLE discover_reader")


def test_dynamodb_templates_are_proposed_and_plan(ddb, ws):
    ddb.create("accounts", "PK", "SK")
    ddb.put(
        "accounts",
        {"PK": "USER#ann@oldco.com", "SK": "PROFILE", "owner": "ann@oldco.com", "score": 3},
        {"PK": "USER#bob@oldco.com", "SK": "PROFILE", "owner": "bob@oldco.com", "score": 5},
    )
    ddb.create("mixed", "id")
    ddb.put("mixed", {"id": "1", "ref": "A#ann@oldco.com"}, {"id": "2", "ref": "B|bob@oldco.com"})
    ws.targets("version: 1\nmappings: m.json\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n")
    r = ws.run("discover", "--write")
    assert r.code == 0, r.err
    doc = yaml.safe_load((ws.path / "targets.yaml").read_text())
    (accounts,) = [t for t in doc["dynamodb"][0]["tables"] if t["table"] == "accounts"]
    # "USER#ann@oldco.com" is itself a valid address, but a prefix every value shares is a template.
    assert accounts["attributes"] == [{"name": "PK", "template": "USER#{email}"}, "owner"]
    # Addresses inside values of two shapes: not guessed at.
    assert "mixed" not in [t["table"] for t in doc["dynamodb"][0]["tables"]]
    assert "several shapes" in (ws.path / "targets.yaml").read_text()
    ws.mappings({"ann@oldco.com": "ann@newco.com"}, name="m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    assert {i["PK"] for i in ddb.items("accounts")} == {"USER#ann@newco.com", "USER#bob@oldco.com"}


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--sample", "0"], ["--sample 0", "between 1 and"]),
        (["--target", "nope"], ["--target ['nope']", "not in"]),
        (["--dsn", "host=/tmp dbname=x", "--target", "core"], ["--target", "cannot be combined with --dsn"]),
        (["--dsn", "this is not = a dsn = at all"], ["--dsn #1: not a valid PostgreSQL connection string"]),
        (["--dynamodb-endpoint", "ftp://x"], ["--dynamodb-endpoint", "http(s) URL"]),
        (["-t", "missing.yaml"], ["missing.yaml: targets file not found"]),
    ],
)
def test_discover_mistakes_are_one_clear_error(ws, args, fragments):
    ws.targets("version: 1\npostgres:\n  - name: core\n    dsn: host=/nonexistent dbname=x\n")
    before = sorted(p.name for p in ws.path.iterdir())
    assert_user_error(ws.run("discover", *args), *fragments)
    assert sorted(p.name for p in ws.path.iterdir()) == before


def test_discover_without_targets_or_unreachable(ws):
    ws.targets("version: 1\n")
    assert_user_error(ws.run("discover"), "no targets to discover", "--dsn")
    ws.targets("version: 1\npostgres:\n  - name: core\n    dsn: host=/nonexistent-dir dbname=x password=hunter22\n")
    msg = assert_user_error(ws.run("discover"), "cannot connect to PostgreSQL")
    assert "hunter22" not in msg


def test_discover_output_with_a_literal_password_is_redacted_on_screen_not_in_the_file(db, ws):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO t VALUES (1, 'a@x.com')")
    dsn = db.dsn + " password=pa55word"
    path = ws.targets(f"version: 1\npostgres:\n  - name: core\n    dsn: '{dsn}'\n")
    r = ws.run("discover")
    assert r.code == 0, r.err
    assert "pa55word" not in r.out + r.err and "***" in r.out
    r = ws.run("discover", "--write")
    assert r.code == 0 and "pa55word" not in r.out + r.err
    assert yaml.safe_load(path.read_text())["postgres"][0]["dsn"] == dsn  # the user's own file keeps it
    with psycopg.connect(db.dsn) as c:
        assert c.execute("SELECT email FROM t").fetchall() == [("a@x.com",)]


def test_discovered_file_round_trips_through_the_loader(tmp_path: Path):
    """The renderer's quoting: names that YAML would read as something else come back as the same strings."""
    from emailsync.discover import render

    doc = {
        "version": 1,
        "postgres": [
            {
                "name": "core",
                "dsn": "${X}",
                "tables": [
                    {"table": 'public."odd: name"', "columns": ["yes", "on", "null", "#hash", "a b", "1e3"]},
                ],
            }
        ],
    }
    text = render(doc, {("postgres", 0, "tables", 0, "columns", 0): "a comment: with # signs"}, ["header"])
    assert yaml.safe_load(text) == doc


def _one_table(db: Any, ws: Any) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO t VALUES (1, 'a@x.com')")
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)


def test_write_through_a_symlink_with_a_variable_target_name_keeps_every_backup(db, ws):
    _one_table(db, ws)
    ws.monkeypatch.setenv("TARGET_NAME", "core")
    real = ws.path / "conf" / "real.yaml"
    real.parent.mkdir()
    original = "version: 1\npostgres:\n  - name: ${TARGET_NAME}\n    dsn: ${CORE_DSN}\n"
    real.write_text(original)
    real.chmod(0o640)
    link = ws.path / "targets.yaml"
    link.symlink_to(real)
    r = ws.run("discover", "--write")
    assert r.code == 0, r.err
    assert link.is_symlink()  # the link still points at the real file, which now holds the merge
    doc = yaml.safe_load(real.read_text())
    assert doc["postgres"][0]["name"] == "${TARGET_NAME}"  # found by position, kept as written
    assert doc["postgres"][0]["tables"] == [{"table": "public.t", "columns": ["email"]}]
    assert real.stat().st_mode & 0o777 == 0o640
    # Two writes within the same second never overwrite the backup holding the original.
    real.write_text(original)
    r = ws.run("discover", "--write")
    assert r.code == 0, r.err
    backups = sorted(real.parent.glob("real.yaml.*.bak"))
    assert len(backups) == 2 and all(b.read_text() == original for b in backups)


def test_write_where_no_file_can_be_written_is_a_clear_error(db, ws):
    _one_table(db, ws)
    r = ws.run("discover", "--dsn", db.dsn, "--write", "-t", str(ws.path / "no-such-folder" / "targets.yaml"))
    assert_user_error(r, "cannot write beside the targets file", "nothing was written")
    assert not (ws.path / "no-such-folder").exists()


def test_children_of_a_configured_inheritance_parent_are_not_proposed_again(db, ws):
    db.execute("CREATE TABLE parent (id int PRIMARY KEY, email text)")
    db.execute("CREATE TABLE child (extra int) INHERITS (parent)")
    db.execute("ALTER TABLE child ADD PRIMARY KEY (id)")
    db.execute("INSERT INTO parent VALUES (1, 'a@x.com')")
    db.execute("INSERT INTO child VALUES (2, 'b@x.com', 0)")
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    ws.targets("version: 1\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n    tables:\n"
               "      - table: parent\n        columns: [email]\n")  # fmt: skip
    r = ws.run("discover")
    assert r.code == 0, r.err
    assert [t["table"] for t in yaml.safe_load(r.out)["postgres"][0]["tables"]] == ["parent"]
    assert "# not proposed (core public.child): it inherits from a configured table" in r.out


def test_bare_dsn_without_addresses_is_not_written_and_variables_stay_distinct(make_db, ws):
    empty, full = make_db(), make_db()
    empty.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
    full.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
    full.execute("INSERT INTO users VALUES (1, 'a@x.com')")
    # The file already uses the variable the new target would be given.
    var = re.sub(r"[^A-Za-z0-9]+", "_", full.name).upper() + "_DSN"
    path = ws.targets(f"version: 1\npostgres:\n  - name: other\n    dsn: ${{{var}}}\n    tables: []\n")
    r = ws.run("discover", "--dsn", empty.dsn, "--dsn", full.dsn, "--write")
    assert r.code == 0, r.err
    doc = yaml.safe_load(path.read_text())
    names = [t["name"] for t in doc["postgres"]]
    assert names == ["other", full.name]  # the empty database got no `tables: []` entry
    new_var = doc["postgres"][1]["dsn"]
    assert new_var != f"${{{var}}}" and new_var.startswith("${") and f"Set {new_var[2:-1]}" in r.out


def test_env_variable_for_a_database_named_with_a_leading_digit():
    from emailsync.discover import _env_name

    assert _env_name("2fa") == "DB_2FA_DSN" and _env_name("hr-core") == "HR_CORE_DSN"


def test_include_columns_are_not_part_of_a_proposed_key(db, ws):
    db.execute("CREATE TABLE seats (code text NOT NULL, email text NOT NULL)")
    db.execute("CREATE UNIQUE INDEX seats_code ON seats (code) INCLUDE (email)")
    db.execute("INSERT INTO seats VALUES ('A1', 'a@x.com')")
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    ws.targets("version: 1\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n")
    r = ws.run("discover", "--json")
    (seats,) = json.loads(r.out)["targets"][0]["tables"]
    assert (seats["key"], seats["key_source"]) == (["code"], "unique index")
