"""Load and validate targets.yaml: which databases, tables and columns an email change touches.

Everything a user can get wrong here surfaces as one `UserError` that names the file, the path inside it
(`postgres[0].tables[1].columns`), what is wrong and how to fix it. DSNs are secrets: they never appear in
error messages, reprs or strs.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import types
import typing
import urllib.parse
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from emailsync.errors import UserError
from emailsync.inputs import NOT_TEXT, first_non_text, is_text, read_limited

__all__ = [
    "LoadedTargets",
    "OnConflict",
    "PostgresTable",
    "PostgresTarget",
    "DynamoAttribute",
    "DynamoTable",
    "DynamoTarget",
    "Targets",
    "dsn_secrets",
    "load_targets",
    "redact",
]

OnConflict = Literal["delete", "skip", "fail"]

Loc = tuple[str | int, ...]

# hide_input_in_errors: even a ValidationError raised by direct construction must not print a DSN.
_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

# Tags of the column entry union (ColumnEntry); left out of the places errors name.
_NAME_TAG, _PATH_TAG = "\x00name", "\x00path"
_TARGET_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# What PostgreSQL accepts for a time setting such as lock_timeout: a number with an optional unit.
# Validated strictly because the value ends up in a SET LOCAL statement.
DURATION_RE = re.compile(r"\d+(\.\d+)?\s*(us|ms|s|min|h|d)?")
_VAR_RE = re.compile(r"\$\{([^}]*)\}")
_VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _discovering(info: ValidationInfo) -> bool:
    """`emailsync discover` reads targets that may not list any table yet: that is what it proposes."""
    return bool(info.context and info.context.get("discover"))


# Raised by our cross-entry validators; the loader reports these itself with precise locations.
_DUPLICATE = "duplicate_entry"
_MAX_DEPTH = 100


# --------------------------------------------------------------------------------------------------
# Identifier parsing


def _parse_qualified_name(text: str) -> tuple[str | None, str]:
    """Split `schema.table` / `table`; double-quoted parts may hold dots, and `""` is a literal quote.

    Names are taken as written (no case folding): quotes only delimit, matching how column names are given.
    """
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            buf: list[str] = []
            j = i + 1
            while True:
                if j >= n:
                    raise ValueError(f'table {text!r} has an unterminated quote; close the quoted name with "')
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            part = "".join(buf)
            i = j + 1
            if not part:
                raise ValueError(f'table {text!r} has an empty quoted name ""; write schema.table or table')
        else:
            j = i
            while j < n and text[j] not in '."':
                j += 1
            part = text[i:j]
            if j < n and text[j] == '"':
                raise ValueError(
                    f'table {text!r} has a quote inside a name; quote the whole part, e.g. "my.schema"."t""x"'
                )
            i = j
            if not part:
                raise ValueError(f"table {text!r} has an empty name part; write schema.table or table")
            if part != part.strip():
                raise ValueError(f"table {text!r} has spaces around a name; remove them or quote the name")
        parts.append(part)
        if i == n:
            break
        if text[i] != ".":
            raise ValueError(f'table {text!r}: expected \'.\' after a quoted name; write "schema"."table"')
        i += 1
        if i == n:
            raise ValueError(f"table {text!r} ends with '.'; write schema.table or table")
    if len(parts) > 2:
        raise ValueError(
            f"table {text!r} has {len(parts)} parts; write schema.table or table, "
            f'and quote names that contain dots, e.g. "my.schema".table'
        )
    if len(parts) == 2:
        return parts[0], parts[1]
    return None, parts[0]


def _check_names(values: tuple[str, ...], what: str, *, allow_empty: bool) -> tuple[str, ...]:
    if not values and not allow_empty:
        raise ValueError(f"{what} must list at least one column")
    for value in values:
        if not value:
            raise ValueError(f"{what} contains an empty column name; remove it")
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"{what} lists {', '.join(repr(d) for d in dupes)} more than once; list each column once")
    return values


def _duplicates(items: Iterable[tuple[str, Hashable]]) -> list[tuple[str, str, Hashable]]:
    """(where, first_where, key) for every item whose key was already seen."""
    seen: dict[Hashable, str] = {}
    found: list[tuple[str, str, Hashable]] = []
    for where, key in items:
        if key in seen:
            found.append((where, seen[key], key))
        else:
            seen[key] = where
    return found


def _check_duration(value: str | None, field: str) -> str | None:
    if value is not None and not DURATION_RE.fullmatch(value.strip()):
        raise ValueError(
            f"{field} {value!r} is not a duration; use a number with a unit (us, ms, s, min, h, d), e.g. 5s or 10min"
        )
    return value


# --------------------------------------------------------------------------------------------------
# Models


class JsonPath(BaseModel):
    """A column entry `{name: COLUMN, path: a.b.c}`: only the string (or the strings of the array) at that dotted path
    of a jsonb column's document is remapped; the rest of the document stays as it is."""

    model_config = _MODEL_CONFIG

    name: str
    path: str

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value:
            raise ValueError("name is empty; give the jsonb column's name")
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value or any(not part or part != part.strip() for part in value.split(".")):
            raise ValueError(
                f"path {value!r} is not a dotted path into nested objects; write it like profile.contact.email"
            )
        return value

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.path.split("."))


