"""Helpers shared by the test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emailsync.stores import registry


def employees(db: Any) -> list[tuple[Any, ...]]:
    return db.rows("SELECT * FROM employees ORDER BY id")


def assert_user_error(r: Any, *fragments: str) -> str:
    """Exit 1, exactly one `error:` message on stderr (warnings may precede it), no traceback; returns it."""
    everything = r.out + r.err
    assert r.code == 1, (r.code, r.out, r.err)
    assert "Traceback" not in everything, everything
    error_lines = [ln for ln in r.err.splitlines() if ln.startswith("error:")]
    assert len(error_lines) == 1, r.err
    # Nothing but warnings before the error, and only the error's own detail lines after it.
    before, _, after = r.err.partition(error_lines[0])
    assert all(ln.startswith("warning:") for ln in before.splitlines() if ln.strip()), r.err
    assert all(ln.startswith("  - ") for ln in after.splitlines() if ln.strip()), r.err
    assert "error:" not in r.out, r.out
    message = r.err[r.err.index("error:") :]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def hook_dynamodb(ws: Any, event: str, handler: Callable[..., Any]) -> Callable[[], None]:
    """Register a botocore event handler on every DynamoDB client emailsync makes (plan and apply).

    Returns a function that removes the hook again (for a second run that should behave normally)."""
    original = registry.client_for

    def client_for(target: Any, **kw: Any) -> Any:
        c = original(target, **kw)
        c.meta.events.register(event, handler)
        return c

    ws.monkeypatch.setattr(registry, "client_for", client_for)  # the one seam every DynamoDB client comes through

    def unhook() -> None:
        ws.monkeypatch.setattr(registry, "client_for", original)

    return unhook


# -- the audit trail's tests: stores dumped exactly, plans applied and rolled back through the CLI -------------------

DUMP = "SELECT to_jsonb(t)::text FROM {} t ORDER BY 1"


def table_dump(db: Any, *tables: str) -> list[Any]:
    """Every row of the tables, exactly as PostgreSQL renders it."""
    return [db.rows(DUMP.format(t)) for t in tables]


def raw_items(ddb: Any, table: str) -> list[Any]:
    """Items exactly as DynamoDB JSON (types included); sets sorted, as DynamoDB sets have no order."""

    def canon(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: sorted(x) if k in ("SS", "NS", "BS") else canon(x) for k, x in v.items()}
        if isinstance(v, bytes):
            return v.hex()
        return [canon(x) for x in v] if isinstance(v, list) else v

    items = [canon(i) for i in ddb.client.scan(TableName=table, ConsistentRead=True)["Items"]]
    return sorted(items, key=lambda i: json.dumps(i, sort_keys=True))


def apply_confirmed(ws: Any, plan: Path, *extra: str) -> Any:
    """`emailsync apply PLAN --auto-approve --confirm-live` (or `--skip-live`, given in `extra`), in-process."""
    live = () if "--skip-live" in extra else ("--confirm-live",)  # the two contradict each other
    return ws.run("apply", str(plan), "--auto-approve", *live, *extra)


def rollback_plan(ws: Any, plan: Path) -> Path:
    """`emailsync rollback` of the plan's folder; returns the rollback plan's path."""
    r = ws.run("rollback", str(plan.parent))
    assert r.code == 0, r.out + r.err
    return Path(r.out.split("Plan: ")[1].split()[0])


# -- "nothing written", measured: every schema, table and row of a database; every file under a folder ---------------


def snapshot(db: Any) -> dict[str, Any]:
    """Every schema, every table and every row of the database (format('%I') quotes even hostile names)."""
    # Temporary schemas (pg_temp_N) are per-connection scratch space that PostgreSQL keeps once a session has used
    # one; they hold no data after the session, so they are not a write.
    schemas = db.rows("SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_(toast_)?temp_' ORDER BY 1")
    state: dict[str, Any] = {"schemas": schemas}
    tables = db.rows(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND schemaname !~ '^pg_(toast_)?temp_' ORDER BY 1"
    )
    for (table,) in tables:
        state[table] = db.rows(f"SELECT to_jsonb(x)::text FROM {table} x ORDER BY 1")
    return state


def listing(root: Path) -> dict[str, str]:
    """Every path under the workspace: 'dir' for folders, the sha256 of the bytes for files."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.relative_to(root).parts[0] != ".hypothesis"  # hypothesis's own example database, if it lands here
    }


