"""A large plan's lines are checked in pieces, each in a process of its own (the check is Python work on every line),
whatever the number of targets: the same plan gives the same result, a broken line the same message naming the same
line, as the check in one process; every target's lines are then sent on to its database as one range of the
checked copy."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_user_error, plan_lines, write_plan_lines

from emailsync import archive, planfile
from emailsync.errors import UserError


def _estate(ws: Any, make_db: Any, n: int = 3) -> tuple[list[Any], Path]:
    dbs = [make_db() for _ in range(n)]
    for db in dbs:
        db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, note text)")
        for i in range(1, 31):
            # A backslash and a quote in a value: sent to COPY as the file's bytes, they must arrive unchanged.
            db.execute("INSERT INTO employees VALUES (%s, %s, %s)", (i, f"u{i}@old.com", 'a\\b "c"\tré'))
    ws.postgres_targets({f"db{k}": db for k, db in enumerate(dbs)}, "- {table: employees, columns: [email]}")
    ws.mappings({f"u{i}@old.com": f"ü{i}\\x@new.com" for i in range(1, 31)})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return dbs, plan


@pytest.fixture
def forked(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every plan counts as large, and each forked check is recorded (True: it decided, False: it handed over)."""
    monkeypatch.setattr(planfile, "PARALLEL_CHECK_BYTES", 0)
    seen: list[bool] = []
    real = planfile._start_forked_check

    def spy(*args: Any) -> Any:
        collect = real(*args)
        if collect is None:
            return None

        def recorded() -> Any:
            ranges = collect()
            seen.append(ranges is not None)
            return ranges

        return recorded

    monkeypatch.setattr(planfile, "_start_forked_check", spy)
    return seen


@pytest.mark.parametrize("targets", [1, 3])
def test_a_plan_checked_in_processes_applies_every_target(
    ws: Any, make_db: Any, forked: list[bool], targets: int
) -> None:
    dbs, plan = _estate(ws, make_db, targets)
    serial = planfile.read_plan(plan, 1)
    assert forked == []
    parallel = planfile.read_plan(plan, 3)
    assert forked == [True]
    assert len(planfile._pieces(parallel.actions._copy, 3)) == 3  # type: ignore[attr-defined]
    copies = [p.actions._copy for p in (serial, parallel)]  # type: ignore[attr-defined]
    assert copies[0].ranges == copies[1].ranges and sorted(copies[1].ranges) == [f"db{k}" for k in range(targets)]
    assert [list(p.actions) for p in (serial, parallel)][0] == list(parallel.actions)

    # The lines go to COPY as the file's UTF-8 bytes, whatever client encoding the environment asks for.
    ws.monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    r = ws.run("apply", str(plan), "--auto-approve", "--parallel", "3")
    assert r.code == 0, r.out + r.err
    assert forked == [True, True]
    for db in dbs:
        rows = db.rows("SELECT id, email, note FROM employees ORDER BY id")
        assert rows == [(i, f"ü{i}\\x@new.com", 'a\\b "c"\tré') for i in range(1, 31)]


@pytest.mark.parametrize("targets", [1, 3])
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda line: line.replace('"step":1', '"step":"one"'), "not a valid plan line at step"),
        (lambda line: line.replace('"target":"db2"', '"target":"db1"'), "out of order or repeated"),
        (lambda line: line[:-1] + ',"new":"evil@x.com"}', "key 'new' appears more than once"),
    ],
)
def test_a_broken_line_in_a_later_piece_is_named_as_by_the_check_in_one_process(
    ws: Any, make_db: Any, forked: list[bool], edit: Any, message: str, targets: int
) -> None:
    dbs, plan = _estate(ws, make_db, targets)
    lines = plan_lines(plan)
    if targets == 1:  # a line of the last piece; one target, so the order is broken by the key
        n = len(lines) - 5
        if message == "out of order or repeated":
            edit = partial(re.sub, r'"key":\{"id":\d+\}', '"key":{"id":0}')
    else:
        n = next(i for i, line in enumerate(lines) if i and '"target":"db2"' in line) + 5  # db2's, not the header
    lines[n] = edit(lines[n])
    write_plan_lines(plan, lines, reseal=True)
    said = []
    for width in (1, 3):
        with pytest.raises(UserError) as e:
            planfile.read_plan(plan, width)
        said.append(str(e.value))
    assert said[0] == said[1] and f"line {n + 1}" in said[0] and message in said[0]
    assert forked == [False]  # the processes found a problem; the check in one process named it
    assert_user_error(ws.run("apply", str(plan), "--auto-approve", "--parallel", "3"), f"line {n + 1}", message)
    for db in dbs:
        assert db.rows("SELECT email FROM employees ORDER BY id") == [(f"u{i}@old.com",) for i in range(1, 31)]


def test_a_body_whose_lines_disagree_with_the_header_counts_is_refused_by_its_counts(
    ws: Any, make_db: Any, forked: list[bool]
) -> None:
    """A line removed (hashes made to match): every piece is sound, and the counts put together refuse the plan."""
    dbs, plan = _estate(ws, make_db)
    lines = plan_lines(plan)
    del lines[3]
    write_plan_lines(plan, lines, reseal=True)
    assert_user_error(ws.run("apply", str(plan), "--auto-approve"), "counts do not match")
    assert forked == []  # refused inside the forked check, which so returned nothing
    for db in dbs:
        assert db.rows("SELECT email FROM employees ORDER BY id") == [(f"u{i}@old.com",) for i in range(1, 31)]


def test_outcomes_put_together_from_strings_are_the_lines_a_dict_makes() -> None:
    """The report's and the journal's outcome lines are assembled from their strings: byte for byte what the
    journal's JSON encoder makes of the same dict."""
    odd = ['quote " and \\ backslash', "tab\tnew\nline", "ünïcødé ✓ \u2028", "\x00\x1f"]
    records: list[archive.OutcomeRecord] = [
        ("pg-1", "db0", "public.employees", "applied", None),
        ("pg-2", odd[0], None, "stale", odd[1]),
        (odd[2], odd[3], odd[1], odd[0], ""),
        ("pg-3", "db0", "t", "failed", odd[2]),
    ]
    for event in (False, True):
        texts = list(archive.outcome_texts(records, event=event))
        for text, (aid, target, table, status, detail) in zip(texts, records, strict=True):
            d: dict[str, Any] = {"id": aid, "target": target, "table": table, "status": status}
            if detail:
                d["detail"] = detail
            if event:
                d["event"] = "outcome"
            assert text == archive._line(d)
            assert json.loads(text) == d
