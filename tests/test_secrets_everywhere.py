"""Credentials never reach an artifact: every command of a whole workflow, then every file, every output and every
row and item the tool wrote are searched for the DSN password, the user, and the AWS key, secret and session token.
Failing connections too: their errors name host, port and database, never a credential."""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from helpers import plan_doc
from test_secrets import password_role  # noqa: F401  (fixture: a role that logs in with a password)

PASSWORD = "Right-Pa55word"  # the password_role fixture's
AWS = {
    "AWS_ACCESS_KEY_ID": "AKIAEMAILSYNCSECRET1",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEMAILSYNC-session-token-xyz",
}
SECRETS = [PASSWORD, *AWS.values()]


def _leaks(*texts: str, user: bool = False) -> list[str]:
    """Credentials found in the texts; with `user`, the login name too (a server's own authentication error names
    the user it refused, which is not a credential)."""
    return [s for s in [*SECRETS, *(["es_bob"] if user else [])] if any(s in t for t in texts)]


def _text(p: Path) -> str:
    """A file as text, a gzip'd one (plan.jsonl.gz) uncompressed: a credential inside the gzip stream counts."""
    data = p.read_bytes()
    return (gzip.decompress(data) if p.name.endswith(".gz") else data).decode(errors="replace")


def _files(root: Path) -> str:
    # targets.yaml holds ${VAR} names only; .env is where a person keeps the DSN and is not ours to write
    return "\n".join(_text(p) for p in root.rglob("*") if p.is_file() and p.name not in (".env",))


def _db_text(db: Any) -> str:
    """Every row of every table and ledger in the database, as text."""
    tables = db.rows(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%'"
    )
    return "\n".join(str(db.rows(f"SELECT to_jsonb(t.*)::text FROM {t} t")) for (t,) in tables)


def _ddb_text(ddb: Any) -> str:
    return "\n".join(json.dumps(ddb.items(t), default=str) for t in ddb.client.list_tables()["TableNames"])


@pytest.fixture
def estate(password_role: Any, ddb: Any, ws: Any) -> Any:  # noqa: F811
    db = password_role
    db.execute("CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO people VALUES (1, 'ann@oldco.com'), (2, 'bob@oldco.com'), (3, 'bob@newco.com')")
    db.execute("GRANT ALL ON people TO es_bob")
    db.execute("GRANT CREATE ON DATABASE " + f'"{db.name}"' + " TO es_bob")  # the ledger schema, on first apply
    ddb.create("users", "email")
    ddb.put("users", {"email": "ann@oldco.com", "name": "Ann"}, {"email": "cy@oldco.com", "name": "Cy"})
    for k, v in AWS.items():
        ws.monkeypatch.setenv(k, v)
    ws.monkeypatch.setenv("CORE_DSN", f"postgresql://es_bob:{PASSWORD}@/{db.name}?host={db.host}")
    ws.targets(
        "version: 1\nmappings: m.json\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n"
        "    tables: [{table: people, columns: [email], on_conflict: delete}]\n"
        "dynamodb:\n  - name: aws\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n    region: us-east-1\n"
        "    ledger_table: emailsync-ledger\n    tables: [{table: users, attributes: [email]}]\n"
    )
    ws.mappings(
        {"ann@oldco.com": "ann@newco.com", "bob@oldco.com": "bob@newco.com", "cy@oldco.com": "cy@newco.com"},
        name="m.json",
    )
    return db


def test_a_whole_workflow_writes_no_credential_anywhere(estate: Any, ddb: Any, ws: Any, reliability: Any) -> None:
    outputs: list[str] = []

    def run(*args: str) -> Any:
        r = ws.run(*args)
        outputs.extend([r.out, r.err])
        return r

    r, plan = ws.plan()
    outputs.extend([r.out, r.err])
    assert r.code == 0, r.err
    for fmt in ("markdown", "text", "json"):
        assert run("show", str(plan), "--format", fmt).code == 0
    assert run("show", str(plan), "--redact").code == 0
    assert run("apply", str(plan), "--auto-approve").code == 0, outputs[-2:]
    assert run("verify", str(plan)).code == 0
    assert run("verify", str(plan), "--json").code == 0
    assert run("apply", str(plan), "--auto-approve").code == 1  # refused as a replay: its message too
    assert run("rollback", str(plan.parent), "--out", str(ws.path / "rb" / "plan.jsonl.gz")).code == 0
    assert run("apply", str(ws.path / "rb" / "plan.jsonl.gz"), "--auto-approve").code == 0
    assert run("discover", "--json").code == 0
    r2, plan2 = ws.plan("--json")
    outputs.extend([r2.out, r2.err])
    assert r2.code == 0
    # the stores were really changed and put back, so every writer ran
    assert estate.rows("SELECT email FROM people ORDER BY id") == [
        ("ann@oldco.com",),
        ("bob@oldco.com",),
        ("bob@newco.com",),
    ]
    assert [i["email"] for i in ddb.items("users")] == ["ann@oldco.com", "cy@oldco.com"]
    files = _files(ws.path)
    assert plan_doc(plan)["body_sha256"] in files and plan_doc(plan2)["body_sha256"] in files  # searched uncompressed
    leaked = _leaks(*outputs, files, _db_text(estate), _ddb_text(ddb), user=True)
    assert not leaked, leaked
    reliability(
        "secrets in artifacts",
        "no password, user or AWS key in any output, file, row or item",
        detail="plan, show, apply, verify, replay, rollback, discover",
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("store", ["postgres-wrong-password", "postgres-unreachable", "dynamodb-unreachable"])
def test_failing_connections_name_no_credential(estate: Any, ws: Any, store: str, reliability: Any) -> None:
    r, plan = ws.plan()
    assert r.code == 0, r.err
    if store == "postgres-wrong-password":
        ws.monkeypatch.setenv("CORE_DSN", f"postgresql://es_bob:{PASSWORD}-Wrong@/{estate.name}?host={estate.host}")
    elif store == "postgres-unreachable":
        ws.monkeypatch.setenv("CORE_DSN", f"postgresql://es_bob:{PASSWORD}@127.0.0.1:{_closed_port()}/{estate.name}")
    else:
        ws.monkeypatch.setenv("DYNAMODB_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    outs = []
    for args in (
        ("plan", "--out", str(ws.path / "x" / "plan.jsonl.gz")),
        ("apply", str(plan), "--auto-approve"),
        ("verify", str(plan)),
        ("discover",),
    ):
        r = ws.run(*args)
        assert r.code == 1 and "Traceback" not in r.err and r.err.startswith("error:"), (args, r.code, r.err)
        outs += [r.out, r.err]
    assert not _leaks(*outs, _files(ws.path)), _leaks(*outs, _files(ws.path))
    assert estate.rows("SELECT count(*) FROM people") == [(3,)]
    reliability(
        "secrets in artifacts", "connection refused: error names host and database, no credential", detail=store
    )