def refused(ws: Any, dbs: list[Any], args: tuple[str, ...], *fragments: str, max_chars: int | None = None) -> str:
    """Run the CLI; it must refuse with one clear error (exit 1, no traceback) and write nothing anywhere."""
    files, before = listing(ws.path), [snapshot(d) for d in dbs]
    r = ws.run(*args)
    message = assert_user_error(r, *fragments)
    if max_chars is not None:  # a message that echoes megabytes of the input is not a clear message
        size = len(r.out) + len(r.err)
        assert size <= max_chars, f"{size} characters of output, starting: {r.err[:300]!r}"
    assert listing(ws.path) == files, "a refused command wrote files"
    assert [snapshot(d) for d in dbs] == before, "a refused command changed a database"
    return message


def cli_process(ws: Any, *args: str) -> subprocess.Popen[str]:
    """`python -m emailsync ...` in its own process, with the test's environment (DSNs, AWS variables)."""
    return subprocess.Popen(
        [sys.executable, "-m", "emailsync", *args],
        cwd=ws.path,
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# A DynamoDB target alone, with a ledger table; `tables` is the YAML of its tables (format()).
DDB_ONLY = """version: 1
mappings: m.json
dynamodb:
  - name: auth
    endpoint_url: ${{DYNAMODB_ENDPOINT}}
    ledger_table: emailsync-ledger
    tables:
{tables}"""


# -- an estate of both stores: a PostgreSQL target and a DynamoDB target with a live table -----------------------------

MIXED_TARGETS = """version: 1
mappings: m.json
postgres:
  - name: core
    dsn: ${{CORE_DSN}}
    tables:
      - {{table: employees, columns: [email]}}
dynamodb:
  - name: auth
    endpoint_url: ${{DYNAMODB_ENDPOINT}}
    ledger_table: {ledger}
    tables:
      - table: profiles
        attributes: [email]
      - table: logins
        live: true
        attributes: [email]
"""


def mixed_estate(ws: Any, db: Any, ddb: Any, ledger: str = "emailsync-ledger") -> Path:
    """core.employees and auth's profiles and logins (live), each holding a@o.com, mapped to a@n.com; the plan."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com'), (2, 'k@k.com')")
    ddb.create("profiles", "email")
    ddb.create("logins", "email")
    ddb.put("profiles", {"email": "a@o.com", "n": 1})
    ddb.put("logins", {"email": "a@o.com", "pwd": "h"})
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    ws.targets(MIXED_TARGETS.format(ledger=ledger))
    ws.mappings({"a@o.com": "a@n.com"}, name="m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    return Path(plan)


def plan_doc(path: Path) -> dict[str, Any]:
    """A plan file as one document, as a test reads it: the header's fields, `actions` (every field, defaults filled
    in) and `skipped`, in the file's order. Numbers parse as Python's json does."""
    from emailsync.plan import SKIPPED_KIND, DynamoAction, PostgresAction

    fields = {**PostgresAction.model_fields, **DynamoAction.model_fields}  # both stores' fields, as one shape
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    doc: dict[str, Any] = dict(lines[0])
    doc["actions"], doc["skipped"] = [], []
    for item in lines[1:]:
        if item.get("kind") == SKIPPED_KIND:
            doc["skipped"].append({k: v for k, v in item.items() if k != "kind"})
        else:
            doc["actions"].append({k: item.get(k, f.default) for k, f in fields.items()})
    return doc


def write_plan_doc(path: Path, doc: dict[str, Any]) -> None:
    """Write a plan document (as plan_doc reads it, edited) back as a plan file WITHOUT re-sealing it: a hand edit."""
    from emailsync.plan import SKIPPED_KIND, dumps

    header = {k: v for k, v in doc.items() if k not in ("actions", "skipped")}
    lines = [dumps(header)]
    lines += [
        dumps({k: v for k, v in a.items() if v is not None and not (k == "live" and v is False)})
        for a in doc["actions"]
    ]
    lines += [dumps({**s, "kind": SKIPPED_KIND}) for s in doc["skipped"]]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def plan_lines(path: Path) -> list[str]:
    """A plan file's lines, uncompressed (as `zcat` shows them), each without its newline (split on "\\n" alone: a
    line may hold U+2028)."""
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    assert text.endswith("\n"), "a plan file ends with a newline"
    return text[:-1].split("\n")


def resealed(lines: list[str]) -> list[str]:
    """The lines with the header's body_sha256 and digest recomputed, as someone who read planfile.py could: what
    then stops an edit is the check of the lines themselves, not the digest."""
    from emailsync.plan import dumps, header_digest, loads

    header = loads(lines[0])
    header["body_sha256"] = hashlib.sha256("".join(line + "\n" for line in lines[1:]).encode()).hexdigest()
    header["digest"] = header_digest(header)
    return [dumps(header), *lines[1:]]


def write_plan_lines(path: Path, lines: list[str], *, reseal: bool = False) -> None:
    """Write the lines back gzip'd (as `zcat ... | edit | gzip` would), NOT re-sealed unless `reseal`."""
    lines = resealed(lines) if reseal else lines
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode("utf-8"), mtime=0))
