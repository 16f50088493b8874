"""The floor of a two-command plan-then-apply for benchmarks/estate.py, written by hand for that schema: the least
work any tool with emailsync's guarantees must do, as two processes (plan, then apply), so contenders.py can time
it in the same interleaved rounds as the hand-written transaction and emailsync.

    python benchmarks/floor.py plan DSN MAPPINGS.json PLAN.gz     # one read-only snapshot, two connections
    python benchmarks/floor.py apply DSN PLAN.gz                  # one transaction

Kept: every change computed by PostgreSQL from one REPEATABLE READ snapshot (shared by two connections, so both
cores work); a gzip plan file of one JSON line per change (table, column, key, old and new value, delete on
conflict) behind a header holding the body's sha256; apply checks that digest, loads the lines with COPY, deletes
and updates each row only where it still holds the planned old value, counts every write, reads every written row
back, and records the plan in a ledger table under an advisory lock, all in one transaction.

Left out, so this is a lower bound and not a competitor: ids, steps and mapping numbers per change, a sorted body,
the checks of each line, plan.md, journal, report, conflict analysis beyond the settings' key, chains, and a
document's new value is its old text with the one address token replaced (every document of this estate holds
one). With --stack each command also imports what a CLI built on emailsync's chosen libraries must load.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import threading
from pathlib import Path

import psycopg

if os.environ.get("FLOOR_STACK"):
    import pydantic  # noqa: F401
    import typer  # noqa: F401
    import yaml  # noqa: F401

# (table, column, key column, key type, column type, the query of its changes: key, old, new[, delete])
_DOC = "jsonb_array_elements_text(jsonb_path_query_array(a.payload, 'strict $.** ? (@.type() == \"string\")'))"
READS = [
    (
        "employees",
        "email",
        "id",
        "int",
        "text",
        "SELECT t.id, t.email, m.new FROM employees t JOIN m ON m.old = t.email",
    ),
    (
        "employees",
        "manager_email",
        "id",
        "int",
        "text",
        "SELECT t.id, t.manager_email, m.new FROM employees t JOIN m ON m.old = t.manager_email",
    ),
    (
        "leave_requests",
        "employee_email",
        "id",
        "bigint",
        "text",
        "SELECT t.id, t.employee_email, m.new FROM leave_requests t JOIN m ON m.old = t.employee_email",
    ),
    (
        "user_settings",
        "email",
        "email",
        "text",
        "text",
        "SELECT t.email, t.email, m.new, EXISTS (SELECT 1 FROM user_settings x WHERE x.email = m.new) "
        "FROM user_settings t JOIN m ON m.old = t.email",
    ),
    (
        "project_members",
        "members",
        "id",
        "int",
        "text[]",
        "SELECT t.id, t.members, ARRAY(SELECT coalesce(m.new, e) FROM unnest(t.members) WITH ORDINALITY u(e, i) "
        "LEFT JOIN m ON m.old = e ORDER BY i) FROM (SELECT e.tid FROM (SELECT x.ctid AS tid, e.v FROM "
        "project_members x CROSS JOIN LATERAL unnest(x.members) e(v) OFFSET 0) e JOIN m ON m.old = e.v "
        "GROUP BY e.tid) h JOIN project_members t ON t.ctid = h.tid",
    ),
    (
        "audit_log",
        "actor_email",
        "id",
        "bigint",
        "text",
        "SELECT t.id, t.actor_email, m.new FROM audit_log t JOIN m ON m.old = t.actor_email",
    ),
    (
        "audit_log",
        "payload",
        "id",
        "bigint",
        "jsonb",
        "SELECT t.id, t.payload, replace(t.payload::text, to_json(m.old)::text, to_json(m.new)::text)::jsonb "
        f"FROM (SELECT s.tid, min(s.v) AS v FROM (SELECT a.ctid AS tid, x AS v FROM audit_log a CROSS JOIN LATERAL "
        f"{_DOC} x OFFSET 0) s JOIN m ON m.old = s.v GROUP BY s.tid) h JOIN audit_log t ON t.ctid = h.tid "
        "JOIN m ON m.old = h.v",
    ),
]
_BIG = {"audit_log.payload"}  # the helper connection's share: the largest scan alone


def _lines(table: str, col: str, q: str) -> str:
    d = ", 'd', q.d" if table == "user_settings" else ""
    cols = "k, o, n, d" if table == "user_settings" else "k, o, n"
    return (
        f"COPY (SELECT json_build_object('t', '{table}', 'c', '{col}', 'k', q.k, 'o', q.o, 'n', q.n{d})::text "
        f"FROM ({q}) q({cols})) TO STDOUT (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"  # bytes as they are
    )


def plan(dsn: str, mappings: str, out: str) -> None:
    mapping = json.loads(Path(mappings).read_text(encoding="utf-8"))
    main, helper = psycopg.connect(dsn), psycopg.connect(dsn)
    for c in (main, helper):  # the mapping first: a read-only transaction cannot create a table
        c.execute("CREATE TEMP TABLE m (old text PRIMARY KEY, new text NOT NULL)")
        with c.cursor().copy("COPY m (old, new) FROM STDIN") as cp:
            for old, new in mapping.items():
                cp.write_row((old, new))
        c.execute("ANALYZE m")
        c.commit()
    main.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    snapshot = main.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
    helper.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    helper.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
    parts: dict[str, list[bytes]] = {}

    def run(conn: psycopg.Connection, which: list[tuple[str, str, str]]) -> None:
        for table, col, q in which:
            chunks: list[bytes] = []
            with conn.cursor().copy(_lines(table, col, q)) as cp:
                for data in cp:
                    chunks.append(bytes(data))
            parts[f"{table}.{col}"] = chunks

    big = [(t, c, q) for t, c, _, _, _, q in READS if f"{t}.{c}" in _BIG]
    rest = [(t, c, q) for t, c, _, _, _, q in READS if f"{t}.{c}" not in _BIG]
    th = threading.Thread(target=run, args=(helper, big))
    th.start()
    run(main, rest)
    th.join()
    body = b"".join(b"".join(parts[f"{t}.{c}"]) for t, c, *_ in READS)
    header = json.dumps({"format": "floor", "body_sha256": hashlib.sha256(body).hexdigest()}).encode() + b"\n"
    with gzip.open(out, "wb", compresslevel=1) as f:
        f.write(header + body)
    main.rollback()
    helper.rollback()


def _member(col: str) -> str:
    """The grouped lines' new value of one column (g.n holds them by column name)."""
    return f"(g.n -> '{col}')"


