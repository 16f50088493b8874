"""`emailsync discover`: find the columns and attributes that hold email addresses, and propose targets.yaml.

Read-only and bounded. PostgreSQL: the catalog names every text-like, text-array and jsonb column of every table
the connection can read; each table is then sampled once (TABLESAMPLE SYSTEM on large tables, LIMIT always) in a
read-only transaction with a statement timeout. DynamoDB: ListTables, DescribeTable, and one Scan of at most
`sample` items per table. A column or attribute is proposed when its name looks like an email field and some
sampled value is an address, or when most sampled values are addresses; the evidence (how many matched) is kept
for the reviewer. Nothing is ever written to a store; only `--write` writes, and only targets.yaml.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, ConfigDict, ValidationError

from emailsync import progress
from emailsync.config import (
    DynamoTarget,
    JsonPath,
    PostgresTable,
    PostgresTarget,
    check_targets,
    dsn_secrets,
    load_targets,
    read_raw_yaml,
    string_values,
)
from emailsync.errors import UserError
from emailsync.files import write_atomic
from emailsync.mappings import is_email

if TYPE_CHECKING:
    from emailsync.stores.postgres.catalog import ColumnKind

DEFAULT_SAMPLE = 1000
MAX_SAMPLE = 100_000
_MAX_DEPTH = 5  # nested DynamoDB maps followed at most this deep

# An email-like name: email, e_mail, e-mail, userEmail, approverEmails, mail, mail_address; not gmail_token.
NAME_RE = re.compile(r"e[-_]?mail|(^|[^a-z])mail($|[^a-z])|mail_?addr", re.IGNORECASE)
# A login table is worth a reminder about `live: true`; never set it on a guess.
_LOGIN_RE = re.compile(r"auth|login|credential|signin|sign_in", re.IGNORECASE)
# "USER#jane@x.com" or "TENANT|jane@x.com#PROFILE": an address between separators (see `template` in targets.yaml).
_TEMPLATED = re.compile(r"(?P<pre>[^@]*?[#|:/])(?P<email>[^#|:/@\s]+@[^#|:/@\s]+)(?P<post>[#|:/][^@]*)?")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Evidence(_Frozen):
    """One column or attribute: what was sampled, and the decision."""

    name: str  # column name, or attribute name / dotted path into maps
    path: str | None = None  # PostgreSQL jsonb: the dotted path inside the document where addresses were found
    type: str  # PostgreSQL type, or the DynamoDB types seen (S, L, SS)
    name_match: bool
    sampled: int  # non-empty values sampled
    matched: int  # of those, how many are (or hold) an email address
    template: str | None = None  # DynamoDB: the address sits inside a larger string, e.g. USER#{email}
    proposed: bool
    configured: bool  # already in targets.yaml
    why: str


class TableFinding(_Frozen):
    table: str  # as targets.yaml would name it: schema.table (PostgreSQL) or the table name (DynamoDB)
    configured_as: str | None = None  # the entry's `table:` text when targets.yaml already lists it
    configured_index: int | None = None  # and its position in the target's `tables:` list
    key: tuple[str, ...] = ()
    key_source: Literal["primary key", "unique index", "table key", "configured", "none"]
    unique: tuple[str, ...] = ()  # unique indexes over a proposed column (PostgreSQL)
    sampled: int
    method: str
    columns: tuple[Evidence, ...]
    note: str | None = None

    @property
    def proposed(self) -> list[Evidence]:
        return [c for c in self.columns if c.proposed]


class TargetFinding(_Frozen):
    name: str
    kind: Literal["postgres", "dynamodb"]
    tables: tuple[TableFinding, ...]
    unreadable: tuple[str, ...] = ()  # tables the connection may not read
    left_out: tuple[tuple[str, str], ...] = ()  # (table, why): tables that cannot be proposed as one entry


class Discovery(_Frozen):
    format: Literal["emailsync-discovery"] = "emailsync-discovery"
    version: Literal[1] = 1
    sample: int
    targets: tuple[TargetFinding, ...]


def _decide(name_match: bool, sampled: int, matched: int, noun: str = "values") -> tuple[bool, str]:
    """Proposed when the name says email and a value agrees, or when most values are addresses."""
    said = "its name looks like an email field; " if name_match else ""
    if sampled == 0:
        if name_match:
            return True, "its name looks like an email field; no values to sample"
        return False, "no values to sample"
    verb = "are addresses" if noun == "values" else "hold an address"
    share = f"{matched} of {sampled} sampled {noun} {verb}"
    if matched == 0:
        return False, said + share
    if name_match or matched * 2 >= sampled:
        return True, said + share
    return False, f"only {share}"


# --- PostgreSQL -----------------------------------------------------------------------------------------------

_TABLES = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.reltuples::float8,
       c.relpages,  -- the catalog's estimate: pg_relation_size would lock every table, even one held by DDL
       has_table_privilege(c.oid, 'SELECT') AND has_schema_privilege(n.oid, 'USAGE'),
       EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'emailsync')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""

_COLUMNS = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), bt.typname, et.typname,
       a.attgenerated <> '', a.attnotnull
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

# Partitions at any depth, and unique indexes a partition has of its own (not attached to one of the parent's).
_PARTITIONS = """
WITH RECURSIVE parts(oid) AS (
    SELECT inhrelid FROM pg_inherits WHERE inhparent = %s
    UNION SELECT i.inhrelid FROM pg_inherits i JOIN parts p ON i.inhparent = p.oid
)
SELECT parts.oid,
       EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = parts.oid AND x.indisunique
               AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = x.indexrelid))
