"""Hostile and malformed input (issue 8): mapping files, targets.yaml and plans edited by hand.

The rule for every refusal: ONE `error:` message that names the file, the place and the fix (no traceback), exit
code 1, and nothing written anywhere. "Nothing written" is measured, not assumed:

- every table of every database involved is dumped before and after (each row as `to_jsonb`, plus the list of
  schemas and tables, so a dropped table, a created ledger or a changed row all show);
- the workspace's file listing (every path, and the sha256 of every file) is compared, so no plan folder, plan,
  plan.md, diff, report or journal can appear unnoticed, and a plan given to apply stays byte for byte.

Inputs accepted on purpose (IDN and other unicode addresses, surrounding whitespace, a CSV BOM, case variants) are
planned AND applied, and the rows checked. All against the real embedded PostgreSQL; nothing of ours is mocked.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import assert_user_error, listing, refused, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emailsync.mappings import load_mappings
from emailsync.plan import PLAN_FORMAT_MINOR, dumps, header_digest, loads, parse_action, sort_key

EMPLOYEES = "- table: public.employees\n  columns: [email, manager_email]\n"
SEED_ROWS = [
    (1, "a@old.com", "boss@old.com"),
    (2, "b@old.com", "a@old.com"),
    (3, "boss@old.com", None),
    (4, "keep@x.com", "b@old.com"),
]
MAPPING = {"a@old.com": "a@new.com", "b@old.com": "b@new.com", "boss@old.com": "boss@new.com"}
OUT = "plans/out/plan.jsonl.gz"  # where `plan` is told to write: must never appear after a refusal

MAPPINGS_AREA = "hostile input: mapping files"
TARGETS_AREA = "hostile input: targets.yaml"
PLANS_AREA = "hostile input: plans edited by hand"
PROPERTY_AREA = "hostile input: property-based (hypothesis)"
REFUSED = "refused, exit 1, nothing written"


# --- the databases ------------------------------------------------------------------------------------------


class Db:
    """One database of the embedded server (like conftest's Database, but it can outlive a single test)."""

    def __init__(self, host: str, name: str) -> None:
        self.host, self.name = host, name

    @property
    def dsn(self) -> str:
        return f"host={self.host} dbname={self.name} user=postgres"

    def execute(self, query: str, params: Any = None) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute(query, params)

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            return c.execute(query, params).fetchall()


def seed(db: Any) -> None:
    """employees (what the plans change) and y, the table every injected `DROP TABLE y` aims at."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, manager_email text)")
    db.execute("CREATE TABLE y (id int PRIMARY KEY, note text)")
    db.execute("INSERT INTO y VALUES (1, 'must survive')")
    reset_rows(db)


def reset_rows(db: Any) -> None:
    db.execute("DELETE FROM employees")
    for row in SEED_ROWS:
        db.execute("INSERT INTO employees VALUES (%s, %s, %s)", row)


@pytest.fixture(scope="module")
def shared_db(pg_server: Any) -> Iterator[Db]:
    """One seeded database for every refusal in this module: each case checks it is unchanged, so sharing it is
    safe, and it saves a CREATE DATABASE per case. Tests that write get their own database (`db`)."""
    host = pg_server.get_uri().split("host=", 1)[1]
    name = f"hostile_{os.getpid()}"
    admin = f"host={host} dbname=postgres user=postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    d = Db(host, name)
    seed(d)
    yield d
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _unsigned_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plan signing is optional and keyed by the environment; these tests are about unsigned plans.
    monkeypatch.delenv("EMAILSYNC_PLAN_KEY", raising=False)


# --- "nothing written" --------------------------------------------------------------------------------------


def plan_refused(ws: Any, db: Any, mappings: str, *fragments: str, max_chars: int | None = None) -> str:
    return refused(ws, [db], ("plan", "--mappings", mappings, "--out", OUT), *fragments, max_chars=max_chars)


# --- mapping files: refused ---------------------------------------------------------------------------------

NFC, NFD = unicodedata.normalize("NFC", "josé@x.com"), unicodedata.normalize("NFD", "josé@x.com")


def _j(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


# (id, file name, content, match, fragments the one error must contain besides the file name)
BAD_MAPPINGS: list[tuple[str, str, bytes, str, tuple[str, ...]]] = [
    # bytes that are not text
    (
        "garbage bytes",
        "m.json",
        bytes(range(256)) * 4,
        "exact",
        ("not valid UTF-8", "line 2", "save the file as UTF-8"),
    ),
    (
        "latin-1 csv",
        "m.csv",
        "old_email,new_email\nmüller@old.com,m@new.com\n".encode("latin-1"),
        "exact",
        ("not valid UTF-8", "line 2", "save the file as UTF-8"),
    ),
    (
        "utf-16 csv",
        "m.csv",
        "old_email,new_email\na@old.com,a@new.com\n".encode("utf-16"),
        "exact",
        ("not valid UTF-8", "line 1"),
    ),
    ("utf-8 then a stray byte", "m.json", b'{"a@old.com": "a@new.com"}\n\xff', "exact", ("not valid UTF-8", "line 2")),
    # text that is not mappings
    ("prose", "m.csv", b"lorem ipsum dolor sit amet\n", "exact", ("line 1", "first row must be a header", "old_email")),
    ("pdf sniffed as csv", "m.txt", b"%PDF-1.4\n%\xc3\xa4\n", "exact", ("line 1", "first row must be a header")),
    ("empty", "m.json", b"", "exact", ("the mappings file is empty",)),
    ("only whitespace", "m.csv", b" \n\t\r\n", "exact", ("the mappings file is empty",)),
    ("only a BOM", "m.csv", b"\xef\xbb\xbf", "exact", ("the mappings file is empty",)),
    # JSON of the wrong shape
    ("json number", "m.json", b"42", "exact", ("must be an object", "not a number")),
    ("json string", "m.json", b'"a@old.com"', "exact", ("must be an object", "not a string")),
    ("json null", "m.json", b"null", "exact", ("must be an object", "not null")),
    ("json true", "m.json", b"true", "exact", ("must be an object", "not a boolean")),
    ("json empty list", "m.json", b"[]", "exact", ("contains no mappings",)),
    ("json empty object", "m.json", b"{}", "exact", ("contains no mappings",)),
    ("json list of pairs", "m.json", b'[["a@old.com", "a@new.com"]]', "exact", ("[0]", "got a list")),
    ("json list of strings", "m.json", b'["a@old.com"]', "exact", ("[0]", "got a string")),
    (
        "json nested object value",
        "m.json",
        b'{"a@old.com": {"new": "a@new.com"}}',
        "exact",
        ('key "a@old.com"', "must be a string, got an object"),
    ),
    ("json list value", "m.json", b'{"a@old.com": ["a@new.com"]}', "exact", ('key "a@old.com"', "got a list")),
    (
        "json nested object in entry",
        "m.json",
        b'[{"old_email": {"v": "a@old.com"}, "new_email": "a@new.com"}]',
        "exact",
        ("[0]", '"old_email" must be a string, got an object'),
    ),
    ("json nested 100k deep", "m.json", b"[" * 100_000, "exact", ("nested too deeply",)),
    ("json 5000-digit number", "m.json", b'[{"old": 1' + b"0" * 5000 + b', "new": "a@new.com"}]', "exact", ("JSON",)),
    ("json trailing comma", "m.json", b'{"a@old.com": "a@new.com",}', "exact", ("invalid JSON", "line 1, column")),
    ("json truncated", "m.json", b'{"a@old.com": "a@ne', "exact", ("invalid JSON", "line 1")),
    # duplicate keys: detected, never last-wins (not even when both say the same)
    (
        "duplicate key, same value",
        "m.json",
        b'{"a@old.com": "a@new.com", "a@old.com": "a@new.com"}',
        "exact",
        ('key "a@old.com"', "appears 2 times", "each old address may appear once"),
    ),
    (
        "duplicate key, different value",
        "m.json",
        b'{"a@old.com": "a@new.com", "b@old.com": "b@new.com", "a@old.com": "evil@x.com"}',
        "exact",
        ('key "a@old.com"', "appears 2 times"),
    ),
    (
        "duplicate key spelt with a \\u escape",
        "m.json",
        b'{"a@old.com": "a@new.com", "\\u0061@old.com": "evil@x.com"}',
        "exact",
        ('key "a@old.com"', "appears 2 times"),
    ),
    (
        "duplicate key inside a list entry",
        "m.json",
        b'[{"old_email": "a@old.com", "new_email": "a@new.com", "new_email": "evil@x.com"}]',
        "exact",
        ("[0]", '"new_email" appears 2 times'),
    ),
    (
        "two spellings of one field",
        "m.json",
        b'[{"old": "a@old.com", "oldEmail": "b@old.com", "new": "a@new.com"}]',
        "exact",
        ("[0]", '"old" and "oldEmail" both give the old address'),
    ),
    # whitespace and case variants that make one old address go two ways
    (
        "whitespace variant of a key",
        "m.json",
        b'{"a@old.com": "a@new.com", " a@old.com\\t": "evil@x.com"}',
        "exact",
        ("conflicts with", "one old address cannot become two different new addresses"),
    ),
    (
        "case variant under casefold",
        "m.json",
        b'{"a@old.com": "a@new.com", "A@OLD.COM": "evil@x.com"}',
        "casefold",
        ('key "A@OLD.COM"', "conflicts with", 'key "a@old.com"'),
    ),
    # CSV mistakes
    ("csv semicolons", "m.csv", b"old_email;new_email\na@old.com;a@new.com\n", "exact", ("line 1", "semicolons")),
    ("csv tabs", "m.csv", b"old_email\tnew_email\na@old.com\ta@new.com\n", "exact", ("line 1", "tabs")),
    ("csv pipes", "m.csv", b"old_email|new_email\na@old.com|a@new.com\n", "exact", ("line 1", "'|'")),
    (
        "csv BOM and semicolons",
        "m.csv",
        b"\xef\xbb\xbfold_email;new_email\na@old.com;a@new.com\n",
        "exact",
        ("line 1", "semicolons", "comma"),
    ),
    (
        "csv semicolon in one data line",
        "m.csv",
        b"old_email,new_email\na@old.com,a@new.com\nb@old.com;b@new.com\n",
        "exact",
        ("line 3", "expected 2 field(s)", "semicolons"),
    ),
    ("csv header only", "m.csv", b"old_email,new_email\n", "exact", ("contains no mappings",)),
    ("csv missing column", "m.csv", b"old_email\na@old.com\n", "exact", ("line 1", "new_email")),
    ("csv repeated column", "m.csv", b"old_email,new_email,old_email\na,b,c\n", "exact", ("line 1", "'old_email'")),
    (
        "csv extra field",
        "m.csv",
        b"old_email,new_email\na@old.com,a@new.com,surprise\n",
        "exact",
        ("line 2", "expected 2 field(s)"),
    ),
    ("csv NUL byte", "m.csv", b"old_email,new_email\na@old.com,a@new.com\x00\n", "exact", ("line 2", "\\x00")),
    (
        "csv unclosed quote",
        "m.csv",
        b'old_email,new_email\na@old.com,a@new.com\n"b@old.com,b@new.com\nboss@old.com,boss@new.com\n',
        "exact",
        ("line 3", "quote"),  # the line where the quote opens, and what is wrong with it
    ),
    # cycles
    ("cycle of two", "m.json", b'{"a@old.com": "b@old.com", "b@old.com": "a@old.com"}', "exact", ("cycle",)),
    (
        "cycle of three in csv",
        "m.csv",
        b"old_email,new_email\na@old.com,b@old.com\nb@old.com,boss@old.com\nboss@old.com,a@old.com\n",
        "exact",
        ("line 2", "cycle", "a@old.com → b@old.com → boss@old.com → a@old.com"),
    ),
    (
        "cycle through case only (exact)",
        "m.json",
        b'{"a@old.com": "A@old.com", "A@old.com": "a@old.com"}',
        "exact",
        ("cycle", "a@old.com → A@old.com → a@old.com"),
    ),
    (
        "cycle under casefold",
        "m.json",
        b'{"a@old.com": "B@old.com", "b@old.com": "A@old.com"}',
        "casefold",
        ("cycle",),
    ),
    # unicode that is not an address (invisible, look-alike or not a domain character): shown escaped
    ("zero-width space", "m.json", _j({"a\u200b@old.com": "a@new.com"}), "exact", ("not an email address", "\\u200b")),
    ("bidi override", "m.json", _j({"\u202ea@old.com": "a@new.com"}), "exact", ("not an email address", "\\u202e")),
    ("no-break space inside", "m.json", _j({"a\u00a0b@old.com": "a@new.com"}), "exact", ("not an email address",)),
    ("bell character", "m.json", _j({"a\u0007@old.com": "a@new.com"}), "exact", ("not an email address", "\\x07")),
    ("fullwidth at sign", "m.json", _j({"a\uff20old.com": "a@new.com"}), "exact", ("not an email address",)),
    ("emoji domain", "m.json", _j({"a@\U0001f600.com": "a@new.com"}), "exact", ("not an email address",)),
    ("quoted local with space", "m.json", _j({'"john doe"@x.com': "a@new.com"}), "exact", ("not an email address",)),
    ("underscore in domain", "m.json", _j({"a@old_co.com": "a@new.com"}), "exact", ("not an email address",)),
    ("no dot in domain", "m.json", _j({"a@localhost": "a@new.com"}), "exact", ("not an email address",)),
    ("65-char local part", "m.json", _j({"x" * 65 + "@x.com": "a@new.com"}), "exact", ("not an email address",)),
    (
        "every bad entry reported at once",
        "m.json",
        _j([{"old": "a@old.com", "new": "nope"}, {"old": "b\u200b@old.com", "new": "b@new.com"}]),
        "exact",
        ("2 problem(s)", "[0]: not an email address: 'nope'", "[1]: not an email address"),
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "match", "fragments"), [pytest.param(*c[1:], id=c[0]) for c in BAD_MAPPINGS]
)
def test_bad_mapping_file_is_refused(
    ws: Any,
    shared_db: Db,
    reliability: Any,
    request: pytest.FixtureRequest,
    name: str,
    content: bytes,
    match: str,
    fragments: tuple[str, ...],
) -> None:
    ws.postgres_targets({"core": shared_db}, EMPLOYEES, match=match)
    (ws.path / name).write_bytes(content)
    plan_refused(ws, shared_db, name, name, *fragments, max_chars=20_000)
    reliability(MAPPINGS_AREA, REFUSED, cases=1, detail=request.node.callspec.id)


# --- mapping files: huge ------------------------------------------------------------------------------------

MILLION = 1_000_000


def million_csv(bad_line: int, bad: str) -> str:
    """A 1M-entry CSV (26 MB) whose physical line `bad_line` is replaced by `bad`."""
    lines = ["old_email,new_email", *(f"u{i}@o.io,u{i}@n.io" for i in range(MILLION))]
    lines[bad_line - 1] = bad
    return "\n".join(lines) + "\n"


def timed_refusal(ws: Any, db: Any, name: str, *fragments: str, seconds: float) -> str:
    started = time.monotonic()
    message = plan_refused(ws, db, name, name, *fragments, max_chars=20_000)
    took = time.monotonic() - started
    assert took < seconds, f"took {took:.1f}s to refuse"
    return message


def test_million_entry_files_fail_fast_naming_the_line(ws: Any, shared_db: Db, reliability: Any) -> None:
    """A structural error deep in a 1M-entry file stops the reading there and names its line."""
    ws.postgres_targets({"core": shared_db}, EMPLOYEES)
    body = million_csv(700_001, "u699999@o.io,u699999@n.io").encode()
    cut = body.index(b"u699999@n.io")
    (ws.path / "latin.csv").write_bytes(body[:cut] + "ü".encode("latin-1") + body[cut:])  # one latin-1 byte
    timed_refusal(ws, shared_db, "latin.csv", "not valid UTF-8", "line 700001", seconds=10)

    entries = [f'  {{"old": "u{i}@o.io", "new": "u{i}@n.io"}},' for i in range(MILLION)]
    entries[699_998] = '  {"old": "u699998@o.io" "new": "u699998@n.io"},'  # a missing comma on line 700000
    (ws.path / "big.json").write_text("[\n" + "\n".join(entries).rstrip(",") + "\n]\n")
    timed_refusal(ws, shared_db, "big.json", "invalid JSON", "line 700000", seconds=10)
    reliability(MAPPINGS_AREA, REFUSED, cases=2, detail="1M-entry CSV and JSON with one bad line, refused fast")


def test_large_csv_with_one_bad_address_names_its_line(ws: Any, shared_db: Db, reliability: Any) -> None:
    """A bad address is only found by validating everything (all problems are reported together): still linear."""
    ws.postgres_targets({"core": shared_db}, EMPLOYEES)
    lines = ["old_email,new_email", *(f"u{i}@o.io,u{i}@n.io" for i in range(200_000))]
    lines[150_000] = "u149999@o.io,not-an-address"
    (ws.path / "m.csv").write_text("\n".join(lines) + "\n")
    timed_refusal(ws, shared_db, "m.csv", "1 problem(s)", "line 150001", "'not-an-address'", seconds=30)
    reliability(MAPPINGS_AREA, REFUSED, cases=1, detail="200k-entry CSV with one bad address")


def test_unclosed_quote_in_a_million_line_csv_names_where_it_opens(ws: Any, shared_db: Db, reliability: Any) -> None:
    """The quote opened on line 6 swallows the rest of the file; the error must point at line 6, not where the
    csv reader gave up thousands of lines later."""
    ws.postgres_targets({"core": shared_db}, EMPLOYEES)
    (ws.path / "m.csv").write_text(million_csv(6, '"u4@o.io,u4@n.io'))
    message = timed_refusal(ws, shared_db, "m.csv", "line 6", "quote", seconds=10)
    assert "line 6063" not in message
    reliability(MAPPINGS_AREA, REFUSED, cases=1, detail="unclosed quote at line 6 of 1M lines")


def test_megabytes_of_junk_are_refused_with_a_short_message(ws: Any, shared_db: Db, reliability: Any) -> None:
    """Junk must not come back as the error message: the message quotes at most a little of the input."""
    ws.postgres_targets({"core": shared_db}, EMPLOYEES)
    rnd = random.Random(8)
    (ws.path / "random.json").write_bytes(rnd.randbytes(4 * 2**20))
    timed_refusal(ws, shared_db, "random.json", "not valid UTF-8", seconds=10)
    # 4 MB of printable junk on one line with commas: read as a CSV header
    junk = ",".join("".join(rnd.choices("abcdefghij<>%$#", k=60)) for _ in range(65_000))
    (ws.path / "junk.csv").write_text(junk + "\n")
    timed_refusal(ws, shared_db, "junk.csv", "line 1", "first row must be a header", seconds=10)
    reliability(MAPPINGS_AREA, REFUSED, cases=2, detail="4 MB of random bytes; 4 MB junk header line")


def test_a_million_bad_entries_give_a_readable_error(ws: Any, shared_db: Db, reliability: Any) -> None:
    """A million problems: still one error, counted, with the first ones listed, not 100 MB of detail lines."""
    ws.postgres_targets({"core": shared_db}, EMPLOYEES)
    (ws.path / "m.json").write_text("[" + ",".join(["1"] * MILLION) + "]")
    timed_refusal(ws, shared_db, "m.json", "1000000 problem(s)", "[0]", seconds=20)
    reliability(MAPPINGS_AREA, REFUSED, cases=1, detail="1M invalid entries")


# --- mapping files: accepted on purpose, planned and applied correctly ---------------------------------------

# (id, rows in people.email, file name, content, match, rows afterwards, warnings expected)
IDN = ["user@bücher.de", "пользователь@пример.рф", "a@उदाहरण.भारत", "a@xn--bcher-kva.de", '"quoted@local"@x.com']
ACCEPTED: list[tuple[str, list[str], str, bytes, str, list[str], tuple[str, ...]]] = [
    (
        "IDN, quoted and unicode local parts",
        [*IDN, "\U0001f600@x.com", "stays@x.com"],
        "m.json",
        _j({**{e: f"n{i}@über.de" for i, e in enumerate(IDN)}, "\U0001f600@x.com": "smile@例え.jp"}),
        "exact",
        [*(f"n{i}@über.de" for i in range(len(IDN))), "smile@例え.jp", "stays@x.com"],
        (),
    ),
    (
        "NFC and NFD spellings are different addresses",
        [NFC, NFD],
        "m.json",
        _j({NFC: "jose@new.com"}),
        "exact",
        ["jose@new.com", NFD],  # code points are compared exactly: no normalisation behind the user's back
        (),
    ),
    (
        "surrounding whitespace is trimmed",
        ["a@old.com", "b@old.com", "c@old.com"],
        "m.json",
        _j({" a@old.com": "a@new.com\t", "\u00a0b@old.com\u00a0": " b@new.com", "c@old.com\n": "c@new.com"}),
        "exact",
        ["a@new.com", "b@new.com", "c@new.com"],
        (),
    ),
    (
        "csv with BOM, CRLF, odd header case and spaces",
        ["a@old.com", "b@old.com"],
        "m.csv",
        b"\xef\xbb\xbf OLD_EMAIL , New_Email \r\na@old.com , a@new.com\r\n\r\n b@old.com,b@new.com\r\n",
        "exact",
        ["a@new.com", "b@new.com"],
        (),
    ),
    (
        "case variants are distinct under exact",
        ["a@old.com", "A@old.com"],
        "m.json",
        _j({"a@old.com": "lower@new.com", "A@old.com": "upper@new.com"}),
        "exact",
        ["lower@new.com", "upper@new.com"],
        (),
    ),
    (
        "case variants match under casefold",
        ["a@old.com", "B@OLD.com"],
        "m.json",
        _j({"A@OLD.COM": "a@new.com", "b@old.com": "b@new.com"}),
        "casefold",
        ["a@new.com", "b@new.com"],
        (),
    ),
    (
        "a mapping to itself and an exact duplicate are dropped with a warning",
        ["a@old.com", "b@old.com"],
        "m.csv",
        b"old_email,new_email\na@old.com,a@old.com\nb@old.com,b@new.com\nb@old.com ,b@new.com\n",
        "exact",
        ["a@old.com", "b@new.com"],
        ("line 2: old and new are the same", "line 4: duplicate of line 3"),
    ),
    (
        "a chain is simultaneous, not transitive",
        ["a@old.com", "b@old.com"],
        "m.json",
        _j({"a@old.com": "b@old.com", "b@old.com": "c@old.com"}),
        "exact",
        ["b@old.com", "c@old.com"],
        (),
    ),
]


@pytest.mark.parametrize(
    ("rows", "name", "content", "match", "after", "warnings"), [pytest.param(*c[1:], id=c[0]) for c in ACCEPTED]
)
def test_unusual_but_valid_mappings_plan_and_apply_correctly(
    ws: Any,
    db: Any,
    reliability: Any,
    request: pytest.FixtureRequest,
    rows: list[str],
    name: str,
    content: bytes,
    match: str,
    after: list[str],
    warnings: tuple[str, ...],
) -> None:
    db.execute("CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE)")
    for i, email in enumerate(rows, 1):
        db.execute("INSERT INTO people VALUES (%s, %s)", (i, email))
    ws.postgres_targets({"core": db}, "- table: public.people\n  columns: [email]\n", match=match)
    (ws.path / name).write_bytes(content)
    r, plan = ws.plan("--mappings", name)
    assert r.code == 0, (r.out, r.err)
    assert "Traceback" not in r.out + r.err
    for warning in warnings:
        assert f"{name}: {warning}" in r.err, r.err
    changed = sum(1 for old, new in zip(rows, after, strict=True) if old != new)
    assert len(ws.plan_json(plan)["actions"]) == changed
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, (r.out, r.err)
    assert [e for (e,) in db.rows("SELECT email FROM people ORDER BY id")] == after
    reliability(MAPPINGS_AREA, "accepted, planned and applied exactly", cases=1, detail=request.node.callspec.id)


# --- targets.yaml -------------------------------------------------------------------------------------------

HEAD = "version: 1\nmappings: email_mappings.json\npostgres:\n  - name: core\n    dsn: ${CORE_DSN}\n"
TABLE = "    tables:\n      - table: public.employees\n        columns: [email, manager_email]\n"
DDB = "dynamodb:\n  - name: hr\n    endpoint_url: http://127.0.0.1:1\n    tables:\n      - table: hr-users\n"
INJECT = 'x"; DROP TABLE y; --'

# (id, targets.yaml text, fragments besides "targets.yaml")
BAD_TARGETS: list[tuple[str, str, tuple[str, ...]]] = [
    # unknown keys at each level
    (
        "unknown top-level key",
        HEAD + TABLE + "mapings: m.json\n",
        ("mapings", "unknown key", "did you mean 'mappings'"),
    ),
    ("unknown target key", HEAD + "    tabels: []\n" + TABLE, ("postgres[0].tabels", "did you mean 'tables'")),
    (
        "unknown table key",
        HEAD + TABLE + "        on_conflit: skip\n",
        ("postgres[0].tables[0].on_conflit", "on_conflict"),
    ),
    (
        "unknown dynamodb target key",
        DDB.replace("    tables:", "    regoin: x\n    tables:") + "        attributes: [email]\n",
        ("dynamodb[0].regoin", "did you mean 'region'"),
    ),
    (
        "unknown dynamodb table key",
        DDB + "        atributes: [email]\n",
        ("dynamodb[0].tables[0].atributes", "attributes"),
    ),
    (
        "unknown dynamodb attribute key",
        DDB + "        attributes: [{name: email, tmpl: 'U#{email}'}]\n",
        ("dynamodb[0].tables[0].attributes[0].tmpl", "template"),
    ),
    # wrong types
    ("version as a string", HEAD.replace("version: 1", "version: '1'") + TABLE, ("version", "unsupported version")),
    ("version 2", HEAD.replace("version: 1", "version: 2") + TABLE, ("version", "unsupported version 2")),
    ("version true", HEAD.replace("version: 1", "version: true") + TABLE, ("version",)),
    ("postgres as a mapping", "version: 1\npostgres: {name: core}\n", ("postgres", "must be a list, got a mapping")),
    ("tables null", HEAD + "    tables:\n", ("postgres[0].tables", "must be a list, got an empty value")),
    ("columns a string", HEAD + TABLE.replace("[email, manager_email]", "email"), ("columns", "must be a list")),
    ("column a number", HEAD + TABLE.replace("[email, manager_email]", "[1]"), ("columns[0]", "must be a string")),
    ("on_conflict unknown", HEAD + TABLE + "        on_conflict: drop\n", ("on_conflict", "'drop'", "'delete'")),
    ("ledger not a bool", HEAD + "    ledger: maybe\n" + TABLE, ("postgres[0].ledger", "true or false")),
    ("match unknown", HEAD.replace("version: 1", "version: 1\nmatch: fuzzy") + TABLE, ("match", "'fuzzy'", "casefold")),
    ("name a number", HEAD.replace("name: core", "name: 7") + TABLE, ("postgres[0].name", "must be a string")),
    (
        "lock_timeout a list",
        HEAD + "    lock_timeout: [5s]\n" + TABLE,
        ("postgres[0].lock_timeout", "must be a string"),
    ),
    ("segments a word", DDB + "        segments: four\n        attributes: [email]\n", ("segments", "an integer")),
    ("a date for a path", HEAD.replace("email_mappings.json", "2001-12-14") + TABLE, ("mappings", "got a date")),
    ("a set for a path", HEAD.replace("email_mappings.json", "!!set {a, b}") + TABLE, ("mappings", "got a set")),
    ("a boolean key", HEAD + TABLE + "true: 1\n", ("true",)),  # YAML reads `true:` as a boolean key
    # identifiers with quotes, semicolons, dots and SQL, refused before any connection
    ("table with a bare quote", HEAD + TABLE.replace("public.employees", f"'{INJECT}'"), ("quote inside a name",)),
    ("table with three parts", HEAD + TABLE.replace("public.employees", "a.b.c"), ("has 3 parts",)),
    ("table ending in a dot", HEAD + TABLE.replace("public.employees", "public."), ("ends with '.'",)),
    (
        "lock_timeout with SQL",
        HEAD + "    lock_timeout: '5s; DROP TABLE y'\n" + TABLE,
        ("lock_timeout", "not a duration"),
    ),
    (
        "statement_timeout with SQL",
        HEAD + '    statement_timeout: "1\'; DROP TABLE y; --"\n' + TABLE,
        ("statement_timeout", "not a duration"),
    ),
    (
        "target name with SQL",
        HEAD.replace("name: core", "name: 'core; DROP TABLE y'") + TABLE,
        ("postgres[0].name", "not allowed"),
    ),
    (
        "dynamodb table with SQL",
        DDB.replace("hr-users", "'t; DROP'") + "        attributes: [email]\n",
        ("dynamodb[0].tables[0].table", "not a DynamoDB table name"),
    ),
    # ${VAR}
    (
        "unset variable",
        HEAD.replace("CORE_DSN", "EMAILSYNC_HOSTILE_UNSET") + TABLE,
        ("postgres[0].dsn", "EMAILSYNC_HOSTILE_UNSET is not set", ".env"),
    ),
    (
        "unset variable in the mappings path",
        HEAD.replace("email_mappings.json", "${EMAILSYNC_HOSTILE_UNSET}/m.json") + TABLE,
        ("mappings", "EMAILSYNC_HOSTILE_UNSET is not set"),
    ),
    ("empty ${}", HEAD.replace("${CORE_DSN}", "${}") + TABLE, ("postgres[0].dsn", "invalid ${...} reference")),
    ("unterminated ${", HEAD.replace("${CORE_DSN}", "${CORE_DSN") + TABLE, ("postgres[0].dsn", "not a valid")),
    # YAML itself
    ("duplicate key", HEAD + TABLE + "match: exact\nmatch: casefold\n", ("duplicate key 'match'", "line")),
    (
        "python tag",
        HEAD + TABLE.replace("public.employees", "!!python/object/apply:os.system ['true']"),
        ("line 7", "could not determine a constructor"),
    ),
    ("self-referencing alias", "version: 1\npostgres: &a [*a]\n", ("refers to the value that contains it",)),
    ("nested 10k deep", HEAD + TABLE + "x: " + "[" * 10_000 + "]" * 10_000 + "\n", ("nested",)),
    ("5000-digit integer", HEAD.replace("version: 1", "version: " + "9" * 5000) + TABLE, ("version",)),
    ("not UTF-8", (HEAD + TABLE).replace("core", "c\udcf6re"), ("not valid UTF-8", "line 4")),
    ("empty file", "", ("the file is empty",)),
    ("a list at the top", "- version: 1\n", ("top level must be a mapping", "a list")),
]


@pytest.mark.parametrize(("text", "fragments"), [pytest.param(*c[1:], id=c[0]) for c in BAD_TARGETS])
def test_bad_targets_file_is_refused(
    ws: Any,
    shared_db: Db,
    reliability: Any,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    text: str,
    fragments: tuple[str, ...],
) -> None:
    monkeypatch.setenv("CORE_DSN", shared_db.dsn)
    monkeypatch.delenv("EMAILSYNC_HOSTILE_UNSET", raising=False)
    ws.mappings(MAPPING)
    (ws.path / "targets.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))
    refused(ws, [shared_db], ("plan", "--out", OUT), "targets.yaml", *fragments, max_chars=20_000)
    reliability(TARGETS_AREA, REFUSED, cases=1, detail=request.node.callspec.id)


def test_nul_in_the_mappings_path_is_refused(ws: Any, shared_db: Db, reliability: Any) -> None:
    """YAML can spell a NUL ("\\0"); no file name can hold one."""
    ws.postgres_targets({"core": shared_db}, EMPLOYEES)
    ws.targets((ws.path / "targets.yaml").read_text().replace("email_mappings.json", '"m\\0.json"'))
    refused(ws, [shared_db], ("plan", "--out", OUT), "mappings")
    reliability(TARGETS_AREA, REFUSED, cases=1, detail="NUL byte in the mappings path")


# Identifiers that pass targets.yaml's syntax and reach the database: each must come back as "does not exist",
# never be executed. (id, tables YAML, fragments)
MISSING_IDENTIFIERS: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "quoted table holding SQL",
        "- table: '\"" + INJECT.replace('"', '""') + "\"'\n  columns: [email]\n",
        ("postgres[0].tables[0]", "does not exist"),
    ),
    (
        "schema-qualified table holding SQL",
        "- table: 'public.\"y; DROP TABLE y; --\"'\n  columns: [email]\n",
        ("postgres[0].tables[0]", "does not exist"),
    ),
    (
        "table with a semicolon",
        "- table: employees;y\n  columns: [email]\n",
        ("postgres[0].tables[0]", "does not exist"),
    ),
    (
        "quoted schema with a dot",
        "- table: '\"my.schema\".employees'\n  columns: [email]\n",
        ("postgres[0].tables[0]", "does not exist"),
    ),
    (
        "column holding SQL",
        f"- table: public.employees\n  columns: ['{INJECT}']\n",
        ("postgres[0].tables[0].columns", "does not exist"),
    ),
    (
        "column with a dot",
        "- table: public.employees\n  columns: [employees.email]\n",
        ("postgres[0].tables[0].columns", "does not exist"),
    ),
    (
        "key holding SQL",
        f"- table: public.employees\n  columns: [email]\n  key: ['{INJECT}']\n",
        ("postgres[0].tables[0].key", "does not exist"),
    ),
    (
        "verify_ignore holding SQL",
        f"- table: public.employees\n  columns: [email]\n  verify_ignore: ['{INJECT}']\n",
        ("postgres[0].tables[0].verify_ignore", "does not exist"),  # a typo here must not pass silently
    ),
]


@pytest.mark.parametrize(("tables", "fragments"), [pytest.param(*c[1:], id=c[0]) for c in MISSING_IDENTIFIERS])
def test_hostile_identifiers_are_named_not_executed(
    ws: Any,
    shared_db: Db,
    reliability: Any,
    request: pytest.FixtureRequest,
    tables: str,
    fragments: tuple[str, ...],
) -> None:
    ws.postgres_targets({"core": shared_db}, tables)
    ws.mappings(MAPPING)
    refused(ws, [shared_db], ("plan", "--out", OUT), "targets.yaml", *fragments, max_chars=20_000)
    assert shared_db.rows("SELECT note FROM y") == [("must survive",)]
    reliability(
        TARGETS_AREA, "refused naming the missing table or column; no table dropped", detail=request.node.callspec.id
    )


def test_hostile_identifiers_that_exist_are_quoted_safely(ws: Any, db: Any, reliability: Any) -> None:
    """A table and columns really named with quotes, semicolons, dots and SQL: planned and applied as data."""
    seed(db)
    db.execute('CREATE SCHEMA "my.schema"')
    db.execute('CREATE TABLE "my.schema"."x""; DROP TABLE y; --" ("id""; --" int PRIMARY KEY, "e.mail""; --" text)')
    db.execute("""INSERT INTO "my.schema"."x""; DROP TABLE y; --" VALUES (1, 'a@old.com'), (2, 'keep@x.com')""")
    ws.postgres_targets(
        {"core": db}, '- table: \'"my.schema"."x""; DROP TABLE y; --"\'\n  columns: [\'e.mail"; --\']\n'
    )
    ws.mappings(MAPPING)
    r, plan = ws.plan()
    assert r.code == 0, (r.out, r.err)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, (r.out, r.err)
    assert db.rows('SELECT * FROM "my.schema"."x""; DROP TABLE y; --" ORDER BY 1') == [
        (1, "a@new.com"),
        (2, "keep@x.com"),
    ]
    assert db.rows("SELECT note FROM y") == [("must survive",)]
    assert db.rows("SELECT * FROM employees ORDER BY id") == SEED_ROWS  # not configured: untouched
    reliability(
        TARGETS_AREA, "hostile identifiers quoted safely, applied as data", cases=1, detail="table, schema, column"
    )


def alias_bomb(levels: int) -> str:
    """Billion laughs: 9 aliases per level, so the last anchor stands for 9**levels strings."""
    lines = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines)


def test_yaml_alias_bomb_fails_fast(ws: Any, shared_db: Db, reliability: Any) -> None:
    """9**9 strings from a 1 KB file: anchors under an `x-` key (a common YAML habit) and the last one used as the
    tables list. Run in a child with 2 GB of address space and a deadline, so a failure here is a failed test, not
    an exhausted test machine. Refusing should take about as long as starting the CLI (about 1 s)."""
    ws.postgres_targets({"core": shared_db}, EMPLOYEES)
    ws.mappings(MAPPING)
    text = "version: 1\nmappings: email_mappings.json\nx-lols:\n" + alias_bomb(9) + "\n"
    ws.targets(text + "postgres:\n  - name: core\n    dsn: ${CORE_DSN}\n    tables: *l8\n")
    files, before = listing(ws.path), snapshot(shared_db)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    started = time.monotonic()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "emailsync", "plan", "--out", OUT],
            cwd=ws.path,
            capture_output=True,
            text=True,
            timeout=8,
            preexec_fn=limit,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a 9**9 YAML alias bomb in targets.yaml was still being expanded after 8 s")
    took = time.monotonic() - started
    assert r.returncode == 1, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stdout + r.stderr and "MemoryError" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.startswith("error: ") and "targets.yaml" in r.stderr, r.stderr[:500]
    assert len(r.stderr) < 20_000
    assert took < 6, f"{took:.1f}s"
    assert listing(ws.path) == files
    assert snapshot(shared_db) == before
    reliability(TARGETS_AREA, "refused fast, bounded memory, exit 1, nothing written", detail="YAML alias bomb (9**9)")


# --- plans edited by hand -----------------------------------------------------------------------------------

Edit = Callable[[bytes], bytes]  # the plan file's bytes (gzip'd JSON Lines) to the edited file's bytes


def unzipped(change: Callable[[bytes], bytes]) -> Edit:
    """An edit of the uncompressed JSON Lines, gzip'd again after: `zcat plan.jsonl.gz | edit | gzip`."""
    return lambda raw: gzip.compress(change(gzip.decompress(raw)), mtime=0)


def _split(text: bytes) -> list[bytes]:
    """The lines of uncompressed JSON Lines, each without its newline (split on b"\\n" alone)."""
    assert text.endswith(b"\n")
    return text[:-1].split(b"\n")


def _join(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _seal(text: bytes) -> bytes:
    """The header's body_sha256 and digest recomputed for the body as it is: what someone who read planfile.py
    would do to get past them."""
    first, body = text.split(b"\n", 1)
    header = loads(first.decode())
    header["body_sha256"] = hashlib.sha256(body).hexdigest()
    header["digest"] = header_digest(header)
    return dumps(header).encode() + b"\n" + body


def via_json(change: Callable[[dict[str, Any]], Any]) -> Edit:
    """Parse every line exactly (Decimal numbers) into one document (the header's fields, `actions`: the body's
    lines), change it, write the lines back compact but NOT re-sealed."""

    def edit(text: bytes) -> bytes:
        first, *body = _split(text)
        data = loads(first.decode())
        data["actions"] = [loads(line.decode()) for line in body]
        change(data)
        actions = [dumps(a).encode() for a in data.pop("actions")]
        return _join([dumps(data).encode(), *actions])

    return unzipped(edit)


def resealed(change: Callable[[dict[str, Any]], Any]) -> Edit:
    """Like via_json, then body_sha256 and the digest recomputed."""
    return lambda raw: unzipped(_seal)(via_json(change)(raw))


def line_edit(n: int, change: Callable[[bytes], bytes], *, seal: bool = False) -> Edit:
    """Line n (1: the header) changed as bytes; re-sealed when `seal`."""

    def edit(text: bytes) -> bytes:
        lines = _split(text)
        lines[n - 1] = change(lines[n - 1])
        return _seal(_join(lines)) if seal else _join(lines)

    return unzipped(edit)


def lines_edit(change: Callable[[list[bytes]], Any], *, seal: bool = False) -> Edit:
    """The list of lines (header first) changed in place; re-sealed when `seal`."""

    def edit(text: bytes) -> bytes:
        lines = _split(text)
        change(lines)
        return _seal(_join(lines)) if seal else _join(lines)

    return unzipped(edit)


def _first(data: dict[str, Any]) -> dict[str, Any]:
    return data["actions"][0]


def _add_copy(data: dict[str, Any]) -> None:
    data["actions"].append({**_first(data), "id": "pg-00000000deadbeef"})


def _in_order(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    """The change, then the actions sorted as emailsync sorts the body, so the line order is not what is refused."""

    def edit(data: dict[str, Any]) -> None:
        change(data)
        data["actions"].sort(key=lambda a: sort_key(parse_action(a)))

    return edit


def _add_copy_in_order(data: dict[str, Any]) -> None:
    """A copy of the first action under another id, where the body's order puts it (the summary left alone)."""
    _in_order(_add_copy)(data)


def _set(obj_of: Callable[[dict[str, Any]], dict[str, Any]], **values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: obj_of(data).update(values)


def _top(data: dict[str, Any]) -> dict[str, Any]:
    return data


def _swap_first_two(data: dict[str, Any]) -> None:
    data["actions"][:2] = data["actions"][1::-1]


def _key_of_first(data: dict[str, Any]) -> dict[str, Any]:
    return _first(data)["key"]


def _new_value_sealed_body_only(text: bytes) -> bytes:
    """The first action's new value changed and body_sha256 updated to match, the digest left alone."""
    first, body = text.split(b"\n", 1)
    body = body.replace(b'"new":"a@new.com"', b'"new":"evil@x.com"', 1)
    header = loads(first.decode())
    header["body_sha256"] = hashlib.sha256(body).hexdigest()
    return dumps(header).encode() + b"\n" + body


def _as_v1(text: bytes) -> bytes:
    """The plan as emailsync before 0.2 wrote it: one indented JSON document of format emailsync.plan/v1."""
    first, *body = _split(text)
    data = {k: v for k, v in loads(first.decode()).items() if k not in ("digest_scheme", "body_sha256")}
    data |= {"format": "emailsync.plan/v1", "format_minor": 3, "actions": [loads(b.decode()) for b in body]}
    data |= {"skipped": []}
    return (dumps(data, indent=2) + "\n").encode()


def _everything(field: str, value: str) -> Callable[[dict[str, Any]], None]:
    """`field` set to `value` in every action and every summary row (so the header's counts still match)."""

    def change(data: dict[str, Any]) -> None:
        for obj in (*data["actions"], *data["summary"]):
            obj[field] = value

    return change


def _target_renamed(data: dict[str, Any]) -> None:
    """Target core renamed crm throughout: the header's targets, its summary and every action."""
    _everything("target", "crm")(data)
    data["targets"] = {"crm": data["targets"]["core"]}


SQL_TABLE = 'public.employees"; DROP TABLE y; --'
_DIGEST_0 = b'"digest":"sha256:' + b"0" * 64 + b'",'

# (id, edit, fragments; the message names the plan file, or targets.yaml when that is what disagrees)
BAD_PLANS: list[tuple[str, Edit, tuple[str, ...]]] = [
    # content changed, digest left alone
    ("changed new value", via_json(_set(_first, new="evil@x.com")), ("digest mismatch", "re-run `emailsync plan`")),
    ("changed old value", via_json(_set(_first, old="keep@x.com")), ("digest mismatch",)),
    ("changed row key", via_json(_set(_key_of_first, id=4)), ("digest mismatch",)),
    ("changed kind", via_json(_set(_first, kind="delete-on-conflict")), ("digest mismatch",)),
    ("changed table", via_json(_set(_first, table="public.y")), ("digest mismatch",)),
    ("removed action", via_json(lambda d: d["actions"].pop()), ("digest mismatch",)),
    ("added action", via_json(_add_copy), ("digest mismatch",)),
    ("reordered actions", via_json(_swap_first_two), ("digest mismatch",)),
    ("changed summary", via_json(lambda d: d["summary"].clear()), ("digest mismatch",)),
    ("changed mappings sha256", via_json(lambda d: d["inputs"].update(mappings_sha256="0" * 64)), ("digest mismatch",)),
    ("changed body_sha256", via_json(_set(_top, body_sha256="0" * 64)), ("digest mismatch", "its header hashes to")),
    (
        "changed new value, body_sha256 updated to match",
        unzipped(_new_value_sealed_body_only),
        ("digest mismatch", "its header hashes to"),
    ),
    ("changed digest", via_json(_set(_top, digest="sha256:" + "f" * 64)), ("digest mismatch", "f" * 64)),
    ("digest removed", via_json(lambda d: d.pop("digest")), ("not a valid plan header at digest",)),
    ("digest null", via_json(_set(_top, digest=None)), ("not a valid plan header at digest",)),
    ("digest of a megabyte", via_json(_set(_top, digest="sha256:" + "f" * 2**20)), ("digest mismatch",)),
    # versions
    ("newer format_minor", via_json(_set(_top, format_minor=PLAN_FORMAT_MINOR + 1)), ("newer", "upgrade emailsync")),
    # the wrong type, said so
    ("format_minor a string", via_json(_set(_top, format_minor="1")), ("format_minor", "whole number")),
    ("format_minor a fraction", via_json(_set(_top, format_minor=Decimal("1.5"))), ("format_minor", "whole number")),
    ("format major 3", via_json(_set(_top, format="emailsync.plan/v3")), ("'emailsync.plan/v3'", "emailsync.plan/v2")),
    ("format missing", via_json(lambda d: d.pop("format")), ("not an emailsync plan", 'no "format"')),
    ("a v1 plan", lambda raw: _as_v1(gzip.decompress(raw)), ("emailsync.plan/v1", "not a plan of format")),
    # not gzip, not JSON Lines, not objects
    ("gzip stream cut in half", lambda raw: raw[: len(raw) // 2], ("cannot read the plan file", "end-of-stream")),
    ("garbage after the gzip stream", lambda raw: raw + b"rm -rf /\n", ("cannot read the plan file",)),
    ("gzip checksum flipped", lambda raw: raw[:-8] + bytes([raw[-8] ^ 1]) + raw[-7:], ("cannot read the plan file",)),
    ("two plans in one file", lambda raw: raw + raw, ("digest mismatch",)),  # cat plan.jsonl.gz plan.jsonl.gz
    ("header cut in half", unzipped(lambda t: t[: t.index(b"\n") // 2] + b"\n"), ("line 1 is not valid JSON",)),
    ("last brace cut", unzipped(lambda t: t.rstrip()[:-1] + b"\n"), ("digest mismatch",)),
    ("resealed: last brace of line 2 cut", line_edit(2, lambda b: b[:-1], seal=True), ("line 2 is not valid JSON",)),
    ("emptied", lambda raw: b"", ("the plan file is empty",)),
    ("trailing garbage", unzipped(lambda t: t + b"rm -rf /\n"), ("digest mismatch",)),
    ("resealed: garbage line", lines_edit(lambda ls: ls.insert(1, b"rm -rf /"), seal=True), ("line 2 is not valid",)),
    ("resealed: blank line", lines_edit(lambda ls: ls.insert(1, b""), seal=True), ("line 2 is not valid JSON",)),
    ("BOM in front", unzipped(lambda t: b"\xef\xbb\xbf" + t), ("line 1", "BOM")),
    ("not UTF-8 in the header", line_edit(1, lambda b: b.replace(b"core", b"c\xf6re", 1)), ("line 1", "not UTF-8")),
    ("not UTF-8 in an action", unzipped(lambda t: t.replace(b"a@new.com", b"a@n\xe9w.com", 1)), ("digest mismatch",)),
    (
        "resealed: not UTF-8 in an action",
        line_edit(2, lambda b: b.replace(b"@", b"\xe9@", 1), seal=True),
        ("line 2 is not UTF-8",),
    ),
    ("the header a list", line_edit(1, lambda b: b"[" + b + b"]"), ("line 1, the header, must be an object",)),
    ("resealed: an action a list", line_edit(2, lambda b: b"[" + b + b"]", seal=True), ("line 2 is not an object",)),
    (
        "nested 100k deep",
        lambda raw: gzip.compress(b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"),
        ("line 1", "nested"),
    ),
    (
        "resealed: an action nested 100k deep",
        line_edit(2, lambda b: b"[" * 100_000 + b"]" * 100_000, seal=True),
        ("line 2", "nested"),
    ),
    # duplicate keys: a lax reader would silently take the last (a reviewer's tool may show the first)
    ("duplicate header digest", line_edit(1, lambda b: b"{" + _DIGEST_0 + b[1:]), ("'digest'", "more than once")),
    (
        "duplicate header action_count",
        line_edit(1, lambda b: b'{"action_count":0,' + b[1:]),
        ("'action_count'", "more than once"),
    ),
    ("duplicate key in an action", line_edit(2, lambda b: b'{"new":"evil@x.com",' + b[1:]), ("digest mismatch",)),
    (
        "resealed: duplicate key in an action",
        line_edit(2, lambda b: b'{"new":"evil@x.com",' + b[1:], seal=True),
        ("line 2: key 'new' appears more than once",),
    ),
    (
        "resealed: duplicate key in a row key",
        line_edit(2, lambda b: b.replace(b'"key":{', b'"key":{"id":3,', 1), seal=True),
        ("line 2: key 'id' appears more than once",),
    ),
    # re-sealed: the digest matches, so what stops them is the check of each line, of the header's counts, against
    # targets.yaml and the plan schema
    (
        "resealed: not canonical JSON",
        line_edit(2, lambda b: json.dumps(json.loads(b), indent=1).replace("\n", "").encode(), seal=True),
        ("line 2 is not written the way emailsync writes plans", "edited by hand"),
    ),
    (
        "resealed: a default written out",
        line_edit(2, lambda b: b[:-1] + b',"live":false}', seal=True),
        ("line 2 is not written the way emailsync writes plans",),
    ),
    (
        "resealed: CRLF line ends",
        lines_edit(lambda ls: ls.__setitem__(slice(1, None), [b + b"\r" for b in ls[1:]]), seal=True),
        ("line 2 is not written the way emailsync writes plans",),
    ),
    ("resealed: reordered actions", resealed(_swap_first_two), ("line 3 is out of order or repeated",)),
    (
        "resealed: repeated action",
        lines_edit(lambda ls: ls.insert(2, ls[1]), seal=True),
        ("line 3 is out of order or repeated",),
    ),
    ("resealed: removed action", resealed(lambda d: d["actions"].pop()), ("header's counts do not match",)),
    ("resealed: added action", resealed(_add_copy_in_order), ("header's counts do not match",)),
    (
        "resealed: action_count changed",
        resealed(lambda d: d.update(action_count=d["action_count"] + 1)),
        ("header's counts do not match",),
    ),
    (
        "resealed: table holding SQL, summary left",
        resealed(lambda d: [a.update(table=SQL_TABLE) for a in d["actions"]]),
        ("header's counts do not match",),
    ),
    (
        "resealed: table holding SQL",
        resealed(_everything("table", SQL_TABLE)),
        ("targets.yaml", "no longer lists", SQL_TABLE),
    ),
    (
        "resealed: column holding SQL",
        resealed(_in_order(_set(_first, column=INJECT))),
        ("the header's counts do not match the plan's lines",),  # its summary still names the real column
    ),
    (
        "resealed: unknown target",
        resealed(lambda d: [a.update(target="crm") for a in d["actions"]]),
        ("line 2 names target 'crm'", "header does not list"),
    ),
    ("resealed: unknown target throughout", resealed(_target_renamed), ("targets.yaml", "'crm'", "does not define")),
    ("resealed: unknown kind", resealed(_set(_first, kind="drop-table")), ("line 2: not a valid plan line at kind",)),
    ("resealed: extra field", resealed(_set(_first, sql="DROP TABLE y")), ("line 2: not a valid plan line at sql",)),
]


def make_plan(ws: Any, db: Any) -> Path:
    ws.postgres_targets({"core": db}, EMPLOYEES)
    ws.mappings(MAPPING)
    r, path = ws.plan()
    assert r.code == 0, (r.out, r.err)
    assert len(ws.plan_json(path)["actions"]) >= 3, "the edits need a plan with a few actions"
    return path


PLAN = "<the plan's path>"  # stands for the plan file in expected fragments


def apply_refused(ws: Any, dbs: list[Any], plan: Path, *fragments: str) -> str:
    text = plan.read_bytes()
    wanted = [str(plan) if f == PLAN else f for f in fragments]
    message = refused(ws, dbs, ("apply", str(plan), "--auto-approve"), *wanted, max_chars=20_000)
    assert plan.read_bytes() == text
    return message


@pytest.mark.parametrize(("edit", "fragments"), [pytest.param(*c[1:], id=c[0]) for c in BAD_PLANS])
def test_hand_edited_plan_is_refused(
    ws: Any,
    shared_db: Db,
    reliability: Any,
    request: pytest.FixtureRequest,
    edit: Edit,
    fragments: tuple[str, ...],
) -> None:
    plan = make_plan(ws, shared_db)
    edited = edit(plan.read_bytes())
    assert edited != plan.read_bytes()
    plan.write_bytes(edited)
    named = () if "targets.yaml" in fragments else (PLAN,)
    try:
        apply_refused(ws, [shared_db], plan, *named, *fragments)
    finally:  # a plan wrongly applied fails this case only: the shared database is put back for the next cases
        if shared_db.rows("SELECT * FROM employees ORDER BY id") != SEED_ROWS:
            reset_rows(shared_db)
            shared_db.execute("DROP SCHEMA IF EXISTS emailsync CASCADE")
    assert shared_db.rows("SELECT note FROM y") == [("must survive",)]
    reliability(PLANS_AREA, REFUSED, cases=1, detail=request.node.callspec.id)


def test_plan_pointed_at_another_database_is_refused(ws: Any, shared_db: Db, db: Any, reliability: Any) -> None:
    """The targets file now names another database (same table, same rows) than the one the plan was made on."""
    seed(db)
    plan = make_plan(ws, shared_db)
    ws.postgres_targets({"core": db}, EMPLOYEES)
    apply_refused(
        ws, [shared_db, db], plan, "targets.yaml", "does not match", "'core'", db.name, shared_db.name, "re-plan"
    )
    reliability(PLANS_AREA, REFUSED, cases=1, detail="targets DSN names another database")


# --- property-based ----------------------------------------------------------------------------------------

POOL = ["a@old.com", "b@old.com", "boss@old.com", "keep@x.com", "A@OLD.COM", "n@new.com", "x@y.z", "ü@bücher.de"]
NEW = ["a@new.com", "b@new.com", "boss@new.com", "ü@neu.de", "n@new.com"]
FRAGMENTS = [
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    '"',
    "\n",
    "\\",
    "\ufeff",
    "\x00",
    "old_email",
    "new_email",
    "client_id",
    "null",
    "1e999",
    "-0",
    ";",
    "\t",
    " ",
    "@",
    ".",
    '"old_email"',
    '"new_email"',
    "old_email,new_email\n",
]


@st.composite
def mapping_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """A mappings file: often well-formed (an object, a list or a CSV of pool emails) with noise spliced in, else
    pure noise of emails, JSON fragments and arbitrary text; sometimes with arbitrary bytes."""
    # Old addresses unique and new ones mostly fresh, so not every example is a conflict or a cycle.
    news = st.sampled_from([*NEW, "a@old.com", "b@old.com"])
    pairs = draw(st.lists(st.tuples(st.sampled_from(POOL), news), min_size=1, max_size=5, unique_by=lambda p: p[0]))
    shape = draw(st.sampled_from(["object", "list", "csv", "noise"]))
    if shape == "object":
        text = "{" + ", ".join(f"{json.dumps(o)}: {json.dumps(n)}" for o, n in pairs) + "}"
    elif shape == "list":
        text = json.dumps([{"old_email": o, "new_email": n} for o, n in pairs])
    elif shape == "csv":
        text = "old_email,new_email\n" + "".join(f"{o},{n}\n" for o, n in pairs)
    else:
        text = ""
    # The suffix decides the parser (.txt is sniffed); now and then it does not match the content.
    fitting = {"object": "m.json", "list": "m.json", "csv": "m.csv", "noise": "m.txt"}[shape]
    name = draw(st.sampled_from([fitting, fitting, fitting, "m.txt", "m.json", "m.csv"]))
    noise = st.one_of(st.sampled_from(POOL), st.sampled_from(FRAGMENTS), st.text(max_size=8))
    # Well-formed files get no noise half the time, so plenty of examples are accepted and planned.
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]) if shape != "noise" else st.integers(1, 12))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(noise) + text[at:]
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at:]
    return name, raw


def test_random_mapping_files_are_planned_or_refused_cleanly(ws: Any, shared_db: Db, reliability: Any) -> None:
    """Any file: either a plan that follows the mappings as loaded, or one clean refusal with nothing written."""
    ws.postgres_targets({"core": shared_db}, EMPLOYEES)
    rows = {e for _, email, manager in SEED_ROWS for e in (email, manager) if e}
    counts = {"examples": 0, "accepted": 0}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(mapping_files())
    def check(file: tuple[str, bytes]) -> None:
        counts["examples"] += 1
        name, raw = file
        path = ws.path / name
        path.write_bytes(raw)
        files, before = listing(ws.path), snapshot(shared_db)
        r = ws.run("plan", "--mappings", name, "--out", OUT)
        assert "Traceback" not in r.out + r.err
        assert snapshot(shared_db) == before  # planning never writes to a database
        if r.code == 1:
            assert_user_error(r, name)
            assert listing(ws.path) == files
        else:
            assert r.code == 0, (r.code, r.out, r.err)
            counts["accepted"] += 1
            table = {m.old: m.new for m in load_mappings(path).mappings}
            for a in ws.plan_json(ws.path / OUT)["actions"]:
                assert a["old"] in rows and table[a["old"]] == a["new"], a
            for p in sorted((ws.path / "plans").rglob("*"), reverse=True):  # back to the listing before
                p.rmdir() if p.is_dir() else p.unlink()
            (ws.path / "plans").rmdir()
        path.unlink()

    check()
    assert counts["accepted"] > 0, "the generator should produce some valid files too"
    reliability(
        PROPERTY_AREA,
        "planned as loaded, or refused with exit 1 and nothing written",
        cases=counts["examples"],
        detail=f"random mapping files ({counts['accepted']} accepted)",
    )


@st.composite
def plan_edits(draw: st.DrawFn, raw: bytes) -> bytes:
    """One random edit of the plan: a JSON field of one line (an action, or the header) set to a random value and the
    line written back compact, or bytes flipped, cut or inserted anywhere: in the JSON Lines (gzip'd again after) or
    in the gzip stream itself."""
    kinds = ["field", "header", "flip", "cut", "insert", "gzip flip", "gzip cut", "gzip insert"]
    how = draw(st.sampled_from([*kinds, "gzip again", "header space", "header escape"]))
    text = gzip.decompress(raw)
    # Edits that mostly leave the content as it was: the same lines gzip'd again otherwise; a space, or a letter
    # written as a \u escape, in the header (JSON there, unless it lands in a string or a literal).
    if how == "gzip again":
        level, mtime = draw(st.integers(0, 9)), draw(st.integers(0, 2**32 - 1))
        return gzip.compress(text, compresslevel=level, mtime=mtime)
    if how == "header space":
        first, rest = text.split(b"\n", 1)
        at = draw(st.sampled_from([i for i, c in enumerate(first) if c in b",:"]))
        return gzip.compress(first[: at + 1] + b" " + first[at + 1 :] + b"\n" + rest, mtime=0)
    if how == "header escape":
        first, rest = text.split(b"\n", 1)
        at = draw(st.sampled_from([i for i, c in enumerate(first) if chr(c).isalpha()]))
        return gzip.compress(first[:at] + b"\\u%04x" % first[at] + first[at + 1 :] + b"\n" + rest, mtime=0)
    if how in ("field", "header"):
        lines = _split(text)
        n = 0 if how == "header" else draw(st.integers(1, len(lines) - 1))
        obj = loads(lines[n].decode())
        field = draw(st.sampled_from(sorted(obj)))
        value = draw(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-2, 2**70),
                st.sampled_from([*POOL, "sha256:" + "0" * 64, "update", "public.employees", "core", obj[field]]),
                st.text(max_size=10),
                st.lists(st.sampled_from(POOL), max_size=2),
                st.dictionaries(st.sampled_from(["id", "email"]), st.integers(0, 5), max_size=2),
            )
        )
        obj[field] = value
        lines[n] = dumps(obj).encode()
        return gzip.compress(_join(lines), mtime=0)
    in_gzip = how.startswith("gzip")
    data = raw if in_gzip else text
    at = draw(st.integers(0, len(data) - 1))
    if how.endswith("flip"):
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    elif how.endswith("cut"):
        data = data[:at] + data[at + draw(st.integers(1, 40)) :]
    else:
        data = data[:at] + draw(st.binary(min_size=1, max_size=6)) + data[at:]
    return data if in_gzip else gzip.compress(data, mtime=0)


def plan_content(raw: bytes) -> list[Any]:
    """A plan file's lines, uncompressed (when gzip'd) and parsed exactly: what a plan says, however it is stored."""
    text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    return [loads(line.decode()) for line in _split(text)]


def expected_after() -> list[tuple[Any, ...]]:
    return [(i, MAPPING.get(e, e), MAPPING.get(m, m) if m else m) for i, e, m in SEED_ROWS]


def test_random_plan_edits_are_refused_unless_equivalent(ws: Any, db: Any, reliability: Any) -> None:
    """Any edit of a valid plan: refused with exit 1 and nothing written, or, only when the edit left the plan's
    content unchanged (the gzip framing, whitespace or an escape in the header), applied exactly as the original would
    be."""
    seed(db)
    plan = make_plan(ws, db)
    original = plan.read_bytes()
    content = plan_content(original)
    initial_files, initial_db = listing(ws.path), snapshot(db)
    counts = {"examples": 0, "equivalent": 0}

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        counts["examples"] += 1
        edited = data.draw(plan_edits(original))
        plan.write_bytes(edited)
        files = listing(ws.path)
        r = ws.run("apply", str(plan), "--auto-approve")
        assert "Traceback" not in r.out + r.err
        if r.code == 1:
            assert_user_error(r, str(plan))
            assert listing(ws.path) == files and snapshot(db) == initial_db
            assert plan.read_bytes() == edited
        else:
            # Accepted: then the content must be the original's, and the result the original's result.
            assert r.code == 0, (r.code, r.out, r.err)
            assert plan_content(edited) == content, "apply accepted a plan whose content was changed"
            counts["equivalent"] += 1
            assert db.rows("SELECT * FROM employees ORDER BY id") == expected_after()
            reset_rows(db)  # undo the apply: rows, ledger, report and journal
            db.execute("DROP SCHEMA emailsync CASCADE")
            for p in plan.parent.iterdir():
                if p.name.startswith("apply-") or p.name == "report.json":
                    p.unlink()
            assert snapshot(db) == initial_db
        plan.write_bytes(original)
        assert listing(ws.path) == initial_files

    check()
    assert counts["equivalent"] > 0, "the generator should produce some edits that leave the content unchanged"
    reliability(
        PROPERTY_AREA,
        "refused with exit 1 and nothing written unless the content was unchanged",
        cases=counts["examples"],
        detail=f"random plan.jsonl.gz edits ({counts['equivalent']} equivalent)",
    )
