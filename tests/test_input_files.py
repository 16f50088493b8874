"""The files a user hands emailsync: targets, mappings and plans are read only from regular files within a size limit,
and any string in them that is not text (a lone UTF-16 surrogate from a \\ud800 escape) is one clear error naming the
file and the entry. Each refusal: exit 1, one `error:` line, nothing written (rows and files compared). Real
PostgreSQL and DynamoDB Local."""

from __future__ import annotations

import gzip
import json
import os
import resource
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import Database, Dynamo
from helpers import plan_doc, plan_lines, refused, write_plan_lines

SURROGATE_AREA = "hostile input: text that is not text (lone surrogates)"
FILES_AREA = "hostile input: huge, endless or special files"
REFUSED = "refused, exit 1, nothing written"
OUT = "plans/out/plan.jsonl.gz"
MAPPING = {"a@old.com": "a@new.com", "b@old.com": "b@new.com"}


@pytest.fixture
def estate(db: Database, ws: Any) -> Database:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@old.com'), (2, 'b@old.com'), (3, 'keep@x.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings(MAPPING)
    return db


def _plan_refused(ws: Any, db: Database, *args_and_fragments: str, mappings: str = "email_mappings.json") -> str:
    fragments = args_and_fragments
    return refused(ws, [db], ("plan", "--mappings", mappings, "--out", OUT), *fragments, max_chars=5_000)


# --- lone surrogates -------------------------------------------------------------------------------------------

# JSON text as a person or a script might write it: the escape is in the file, the decoder makes the surrogate.
SURROGATE_MAPPINGS = [
    ("object value", '{"a@old.com": "a\\ud800@new.example"}', 'key "a@old.com"'),
    ("object key", '{"a\\udfff@old.com": "a@new.example"}', "a\\udfff@old.com"),
    ("list entry", '[{"old_email": "a@old.com", "new_email": "a\\ud800@new.example"}]', "[0]"),
    ("client id", '[{"old_email": "a@old.com", "new_email": "a@new.com", "client_id": "c\\udc80"}]', "[0]"),
    ("high then high", '{"a@old.com": "\\ud800\\ud800@new.example"}', 'key "a@old.com"'),
]


@pytest.mark.parametrize(("text", "where"), [pytest.param(t, w, id=i) for i, t, w in SURROGATE_MAPPINGS])
def test_a_lone_surrogate_in_the_mappings_is_one_error_naming_the_entry(
    estate: Database, ws: Any, text: str, where: str, reliability: Any
) -> None:
    ws.mappings(text, name="bad.json")
    msg = _plan_refused(ws, estate, "bad.json", where, "lone UTF-16 surrogate", "not text", mappings="bad.json")
    assert "\ud800" not in msg and "\udfff" not in msg  # the message itself is printable text
    reliability(SURROGATE_AREA, REFUSED, detail="mappings: " + where)


def test_a_valid_surrogate_pair_escape_is_an_ordinary_character(estate: Database, ws: Any) -> None:
    # "\ud83d\ude00" is 😀 written as JSON escapes: text, accepted, planned and applied.
    ws.mappings('{"a@old.com": "a\\ud83d\\ude00@new.example"}', name="emoji.json")
    r, plan = ws.plan("--mappings", "emoji.json")
    assert r.code == 0, r.err
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert estate.rows("SELECT email FROM employees WHERE id = 1") == [("a😀@new.example",)]


@pytest.mark.parametrize(
    ("yaml_text", "where"),
    [
        ('      - table: "employees\\ud800"\n        columns: [email]\n', "postgres[0].tables[0].table"),
        ('      - table: employees\n        columns: ["em\\udc00ail"]\n', "postgres[0].tables[0].columns[0]"),
    ],
    ids=["table name", "column name"],
)
def test_a_lone_surrogate_in_the_targets_file_is_one_error_naming_the_place(
    estate: Database, ws: Any, yaml_text: str, where: str, reliability: Any
) -> None:
    ws.targets(
        f"version: 1\nmappings: email_mappings.json\npostgres:\n  - name: core\n    dsn: ${{CORE_DSN}}\n"
        f"    tables:\n{yaml_text}"
    )
    _plan_refused(ws, estate, "targets.yaml", where, "lone UTF-16 surrogate")
    reliability(SURROGATE_AREA, REFUSED, detail="targets.yaml: " + where)


def test_an_environment_variable_that_is_not_utf8_is_one_error_not_a_crash(estate: Database, ws: Any) -> None:
    # Undecodable bytes in the environment reach Python as lone surrogates (os.environ's surrogateescape).
    os.environb[b"CORE_DSN"] = estate.dsn.encode() + b" application_name=\xff"
    try:
        msg = _plan_refused(ws, estate, "CORE_DSN", "not valid UTF-8")
        assert "\\xff" not in msg and "application_name" not in msg  # the value itself is not echoed
    finally:
        ws.monkeypatch.setenv("CORE_DSN", estate.dsn)


