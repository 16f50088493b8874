"""Tests for loading and validating targets.yaml."""

from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from emailsync.config import (
    LoadedTargets,
    PostgresTable,
    PostgresTarget,
    Targets,
    dsn_secrets,
    load_targets,
    redact,
)
from emailsync.errors import UserError

FULL = """\
version: 1
mappings: email_mappings.json
match: casefold
postgres:
  - name: tymeplushr-core
    dsn: postgresql://app:hunter2@db.internal:6543/core
    lock_timeout: 3s
    statement_timeout: 10min
    ledger: false
    tables:
      - table: public.employees
        columns: [email, manager_email]
        on_conflict: skip
        key: [id]
        verify_ignore: [updated_at]
      - table: invites
        columns: [email]
dynamodb: []
"""


def write(tmp_path: Path, text: str, name: str = "targets.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> UserError:
    with pytest.raises(UserError) as info:
        load_targets(write(tmp_path, text))
    return info.value


def minimal(**table: str) -> str:
    """A valid file with one target and one table; `table` overrides lines of the table entry."""
    entry = {"table": "employees", "columns": "[email]", **table}
    lines = "\n".join(f"        {k}: {v}" for k, v in entry.items())
    return (
        "version: 1\npostgres:\n  - name: core\n    dsn: host=localhost dbname=app\n    tables:\n"
        f"      - {lines.lstrip()}\n"
    )


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fingerprint defaults read PGHOST; tests must not depend on the developer's shell.
    monkeypatch.delenv("PGHOST", raising=False)


# --- valid files -----------------------------------------------------------------------------------


def test_full_file_round_trips_into_models(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    loaded = load_targets(path)

    assert isinstance(loaded, LoadedTargets)
    assert loaded.path == path.resolve()
    assert loaded.base_dir == tmp_path.resolve()
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    config = loaded.config
    assert config.version == 1
    assert config.mappings == "email_mappings.json"
    assert config.match == "casefold"
    assert config.dynamodb == ()
    (target,) = config.postgres
    assert target.name == "tymeplushr-core"
    assert target.dsn.get_secret_value() == "postgresql://app:hunter2@db.internal:6543/core"
    assert target.lock_timeout == "3s"
    assert target.statement_timeout == "10min"
    assert target.ledger is False
    first, second = target.tables
    assert first == PostgresTable(
        table="public.employees",
        columns=("email", "manager_email"),
        on_conflict="skip",
        key=("id",),
        verify_ignore=("updated_at",),
    )
    assert (first.schema_name, first.table_name) == ("public", "employees")
    assert (second.schema_name, second.table_name) == (None, "invites")
    assert loaded.target("tymeplushr-core") is target


def test_defaults(tmp_path: Path) -> None:
    config = load_targets(write(tmp_path, minimal())).config

    assert config.mappings is None
    assert config.match == "exact"
    assert config.dynamodb == ()
    target = config.postgres[0]
    assert target.lock_timeout == "5s"
    assert target.statement_timeout is None
    assert target.ledger is True
    table = target.tables[0]
    assert table.on_conflict == "delete"
    assert table.key is None
    assert table.verify_ignore == ()


def test_version_only_file_has_no_targets(tmp_path: Path) -> None:
    loaded = load_targets(write(tmp_path, "version: 1\n"))
    assert loaded.config.postgres == ()
    with pytest.raises(UserError, match="unknown target 'x'.*defines no targets"):
        loaded.target("x")


def test_models_are_frozen_and_hide_the_dsn(tmp_path: Path) -> None:
    target = load_targets(write(tmp_path, FULL)).config.postgres[0]
    with pytest.raises(ValidationError):
        target.name = "other"  # type: ignore[misc]
    assert "hunter2" not in repr(target)
    assert "hunter2" not in str(target)
    assert "db.internal" not in repr(target)


# --- table names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "schema", "table"),
    [
        ("employees", None, "employees"),
        ("public.employees", "public", "employees"),
        ('"my.schema"."t""x"', "my.schema", 't"x'),
        ('"Mixed Case".Employees', "Mixed Case", "Employees"),
        ('"a.b"', None, "a.b"),
        ('hr."people"', "hr", "people"),
    ],
)
def test_table_name_parsing(text: str, schema: str | None, table: str) -> None:
    parsed = PostgresTable(table=text, columns=("email",))
    assert parsed.schema_name == schema
    assert parsed.table_name == table


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a.b.c", "has 3 parts"),
        ("", "empty name part"),
        ("public.", "ends with '.'"),
        (".employees", "empty name part"),
        ('""', "empty quoted name"),
        ('"open', "unterminated quote"),
        ('pub"lic.t', "quote inside a name"),
        ('"a"b', "expected '.'"),
        ("public. employees", "spaces around a name"),
    ],
)
def test_bad_table_names(text: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        PostgresTable(table=text, columns=("email",))


def test_quoted_table_in_file(tmp_path: Path) -> None:
    text = minimal(table='\'"my.schema"."t""x"\'')
    table = load_targets(write(tmp_path, text)).config.postgres[0].tables[0]
    assert (table.schema_name, table.table_name) == ("my.schema", 't"x')


# --- ${VAR} substitution ----------------------------------------------------------------------------

ENV_FILE = """\
version: 1
mappings: ${MAPPINGS_FILE}
postgres:
  - name: core
    dsn: ${CORE_DSN}
    tables:
      - table: employees
        columns: [email]
"""


def test_env_substitution_from_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORE_DSN", "postgresql://u:pw@env-host/app")
    monkeypatch.setenv("MAPPINGS_FILE", "m.json")
    config = load_targets(write(tmp_path, ENV_FILE)).config
    assert config.postgres[0].dsn.get_secret_value() == "postgresql://u:pw@env-host/app"
    assert config.mappings == "m.json"


def test_env_substitution_from_dotenv_without_touching_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORE_DSN", raising=False)
    monkeypatch.delenv("MAPPINGS_FILE", raising=False)
    (tmp_path / ".env").write_text("CORE_DSN=host=dotenv-host dbname=app\nMAPPINGS_FILE=d.json\n")
    config = load_targets(write(tmp_path, ENV_FILE)).config
    assert config.postgres[0].dsn.get_secret_value() == "host=dotenv-host dbname=app"
    assert config.mappings == "d.json"
    assert "CORE_DSN" not in os.environ


def test_environ_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORE_DSN", "host=from-environ")
    (tmp_path / ".env").write_text("CORE_DSN=host=from-dotenv\nMAPPINGS_FILE=d.json\n")
    config = load_targets(write(tmp_path, ENV_FILE)).config
    assert config.postgres[0].dsn.get_secret_value() == "host=from-environ"
    assert config.mappings == "d.json"  # still read from .env when not in the environment


def test_substitution_inside_a_longer_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "h1")
    monkeypatch.setenv("SCHEMA", "hr")
    text = minimal(table="${SCHEMA}.employees").replace("host=localhost dbname=app", "host=${DB_HOST} dbname=app")
    target = load_targets(write(tmp_path, text)).config.postgres[0]
    assert target.dsn.get_secret_value() == "host=h1 dbname=app"
    assert target.tables[0].schema_name == "hr"


