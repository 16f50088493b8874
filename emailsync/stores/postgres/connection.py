"""PostgreSQL connections: made per target, with jsonb read exactly, and where each one arrived."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import set_json_dumps, set_json_loads

from emailsync.config import PostgresTarget, dsn_secrets, redact
from emailsync.errors import UserError
from emailsync.plan import dumps

_JSONB_DECODER = json.JSONDecoder(parse_float=Decimal)


def _load_jsonb(data: str | bytes | memoryview) -> Any:
    # One decoder for every value: json.loads with options builds a new one per call.
    return _JSONB_DECODER.decode(data if isinstance(data, str) else bytes(data).decode("utf-8"))


def connect(target: PostgresTarget) -> psycopg.Connection:
    """Connect with credentials kept out of every message."""
    dsn = target.dsn.get_secret_value()
    try:
        conn = psycopg.connect(dsn, connect_timeout=10, application_name="emailsync")
    except psycopg.Error as e:
        said = target.described()
        detail = redact(str(e).strip(), dsn_secrets(dsn)).splitlines()
        raise UserError(
            f"target {target.name!r}: cannot connect to PostgreSQL at host {said['host'] or '(libpq default)'!r}, "
            f"port {said['port'] or '(libpq default)'!r}, database {said['database'] or '(libpq default)'!r}: "
            f"{' '.join(detail)}. Check the DSN's host, credentials and that the server is running."
        ) from None
    # TimeZone UTC (committed, so no later rollback undoes it; PGTZ would override a startup option): to_jsonb
    # renders timestamptz in the session's zone, and images must compare equal whatever zone each step ran in.
    conn.execute("SET TimeZone = 'UTC'")
    # UTF-8 whatever PGCLIENTENCODING or the database says: plan lines go to COPY as the file's bytes.
    conn.execute("SET client_encoding = 'UTF8'")
    conn.commit()
    # Exact numbers both ways: numeric stays Decimal, and our canonical JSON writes it back unchanged.
    set_json_loads(_load_jsonb, conn)
    set_json_dumps(dumps, conn)
    return conn


# What the server says it is. The DSN string alone cannot tell: libpq fills what it leaves out from PGHOST,
# PGPORT, PGDATABASE, a service file and the user name. system_identifier names the cluster (a restored copy keeps
# it, hence host and port as well); an administrator may revoke pg_control_system(), and then it is None.
_REACHED = """
    SELECT current_database(), host(inet_server_addr()), inet_server_port()::text, current_setting('port'),
           has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')
"""


def reached(conn: psycopg.Connection) -> dict[str, str | None]:
    """Where this connection arrived, as the server reports it: recorded in plans and checked by apply."""
    row = conn.execute(_REACHED).fetchone()
    assert row is not None
    database, addr, port, port_setting, may_read_control = row
    system_identifier = None
    if may_read_control:  # its own statement: a privilege is checked when a statement starts, whatever a CASE says
        ident = conn.execute("SELECT system_identifier::text FROM pg_catalog.pg_control_system()").fetchone()
        system_identifier = ident[0] if ident else None
    conn.rollback()
    # A Unix socket has no server address: the socket's folder (as libpq resolved it) names it on this host.
    host = addr if addr is not None else conn.info.host
    return {
        "host": host,
        "port": port if port is not None else port_setting,
        "database": database,
        "system_identifier": system_identifier,
    }