def test_a_lone_surrogate_in_a_plan_is_refused_by_every_command_that_reads_it(
    estate: Database, ws: Any, reliability: Any
) -> None:
    r, plan = ws.plan()
    assert r.code == 0, r.err
    lines = plan_lines(plan)
    (n,) = [i for i, line in enumerate(lines) if '"new":"a@new.com"' in line]
    commands = [
        ("apply", str(plan), "--auto-approve"),
        ("verify", str(plan)),
        ("show", str(plan)),
        ("diff", str(plan), str(plan)),
    ]
    # In an action's line, the plan re-sealed: the line is refused, naming it and the field.
    edited = [*lines]
    edited[n] = edited[n].replace('"a@new.com"', '"a\\ud800@new.com"')
    write_plan_lines(plan, reseal=True, lines=edited)
    for args in commands:
        refused(ws, [estate], args, str(plan), f"line {n + 1}: new:", "lone UTF-16 surrogate", "edited by hand")
    # In the header (line 1): refused before its digest is even compared.
    assert '"warnings":[]' in lines[0]
    plan.write_bytes(
        gzip.compress(
            ("\n".join([lines[0].replace('"warnings":[]', '"warnings":["\\udc80"]'), *lines[1:]]) + "\n").encode()
        )
    )
    for args in commands:
        refused(ws, [estate], args, str(plan), "line 1: warnings[0]:", "lone UTF-16 surrogate", "edited by hand")
    assert estate.rows("SELECT email FROM employees ORDER BY id") == [("a@old.com",), ("b@old.com",), ("keep@x.com",)]
    reliability(
        SURROGATE_AREA, REFUSED, cases=2 * len(commands), detail="plan.jsonl.gz edited: apply, verify, show, diff"
    )


def test_a_lone_surrogate_in_dynamodb_mappings_never_reaches_dynamodb(
    ddb_local: Dynamo, ws: Any, reliability: Any
) -> None:
    ddb_local.create("profiles", "email")
    ddb_local.put("profiles", {"email": "a@old.com", "name": "Ann"})
    ws.targets(
        "version: 1\nmappings: email_mappings.json\ndynamodb:\n  - name: hr\n    region: us-east-1\n"
        "    endpoint_url: ${DYNAMODB_ENDPOINT}\n    tables:\n      - table: profiles\n        attributes: [email]\n"
    )
    ws.mappings('{"a@old.com": "a\\ud800@new.example"}')
    refused(ws, [], ("plan", "--out", OUT), "email_mappings.json", "lone UTF-16 surrogate")
    assert ddb_local.items("profiles") == [{"email": "a@old.com", "name": "Ann"}]
    reliability(SURROGATE_AREA, REFUSED, detail="mappings for a DynamoDB target")


# --- size limits and special files ---------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("kind", ["mappings", "targets", "plan"])
def test_dev_zero_is_refused_at_once_without_reading_it(estate: Database, ws: Any, kind: str, reliability: Any) -> None:
    args = {
        "mappings": ("plan", "--mappings", "/dev/zero", "--out", OUT),
        "targets": ("plan", "--targets", "/dev/zero", "--out", OUT),
        "plan": ("apply", "/dev/zero", "--auto-approve"),
    }[kind]
    started, rss = time.monotonic(), _peak_rss_mb()
    refused(ws, [estate], args, "/dev/zero", "not a regular file", "character device")
    assert time.monotonic() - started < 5 and _peak_rss_mb() - rss < 50
    reliability(FILES_AREA, REFUSED, detail=f"{kind}: /dev/zero")


def test_a_fifo_is_refused_without_waiting_for_a_writer(
    estate: Database, ws: Any, tmp_path_factory: pytest.TempPathFactory, reliability: Any
) -> None:
    fifo = tmp_path_factory.mktemp("fifo") / "mappings.fifo"  # outside the workspace, whose files are hashed
    os.mkfifo(fifo)
    result: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: result.setdefault("msg", _plan_refused(ws, estate, "pipe (FIFO)", mappings=str(fifo)))
    )
    worker.start()
    worker.join(15)
    assert not worker.is_alive(), "plan hung opening a FIFO"
    assert "save it to a file" in result["msg"]
    reliability(FILES_AREA, REFUSED, detail="mappings: a FIFO with no writer")