def test_missing_variable_names_it_and_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORE_DSN", raising=False)
    monkeypatch.setenv("MAPPINGS_FILE", "m.json")
    error = load_error(tmp_path, ENV_FILE)
    assert str(tmp_path / "targets.yaml") in str(error)
    # Only the variable's problem: the unresolved DSN is not reported as invalid on top of it.
    assert len(error.problems) == 1
    assert error.problems[0].startswith("postgres[0].dsn: environment variable CORE_DSN is not set")
    assert str(tmp_path / ".env") in error.problems[0]


def test_empty_value_in_dotenv_counts_as_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORE_DSN", raising=False)
    monkeypatch.setenv("MAPPINGS_FILE", "m.json")
    (tmp_path / ".env").write_text("CORE_DSN\n")
    error = load_error(tmp_path, ENV_FILE)
    assert "CORE_DSN is not set" in str(error)


def test_invalid_variable_reference(tmp_path: Path) -> None:
    error = load_error(tmp_path, minimal(table="${not valid}"))
    assert error.problems == [
        "postgres[0].tables[0].table: invalid ${...} reference; use ${NAME} with letters, digits and _ only"
    ]


# --- validation problems ----------------------------------------------------------------------------


def test_unknown_key_nested_with_path_and_allowed_keys(tmp_path: Path) -> None:
    error = load_error(tmp_path, minimal(colums="[email]"))
    assert error.problems == [
        "postgres[0].tables[0].colums: unknown key 'colums' "
        "(allowed: table, columns, on_conflict, key, verify_ignore); did you mean 'columns'?"
    ]