def _check_columns(value: tuple[str | JsonPath, ...]) -> tuple[str | JsonPath, ...]:
    if not value:
        raise ValueError("columns must list at least one column")
    _check_names(tuple(c for c in value if isinstance(c, str)), "columns", allow_empty=True)
    whole = {c for c in value if isinstance(c, str)}
    seen: dict[str, list[tuple[str, ...]]] = {}
    for c in value:
        if not isinstance(c, JsonPath):
            continue
        if c.name in whole:
            raise ValueError(
                f"column {c.name!r} is listed whole and with path {c.path!r}; list it one way: whole (every string "
                "in the document) or path by path"
            )
        for other in seen.setdefault(c.name, []):
            shorter, longer = sorted((other, c.parts), key=len)
            if longer[: len(shorter)] == shorter:
                raise ValueError(
                    f"column {c.name!r} lists path {'.'.join(other)!r} and path {c.path!r}, one inside the other; "
                    "list each address's path once"
                    if other != c.parts
                    else f"column {c.name!r} lists path {c.path!r} twice; list each path once"
                )
        seen[c.name].append(c.parts)
    return value


def _column_entry_kind(value: Any) -> str:
    return _PATH_TAG if isinstance(value, dict | JsonPath) else _NAME_TAG


# Each entry is validated as one or the other, so a mistake gets the errors of the form it was meant as, not both.
ColumnEntry = Annotated[
    Annotated[str, Tag(_NAME_TAG)] | Annotated[JsonPath, Tag(_PATH_TAG)], Discriminator(_column_entry_kind)
]


