"""What PostgreSQL's catalog says about a configured table: columns, key, unique indexes, foreign keys.

Everything the planner decides about conflicts comes from here, in the database's own terms: index
expressions and predicates are taken verbatim from pg_get_indexdef/pg_get_expr so lower(email) or a partial
index is evaluated by PostgreSQL itself, never re-implemented in Python.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from emailsync.config import PostgresTable, PostgresTarget
from emailsync.errors import UserError

ColumnKind = Literal["text", "array", "jsonb"]


@dataclass(frozen=True)
class Column:
    name: str
    attnum: int
    type_sql: str  # format_type(): safe to splice, it comes from the catalog and is quoted by PostgreSQL
    kind: ColumnKind | None  # None: not an email-capable type
    ci: bool  # citext (or citext[]): compares case-insensitively
    generated: bool
    base_type: str
    # A cast under which psycopg loads the value exactly as to_jsonb renders it (int, str, list of str), so scans
    # skip a JSON round trip per value; None: read through to_jsonb. Not char(n): its text cast drops the padding.
    native: str | None = None


@dataclass(frozen=True)
class UniqueIndex:
    name: str
    exprs: tuple[str, ...]  # one SQL expression per key column, unqualified column names
    predicate: str | None
    nulls_not_distinct: bool
    columns: frozenset[str]  # every column the index depends on (keys, expressions, predicate)


@dataclass(frozen=True)
class ForeignKey:
    name: str
    child_oid: int
    child_name: str
    child_cols: tuple[str, ...]
    parent_oid: int
    parent_name: str
    parent_cols: tuple[str, ...]
    on_update: str  # a=no action, r=restrict, c=cascade, n=set null, d=set default
    on_delete: str
    deferrable: bool


FK_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


@dataclass
class TableMeta:
    target: str
    cfg: PostgresTable
    index: int  # position in the target's tables list, for error paths
    oid: int
    schema: str
    name: str
    columns: dict[str, Column]
    key: tuple[str, ...]
    email_columns: tuple[str, ...]
    unique_indexes: list[UniqueIndex] = field(default_factory=list)
    generated: dict[str, str] = field(default_factory=dict)  # generated column -> its expression
    # generated column -> the columns it is computed from (a generated column is never written: it follows those)
    generated_from: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # jsonb columns configured by path: column -> the paths whose addresses change (the rest of the document stays)
    paths: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)

    @functools.cached_property  # used per action on plans of hundreds of thousands; never changes
    def display(self) -> str:
        # Quoted only where needed, so "a.b".c and a."b.c" stay two different names.
        return f"{display_ident(self.schema)}.{display_ident(self.name)}"

    @functools.cached_property
    def prefix(self) -> str:
        """A prefix no column of this table starts with, for our aliases and internal column names, so that a
        column called t, a or _es_kid can never be captured by the SQL we generate."""
        p = "_es_"
        while any(c.startswith(p) for c in self.columns):
            p = "_" + p
        return p

    def alias(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.prefix + name)

    @property
    def ident(self) -> sql.Composable:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.name))

    def key_json(self, alias: sql.Composable) -> sql.Composable:
        """jsonb_build_object('k1', alias.k1, ...): the row's key as the plan stores it."""
        parts = [sql.SQL("{}, {}.{}").format(sql.Literal(k), alias, sql.Identifier(k)) for k in self.key]
        return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(parts))

    @functools.cached_property
    def key_order(self) -> tuple[str, ...]:
        """The key's columns in the order a jsonb object keeps them (shorter names first, then bytewise)."""
        return tuple(sorted(self.key, key=lambda k: (len(k.encode()), k.encode())))

    @functools.cached_property
    def native_key(self) -> bool:
        # Scalars only: a row's identity must be hashable, and an array key keeps its jsonb form.
        return all(self.columns[k].native in ("int8", "text") for k in self.key)

    @property
    def key_width(self) -> int:
        """How many fields key_select() selects."""
        return len(self.key) if self.native_key else 1

    def key_select(self, alias: sql.Composable) -> sql.Composable:
        """The key for a scan: its columns natively when each loads exactly as to_jsonb renders it (no JSON to
        decode per row), else one jsonb object. key_from() turns the fields back into the plan's key."""
        if not self.native_key:
            return self.key_json(alias)
        return sql.SQL(", ").join(
            sql.SQL("{}.{}::{}").format(alias, sql.Identifier(k), sql.SQL(self.columns[k].native or ""))
            for k in self.key_order
        )

    def key_from(self, fields: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
        """(a hashable identity of the row, its key) from the fields key_select() selected."""
        if not self.native_key:
            return None, fields[0]
        return fields, dict(zip(self.key_order, fields, strict=True))

    def key_match(self, alias: sql.Composable, key_json: sql.Composable) -> sql.Composable:
        """alias.k = (key_json ->> 'k')::type for each key column: index-friendly lookup by planned key."""
        parts = [
            sql.SQL("{a}.{c} = ({j} ->> {lit})::{t}").format(
                a=alias,
                c=sql.Identifier(k),
                j=key_json,
                lit=sql.Literal(k),
                t=sql.SQL(self.columns[k].type_sql),
            )
            for k in self.key
        ]
        return sql.SQL(" AND ").join(parts)


_TEXT_TYPES = {"text", "varchar", "bpchar", "citext"}
_PLAIN_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")


def column_kind(typname: str, elem: str | None) -> tuple[ColumnKind | None, bool]:
    """What emailsync can do with a column of this base type (domains resolved), and whether it is citext."""
    if typname in _TEXT_TYPES:
        return "text", typname == "citext"
    if elem in _TEXT_TYPES:
        return "array", elem == "citext"
    if typname == "jsonb":
        return "jsonb", False
    return None, False


_NATIVE = {"int2": "int8", "int4": "int8", "int8": "int8", "text": "text", "varchar": "text", "citext": "text"}


def native_cast(typname: str, elem: str | None) -> str | None:
    if elem is not None:
        return "text[]" if _NATIVE.get(elem) == "text" else None
    return _NATIVE.get(typname)


def display_ident(name: str) -> str:
    return name if _PLAIN_IDENT.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def resolve_table(
    conn: psycopg.Connection, target: PostgresTarget, where: str, ti: int, cfg: PostgresTable
) -> TableMeta:
    """`where` is the table's path in targets.yaml, e.g. postgres[0].tables[1], used in every error."""
    if cfg.schema_name is not None:
        row = conn.execute(
            "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (cfg.schema_name, cfg.table_name),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(quote_ident(%s))",
            (cfg.table_name,),
        ).fetchone()
    if row is None:
        raise UserError(
            f"{where}: table {cfg.table!r} does not exist in database {conn.info.dbname!r}; "
            "check the name (schema-qualify it if it is not on the search_path)"
        )
    oid, schema, name, relkind = row
    if relkind not in ("r", "p"):
        raise UserError(f"{where}: {cfg.table!r} is not a table (relkind {relkind!r}); configure the base table")

    cols: dict[str, Column] = {}
    for attname, attnum, type_sql, typname, elem, generated in conn.execute(
        """
        SELECT a.attname, a.attnum, format_type(a.atttypid, a.atttypmod),
               bt.typname, et.typname, a.attgenerated <> ''
        FROM pg_attribute a
        JOIN pg_type t ON t.oid = a.atttypid
        JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
        LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
        WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (oid,),
    ):
        kind, ci = column_kind(typname, elem)
        native = native_cast(typname, elem)
        cols[attname] = Column(attname, attnum, type_sql, kind, ci, bool(generated), typname, native)

    problems: list[str] = []
    for c in cfg.column_names:
        col = cols.get(c)
        if col is None:
            problems.append(
                f"{where}.columns: column {c!r} does not exist in {schema}.{name} (columns: {', '.join(cols)})"
            )
        elif col.generated:
            problems.append(_generated_problem(conn, oid, where, f"{schema}.{name}", c))
        elif col.kind is None:
            hint = " (json is not supported: convert it to jsonb)" if col.base_type == "json" else ""
            problems.append(
                f"{where}.columns: column {c!r} has type {col.type_sql}, not text-like, a text array or "
                f"jsonb{hint}; remove it from columns"
            )
        elif c in cfg.paths and col.kind != "jsonb":
            hint = " (json keeps its text as written, which a change at one path would not: convert it to jsonb)"
            problems.append(
                f"{where}.columns: column {c!r} is listed with a path but has type {col.type_sql}; paths are for "
                f"jsonb columns{hint if col.base_type == 'json' else ''}: list it by name instead"
            )
    for c in cfg.verify_ignore:
        if c not in cols:  # a typo here would silently compare the column it meant to leave out
            problems.append(f"{where}.verify_ignore: column {c!r} does not exist in {schema}.{name}; fix or remove it")

    pk = [
        r[0]
        for r in conn.execute(
            """
            SELECT a.attname FROM pg_index i
            JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord
            """,
            (oid,),
        )
    ]
    if cfg.key:
        for k in cfg.key:
            if k not in cols:
                problems.append(f"{where}.key: column {k!r} does not exist in {schema}.{name}")
        key = tuple(cfg.key)
    elif pk:
        key = tuple(pk)
    else:
        problems.append(
            f"{where}: {schema}.{name} has no primary key; add `key: [col, ...]` naming columns that "
            "identify a row uniquely"
        )
        key = ()
    if problems:
        raise UserError("the configuration does not match the database", problems=problems)

    meta = TableMeta(
        target=target.name,
        cfg=cfg,
        index=ti,
        oid=oid,
        schema=schema,
        name=name,
        columns=cols,
        key=key,
        email_columns=cfg.column_names,
        paths=cfg.paths,
    )
    meta.unique_indexes = unique_indexes(conn, oid, cols)
    gen_deps: dict[str, set[str]] = {}
    for gname, gexpr, deps in conn.execute(
        """
        SELECT a.attname, pg_get_expr(d.adbin, d.adrelid),
               ARRAY(SELECT c.attname FROM pg_depend x JOIN pg_attribute c
                     ON c.attrelid = x.refobjid AND c.attnum = x.refobjsubid
                     WHERE x.classid = 'pg_attrdef'::regclass AND x.objid = d.oid AND x.refobjsubid > 0
                     AND x.deptype = 'n')
        FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = %s AND a.attgenerated <> ''
        """,
        (oid,),
    ):
        meta.generated[gname] = gexpr
        gen_deps[gname] = set(deps)
        meta.generated_from[gname] = tuple(deps)
    # An index over a generated column depends on the columns it is computed from.
    meta.unique_indexes = [
        UniqueIndex(
            u.name,
            u.exprs,
            u.predicate,
            u.nulls_not_distinct,
            u.columns.union(*(gen_deps.get(c, set()) for c in u.columns)),
        )
        for u in meta.unique_indexes
    ]
    if relkind == "p":
        own = conn.execute(
            """
            WITH RECURSIVE parts(oid) AS (
                SELECT inhrelid FROM pg_inherits WHERE inhparent = %s
                UNION SELECT i.inhrelid FROM pg_inherits i JOIN parts p ON i.inhparent = p.oid
            )
            SELECT ic.relname FROM parts JOIN pg_index x ON x.indrelid = parts.oid AND x.indisunique
            JOIN pg_class ic ON ic.oid = x.indexrelid
            WHERE NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = x.indexrelid)
            ORDER BY 1
            """,
            (oid,),
        ).fetchall()
        if own:
            raise UserError(
                f"{where}: partitions of {meta.display} have unique indexes of their own "
                f"({', '.join(r[0] for r in own)}); conflicts under them cannot be decided for the whole table. "
                "Create the unique index on the partitioned table instead, or configure the partitions as tables"
            )
    if cfg.key and not pk:
        _check_configured_key_unique(conn, meta, where)
    return meta


def unique_indexes(conn: psycopg.Connection, oid: int, cols: dict[str, Column]) -> list[UniqueIndex]:
    by_num = {c.attnum: c.name for c in cols.values()}
    out = []
    for name, exprs, pred, nnd, deps in conn.execute(
        """
        SELECT c.relname,
               ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true)
                     FROM generate_series(1, i.indnkeyatts) k ORDER BY k),
               pg_get_expr(i.indpred, i.indrelid, true),
               i.indnullsnotdistinct,
               ARRAY(SELECT DISTINCT d.refobjsubid FROM pg_depend d
                     WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                       AND d.refobjid = i.indrelid AND d.refobjsubid > 0
                     UNION SELECT unnest(i.indkey::int2[]) )
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid
        ORDER BY c.relname
        """,
        (oid,),
    ):
        out.append(
            UniqueIndex(
                name=name,
                exprs=tuple(exprs),
                predicate=pred,
                nulls_not_distinct=bool(nnd),
                columns=frozenset(by_num[n] for n in deps if n in by_num),
            )
        )
    return out


def _check_configured_key_unique(conn: psycopg.Connection, meta: TableMeta, where: str) -> None:
    # A configured key that is not unique would make one planned action touch several rows.
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in meta.key)
    q = sql.SQL("SELECT {k} FROM {t} GROUP BY {k} HAVING count(*) > 1 LIMIT 3").format(k=keys, t=meta.ident)
    dup = conn.execute(q).fetchall()
    if dup:
        raise UserError(
            f"{where}.key: {list(meta.key)} does not identify rows uniquely in {meta.display} "
            f"(duplicated: {', '.join(str(tuple(d)) for d in dup)}); choose columns that are unique"
        )
    nulls = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(k)) for k in meta.key)
    if conn.execute(sql.SQL("SELECT 1 FROM {t} WHERE {n} LIMIT 1").format(t=meta.ident, n=nulls)).fetchone():
        raise UserError(
            f"{where}.key: some rows of {meta.display} have NULL in {list(meta.key)}; choose NOT NULL columns"
        )


def in_email_foreign_key(meta: TableMeta, fks: list[ForeignKey]) -> bool:
    """Whether one of the table's email columns is in a foreign key, on either side (rows must then change in an
    order among tables)."""
    emails = set(meta.email_columns)
    return any(
        (fk.child_oid == meta.oid and emails & set(fk.child_cols))
        or (fk.parent_oid == meta.oid and emails & set(fk.parent_cols))
        for fk in fks
    )


def foreign_keys(conn: psycopg.Connection, oids: list[int]) -> list[ForeignKey]:
    """Every foreign key in which one of the configured tables is the child or the parent."""
    out = []
    for row in conn.execute(
        """
        SELECT con.conname, con.conrelid, con.conrelid::regclass::text,
               ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
               con.confrelid, con.confrelid::regclass::text,
               ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o),
               con.confupdtype, con.confdeltype, con.condeferrable
        FROM pg_constraint con
        WHERE con.contype = 'f' AND (con.conrelid = ANY(%s) OR con.confrelid = ANY(%s))
        ORDER BY con.conname
        """,
        (oids, oids),
    ):
        name, coid, cname, ccols, poid, pname, pcols, upd, dele, deferrable = row
        out.append(ForeignKey(name, coid, cname, tuple(ccols), poid, pname, tuple(pcols), upd, dele, bool(deferrable)))
    return out


def _generated_problem(conn: psycopg.Connection, oid: int, where: str, table: str, column: str) -> str:
    """Why a generated column cannot be configured, and the column (or jsonb path) to list instead."""
    row = conn.execute(
        """
        SELECT pg_get_expr(d.adbin, d.adrelid),
               ARRAY(SELECT c.attname FROM pg_depend x JOIN pg_attribute c
                     ON c.attrelid = x.refobjid AND c.attnum = x.refobjsubid
                     WHERE x.classid = 'pg_attrdef'::regclass AND x.objid = d.oid AND x.refobjsubid > 0
                     AND x.deptype = 'n'
                     ORDER BY c.attnum)
        FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = %s AND a.attname = %s
        """,
        (oid, column),
    ).fetchone()
    expr, deps = row if row is not None else ("?", [])
    source = " or ".join(repr(d) for d in deps) or "the columns it is computed from"
    return (
        f"{where}.columns: {table}.{column} is a generated column (GENERATED ALWAYS AS ({expr}) STORED) and cannot "
        f"be written; list {source} instead (with a path if the address sits inside a jsonb document), and "
        f"{column!r} follows"
    )