def test_unknown_top_level_and_target_keys(tmp_path: Path) -> None:
    text = minimal().replace("    dsn:", "    lock_timeout_ms: 5\n    dsn:") + "extra: 1\n"
    error = load_error(tmp_path, text)
    assert "postgres[0].lock_timeout_ms: unknown key 'lock_timeout_ms' (allowed: name, dsn, tables," in str(error)
    allowed = "(allowed: version, mappings, match, postgres, dynamodb, unique_groups)"
    assert f"extra: unknown key 'extra' {allowed}" in str(error)


def test_bad_on_conflict_lists_allowed_values(tmp_path: Path) -> None:
    error = load_error(tmp_path, minimal(on_conflict="upsert"))
    assert error.problems == [
        "postgres[0].tables[0].on_conflict: 'upsert' is not allowed; use one of: 'delete', 'skip' or 'fail'"
    ]


def test_bad_match_and_version(tmp_path: Path) -> None:
    error = load_error(tmp_path, minimal().replace("version: 1", "version: 2\nmatch: fuzzy"))
    assert "version: unsupported version 2; this emailsync reads files with `version: 1`" in error.problems
    assert "match: 'fuzzy' is not allowed; use one of: 'exact' or 'casefold'" in error.problems


def test_missing_required_keys(tmp_path: Path) -> None:
    error = load_error(tmp_path, "postgres:\n  - name: core\n")
    assert error.problems == [
        "version: missing required key 'version'; add it such as `version: 1`",
        "postgres[0].dsn: missing required key 'dsn'; add it",
        "postgres[0].tables: missing required key 'tables'; add it",
    ]


def test_wrong_types_say_what_was_expected(tmp_path: Path) -> None:
    error = load_error(tmp_path, minimal(columns="email", key="[1]").replace("  - name", "  - ledger: maybe\n    name"))
    assert "postgres[0].tables[0].columns: must be a list, got a string" in error.problems
    assert "postgres[0].tables[0].key[0]: must be a string, got a number" in error.problems
    assert "postgres[0].ledger: must be true or false, got a string" in error.problems


def test_target_entry_not_a_mapping(tmp_path: Path) -> None:
    error = load_error(tmp_path, "version: 1\npostgres:\n  - core\n")
    assert error.problems == ["postgres[0]: must be a mapping of keys to values, got a string"]


def test_columns_and_key_rules(tmp_path: Path) -> None:
    error = load_error(tmp_path, minimal(columns="[email, email]", key="[]", verify_ignore="[a, a]"))
    assert error.problems == [
        "postgres[0].tables[0].columns: columns lists 'email' more than once; list each column once",
        "postgres[0].tables[0].key: key must list at least one column",
        "postgres[0].tables[0].verify_ignore: verify_ignore lists 'a' more than once; list each column once",
    ]
    error = load_error(tmp_path, minimal(columns="[]"))
    assert error.problems == ["postgres[0].tables[0].columns: columns must list at least one column"]


def test_empty_tables_and_bad_target_name(tmp_path: Path) -> None:
    text = "version: 1\npostgres:\n  - name: 'core db'\n    dsn: host=h\n    tables: []\n"
    error = load_error(tmp_path, text)
    assert error.problems == [
        "postgres[0].name: target name 'core db' is not allowed; use only letters, digits, '_', '.' and '-'",
        "postgres[0].tables: tables must list at least one table",
    ]


