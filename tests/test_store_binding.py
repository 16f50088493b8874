"""A plan reaches only the stores it was made for: plans record where each connection arrived, as the server or the
client resolved it (not what the DSN or targets.yaml says), and apply and verify refuse anywhere else before writing.

Real PostgreSQL (two clusters where a test needs another one) and DynamoDB Local; moto stands in as "another endpoint".
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Database, Dynamo, start_pg_server
from helpers import assert_user_error, listing, refused

from emailsync.config import DynamoTable, DynamoTarget, load_targets
from emailsync.engine.applier import check_reached
from emailsync.planfile import read_plan
from emailsync.stores.dynamodb.client import client_for, reached

AREA = "plan applied to another store than it was made for"
REFUSED = "refused, exit 1, nothing written"

EMPLOYEES = "CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)"
ROWS = "INSERT INTO employees VALUES (1, 'a@old.com'), (2, 'b@old.com'), (3, 'keep@x.com')"
MAPPING = {"a@old.com": "a@new.com", "b@old.com": "b@new.com"}


def _seed(db: Database) -> None:
    db.execute(EMPLOYEES)
    db.execute(ROWS)


def _pg_targets(ws: Any, dsn: str, extra: str = "") -> None:
    ws.monkeypatch.setenv("CORE_DSN", dsn)
    ws.targets(
        "version: 1\nmappings: email_mappings.json\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n"
        f"{extra}    tables:\n      - table: employees\n        columns: [email]\n"
    )
    ws.mappings(MAPPING)


def _emails(db: Database) -> list[str]:
    return [e for (e,) in db.rows("SELECT email FROM employees ORDER BY id")]


# --- PostgreSQL: what libpq fills in from the environment ----------------------------------------------------


def test_plan_records_the_database_and_cluster_the_connection_reached(make_db: Any, ws: Any) -> None:
    db = make_db()
    _seed(db)
    # No dbname in the DSN: libpq takes PGDATABASE (the old fingerprint recorded the user name, "postgres").
    ws.monkeypatch.setenv("PGDATABASE", db.name)
    _pg_targets(ws, f"host={db.host} user=postgres")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    fp = read_plan(plan).targets["core"]
    (sysid,) = db.rows("SELECT system_identifier::text FROM pg_control_system()")[0]
    assert (fp.database, fp.host, fp.port, fp.system_identifier) == (db.name, db.host, "5432", sysid)
    assert fp.account is None
    assert f"{db.host}:5432/{db.name} (cluster {sysid})" in (plan.parent / "plan.md").read_text()


def test_apply_and_verify_refuse_when_pgdatabase_now_names_another_database(
    make_db: Any, ws: Any, reliability: Any
) -> None:
    db1, db2 = make_db(), make_db()
    _seed(db1)
    _seed(db2)  # the same schema and rows: only the binding can tell them apart
    ws.monkeypatch.setenv("PGDATABASE", db1.name)
    _pg_targets(ws, f"host={db1.host} user=postgres")
    r, plan = ws.plan()
    assert r.code == 0, r.err

    ws.monkeypatch.setenv("PGDATABASE", db2.name)
    msg = refused(ws, [db1, db2], ("apply", str(plan), "--auto-approve"), "core", db1.name, db2.name, "re-plan")
    assert "database" in msg and "nothing was written" in msg
    refused(ws, [db1, db2], ("verify", str(plan)), db2.name)
    assert _emails(db2) == ["a@old.com", "b@old.com", "keep@x.com"]

    ws.monkeypatch.setenv("PGDATABASE", db1.name)  # back where it was planned: applies
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert _emails(db1) == ["a@new.com", "b@new.com", "keep@x.com"]
    assert _emails(db2) == ["a@old.com", "b@old.com", "keep@x.com"]
    reliability(AREA, REFUSED, cases=2, detail="PGDATABASE changed between plan and apply; apply and verify")


@pytest.fixture(scope="module")
def other_cluster() -> Iterator[str]:
    """A second PostgreSQL cluster on this machine: its socket folder."""
    server = start_pg_server("emailsync-pg2-")
    folder = server.get_uri().split("host=", 1)[1]
    yield folder
    server.cleanup()
    shutil.rmtree(Path(folder).parent, ignore_errors=True)


def test_apply_refuses_another_cluster_with_the_same_database_name(
    make_db: Any, other_cluster: str, ws: Any, reliability: Any
) -> None:
    db1 = make_db()
    _seed(db1)
    with psycopg.connect(f"host={other_cluster} dbname=postgres user=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db1.name}"')
    db2 = Database(db1.name, other_cluster)  # same name, same rows, another server
    _seed(db2)
    try:
        ws.monkeypatch.setenv("PGHOST", db1.host)
        _pg_targets(ws, f"dbname={db1.name} user=postgres")  # no host: PGHOST decides
        r, plan = ws.plan()
        assert r.code == 0, r.err
        ws.monkeypatch.setenv("PGHOST", other_cluster)
        msg = refused(ws, [db1, db2], ("apply", str(plan), "--auto-approve"), "system_identifier", other_cluster)
        assert "host" in msg
        assert _emails(db1) == _emails(db2) == ["a@old.com", "b@old.com", "keep@x.com"]
    finally:
        with psycopg.connect(f"host={other_cluster} dbname=postgres user=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db1.name}" WITH (FORCE)')
    reliability(AREA, REFUSED, detail="PGHOST moved to another cluster holding a database of the same name")


def test_a_role_that_may_not_read_the_cluster_id_records_none_and_still_binds(make_db: Any, ws: Any) -> None:
    db1, db2 = make_db(), make_db()
    for d in (db1, db2):
        _seed(d)
        d.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
        d.execute("DO $$ BEGIN CREATE ROLE emailsync_app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        d.execute(f'GRANT ALL ON DATABASE "{d.name}" TO emailsync_app')
        d.execute("GRANT ALL ON SCHEMA public TO emailsync_app")
        d.execute("GRANT ALL ON employees TO emailsync_app")
    _pg_targets(ws, f"host={db1.host} dbname={db1.name} user=emailsync_app")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    fp = read_plan(plan).targets["core"]
    assert fp.system_identifier is None and fp.database == db1.name
    # Still bound by host, port and database: the DSN pointed at db2 is refused.
    ws.monkeypatch.setenv("CORE_DSN", f"host={db2.host} dbname={db2.name} user=emailsync_app")
    refused(ws, [db1, db2], ("apply", str(plan), "--auto-approve"), db2.name)
    ws.monkeypatch.setenv("CORE_DSN", f"host={db1.host} dbname={db1.name} user=emailsync_app")
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert _emails(db1) == ["a@new.com", "b@new.com", "keep@x.com"]


# --- DynamoDB: what botocore resolves from the environment ----------------------------------------------------


def _ddb_targets(ws: Any, endpoint_line: str = "") -> None:
    # No region and (unless given) no endpoint_url: botocore resolves them from the environment.
    ws.targets(
        "version: 1\nmappings: email_mappings.json\ndynamodb:\n  - name: hr\n"
        f"{endpoint_line}    tables:\n      - table: profiles\n        attributes: [email]\n"
    )
    ws.mappings(MAPPING)


def _seed_profiles(d: Dynamo) -> None:
    d.create("profiles", "email")
    d.put("profiles", {"email": "a@old.com", "name": "Ann"}, {"email": "keep@x.com", "name": "Kim"})


ORIGINAL = [{"email": "a@old.com", "name": "Ann"}, {"email": "keep@x.com", "name": "Kim"}]


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL"])
def test_apply_refuses_another_dynamodb_endpoint_named_by_the_environment(
    ddb: Dynamo, moto_endpoint: str, ws: Any, variable: str, reliability: Any
) -> None:
    from conftest import separate_moto_server

    # The other endpoint: the session's moto server, or a separate one when the tests' DynamoDB is that server.
    with contextlib.ExitStack() as stack:
        other_endpoint = stack.enter_context(separate_moto_server()) if ddb.endpoint == moto_endpoint else moto_endpoint
        _moved_endpoint_is_refused(ddb, Dynamo(other_endpoint), ws, variable)
    reliability(AREA, REFUSED, detail=f"{variable} moved to another DynamoDB endpoint")


def _moved_endpoint_is_refused(ddb: Dynamo, other: Dynamo, ws: Any, variable: str) -> None:
    other.drop_all_tables()
    assert other.endpoint != ddb.endpoint
    _seed_profiles(ddb)
    _ddb_targets(ws)
    ws.monkeypatch.setenv(variable, ddb.endpoint)
    r, plan = ws.plan()
    assert r.code == 0, r.err
    fp = read_plan(plan).targets["hr"]
    assert (fp.host, fp.database, fp.account) == ("127.0.0.1", "us-east-1", None)
    assert fp.port == ddb.endpoint.rsplit(":", 1)[1]

    _seed_profiles(other)  # the same table and items on the other endpoint
    ws.monkeypatch.setenv(variable, other.endpoint)
    files = listing(ws.path)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert_user_error(r, "hr", "port", other.endpoint.rsplit(":", 1)[1], "nothing was written")
    assert listing(ws.path) == files
    assert ddb.items("profiles") == other.items("profiles") == ORIGINAL


def test_apply_refuses_another_region_of_the_same_endpoint(ddb_local: Dynamo, ws: Any, reliability: Any) -> None:
    _seed_profiles(ddb_local)
    _ddb_targets(ws, "    endpoint_url: ${DYNAMODB_ENDPOINT}\n")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    ws.monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    files = listing(ws.path)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert_user_error(r, "hr", "us-east-1", "eu-west-1", "nothing was written")
    assert listing(ws.path) == files
    assert ddb_local.items("profiles") == ORIGINAL  # DynamoDB Local shares one database across regions: untouched
    reliability(AREA, REFUSED, detail="AWS_DEFAULT_REGION changed between plan and apply")


def test_an_aws_endpoint_records_the_account_sts_names_and_apply_refuses_another(
    moto_endpoint: str, ddb: Dynamo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reliability: Any
) -> None:
    # AWS's own DynamoDB endpoint (never contacted here: resolving it is local), and STS on the moto server.
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    target = DynamoTarget(name="hr", region="eu-west-1", tables=(DynamoTable(table="profiles", attributes=("email",)),))
    where = reached(target, client_for(target))
    assert where == {
        "host": "dynamodb.eu-west-1.amazonaws.com",
        "port": None,
        "database": "eu-west-1",
        "account": "123456789012",  # moto's account for any credentials
    }
    # A plan made under another account is refused by the same check apply runs before locking or writing.
    (tmp_path / "targets.yaml").write_text(
        "version: 1\nmappings: m.json\ndynamodb:\n  - name: hr\n    region: eu-west-1\n    tables:\n"
        "      - table: profiles\n        attributes: [email]\n"
    )
    loaded = load_targets(tmp_path / "targets.yaml")
    from emailsync.plan import TargetFingerprint

    class _Plan:  # only what check_reached reads
        targets = {"hr": TargetFingerprint(store="dynamodb", **{**where, "account": "210987654321"})}

    from emailsync.errors import UserError

    with pytest.raises(UserError) as e:
        check_reached(_Plan(), {"hr": TargetFingerprint(store="dynamodb", **where)}, loaded)  # type: ignore[arg-type]
    assert "account '210987654321' in the plan, '123456789012' now" in str(e.value)
    reliability(AREA, "refused before any write", detail="another AWS account behind the same endpoint and region")


# --- DynamoDB: a table recreated with another key ------------------------------------------------------------


@pytest.mark.parametrize(
    "recreate",
    [("id", None), ("email", "clientId")],
    ids=["another hash key", "a range key added"],
)
def test_apply_refuses_a_table_recreated_with_another_key(
    ddb_local: Dynamo, ws: Any, recreate: tuple[str, str | None], reliability: Any
) -> None:
    _seed_profiles(ddb_local)
    _ddb_targets(ws, "    endpoint_url: ${DYNAMODB_ENDPOINT}\n")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    ddb_local.client.delete_table(TableName="profiles")
    ddb_local.create("profiles", *recreate)
    hash_key, range_key = recreate
    item = {hash_key: "a@old.com", "email": "a@old.com", "name": "Ann"}
    if range_key:
        item[range_key] = "c1"
    ddb_local.put("profiles", item)
    before = ddb_local.items("profiles")
    files = listing(ws.path)
    for args in (("apply", str(plan), "--auto-approve"), ("verify", str(plan))):
        r = ws.run(*args)
        assert_user_error(r, "hr", "profiles", "changed their key", "email (S)", f"{hash_key} (S)", "Re-plan")
        assert "ValidationException" not in r.err
    assert listing(ws.path) == files
    assert ddb_local.items("profiles") == before
    reliability("DynamoDB table recreated with another key since the plan", REFUSED, cases=2, detail=str(recreate))