def _value(ctype: str, v: str) -> str:
    """The column's value from its JSON `v`."""
    return (
        f"ARRAY(SELECT jsonb_array_elements_text({v}))"
        if ctype == "text[]"
        else v
        if ctype == "jsonb"
        else f"({v} #>> '{{}}')"
    )


def apply(dsn: str, path: str) -> None:
    with gzip.open(path, "rb") as f:
        header = json.loads(f.readline())
        body = f.read()
    if hashlib.sha256(body).hexdigest() != header["body_sha256"]:
        raise SystemExit(f"{path}: digest mismatch")
    with psycopg.connect(dsn) as c:
        c.execute("SELECT pg_advisory_xact_lock(4242)")
        c.execute("SET LOCAL work_mem = '64MB'")  # as emailsync's apply: the grouped lines hashed in memory
        c.execute("CREATE TABLE IF NOT EXISTS floor_ledger (digest text PRIMARY KEY, at timestamptz NOT NULL)")
        c.execute("INSERT INTO floor_ledger VALUES (%s, now())", (header["body_sha256"],))  # a second apply fails
        c.execute("CREATE TEMP TABLE r (doc jsonb NOT NULL)")
        with c.cursor().copy("COPY r (doc) FROM STDIN") as cp:
            cp.write(body.replace(b"\\", b"\\\\"))
        c.execute(
            "CREATE TEMP TABLE l AS SELECT doc ->> 't' AS t, doc ->> 'c' AS c, doc -> 'k' AS k, doc -> 'o' AS o, "
            "doc -> 'n' AS n, COALESCE((doc -> 'd')::bool, false) AS d FROM r"
        )
        c.execute("ANALYZE l (t, c, d)")  # what the joins filter on: sampling the documents costs more
        tables: dict[str, list[tuple[str, str, str, str]]] = {}
        for table, col, key, ktype, ctype, _ in READS:
            tables.setdefault(table, []).append((col, key, ktype, ctype))
        for table, cols in tables.items():
            # One column: its lines join the table directly. Several: one row version per row, its lines grouped,
            # every column written only where all still hold their planned old values (a table's columns written
            # one UPDATE each cost audit_log twice the time; grouping one column's lines costs a sort for nothing).
            key, ktype = cols[0][1], cols[0][2]
            planned = c.execute(f"SELECT count(*) FROM l WHERE l.t = '{table}'").fetchone()[0]  # type: ignore[index]
            written = 0
            if table == "user_settings":
                written += c.execute(
                    f"DELETE FROM {table} t USING l WHERE l.t = '{table}' AND l.d AND t.{key} = (l.k #>> '{{}}')::"
                    f"{ktype} AND to_jsonb(t.{cols[0][0]}) = l.o"
                ).rowcount
            if len(cols) == 1:  # the lines join the table directly
                col, _, _, ctype = cols[0]
                val = _value(ctype, "l.n")
                written += c.execute(
                    f"UPDATE {table} t SET {col} = {val} FROM l WHERE l.t = '{table}' AND NOT l.d "
                    f"AND t.{key} = (l.k #>> '{{}}')::{ktype} AND to_jsonb(t.{col}) = l.o"
                ).rowcount
            else:
                sets = ", ".join(
                    f"{col} = CASE WHEN g.n ? '{col}' THEN {_value(ctype, _member(col))} ELSE t.{col} END"
                    for col, _, _, ctype in cols
                )
                holds = " AND ".join(f"(NOT g.o ? '{col}' OR to_jsonb(t.{col}) = g.o -> '{col}')" for col, *_ in cols)
                n = c.execute(
                    "WITH g AS MATERIALIZED (SELECT l.k, jsonb_object_agg(l.c, l.o) AS o, "
                    f"jsonb_object_agg(l.c, l.n) AS n, count(*) AS lines FROM l WHERE l.t = '{table}' AND NOT l.d "
                    "GROUP BY l.k), "
                    f"u AS (UPDATE {table} t SET {sets} FROM g WHERE t.{key} = (g.k #>> '{{}}')::{ktype} AND {holds} "
                    "RETURNING g.lines) SELECT COALESCE(sum(lines), 0) FROM u"
                ).fetchone()[0]  # type: ignore[index]
                written += int(n)
            if written != planned:
                raise SystemExit(f"{table}: {planned - written} change(s) found stale since the plan; rolled back")
            # Read back once per table: every written column against its planned new value.
            after = f"({'l.n' if key == cols[0][0] else 'l.k'} #>> '{{}}')::{ktype}"
            now = "CASE l.c " + " ".join(f"WHEN '{col}' THEN to_jsonb(t.{col})" for col, *_ in cols) + " END"
            wrong = c.execute(
                f"SELECT count(*) FROM l LEFT JOIN {table} t ON t.{key} = {after} WHERE l.t = '{table}' AND NOT l.d "
                f"AND {now} IS DISTINCT FROM l.n"
            ).fetchone()[0]  # type: ignore[index]
            if wrong:
                raise SystemExit(f"{table}: {wrong} change(s) did not read back as planned; rolled back")
        c.commit()


if __name__ == "__main__":
    if sys.argv[1:2] == ["plan"]:
        plan(*sys.argv[2:5])
    elif sys.argv[1:2] == ["apply"]:
        apply(*sys.argv[2:4])
    else:
        raise SystemExit(__doc__)