def test_bad_durations(tmp_path: Path) -> None:
    text = minimal().replace("    dsn:", "    lock_timeout: 5 seconds\n    statement_timeout: x\n    dsn:")
    error = load_error(tmp_path, text)
    assert [p.split(":")[0] for p in error.problems] == [
        "postgres[0].lock_timeout",
        "postgres[0].statement_timeout",
    ]
    assert "use a number with a unit (us, ms, s, min, h, d)" in error.problems[0]


TWO_TARGETS = """\
version: 1
postgres:
  - name: core
    dsn: host=a
    tables:
      - {table: employees, columns: [email]}
  - name: core
    dsn: host=b
    tables:
      - {table: public.users, columns: [email]}
      - {table: '"public"."users"', columns: [backup_email]}
"""


def test_duplicate_target_names_and_tables(tmp_path: Path) -> None:
    error = load_error(tmp_path, TWO_TARGETS)
    assert error.problems == [
        "postgres[1].name: duplicate target name 'core' (already used at postgres[0].name); use a unique name",
        "postgres[1].tables[1].table: same table as postgres[1].tables[0].table; merge the two entries into one",
    ]


def test_duplicate_checks_also_apply_to_models_built_in_code() -> None:
    table = PostgresTable(table="t", columns=("email",))
    with pytest.raises(ValidationError, match="name the same table"):
        PostgresTarget(name="a", dsn="host=h", tables=(table, table))
    target = PostgresTarget(name="a", dsn="host=h", tables=(table,))
    with pytest.raises(ValidationError, match="target name 'a' is used by postgres\\[0\\] and postgres\\[1\\]"):
        Targets(version=1, postgres=(target, target))


def test_dynamodb_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDB_ENDPOINT", "http://127.0.0.1:8000")
    text = (
        minimal()
        + """\
dynamodb:
  - name: hr
    region: eu-west-1
    endpoint_url: ${DDB_ENDPOINT}
    tables:
      - table: hr-leave-requests
        attributes: [email, approverEmails, profile.contactEmail]
      - table: hr-users
        client_attribute: clientId
        segments: 4
        attributes:
          - name: PK
            template: "USER#{email}"
          - userId
"""
    )
    loaded = load_targets(write(tmp_path, text))
    (hr,) = loaded.config.dynamodb
    assert hr.endpoint_url == "http://127.0.0.1:8000" and hr.region == "eu-west-1"
    users = hr.tables[1]
    assert [a.name for a in users.attributes] == ["PK", "userId"]
    assert users.attributes[0].affixes == ("USER#", "") and users.attributes[1].template is None
    assert hr.tables[0].attributes[2].path == ("profile", "contactEmail")
    assert users.client_attribute == "clientId" and users.segments == 4


def test_dynamodb_mistakes_are_reported_with_their_place(tmp_path: Path) -> None:
    text = (
        minimal()
        + """\
dynamodb:
  - name: core
    endpoint_url: localhost:8000
    tables:
      - table: ab
        attributes: [email, email]
      - table: ok-table
        attributes: [{name: PK, template: "USER#"}, "a..b"]
        segmnts: 3
"""
    )
    error = load_error(tmp_path, text)
    text_all = "\n".join(error.problems)
    assert "dynamodb[0].name: duplicate target name 'core'" in text_all  # minimal() has a postgres 'core'
    assert "dynamodb[0].endpoint_url" in text_all and "http(s) URL" in text_all
    assert "dynamodb[0].tables[0].table" in text_all and "3 to 255" in text_all
    assert "attributes listed twice" in text_all
    assert "exactly one {email} placeholder" in text_all
    assert "dotted path" in text_all
    assert "dynamodb[0].tables[1].segmnts: unknown key 'segmnts'" in text_all