FROM parts
"""

_PRIMARY_KEYS = """
SELECT i.indrelid, array_agg(a.attname ORDER BY k.ord)
FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = ANY(%s) AND i.indisprimary
GROUP BY i.indrelid
"""


def _elements(value: list[Any]) -> Iterable[str]:
    """The strings of an array, of any number of dimensions (text[][] arrives as nested lists)."""
    for e in value:
        if isinstance(e, list):
            yield from _elements(e)
        elif e is not None:
            yield e


def _holds_email(kind: str, value: Any) -> bool | None:
    """True/False for a sampled value, None when there is nothing in it to judge (NULL, an empty array)."""
    if value is None:
        return None
    if kind == "text":
        return is_email(value)
    if kind == "array":
        elements = list(_elements(value))
        return any(is_email(e) for e in elements) if elements else None
    return any(is_email(s) for s in string_values(value))  # values only: the planner never changes keys


def _doc_paths(doc: Any, at: tuple[str, ...] = (), depth: int = 0) -> Iterable[tuple[tuple[str, ...], bool]]:
    """(path, holds an address) for every place in a document, through nested objects, that holds a string or an
    array with strings: where a `path:` entry could point."""
    if not isinstance(doc, dict) or depth > _MAX_DEPTH:
        return
    for k, v in doc.items():
        here = (*at, k)
        if isinstance(v, str):
            yield here, is_email(v)
        elif isinstance(v, list) and any(isinstance(e, str) for e in v):
            yield here, any(isinstance(e, str) and is_email(e) for e in v)
        elif isinstance(v, dict):
            yield from _doc_paths(v, here, depth + 1)


def _path_evidence(name: str, type_sql: str, docs: list[Any], cfg: PostgresTable | None) -> list[Evidence] | None:
    """A jsonb column's sampled documents, path by path: Evidence for each path that held an address (proposed by
    the same rule as a column, its last name part standing for the name). None where no path holds one: the column
    is judged whole (an address inside an array of objects, which no path reaches; or none at all)."""
    seen: dict[tuple[str, ...], list[int]] = {}  # path -> [documents holding a string there, holding an address]
    for doc in docs:
        for path, email in _doc_paths(doc):
            counts = seen.setdefault(path, [0, 0])
            counts[0] += 1
            counts[1] += email
    listed = {c.path for c in (cfg.columns if cfg else ()) if isinstance(c, JsonPath) and c.name == name}
    out = []
    taken: list[tuple[str, ...]] = []  # paths proposed so far: a column's paths may not nest (targets.yaml refuses)
    # The most telling first (most documents with an address there, then the shallower), so a path nested in a better
    # one is the one left out.
    for path, (sampled, matched) in sorted(seen.items(), key=lambda kv: (-kv[1][1], len(kv[0]), kv[0])):
        dotted = ".".join(path)
        if not matched and dotted not in listed:
            continue
        if any("." in p or not p or p != p.strip() for p in path):
            continue  # a name a dotted path cannot spell
        name_match = NAME_RE.search(path[-1]) is not None
        proposed, why = _decide(name_match, sampled, matched, "documents")
        inside = next((t for t in taken if t == path[: len(t)] or path == t[: len(path)]), None)
        if proposed and inside is not None:
            proposed, why = False, f"{why}; overlaps path {'.'.join(inside)}, proposed instead (paths cannot nest)"
        elif proposed:
            taken.append(path)
        out.append(
            Evidence(
                name=name,
                path=dotted,
                type=type_sql,
                name_match=name_match,
                sampled=sampled,
                matched=matched,
                proposed=proposed,
                configured=dotted in listed,
                why=f"{why} at this path",
            )
        )
    return sorted(out, key=lambda e: e.path or "") if any(e.matched for e in out) else None


def discover_postgres(target: PostgresTarget, sample: int) -> TargetFinding:
    from emailsync.stores import registry
    from emailsync.stores.postgres.catalog import column_kind, display_ident

    conn = registry.connect(target)
    try:
        conn.read_only = True
        # Bounded on a busy production database: never wait long for a lock, never run long. Session settings,
        # because each table is read in its own transaction (its lock released before the next table).
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(target.lock_timeout)))
        conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(target.statement_timeout or "60s")))
        conn.commit()
        configured: dict[int, int] = {}  # oid -> position in the target's tables
        for position, t in enumerate(target.tables):
            name = (
                sql.SQL("{}.{}").format(sql.Identifier(t.schema_name), sql.Identifier(t.table_name))
                if t.schema_name is not None
                else sql.Identifier(t.table_name)
            )
            row = conn.execute("SELECT to_regclass(%s)::oid", (name.as_string(conn),)).fetchone()
            if row and row[0] is not None:
                configured[row[0]] = position
        tables = conn.execute(_TABLES).fetchall()
        oids = [r[0] for r in tables]
        columns: dict[int, list[tuple[Any, ...]]] = {}
        for row in conn.execute(_COLUMNS, (oids,)):
            columns.setdefault(row[0], []).append(row[1:])
        pks: dict[int, list[str]] = dict(conn.execute(_PRIMARY_KEYS, (oids,)).fetchall())
        found: list[TableFinding] = []
        unreadable: list[str] = []
        left_out: list[tuple[str, str]] = []
        with progress.task(f"discover {target.name}", total=len(tables)) as bar:
            for oid, schema, relname, relkind, reltuples, pages, readable, inherited in tables:
                conn.rollback()  # read-only, nothing to keep: the last table's lock goes now, not at the end
                bar.advance()
                display = f"{display_ident(schema)}.{display_ident(relname)}"
                cols = columns.get(oid, [])
                ti = configured.get(oid)
                cfg = target.tables[ti] if ti is not None else None
                candidates: list[tuple[str, str, ColumnKind]] = []  # (name, type, kind)
                for attname, type_sql, typname, elem, generated, _notnull in cols:
                    kind, _ = column_kind(typname, elem)
                    if kind is not None and not generated:
                        candidates.append((attname, type_sql, kind))
                if not candidates:
                    continue
                if not readable:
                    unreadable.append(display)
                    continue
                why_not = None if cfg is not None else _whole_table_problem(conn, oid, relkind, inherited, configured)
                if why_not:
                    left_out.append((display, why_not))
                    continue
                bar.describe(f"discover {target.name}: sampling {display}")
                try:
                    rows, method = _sample_table(conn, schema, relname, relkind, reltuples, pages, candidates, sample)
                except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as e:
                    conn.rollback()
                    left_out.append((display, f"not read: {e.diag.message_primary or e} (a lock held, or too slow)"))
                    continue
                evidence = []
                for i, (attname, type_sql, kind) in enumerate(candidates):
                    if kind == "jsonb":
                        found_paths = _path_evidence(attname, type_sql, [r[i] for r in rows], cfg)
                        if found_paths is not None:
                            evidence += found_paths
                            continue
                    verdicts = [v for v in (_holds_email(kind, r[i]) for r in rows) if v is not None]
                    matched = sum(verdicts)
                    name_match = NAME_RE.search(attname) is not None
                    noun = "documents" if kind == "jsonb" else "arrays" if kind == "array" else "values"
                    proposed, why = _decide(name_match, len(verdicts), matched, noun)
                    in_cfg = cfg is not None and attname in cfg.columns  # listed whole (by name)
                    if proposed or in_cfg or matched or name_match:
                        evidence.append(
                            Evidence(
                                name=attname,
                                type=type_sql,
                                name_match=name_match,
                                sampled=len(verdicts),
                                matched=matched,
                                proposed=proposed,
                                configured=in_cfg,
                                why=why,
                            )
                        )
                if not evidence:
                    continue
                key, key_source, note = _pg_key(oid, pks, cols, conn, cfg)
                uniques = _unique_over(conn, oid, {e.name for e in evidence if e.proposed})
                found.append(
                    TableFinding(
                        table=display,
                        configured_as=cfg.table if cfg else None,
                        configured_index=ti,
                        key=key,
                        key_source=key_source,
                        unique=uniques,
                        sampled=len(rows),
                        method=method,
                        columns=tuple(evidence),
                        note=note,
                    )
                )
        conn.rollback()
    finally:
        conn.close()
    return TargetFinding(
        name=target.name,
        kind="postgres",
        tables=tuple(found),
        unreadable=tuple(unreadable),
        left_out=tuple(left_out),
    )


def _whole_table_problem(
    conn: psycopg.Connection, oid: int, relkind: str, inherited: bool, configured: dict[int, int]
) -> str | None:
    """Why a table cannot be proposed as one entry, or None. Plan reads a table with its inheritance children and
    partitions, so proposing it next to them would change a row twice."""
    ancestors = conn.execute(
        "WITH RECURSIVE up(oid) AS (SELECT inhparent FROM pg_inherits WHERE inhrelid = %s "
        "UNION SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.oid) SELECT oid FROM up",
        (oid,),
    ).fetchall()
    if any(a in configured for (a,) in ancestors):
        return "it inherits from a configured table, and plan reads its rows through that table already"
    if relkind == "r" and inherited:
        return (
            "has inheritance children, which plan would read through it as well; its children are proposed on "
            "their own (rows in the parent itself need an entry written by hand, without the children)"
        )
    if relkind == "p":
        parts = conn.execute(_PARTITIONS, (oid,)).fetchall()
        if any(p in configured for p, _ in parts):
            return "some of its partitions are configured as tables; configure the partitions or the table, not both"
        if any(own for _, own in parts):
            return "its partitions have unique indexes of their own; configure the partitions as tables instead"
    return None


def _unique_over(conn: psycopg.Connection, oid: int, columns: set[str]) -> tuple[str, ...]:
    """Unique indexes (and constraints) that depend on any of `columns`: in keys, expressions or predicates."""
    return tuple(
        r[0]
        for r in conn.execute(
            """
            SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
            WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid AND EXISTS (
                SELECT 1 FROM pg_attribute a
                WHERE a.attrelid = i.indrelid AND a.attname = ANY(%s) AND (
                    a.attnum = ANY(i.indkey::int2[])
                    OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                               AND d.objid = i.indexrelid AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum)))
            ORDER BY 1
            """,
            (oid, sorted(columns)),
        )
    )


def _pg_key(
    oid: int, pks: dict[int, list[str]], cols: list[tuple[Any, ...]], conn: psycopg.Connection, cfg: Any
) -> tuple[tuple[str, ...], Literal["primary key", "unique index", "configured", "none"], str | None]:
    if cfg is not None and cfg.key:
        return tuple(cfg.key), "configured", None
    if oid in pks:
        return tuple(pks[oid]), "primary key", None
    # No primary key: a plain unique index over NOT NULL columns identifies rows just as well.
    notnull = {c[0] for c in cols if c[5]}
    for (names,) in conn.execute(
        """
        SELECT ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                     WHERE k.o <= i.indnkeyatts ORDER BY k.o)  -- key columns, not INCLUDE ones
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
        ORDER BY i.indnkeyatts, ic.relname
        """,
        (oid,),
    ):
        if names and set(names) <= notnull:
            return tuple(names), "unique index", None
    return (
        (),
        "none",
        "no primary key and no unique NOT NULL columns: add `key: [...]` naming columns that identify a row",
    )


def _sample_table(
    conn: psycopg.Connection,
    schema: str,
    name: str,
    relkind: str,
    reltuples: float,
    pages: int,
    candidates: list[tuple[str, str, ColumnKind]],
    sample: int,
) -> tuple[list[tuple[Any, ...]], str]:
    """At most `sample` rows: the first ones of a small table, a page sample (TABLESAMPLE SYSTEM) of a big one."""
    cast = {"text": sql.SQL("::text"), "array": sql.SQL("::text[]"), "jsonb": sql.SQL("")}
    select = sql.SQL(", ").join(sql.SQL("{}{}").format(sql.Identifier(n), cast[k]) for n, _, k in candidates)
    table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    if reltuples < 0 and relkind == "r":
        # Never analyzed: the catalog knows neither rows nor pages. The size, read now under this table's own
        # lock_timeout (it takes the lock the sample takes anyway), gives about 50 rows a page.
        size = conn.execute(
            "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int",
            (table.as_string(conn),),
        ).fetchone()
        assert size is not None  # a SELECT without FROM returns one row
        pages = size[0]
    estimate = reltuples if reltuples >= 0 else pages * 50.0
    if relkind == "r" and estimate > 4 * sample:
        percent = min(100.0, max(0.0001, 400.0 * sample / estimate))
        rows = conn.execute(
            sql.SQL("SELECT {} FROM ONLY {} TABLESAMPLE SYSTEM (%s) REPEATABLE (0) LIMIT %s").format(select, table),
            (percent, sample),
        ).fetchall()
        if rows:
            return rows, f"TABLESAMPLE SYSTEM ({percent:.4g}%) of about {int(estimate)} rows"
    # ONLY: an inheritance child's rows are its own table's evidence, not the parent's (partitioned: all of them).
    only = sql.SQL("ONLY ") if relkind == "r" else sql.SQL("")
    rows = conn.execute(sql.SQL("SELECT {} FROM {}{} LIMIT %s").format(select, only, table), (sample,)).fetchall()
    return rows, "first rows" if len(rows) >= sample else "all rows"


# --- DynamoDB -------------------------------------------------------------------------------------------------


class _AttrStats:
    """What one attribute path held across the sampled items."""

    def __init__(self) -> None:
        self.types: set[str] = set()
        self.sampled = 0  # items with a non-empty value here
        self.plain = 0  # items holding a bare address ("ann@x.com")
        self.shaped = 0  # items holding an address only inside a larger value ("USER#ann@x.com")
        self.templates: dict[tuple[str, str], int] = {}  # (before, after) around the address -> items

    def add(self, strings: list[str], t: str) -> None:
        self.types.add(t)
        if not strings:
            return
        self.sampled += 1
        shapes: set[tuple[str, str]] = set()
        plain = False
        for s in strings:
            # Checked first: "USER#ann@x.com" is itself a syntactically valid address, but a key prefix is what
            # it is when every value carries the same one.
            m = _TEMPLATED.fullmatch(s)
            if m and is_email(m["email"]):
                shapes.add((m["pre"], m["post"] or ""))
            elif is_email(s):
                plain = True
        if plain:
            self.plain += 1
        elif shapes:
            self.shaped += 1
            for shape in shapes:
                self.templates[shape] = self.templates.get(shape, 0) + 1


def _walk_item(item: dict[str, Any], stats: dict[str, _AttrStats], prefix: str = "", depth: int = 0) -> None:
    for name, av in item.items():
        if "." in name:
            continue  # a dotted path could not name it in targets.yaml
        path = prefix + name
        ((t, v),) = av.items()
        if t == "M" and depth < _MAX_DEPTH:
            _walk_item(v, stats, path + ".", depth + 1)
        elif t == "S":
            stats.setdefault(path, _AttrStats()).add([v], t)
        elif t == "SS":
            stats.setdefault(path, _AttrStats()).add(list(v), t)
        elif t == "L":
            strings = [e["S"] for e in v if "S" in e]
            if strings or not v:
                stats.setdefault(path, _AttrStats()).add(strings, t)


def discover_dynamodb(target: DynamoTarget, sample: int) -> TargetFinding:
    from emailsync.stores import registry
    from emailsync.stores.dynamodb.client import call

    client = registry.client_for(target, probe=True)
    names: list[str] = []
    kwargs: dict[str, Any] = {}
    while True:
        page = call(target, "list tables", client.list_tables, **kwargs)
        names += page.get("TableNames", [])
        if "LastEvaluatedTableName" not in page:
            break
        kwargs["ExclusiveStartTableName"] = page["LastEvaluatedTableName"]
    configured = {t.table: i for i, t in enumerate(target.tables)}
    names = [n for n in names if n != target.ledger_table]  # emailsync's own records hold no one's email
    found = []
    with progress.task(f"discover {target.name}", total=len(names)) as bar:
        for name in names:
            bar.describe(f"discover {target.name}: sampling {name}")
            bar.advance()
            desc = call(target, f"describe {name}", client.describe_table, TableName=name)["Table"]
            key = tuple(k["AttributeName"] for k in sorted(desc["KeySchema"], key=lambda k: k["KeyType"] != "HASH"))
            items: list[dict[str, Any]] = []
            scan: dict[str, Any] = {"TableName": name}
            while len(items) < sample:
                scan["Limit"] = sample - len(items)
                page = call(target, f"scan {name}", client.scan, **scan)
                items += page.get("Items", [])
                if "LastEvaluatedKey" not in page:
                    break
                scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            stats: dict[str, _AttrStats] = {}
            for item in items:
                _walk_item(item, stats)
            ti = configured.get(name)
            cfg = target.tables[ti] if ti is not None else None
            in_cfg = {a.name for a in cfg.attributes} if cfg else set()
            evidence = []
            for path, st in sorted(stats.items()):
                name_match = NAME_RE.search(path.rsplit(".", 1)[-1]) is not None
                template = None
                matched = st.plain
                if not st.plain and len(st.templates) == 1:
                    ((pre, post), matched), *_ = st.templates.items()
                    template = f"{pre}{{email}}{post}"
                proposed, why = _decide(name_match, st.sampled, matched, "items")
                if template:
                    why += f", inside {template}"
                elif not st.plain and len(st.templates) > 1:
                    shapes = ", ".join(sorted(f"{a}{{email}}{b}" for a, b in st.templates)[:3])
                    proposed, why = False, f"addresses inside values of several shapes ({shapes}): configure a template"
                elif st.shaped:
                    why += f"; {st.shaped} more hold one inside a larger value, which stays unchanged"
                if proposed or path in in_cfg or matched or name_match or st.shaped:
                    evidence.append(
                        Evidence(
                            name=path,
                            type="/".join(sorted(st.types)),
                            name_match=name_match,
                            sampled=st.sampled,
                            matched=matched,
                            template=template,
                            proposed=proposed,
                            configured=path in in_cfg,
                            why=why,
                        )
                    )
            if not evidence:
                continue
            note = None
            if _LOGIN_RE.search(name) and not target.is_live(name):
                note = (
                    "if people log in with this table, add `live: true` (and `client_attribute` if keys are per client)"
                )
            found.append(
                TableFinding(
                    table=name,
                    configured_as=name if cfg else None,
                    configured_index=ti,
                    key=key,
                    key_source="table key",
                    sampled=len(items),
                    method="Scan, Limit" if len(items) >= sample else "Scan of every item",
                    columns=tuple(evidence),
                    note=note,
                )
            )
    return TargetFinding(name=target.name, kind="dynamodb", tables=tuple(found))


# --- which targets --------------------------------------------------------------------------------------------


def _env_name(target: str) -> str:
    name = re.sub(r"[^A-Za-z0-9]+", "_", target).strip("_").upper()
    return ("DB_" if not name or name[0].isdigit() else "") + name + "_DSN"  # a variable cannot start with a digit


def bare_postgres(dsns: list[str], taken: set[str] | None = None) -> list[tuple[PostgresTarget, dict[str, Any]]]:
    """Targets for `--dsn`: named after their databases; the raw entry points at an environment variable, so
    the DSN (and its password) never lands in targets.yaml or on the screen."""
    out: list[tuple[PostgresTarget, dict[str, Any]]] = []
    used: set[str] = set()
    used_vars: set[str] = set(taken or ())  # variables the file already uses for other targets
    bad = (
        "not a valid PostgreSQL connection string; use a URI such as postgresql://user@host:5432/db or key=value "
        "pairs such as 'host=h dbname=db'"
    )
    for i, dsn in enumerate(dsns):
        if not dsn.strip():
            raise UserError(f"--dsn #{i + 1} is empty (an unset variable?); give a PostgreSQL connection string")
        try:
            params = conninfo_to_dict(dsn)
        except (psycopg.Error, ValueError):
            raise UserError(f"--dsn #{i + 1}: {bad}") from None
        db = params.get("dbname") or params.get("user") or "postgres"
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(db)).strip("-") or "postgres"
        base, n = name, 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        # app-hr and app_hr would both be APP_HR_DSN: one variable must never name two databases.
        var, n = _env_name(name), 2
        while var in used_vars:
            var, n = f"{_env_name(name)[:-4]}_{n}_DSN", n + 1
        used_vars.add(var)
        try:
            target = PostgresTarget.model_validate({"name": name, "dsn": dsn, "tables": []}, context={"discover": True})
        except ValidationError:
            raise UserError(f"--dsn #{i + 1}: {bad}") from None
        out.append((target, {"name": name, "dsn": f"${{{var}}}", "tables": []}))
    return out


def bare_dynamodb(endpoint: str | None, region: str | None) -> tuple[DynamoTarget, dict[str, Any]]:
    raw: dict[str, Any] = {"name": "dynamodb"}
    if region:
        raw["region"] = region
    if endpoint:
        raw["endpoint_url"] = endpoint
    try:
        target = DynamoTarget.model_validate({**raw, "tables": []}, context={"discover": True})
    except ValidationError as e:
        msg = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors(include_url=False))
        raise UserError(f"--dynamodb-endpoint/--dynamodb-region: {msg}") from None
    return target, {**raw, "tables": []}


# --- merging into targets.yaml --------------------------------------------------------------------------------

Comments = dict[tuple[Any, ...], str]


def merge(
    doc: dict[str, Any], discovery: Discovery, positions: dict[tuple[str, str], int] | None = None
) -> tuple[dict[str, Any], Comments, list[str], list[str]]:
    """Add every proposed column and attribute to the raw targets document (never remove or change what is
    there). Returns the document, a comment per place for the rendering, what was added, and notes on what was
    considered but not proposed. `positions` gives each target's index in its list (names in the raw document
    may still be ${VAR} references); by default targets are found by name."""
    comments: Comments = {}
    added: list[str] = []
    notes = [f"not read ({t.name} {u}): no SELECT privilege" for t in discovery.targets for u in t.unreadable]
    notes += [f"not proposed ({t.name} {table}): {why}" for t in discovery.targets for table, why in t.left_out]
    for tf in discovery.targets:
        entries = doc.setdefault(tf.kind, [])
        ti = (positions or {}).get((tf.kind, tf.name))
        if ti is None:
            ti = next(i for i, e in enumerate(entries) if isinstance(e, dict) and e.get("name") == tf.name)
        tables = entries[ti].setdefault("tables", [])
        for table in tf.tables:
            proposed = table.proposed
            notes += [
                f"not proposed ({tf.name} {table.table}.{e.name}{f' path {e.path}' if e.path else ''}): {e.type}; "
                f"{e.why}"
                for e in table.columns
                if not e.proposed and not e.configured
            ]
            # By position: the raw entry may name the table through a ${VAR}. By name for a --dsn target merged into
            # an existing one of the same name, whose tables the discovery did not know.
            at = table.configured_index
            if at is None:
                at = next(
                    (j for j, e in enumerate(tables) if isinstance(e, dict) and e.get("table") == table.table), None
                )
            field = "columns" if tf.kind == "postgres" else "attributes"
            if at is None:
                if not proposed:
                    continue
                if tf.kind == "postgres" and table.key_source == "none":
                    notes.append(f"not proposed ({tf.name} {table.table}): {table.note}")
                    continue
                entry: dict[str, Any] = {"table": table.table, field: []}
                if tf.kind == "postgres":
                    if table.key_source == "unique index":
                        entry["key"] = list(table.key)
                    if table.unique:
                        # A newly found table with a unique email: the plan refuses conflicts until a person
                        # chooses delete or skip, instead of deleting rows nobody decided about.
                        entry["on_conflict"] = "fail"
                tables.append(entry)
                at = len(tables) - 1
                comments[(tf.kind, ti, "tables", at)] = "new: " + _table_comment(table)
            else:
                comments[(tf.kind, ti, "tables", at)] = _table_comment(table)
            if table.note and tf.kind == "dynamodb":
                comments[(tf.kind, ti, "tables", at)] += "; " + table.note
            entry = tables[at]
            items = entry.setdefault(field, [])
            have = {_entry_id(i) for i in items}
            # A column is listed whole or by paths, never both (targets.yaml refuses it): what is there decides.
            whole = {name for name, path in have if path is None}
            by_path = {name for name, path in have if path is not None}
            for ev in table.columns:
                if ev.proposed and ev.path is not None and ev.name in whole:
                    notes.append(
                        f"not proposed ({tf.name} {table.table}.{ev.name} path {ev.path}): the column is listed whole "
                        "already; list it by paths instead if only some values are addresses"
                    )
                    continue
                if ev.proposed and ev.path is None and ev.name in by_path:
                    continue
                if ev.proposed and (ev.name, ev.path) not in have:
                    if ev.path is not None:
                        items.append({"name": ev.name, "path": ev.path})
                    else:
                        items.append({"name": ev.name, "template": ev.template} if ev.template else ev.name)
                    added.append(f"{tf.name}/{table.table}: {ev.name}{f' path {ev.path}' if ev.path else ''}")
                    have.add((ev.name, ev.path))
            for k, item in enumerate(items):
                listed = next((e for e in table.columns if (e.name, e.path) == _entry_id(item)), None)
                if listed is not None:
                    mark = "" if listed.configured else "new: "
                    comments[(tf.kind, ti, "tables", at, field, k)] = f"{mark}{listed.type}; {listed.why}"
            if entry.get("on_conflict") == "fail" and table.unique:
                comments[(tf.kind, ti, "tables", at, "on_conflict")] = (
                    f"unique ({', '.join(table.unique)}): choose delete or skip if the plan reports conflicts"
                )
    return doc, comments, added, notes


def _entry_id(item: Any) -> tuple[Any, Any]:
    """(name, path) of a columns/attributes entry as written: a name, or a mapping with name (and path)."""
    if isinstance(item, dict):
        return item.get("name"), item.get("path")
    return item, None


def _table_comment(t: TableFinding) -> str:
    key = f"key {', '.join(t.key)} ({t.key_source})" if t.key else "no key"
    return f"{key}; sampled {t.sampled} ({t.method})"


# --- rendering ------------------------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z_$][A-Za-z0-9_.\-${}]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(v: Any) -> str:
    if isinstance(v, str) and _PLAIN.fullmatch(v) and v.lower() not in _YAML_WORDS:
        return v
    out = yaml.safe_dump(v, default_flow_style=True, width=1 << 20, allow_unicode=True).strip()
    return out.removesuffix("\n...").removesuffix("...").strip()


def _comment(c: str | None) -> str:
    return f"  # {' '.join(c.split())}" if c else ""


def _emit(value: Any, path: tuple[Any, ...], indent: int, comments: Comments, out: list[str], lead: str = "") -> None:
    """Block YAML for a mapping at `indent`; `lead` replaces the first line's indentation (a list item's "- ")."""
    pad = " " * indent
    first = True
    for k, v in value.items():
        start = (lead if first else pad) + _scalar(k) + ":"
        first = False
        here = (*path, k)
        if isinstance(v, dict) and v:
            out.append(start + _comment(comments.get(here)))
            _emit(v, here, indent + 2, comments, out)
        elif isinstance(v, list) and v:
            itemised = any((*here, i) in comments for i in range(len(v)))
            if not itemised and all(not isinstance(i, dict | list) for i in v):
                out.append(f"{start} [{', '.join(_scalar(i) for i in v)}]" + _comment(comments.get(here)))
                continue
            out.append(start + _comment(comments.get(here)))
            for i, item in enumerate(v):
                if isinstance(item, dict) and item:
                    before = len(out)
                    _emit(item, (*here, i), indent + 4, comments, out, lead=pad + "  - ")
                    if (*here, i) in comments:
                        out[before] += _comment(comments[(*here, i)])
                else:
                    text = _scalar(item) if not isinstance(item, dict | list) else _scalar(item)
                    out.append(f"{pad}  - {text}" + _comment(comments.get((*here, i))))
        else:
            out.append(f"{start} {_scalar(v)}" + _comment(comments.get(here)))


def render(doc: dict[str, Any], comments: Comments, header: list[str]) -> str:
    """targets.yaml text with the evidence as comments; checked to read back as exactly `doc`."""
    out = [f"# {line}" if line else "#" for line in header]
    _emit(doc, (), 0, comments, out)
    text = "\n".join(out) + "\n"
    if yaml.safe_load(text) != doc:  # never hand out YAML that means something else than the merge
        text = "\n".join(f"# {line}" for line in header) + "\n" + yaml.safe_dump(doc, sort_keys=False)
    return text


def header_lines(discovery: Discovery, added: list[str], notes: list[str]) -> list[str]:
    n_tables = sum(1 for t in discovery.targets for tb in t.tables if tb.proposed)
    lines = [
        f"emailsync discover ({datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}): sampled at most "
        f"{discovery.sample} rows or items per table; evidence as comments.",
        f"{len(added)} column(s)/attribute(s) proposed beyond the current file, in {n_tables} table(s) holding "
        "addresses. Review before planning: a proposal is a guess from a sample.",
    ]
    # A name or a value can hold a line break: in a comment it would start a line of live YAML.
    return [" ".join(line.split()) for line in lines + notes]


def write_targets(path: Path, text: str) -> Path | None:
    """Replace targets.yaml atomically after checking the result loads; the old file is kept beside it."""
    env_file = Path(os.path.abspath(path)).parent / ".env"  # where the user's commands will look, link or not
    path = path.resolve()  # through a symlink, so the link stays a link
    backup: Path | None = None
    written = False  # the new file is complete beside the old one

    def check_and_back_up(tmp: Path) -> None:
        nonlocal backup, written
        written = True
        try:
            # A merge that does not load is never written. Variables may be unset yet: --dsn asks for them.
            check_targets(tmp, env_file)
        except UserError as e:
            raise UserError(
                f"{path}: the merged file would not load, so nothing was written; please report this",
                problems=e.problems or [str(e)],
            ) from None
        if path.exists():
            backup = _back_up(path)

    try:
        # A new file is private (it may come to hold a literal password); a replaced one keeps its mode.
        write_atomic(path, text, mode=0o600, keep_mode=True, before_replace=check_and_back_up)
    except OSError as e:
        if not written:
            raise UserError(
                f"{path}: cannot write beside the targets file ({e.strerror}); nothing was written"
            ) from None
        raise UserError(f"{path}: cannot write the targets file ({e.strerror}); it is unchanged") from None
    return backup


def _back_up(path: Path) -> Path:
    """A copy of `path` beside it, named after the time, with the file's own mode (a private targets file holding a
    literal password stays private). An earlier backup is never overwritten: it may be the only copy of the
    original."""
    mode = stat.S_IMODE(path.stat().st_mode)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    n = 0
    while True:
        backup = path.with_name(f"{path.name}.{stamp}{f'-{n}' if n else ''}.bak")
        try:
            bfd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            break
        except FileExistsError:
            n += 1
    with os.fdopen(bfd, "wb") as b:
        b.write(path.read_bytes())
        b.flush()
        os.fsync(b.fileno())
    os.chmod(backup, mode)  # os.open's mode is narrowed by the umask
    return backup


@dataclass(frozen=True)
class Result:
    discovery: Discovery
    text: str  # the merged targets.yaml, any literal password shown as ***
    added: list[str]  # "target/table: column" for each proposal new to the file
    backup: Path | None  # the previous targets.yaml, when --write replaced it
    env: list[str]  # variables the file just written needs that the user must set (--dsn targets)


def run(
    targets_path: Path,
    *,
    only: list[str] | None,
    dsns: list[str],
    ddb_endpoint: str | None,
    ddb_region: str | None,
    sample: int,
    write: bool,
) -> Result:
    """Discover, merge into the targets document, render; with `write`, replace targets.yaml."""
    if not 1 <= sample <= MAX_SAMPLE:
        raise UserError(f"--sample {sample}: give a number of rows per table between 1 and {MAX_SAMPLE}")
    doc: dict[str, Any]
    pg: list[PostgresTarget] = []
    ddb: list[DynamoTarget] = []
    env: list[str] = []
    positions: dict[tuple[str, str], int] = {}
    bare: list[tuple[str, dict[str, Any]]] = []  # --dsn / --dynamodb-* entries, added if they hold addresses
    if dsns or ddb_endpoint or ddb_region:
        if only:
            raise UserError(
                "--target picks targets from the targets file; it cannot be combined with --dsn or --dynamodb-*"
            )
        exists = write and targets_path.exists()
        if exists:  # a broken file is reported, never merged into (its variables may be unset: not read here)
            check_targets(targets_path, Path(os.path.abspath(targets_path)).parent / ".env")
        doc = _unshared(read_raw_yaml(targets_path)) if exists else {"version": 1, "mappings": "email_mappings.json"}
        taken = set(re.findall(r"\$\{(\w+)\}", targets_path.read_text(encoding="utf-8"))) if exists else set()
        for pg_target, raw in bare_postgres(dsns, taken):
            pg.append(pg_target)
            bare.append(("postgres", raw))
        if ddb_endpoint or ddb_region:
            ddb_target, raw = bare_dynamodb(ddb_endpoint, ddb_region)
            ddb.append(ddb_target)
            bare.append(("dynamodb", raw))
    else:
        loaded = load_targets(targets_path, discover=True)
        doc = _unshared(read_raw_yaml(targets_path))
        pg, ddb = list(loaded.config.postgres), list(loaded.config.dynamodb)
        # The raw document lists the targets in the same order as the validated one.
        positions = {("postgres", t.name): i for i, t in enumerate(pg)}
        positions |= {("dynamodb", t.name): i for i, t in enumerate(ddb)}
        names = [t.name for t in pg + ddb]
        if only:
            unknown = sorted(set(only) - set(names))
            if unknown:
                raise UserError(f"--target {unknown}: not in {targets_path} (targets: {names})")
            pg = [t for t in pg if t.name in only]
            ddb = [t for t in ddb if t.name in only]
        if not pg and not ddb:
            raise UserError(
                f"{targets_path}: no targets to discover; add a postgres target (name and dsn) or a dynamodb "
                "target (name, region or endpoint_url); `tables:` may be left out. Or pass --dsn"
            )
    findings = [discover_postgres(t, sample) for t in pg]
    findings += [discover_dynamodb(t, sample) for t in ddb]
    discovery = Discovery(sample=sample, targets=tuple(findings))
    useful = {t.name for t in discovery.targets if any(tb.proposed for tb in t.tables)}
    for kind, raw in bare:
        # A connection where nothing was found is not written: `tables: []` would not plan.
        if raw["name"] in useful and _add_entry(doc, kind, raw) and kind == "postgres":
            env.append(raw["dsn"][2:-1])
    # What merges: every configured target; of the bare ones, those just written into the document.
    merged = Discovery(sample=sample, targets=tuple(t for t in discovery.targets if t.name in useful or not bare))
    doc, comments, added, notes = merge(doc, merged, positions)
    header = header_lines(merged, added, notes)
    backup = None
    written = write and bool(added)  # nothing new: the file is untouched
    if written:
        backup = write_targets(targets_path, render(doc, comments, header))
    # On the screen, a literal DSN holding a password is hidden whole; the file keeps what the user wrote.
    screen, hidden = _masked(doc)
    comments = {**comments, **{place: "hidden here: the file's DSN holds a password" for place in hidden}}
    return Result(discovery, render(screen, comments, header), added, backup, env if written else [])


def _unshared(value: Any) -> Any:
    """A copy in which no list or mapping appears twice: YAML anchors, aliases and `<<` merges share objects, and
    adding a column to one entry must not add it to another."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value


def _masked(doc: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """The document with every PostgreSQL dsn that holds a literal password replaced by ***."""
    screen = _unshared(doc)
    hidden = []
    for i, entry in enumerate(screen.get("postgres") or []):
        dsn = entry.get("dsn") if isinstance(entry, dict) else None
        if isinstance(dsn, str) and dsn_secrets(dsn):
            entry["dsn"] = "***"
            hidden.append(("postgres", i, "dsn"))
    return screen, hidden


def _add_entry(doc: dict[str, Any], kind: str, raw: dict[str, Any]) -> bool:
    """Add a --dsn target to the document unless one of that name is there (then its own dsn is kept)."""
    entries = doc.get(kind)
    if entries is None:
        entries = doc[kind] = []
    if any(isinstance(e, dict) and e.get("name") == raw["name"] for e in entries):
        return False
    entries.append(raw)
    return True