@pytest.mark.parametrize("kind", ["mappings", "targets", "plan"])
def test_a_3_gib_file_is_refused_by_its_size_without_being_read(
    estate: Database, ws: Any, kind: str, tmp_path_factory: pytest.TempPathFactory, reliability: Any
) -> None:
    name = "huge-plan.jsonl.gz" if kind == "plan" else f"huge-{kind}.json"
    big = tmp_path_factory.mktemp("huge") / name  # outside the workspace, whose files are hashed
    with open(big, "wb") as f:
        f.truncate(3 * 1024**3)  # sparse: 3 GiB long, nothing on disk
    args = {
        "mappings": ("plan", "--mappings", str(big), "--out", OUT),
        "targets": ("plan", "--targets", str(big), "--out", OUT),
        "plan": ("apply", str(big), "--auto-approve"),
    }[kind]
    variable = {"mappings": "EMAILSYNC_MAX_MAPPINGS_MB", "targets": "EMAILSYNC_MAX_TARGETS_MB"}.get(
        kind, "EMAILSYNC_MAX_PLAN_MB"
    )
    started, rss = time.monotonic(), _peak_rss_mb()
    msg = refused(ws, [estate], args, str(big), "larger than its limit", variable, "3,221,225,472 bytes")
    assert time.monotonic() - started < 5 and _peak_rss_mb() - rss < 50
    assert "MiB" in msg
    reliability(FILES_AREA, REFUSED, detail=f"{kind}: a 3 GiB file")


def test_a_gzip_bomb_plan_is_refused_without_inflating_it(
    estate: Database, ws: Any, tmp_path_factory: pytest.TempPathFactory, reliability: Any
) -> None:
    """2 MB on disk, well within the plan's size limit, that inflates to 2 GiB without a newline: refused by its
    first line's length, never inflated whole."""
    bomb = tmp_path_factory.mktemp("bomb") / "plan.jsonl.gz"  # outside the workspace, whose files are hashed
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(bomb, "wb") as f:
        for _ in range(2048):
            f.write(gz.compress(b"x" * 2**20))
        f.write(gz.flush())
    assert bomb.stat().st_size < 4 * 2**20
    started, rss = time.monotonic(), _peak_rss_mb()
    refused(ws, [estate], ("apply", str(bomb), "--auto-approve"), str(bomb), "line 1 is longer than 64 MiB")
    assert time.monotonic() - started < 5 and _peak_rss_mb() - rss < 200
    reliability(FILES_AREA, REFUSED, detail="plan: a gzip bomb (2 MB inflating to 2 GiB)")


def test_a_plan_whose_body_inflates_a_hundredfold_is_refused_before_filling_the_disk(
    estate: Database, ws: Any, tmp_path_factory: pytest.TempPathFactory, reliability: Any
) -> None:
    """A real plan's header, then 2 GiB of short lines in 2 MB: reading a plan inflates it into a private copy, which
    stops (and is gone) once it passes a hundred times the file's size, long before the disk fills."""
    r, plan = ws.plan()
    assert r.code == 0, r.err
    header = plan_lines(plan)[0].encode() + b"\n"
    bomb = tmp_path_factory.mktemp("bomb") / "plan.jsonl.gz"  # outside the workspace, whose files are hashed
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(bomb, "wb") as f:
        f.write(gz.compress(header))
        for _ in range(2048):
            f.write(gz.compress((b"0" * 1023 + b"\n") * 1024))
        f.write(gz.flush())
    assert bomb.stat().st_size < 4 * 2**20
    started, rss = time.monotonic(), _peak_rss_mb()
    refused(ws, [estate], ("apply", str(bomb), "--auto-approve"), str(bomb), "inflates to more than 100 times")
    assert time.monotonic() - started < 10 and _peak_rss_mb() - rss < 200
    reliability(FILES_AREA, REFUSED, detail="plan: a valid header, then a body inflating 1000-fold")


def test_the_limit_is_configurable(estate: Database, ws: Any, reliability: Any) -> None:
    # 1.5 MiB of mappings: within the default, over a limit of 1 MiB, and fine again once raised to 2.
    entries = {f"u{i:06d}@old.com": f"u{i:06d}@new.com" for i in range(40_000)}
    big = ws.mappings(json.dumps(entries | MAPPING), name="many.json")
    assert 1024**2 < big.stat().st_size < 2 * 1024**2
    ws.monkeypatch.setenv("EMAILSYNC_MAX_MAPPINGS_MB", "1")
    _plan_refused(ws, estate, "many.json", "limit of 1 MiB", "EMAILSYNC_MAX_MAPPINGS_MB", mappings="many.json")
    ws.monkeypatch.setenv("EMAILSYNC_MAX_MAPPINGS_MB", "lots")
    _plan_refused(ws, estate, "EMAILSYNC_MAX_MAPPINGS_MB", "whole number of MiB", mappings="many.json")
    ws.monkeypatch.setenv("EMAILSYNC_MAX_MAPPINGS_MB", "2")
    r, plan = ws.plan("--mappings", "many.json")
    assert r.code == 0, r.err
    assert len(plan_doc(plan)["actions"]) == 2
    reliability(FILES_AREA, REFUSED, cases=2, detail="over a configured limit; a limit that is not a number")


def test_a_directory_or_missing_file_keeps_its_own_message(estate: Database, ws: Any) -> None:
    (ws.path / "folder.json").mkdir()
    _plan_refused(ws, estate, "folder.json", "is a directory", mappings="folder.json")
    refused(ws, [estate], ("apply", "nope/plan.jsonl.gz", "--auto-approve"), "plan file not found")
    assert Path(ws.path / "folder.json").is_dir()