def test_several_problems_reported_together(tmp_path: Path) -> None:
    text = """\
    version: 1
    match: nope
    postgres:
      - name: core
        dsn: host=a
        tables:
          - {table: a.b.c, columns: [email], on_conflict: merge}
          - {table: t, colums: [email]}
      - name: core
        dsn: host=b
        tables: []
    """
    error = load_error(tmp_path, text)
    assert str(error).startswith(f"{tmp_path / 'targets.yaml'}: invalid targets file\n  - ")
    locations = [p.split(": ")[0] for p in error.problems]
    assert locations == [
        "match",
        "postgres[0].tables[0].table",
        "postgres[0].tables[0].on_conflict",
        "postgres[0].tables[1].columns",
        "postgres[0].tables[1].colums",
        "postgres[1].tables",
        "postgres[1].name",
    ]


# --- secrets ----------------------------------------------------------------------------------------


def test_dsn_never_appears_in_validation_errors(tmp_path: Path) -> None:
    text = """\
    version: 1
    postgres:
      - name: 'bad name'
        dsn: postgresql://admin:s3cr3t-pw@db.example:5432/app?sslmode=bogus extra
        tables: []
      - name: other
        dsn: host=db.example password=hunter2 user=admin junk
        tables: [{table: t, columns: [email]}]
      - name: third
        dns: postgresql://admin:typo-pw@db.example/app
        dsn: [not, a, string]
        tables: [{table: t, columns: [email]}]
    """
    error = load_error(tmp_path, text)
    message = str(error)
    for secret in ("s3cr3t-pw", "hunter2", "typo-pw", "db.example"):
        assert secret not in message
    assert "postgres[1].dsn: dsn is not a valid PostgreSQL connection string" in message
    assert "postgres[2].dsn: must be a string, got a list" in message


def test_dsn_secret_in_env_is_not_leaked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORE_DSN", "host=h password=env-secret nonsense")
    monkeypatch.setenv("MAPPINGS_FILE", "m.json")
    error = load_error(tmp_path, ENV_FILE)
    assert "env-secret" not in str(error)
    assert error.problems[0].startswith("postgres[0].dsn: dsn is not a valid PostgreSQL connection string")


def test_redact() -> None:
    assert redact("connect to u:pw@h failed: pw", ["pw", ""]) == "connect to u:***@h failed: ***"
    assert redact("abcdef and abc", ["abc", "abcdef"]) == "*** and ***"
    assert redact("nothing here", []) == "nothing here"


def test_dsn_secrets() -> None:
    assert dsn_secrets("postgresql://u:p%40ss@h/db") == ["p@ss", "p%40ss"]
    assert dsn_secrets("host=h password='a b' user=u") == ["a b"]
    assert dsn_secrets("host=h user=u") == []
    assert dsn_secrets("postgresql://u@h/db") == []
    # Unparseable DSNs still yield the obvious password so error text can be scrubbed.
    assert dsn_secrets("host=h password=xyz junk") == ["xyz"]


# --- fingerprint ------------------------------------------------------------------------------------


def target_with(dsn: str) -> PostgresTarget:
    return PostgresTarget(name="t", dsn=dsn, tables=(PostgresTable(table="t", columns=("email",)),))


def test_described_uri() -> None:
    said = target_with("postgresql://admin:hunter2@db.internal:6543/core?sslmode=require").described()
    assert said == {"host": "db.internal", "port": "6543", "database": "core"}
    assert "hunter2" not in str(said)
    assert "admin" not in str(said)


def test_described_key_value() -> None:
    said = target_with("host=db2 port=5433 dbname=hr user=bob password=secret").described()
    assert said == {"host": "db2", "port": "5433", "database": "hr"}
    assert "secret" not in str(said)
    assert "bob" not in str(said)


def test_described_leaves_to_libpq_what_the_dsn_leaves_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not the user name as the database, not PGHOST: what the connection reaches is read from the server
    # (tests/test_store_binding.py); this only says what the DSN itself says, for messages.
    monkeypatch.setenv("PGHOST", "envhost")
    assert target_with("user=carol password=x").described() == {"host": None, "port": None, "database": None}
    assert target_with("postgresql:///shop").described() == {"host": None, "port": None, "database": "shop"}