class PostgresTable(BaseModel):
    model_config = _MODEL_CONFIG

    table: str
    # A name: the column (text, text array, or a jsonb document whose every string is remapped); {name, path}: the
    # addresses at one path of a jsonb column.
    columns: tuple[ColumnEntry, ...]
    on_conflict: OnConflict = "delete"
    key: tuple[str, ...] | None = None
    verify_ignore: tuple[str, ...] = ()

    @field_validator("table")
    @classmethod
    def _check_table(cls, value: str) -> str:
        _parse_qualified_name(value)
        return value

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, value: tuple[str | JsonPath, ...]) -> tuple[str | JsonPath, ...]:
        return _check_columns(value)

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        return _check_names(value, "key", allow_empty=False)

    @field_validator("verify_ignore")
    @classmethod
    def _check_verify_ignore(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_names(value, "verify_ignore", allow_empty=True)

    @property
    def column_names(self) -> tuple[str, ...]:
        """The columns holding addresses, each once, in the order listed."""
        return tuple(dict.fromkeys(c if isinstance(c, str) else c.name for c in self.columns))

    @property
    def paths(self) -> dict[str, tuple[tuple[str, ...], ...]]:
        """The jsonb columns configured by path: column -> its paths, in the order listed."""
        out: dict[str, list[tuple[str, ...]]] = {}
        for c in self.columns:
            if isinstance(c, JsonPath):
                out.setdefault(c.name, []).append(c.parts)
        return {k: tuple(v) for k, v in out.items()}

    @property
    def schema_name(self) -> str | None:
        return _parse_qualified_name(self.table)[0]

    @property
    def table_name(self) -> str:
        return _parse_qualified_name(self.table)[1]


def _check_target_name(value: str) -> str:
    if not _TARGET_NAME_RE.fullmatch(value):
        raise ValueError(
            f"target name {value!r} is not allowed; use only letters, digits, '_', '.' and '-'"
            if value
            else "target name is empty; give the target a name such as 'crm-main'"
        )
    return value


class PostgresTarget(BaseModel):
    model_config = _MODEL_CONFIG

    name: str
    dsn: SecretStr
    tables: tuple[PostgresTable, ...]
    lock_timeout: str = "5s"
    statement_timeout: str | None = None
    ledger: bool = True
    # apply --max-replica-lag: one number, the replicas' lag in seconds (default: replay lag from
    # pg_stat_replication); for servers whose replicas report elsewhere (Aurora: aurora_replica_status()).
    replica_lag_query: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _check_target_name(value)

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, value: SecretStr) -> SecretStr:
        # The messages never include the value or psycopg's parser message: both can echo the password.
        raw = value.get_secret_value()
        if not raw.strip():
            raise ValueError(
                "dsn is empty; set it to a PostgreSQL URI (postgresql://user@host:5432/db) or a key=value string"
            )
        # Imported where a DSN is read: a run without PostgreSQL targets does not pay psycopg's 0.2 s start.
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(raw)
        except (psycopg.Error, ValueError):
            raise ValueError(
                "dsn is not a valid PostgreSQL connection string; use a URI such as "
                "postgresql://user:password@host:5432/db or key=value pairs such as 'host=h dbname=db'"
            ) from None
        return value

    @field_validator("tables")
    @classmethod
    def _check_tables(cls, value: tuple[PostgresTable, ...], info: ValidationInfo) -> tuple[PostgresTable, ...]:
        if not value and not _discovering(info):
            raise ValueError("tables must list at least one table")
        dupes = _duplicates((f"tables[{i}]", (t.schema_name, t.table_name)) for i, t in enumerate(value))
        if dupes:
            where, first, _ = dupes[0]
            raise PydanticCustomError(
                _DUPLICATE,
                "{detail}",
                {"detail": f"{first} and {where} name the same table; merge them into one entry"},
            )
        return value

    @field_validator("lock_timeout")
    @classmethod
    def _check_lock_timeout(cls, value: str) -> str:
        _check_duration(value, "lock_timeout")
        return value

    @field_validator("statement_timeout")
    @classmethod
    def _check_statement_timeout(cls, value: str | None) -> str | None:
        return _check_duration(value, "statement_timeout")

    def described(self) -> dict[str, str | None]:
        """What the DSN string says about where it points, without credentials, for messages. None where it
        leaves the choice to libpq (PGHOST, PGPORT, PGDATABASE, a service file, the user name): plans record what
        the connection actually reached instead (stores.postgres.reached)."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(self.dsn.get_secret_value())
        except (psycopg.Error, ValueError):
            raise UserError(f"target {self.name!r}: dsn is not a valid PostgreSQL connection string") from None
        host = params.get("host") or params.get("hostaddr")
        port, database = params.get("port"), params.get("dbname")
        return {
            "host": str(host) if host else None,
            "port": str(port) if port else None,
            "database": str(database) if database else None,
        }


_DDB_TABLE_RE = re.compile(r"[A-Za-z0-9_.-]{3,255}")


class DynamoAttribute(BaseModel):
    """An attribute holding emails: a top-level name or a dotted path into nested maps, optionally with a
    template such as "USER#{email}" when the email sits inside a larger string (matched anchored)."""

    model_config = _MODEL_CONFIG

    name: str
    template: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value or any(not part for part in value.split(".")):
            raise ValueError(f"attribute {value!r} is not a name or a dotted path such as profile.contactEmail")
        return value

    @field_validator("template")
    @classmethod
    def _check_template(cls, value: str | None) -> str | None:
        if value is not None and value.count("{email}") != 1:
            raise ValueError(
                f"template {value!r} must contain exactly one {{email}} placeholder, e.g. 'USER#{{email}}'"
            )
        return value

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.name.split("."))

    @property
    def affixes(self) -> tuple[str, str]:
        if self.template is None:
            return "", ""
        before, after = self.template.split("{email}")
        return before, after


class DynamoTable(BaseModel):
    model_config = _MODEL_CONFIG

    table: str
    attributes: tuple[DynamoAttribute, ...]
    client_attribute: str | None = None  # where a mapping's client_id must match; without it client_id is ignored
    segments: int | None = None  # parallel Scan segments; default chosen from the table size
    version_attribute: str | None = None  # guards items too large to compare whole in a condition
    live: bool = False  # the table people log in with: verified swaps, run last, separately confirmed

    @field_validator("table")
    @classmethod
    def _check_table(cls, value: str) -> str:
        if not _DDB_TABLE_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a DynamoDB table name: 3 to 255 characters of letters, digits, '_', '-' and '.'"
            )
        return value

    @field_validator("attributes", mode="before")
    @classmethod
    def _plain_names(cls, value: Any) -> Any:
        # A bare string is shorthand for {name: ...}.
        if isinstance(value, list | tuple):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("attributes")
    @classmethod
    def _check_attributes(cls, value: tuple[DynamoAttribute, ...]) -> tuple[DynamoAttribute, ...]:
        if not value:
            raise ValueError("attributes must list at least one attribute")
        names = [a.name for a in value]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"attributes listed twice: {dup}")
        return value

    @field_validator("segments")
    @classmethod
    def _check_segments(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 1_000_000:
            raise ValueError("segments must be between 1 and 1000000 (DynamoDB's TotalSegments limit)")
        return value


class DynamoTarget(BaseModel):
    model_config = _MODEL_CONFIG

    name: str
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    live: bool = False  # every table of the target is live
    tables: tuple[DynamoTable, ...]
    # Where applied plans are recorded and the apply lock lives (created on first apply). Without it the
    # target has no replay protection and no lock against a second applier: apply warns.
    ledger_table: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _check_target_name(value)

    @field_validator("ledger_table")
    @classmethod
    def _check_ledger_table(cls, value: str | None) -> str | None:
        if value is not None and not _DDB_TABLE_RE.fullmatch(value):
            raise ValueError(
                f"ledger_table {value!r} is not a DynamoDB table name (3-255 letters, digits, '_', '.', '-')"
            )
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            parsed = urllib.parse.urlsplit(value)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(f"endpoint_url {value!r} must be an http(s) URL such as http://localhost:8000")
        return value

    @field_validator("tables")
    @classmethod
    def _check_tables(cls, value: tuple[DynamoTable, ...], info: ValidationInfo) -> tuple[DynamoTable, ...]:
        if not value and not _discovering(info):
            raise ValueError("tables must list at least one table")
        names = [t.table for t in value]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tables listed twice: {dup}; merge their attributes into one entry")
        return value

    @model_validator(mode="after")
    def _ledger_not_a_target_table(self) -> DynamoTarget:
        if self.ledger_table is not None and any(t.table == self.ledger_table for t in self.tables):
            raise ValueError(
                f"ledger_table {self.ledger_table!r} is also listed in tables; give the ledger its own table"
            )
        return self

    def is_live(self, table: str) -> bool:
        return self.live or any(t.live for t in self.tables if t.table == table)


class GroupMember(BaseModel):
    """One column (PostgreSQL) or attribute (DynamoDB) of a unique group."""

    model_config = _MODEL_CONFIG

    target: str
    table: str
    column: str | None = None
    attribute: str | None = None
    # Whose address a row holds (GitLab's emails.user_id, users.id): rows of one owner may share an address.
    owner: str | None = None

    @model_validator(mode="after")
    def _one_place(self) -> GroupMember:
        if (self.column is None) == (self.attribute is None):
            raise ValueError("give either column (a PostgreSQL target) or attribute (a DynamoDB target)")
        return self

    @property
    def field(self) -> str:
        return self.column if self.column is not None else str(self.attribute)


class UniqueGroup(BaseModel):
    """Columns or attributes that share one address namespace, unique across all of them (an application's rule
    the database does not enforce): GitLab's users.email with emails.email, Auth.js's GSI1PK."""

    model_config = _MODEL_CONFIG

    name: str | None = None
    on_conflict: str = "fail"
    members: tuple[GroupMember, ...]

    @field_validator("on_conflict")
    @classmethod
    def _check_on_conflict(cls, value: str) -> str:
        if value not in ("fail", "skip", "delete"):
            raise ValueError(f"on_conflict {value!r} is not one of fail, skip, delete")
        return value

    @field_validator("members")
    @classmethod
    def _check_members(cls, value: tuple[GroupMember, ...]) -> tuple[GroupMember, ...]:
        if not value:
            raise ValueError("members must list at least one column or attribute")
        if len({m.target for m in value}) > 1:
            raise ValueError(
                "members name more than one target; a group is decided while its target is planned, so list "
                "members of one target (a group per target)"
            )
        seen = [(m.table, m.field) for m in value]
        if len(set(seen)) < len(seen):
            raise ValueError("members list one column or attribute twice; list each once")
        return value

    def label(self, i: int) -> str:
        return f"unique_groups[{i}]" + (f" ({self.name})" if self.name else "")


class Targets(BaseModel):
    model_config = _MODEL_CONFIG

    version: Literal[1]
    mappings: str | None = None
    match: Literal["exact", "casefold"] = "exact"
    postgres: tuple[PostgresTarget, ...] = ()
    dynamodb: tuple[DynamoTarget, ...] = ()
    unique_groups: tuple[UniqueGroup, ...] = ()

    @field_validator("version", mode="before")
    @classmethod
    def _exact_version(cls, value: Any) -> Any:
        # `version: true` and `version: 1.0` would pass as 1 in lax mode: only the integer 1 is the format.
        return str(value) if isinstance(value, bool | float) else value

    @field_validator("mappings")
    @classmethod
    def _check_mappings(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("mappings is empty; give a file path or remove the key")
        return value

    @model_validator(mode="after")
    def _check_groups(self) -> Targets:
        problems = []
        for gi, g in enumerate(self.unique_groups):
            if g.on_conflict == "delete" and any(m.attribute is not None for m in g.members):
                problems.append(
                    f"unique_groups[{gi}].on_conflict: delete is for PostgreSQL columns only (a DynamoDB item is "
                    "never deleted for a conflict); use fail or skip"
                )
            for mi, m in enumerate(g.members):
                where = f"unique_groups[{gi}].members[{mi}]"
                pg = next((t for t in self.postgres if t.name == m.target), None)
                ddb = next((t for t in self.dynamodb if t.name == m.target), None)
                if pg is None and ddb is None:
                    problems.append(f"{where}: no target is named {m.target!r}; name a target of this file")
                elif pg is not None:
                    table = next((t for t in pg.tables if t.table == m.table), None)
                    if m.column is None:
                        problems.append(
                            f"{where}: {m.target!r} is a PostgreSQL target; name a column, not an attribute"
                        )
                    elif table is None:
                        problems.append(
                            f"{where}: target {m.target!r} lists no table {m.table!r}; write the table as its "
                            f"tables: entry does ({', '.join(repr(t.table) for t in pg.tables)})"
                        )
                    elif m.column not in table.column_names:
                        problems.append(
                            f"{where}: {m.table}.{m.column} is not among the table's columns in targets.yaml; "
                            "add it there (a group only decides between addresses the plan moves)"
                        )
                elif ddb is not None:
                    dtable = next((t for t in ddb.tables if t.table == m.table), None)
                    if m.attribute is None:
                        problems.append(f"{where}: {m.target!r} is a DynamoDB target; name an attribute, not a column")
                    elif dtable is None:
                        problems.append(f"{where}: target {m.target!r} lists no table {m.table!r}")
                    elif m.attribute not in {a.name for a in dtable.attributes}:
                        problems.append(
                            f"{where}: {m.table}.{m.attribute} is not among the table's attributes in targets.yaml; "
                            "add it there"
                        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("postgres")
    @classmethod
    def _check_unique_names(cls, value: tuple[PostgresTarget, ...]) -> tuple[PostgresTarget, ...]:
        dupes = _duplicates((f"postgres[{i}]", t.name) for i, t in enumerate(value))
        if dupes:
            where, first, name = dupes[0]
            raise PydanticCustomError(
                _DUPLICATE,
                "{detail}",
                {"detail": f"target name {name!r} is used by {first} and {where}; target names must be unique"},
            )
        return value


# --------------------------------------------------------------------------------------------------
# Loaded file


@dataclass(frozen=True)
class LoadedTargets:
    path: Path
    sha256: str
    base_dir: Path
    config: Targets

    def mappings_path(self, override: Path | None) -> Path:
        if override is not None:
            return override
        if self.config.mappings is None:
            raise UserError(
                f"{self.path}: no mappings file given; set `mappings: <file>` in targets.yaml or pass --mappings"
            )
        # An absolute path survives the join; a relative one is relative to targets.yaml, not the cwd.
        return self.base_dir / Path(self.config.mappings).expanduser()

    def target(self, name: str) -> PostgresTarget:
        for target in self.config.postgres:
            if target.name == name:
                return target
        known = ", ".join(t.name for t in self.config.postgres)
        raise UserError(
            f"{self.path}: unknown target {name!r}; "
            + (f"known targets: {known}" if known else "the file defines no targets")
        )


# --------------------------------------------------------------------------------------------------
# Secrets


def redact(text: str, secrets: Iterable[str]) -> str:
    # Longest first, so a secret that contains another is not left half-visible.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def dsn_secrets(dsn: str) -> list[str]:
    """The password in a DSN, in every spelling that may show up in a message (decoded and as written)."""
    found: list[str] = []
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(dsn).get("password")
    except (psycopg.Error, ValueError):
        password = None
        # Unparseable: fall back to the obvious spellings so error text can still be scrubbed.
        match = re.search(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
        if match:
            found.append(match.group(1).strip("'"))
    if password:
        found.append(str(password))
    if re.match(r"postgres(ql)?://", dsn):
        try:
            raw = urllib.parse.urlsplit(dsn).password
        except ValueError:
            raw = None
        if raw:
            found.append(raw)
    return list(dict.fromkeys(found))


# --------------------------------------------------------------------------------------------------
# YAML


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges may legitimately be overridden by explicit keys
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable key: SafeLoader reports it
            if first is not None:
                raise _DuplicateKeyError(
                    None,
                    None,
                    f"duplicate key {key!r} (first defined on line {first}); each key may appear only once",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> tuple[Any, bytes]:
    try:
        data = read_limited(path, "targets")
    except FileNotFoundError:
        raise UserError(f"{path}: targets file not found; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; give the path of the targets YAML file") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied reading the targets file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the targets file ({exc.strerror or exc})") from None
    except ValueError:  # a NUL byte in the path
        raise UserError(f"{path!r}: not a usable file name (it contains a NUL byte)") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: not valid UTF-8 (line {line}, byte {exc.start}); save the file as UTF-8") from None
    try:
        loaded = yaml.load(text, Loader=_StrictLoader)
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a targets file; check its indentation and brackets") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts
        raise UserError(f"{path}: a value cannot be read ({str(exc)[:200]})") from None
    except yaml.MarkedYAMLError as exc:
        # Built from problem and position only: str(exc) quotes the offending line, which may hold a DSN.
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        if isinstance(exc, _DuplicateKeyError):
            raise UserError(f"{path}: {where}: {exc.problem}") from None
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        raise UserError(f"{path}: YAML syntax error at {where}: {problem}{context}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: YAML error: {exc}") from None
    _check_expanded_size(path, loaded)
    bad = first_non_text(loaded)
    if bad is not None:
        raise UserError(f"{path}: {bad}: {NOT_TEXT}")
    return loaded, data


_MAX_VALUES = 100_000  # a real targets file has hundreds


def _check_expanded_size(path: Path, root: Any) -> None:
    """Refuse anchors and aliases that expand to a huge document (a "billion laughs"), or that refer to themselves,
    before anything walks the expanded values. Aliases share objects, so sizes are counted once per object."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        obj, done = stack.pop()
        if not isinstance(obj, dict | list) or (id(obj) in sizes and not done):
            continue
        children = list(obj.values()) if isinstance(obj, dict) else obj
        if done:
            sizes[id(obj)] = 1 + sum(sizes.get(id(c), 1) for c in children)
            if sizes[id(obj)] > _MAX_VALUES:
                raise UserError(
                    f"{path}: expands to more than {_MAX_VALUES:,} values through YAML anchors and aliases; a "
                    "targets file never needs that many: write the entries out, or use fewer aliases"
                )
            continue
        sizes[id(obj)] = -1  # in progress: meeting it again below it means it contains itself
        stack.append((obj, True))
        for c in children:
            if isinstance(c, dict | list):
                if sizes.get(id(c)) == -1:
                    raise UserError(f"{path}: a YAML alias refers to the value that contains it; remove that alias")
                stack.append((c, False))