# --- LoadedTargets helpers -------------------------------------------------------------------------


def test_mappings_path_resolution(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    loaded = load_targets(write(sub, FULL))
    assert loaded.mappings_path(None) == sub.resolve() / "email_mappings.json"
    override = Path("elsewhere/m.json")
    assert loaded.mappings_path(override) == override

    absolute = tmp_path / "abs.json"
    loaded = load_targets(write(sub, FULL.replace("email_mappings.json", str(absolute))))
    assert loaded.mappings_path(None) == absolute

    loaded = load_targets(write(sub, minimal()))
    with pytest.raises(UserError, match="set `mappings: <file>` in targets.yaml or pass --mappings"):
        loaded.mappings_path(None)


def test_unknown_target_lists_known(tmp_path: Path) -> None:
    loaded = load_targets(write(tmp_path, FULL))
    with pytest.raises(UserError, match="unknown target 'nope'; known targets: tymeplushr-core"):
        loaded.target("nope")


# --- file and YAML errors --------------------------------------------------------------------------


def test_duplicate_yaml_keys_report_line(tmp_path: Path) -> None:
    text = "version: 1\npostgres:\n  - name: a\n    dsn: host=h\n    name: b\n    tables: []\n"
    error = load_error(tmp_path, text)
    assert str(error) == (
        f"{tmp_path / 'targets.yaml'}: line 5, column 5: duplicate key 'name' "
        "(first defined on line 3); each key may appear only once"
    )


def test_duplicate_top_level_key(tmp_path: Path) -> None:
    error = load_error(tmp_path, "version: 1\nversion: 1\n")
    assert "line 2, column 1: duplicate key 'version' (first defined on line 1)" in str(error)


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    text = """\
    version: 1
    postgres:
      - name: a
        dsn: host=h
        tables:
          - &base {table: t1, columns: [email], on_conflict: skip}
          - <<: *base
            table: t2
    """
    tables = load_targets(write(tmp_path, text)).config.postgres[0].tables
    assert [(t.table, t.on_conflict) for t in tables] == [("t1", "skip"), ("t2", "skip")]


def test_yaml_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    error = load_error(tmp_path, "version: 1\npostgres:\n  - name: [unclosed\n")
    message = str(error)
    assert message.startswith(f"{tmp_path / 'targets.yaml'}: YAML syntax error at line ")
    assert "column" in message

    error = load_error(tmp_path, "version: 1\n  bad: indent\n")
    assert "YAML syntax error at line 2, column 6: mapping values are not allowed here" in str(error)


def test_unsafe_yaml_tag_is_rejected(tmp_path: Path) -> None:
    error = load_error(tmp_path, "version: !!python/object/apply:os.system ['true']\n")
    assert "YAML syntax error at line 1" in str(error)
    assert "python/object/apply" in str(error)


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    error = load_error(tmp_path, text)
    assert str(error) == (
        f"{tmp_path / 'targets.yaml'}: the file is empty; it needs at least `version: 1` and a `postgres:` list"
    )


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("just text\n", "a string")])
def test_top_level_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    error = load_error(tmp_path, text)
    assert str(error).endswith(f"the top level must be a mapping (`version: 1`, `postgres: [...]`), not {kind}")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UserError, match="targets file not found") as info:
        load_targets(missing)
    assert str(missing) in str(info.value)

    with pytest.raises(UserError, match="is a directory") as info:
        load_targets(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_bytes(b"version: 1\nmappings: caf\xe9.json\n")
    with pytest.raises(UserError, match="not valid UTF-8 \\(line 2, byte 24\\); save the file as UTF-8") as info:
        load_targets(path)
    assert str(path) in str(info.value)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_bytes("\ufeffversion: 1\n".encode())
    assert load_targets(path).config.version == 1


def test_recursive_alias_is_a_user_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, "version: 1\npostgres: &a [*a]\n")
    assert "a YAML alias refers to the value that contains it" in str(error)