def read_raw_yaml(path: Path) -> dict[str, Any]:
    """The targets file as written (no ${VAR} substituted), for tools that edit it: `discover --write`."""
    raw, _ = _read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping (`version: 1`, `postgres: [...]`), not {_kind(raw)}")
    return raw


# --------------------------------------------------------------------------------------------------
# ${VAR} substitution


class _Env:
    """os.environ first, then the .env beside targets.yaml (read lazily, never copied into os.environ)."""

    def __init__(self, env_file: Path) -> None:
        self.env_file = env_file
        self._dotenv: dict[str, str | None] | None = None

    def get(self, name: str) -> str | None:
        if name in os.environ:
            return os.environ[name]
        if self._dotenv is None:
            self._dotenv = self._read()
        return self._dotenv.get(name)  # None also for a bare `NAME` line without a value

    def _read(self) -> dict[str, str | None]:
        if not self.env_file.is_file():
            return {}
        try:
            return dict(dotenv_values(self.env_file, encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.env_file}: cannot read the .env file ({exc}); fix or remove it") from None


class _TooDeepError(Exception):
    def __init__(self, loc: Loc) -> None:
        self.loc = loc


def _substitute(value: Any, loc: Loc, env: _Env, problems: list[tuple[Loc, str]], depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise _TooDeepError(loc)
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if not _VAR_NAME_RE.fullmatch(name):
                # The text inside ${...} is not echoed: it may be part of a literal password.
                problems.append((loc, "invalid ${...} reference; use ${NAME} with letters, digits and _ only"))
                return match.group(0)
            resolved = env.get(name)
            if resolved is None:
                problems.append(
                    (
                        loc,
                        f"environment variable {name} is not set; export {name} or add {name}=... to {env.env_file}",
                    )
                )
                return match.group(0)
            if not is_text(resolved):  # undecodable bytes in the environment arrive as lone surrogates
                problems.append((loc, f"environment variable {name} is not valid UTF-8 text; set it again as UTF-8"))
                return match.group(0)
            return resolved

        return _VAR_RE.sub(replace, value)
    if isinstance(value, dict):
        return {k: _substitute(v, (*loc, k), env, problems, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*loc, i), env, problems, depth + 1) for i, v in enumerate(value)]
    return value


# --------------------------------------------------------------------------------------------------
# Error formatting


def _format_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if part in (_NAME_TAG, _PATH_TAG):
            continue
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY_RE.fullmatch(part):
            out += ("." if out else "") + part
        else:
            out += f"[{str(part)!r}]"
    return out or "(top level)"


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc`, to list its allowed keys."""
    model: type[BaseModel] = Targets
    for part in loc:
        if isinstance(part, int) or part in (_NAME_TAG, _PATH_TAG):
            continue  # an item of a tuple field, or the form of a column entry: same model as the field
        field = model.model_fields.get(str(part))
        sub = _find_model(field.annotation) if field else None
        if sub is None:
            return None
        model = sub
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (tuple, list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _find_model(arg)
            if found is not None:
                return found
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


_EXPECTED = {
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "model_type": "a mapping of keys to values",
    "model_attributes_type": "a mapping of keys to values",
    "dict_type": "a mapping of keys to values",
    "int_type": "an integer",
    "int_parsing": "an integer",
}


def _describe(error: ErrorDetails) -> str:
    loc = error["loc"]
    kind = error["type"]
    value = error.get("input")
    # Values under a dsn are never shown, whatever the error.
    show_value = "dsn" not in loc and isinstance(value, str | int | float) and len(str(value)) <= 80
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc[:-1])
        allowed = list(model.model_fields) if model else []
        message = f"unknown key {key!r}"
        if allowed:
            message += f" (allowed: {', '.join(allowed)})"
        close = difflib.get_close_matches(key, allowed, n=1)
        return message + (f"; did you mean {close[0]!r}?" if close else "; remove it")
    if kind == "missing":
        hint = " such as `version: 1`" if tuple(loc) == ("version",) else ""
        return f"missing required key {str(loc[-1])!r}; add it{hint}"
    if kind == "literal_error" and tuple(loc) == ("version",):
        return f"unsupported version {value!r}; this emailsync reads files with `version: 1`"
    if kind == "literal_error":
        expected = (error.get("ctx") or {}).get("expected", "")
        got = f"{value!r} is not allowed" if show_value else "value is not allowed"
        return f"{got}; use one of: {expected}"
    if kind == "invalid_key":
        key = error.get("input")
        return (
            f"keys must be strings, not {str(key).lower() if isinstance(key, bool) else key!r}: YAML reads an unquoted "
            "true, false or number as another type; quote the key or remove it"
        )
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, got {_kind(value)}"
    return error["msg"].removeprefix("Value error, ")


def _cross_entry_problems(data: dict[Any, Any]) -> list[tuple[Loc, str]]:
    """Duplicate target names and tables, checked on the raw data.

    The models check these too, but pydantic runs those checks only once every entry is valid; doing it
    here as well reports them together with everything else, at the exact entry.
    """
    problems: list[tuple[Loc, str]] = []
    names: list[tuple[str, Hashable]] = []
    name_locs: dict[str, Loc] = {}
    for section in ("postgres", "dynamodb"):
        entries = data.get(section)
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                loc: Loc = (section, i, "name")
                name_locs[_format_loc(loc)] = loc
                names.append((_format_loc(loc), entry["name"]))
    for where, first, name in _duplicates(names):
        problems.append(
            (name_locs[where], f"duplicate target name {name!r} (already used at {first}); use a unique name")
        )
    postgres = data.get("postgres")
    for i, target in enumerate(postgres if isinstance(postgres, list) else []):
        tables = target.get("tables") if isinstance(target, dict) else None
        if not isinstance(tables, list):
            continue
        parsed: list[tuple[str, Hashable]] = []
        table_locs: dict[str, Loc] = {}
        for j, entry in enumerate(tables):
            if not (isinstance(entry, dict) and isinstance(entry.get("table"), str)):
                continue
            try:
                key = _parse_qualified_name(entry["table"])
            except ValueError:
                continue  # reported by the model
            loc = ("postgres", i, "tables", j, "table")
            table_locs[_format_loc(loc)] = loc
            parsed.append((_format_loc(loc), key))
        for where, first, _ in _duplicates(parsed):
            problems.append((table_locs[where], f"same table as {first}; merge the two entries into one"))
    return problems


def string_values(value: Any) -> Iterable[str]:
    """Every string value in a YAML or JSON document (mapping keys are not values)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from string_values(item)
    elif isinstance(value, list):
        for item in value:
            yield from string_values(item)


# --------------------------------------------------------------------------------------------------
# Entry point


def load_targets(path: Path, *, discover: bool = False) -> LoadedTargets:
    """Read, substitute and validate targets.yaml. `discover` allows targets without tables."""
    loaded = _load(Path(path), discover, None, env_required=True)
    assert loaded is not None  # with env_required, any problem raises
    return loaded


def check_targets(path: Path, env_file: Path) -> None:
    """Validate a targets file about to be written (discover --write) as the user's commands will read it, with
    `env_file` as its .env; an unset ${VAR} is not a problem here: the user is told to set it."""
    _load(path, True, env_file, env_required=False)


def _load(path: Path, discover: bool, env_file: Path | None, env_required: bool) -> LoadedTargets | None:
    raw, data = _read_yaml(path)
    if raw is None:
        raise UserError(f"{path}: the file is empty; it needs at least `version: 1` and a `postgres:` list")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping (`version: 1`, `postgres: [...]`), not {_kind(raw)}")

    absolute = Path(os.path.abspath(path))
    env = _Env(env_file or absolute.parent / ".env")
    problems: list[tuple[Loc, str]] = []
    try:
        substituted = _substitute(raw, (), env, problems)
    except _TooDeepError as exc:
        raise UserError(
            f"{path}: {_format_loc(exc.loc[:3])}: nested too deeply; "
            "is a YAML alias (*name) used inside its own anchor?"
        ) from None
    env_locs = [loc for loc, _ in problems]
    if not env_required:
        problems = [(loc, m) for loc, m in problems if not m.startswith("environment variable ")]

    if discover and isinstance(substituted, dict):
        for kind in ("postgres", "dynamodb"):
            for entry in substituted.get(kind) or ():
                if isinstance(entry, dict):
                    entry.setdefault("tables", [])
    config: Targets | None = None
    try:
        config = Targets.model_validate(substituted, context={"discover": discover})
    except ValidationError as exc:
        skipped: list[tuple[Loc, str]] = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            duplicate = error["type"] == _DUPLICATE  # reported by _cross_entry_problems at the exact entry
            after_env = any(loc[: len(env_loc)] == env_loc for env_loc in env_locs)  # unset variable
            (skipped if duplicate or after_env else problems).append((loc, _describe(error)))
        problems += _cross_entry_problems(substituted)
        if not problems and (env_required or not env_locs):
            problems = skipped  # never fail without saying why

    if not env_required and not problems:
        return None
    if problems or config is None:
        # Belt and braces: scrub any password that might have slipped into a message, looking at every
        # string because a DSN may sit under a misspelt key or the wrong field.
        secrets = [secret for text in string_values(substituted) for secret in dsn_secrets(text)]
        lines = [redact(f"{_format_loc(loc)}: {message}", secrets) for loc, message in problems]
        raise UserError(f"{path}: invalid targets file", problems=lines)

    return LoadedTargets(
        path=absolute,
        sha256=hashlib.sha256(data).hexdigest(),
        base_dir=absolute.parent,
        config=config,
    )
