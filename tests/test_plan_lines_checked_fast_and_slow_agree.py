"""The commonest plan line (a PostgreSQL update or array-replace keyed by one column) is recognised by one pattern
instead of being parsed, validated and written again. Whatever the lines, that check must end exactly as the full
one does: the same counts and ranges for a good plan, the same message naming the same line for a bad one. Lines
here come from real plans, then from systematic edits of them."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import plan_lines

from emailsync import planfile
from emailsync.errors import UserError
from emailsync.plan import loads


def _doc(i: int) -> str:
    """A flat document, its member names sorting differently quoted and unquoted ("a" < "a!" but '"a"' > '"a!"'),
    or a nested one."""
    if i % 4 == 0:
        return f'{{"by": {{"who": "u{i}@old.com"}}, "n": 1.50}}'
    return f'{{"by": "u{i}@old.com", "a!": 1, "a": true, "z z": null, "n": {i}, "m": "x"}}'


def _estate_plan(ws: Any, db: Any) -> Path:
    """A plan with plain lines and every kind of line that is not: documents, a composite key, a whole row, a
    delete, escapes, characters outside ASCII, a text-array column, an integer and a text key."""
    db.execute("CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE, backup text, tags text[], doc jsonb)")
    db.execute("CREATE TABLE seats (org text, email text, n int, PRIMARY KEY (org, email))")
    db.execute("CREATE TABLE notes (code text PRIMARY KEY, author text)")
    for i in range(1, 25):
        db.execute(
            "INSERT INTO people VALUES (%s, %s, %s, %s, %s)",
            (i, f"u{i}@old.com", f"u{(i % 5) + 1}@old.com", [f"u{i}@old.com", "x@y.com"], _doc(i)),
        )
        db.execute("INSERT INTO seats VALUES (%s, %s, %s)", (f"org{i % 3}", f"u{i}@old.com", i))
        db.execute("INSERT INTO notes VALUES (%s, %s)", (f'n\\{i} "q" ü\t', f"u{i}@old.com"))
    db.execute("INSERT INTO people VALUES (99, 'u1@new.com', NULL, NULL, NULL)")  # a merge: u1's row is deleted
    ws.postgres_targets(
        {"core": db},
        "- {table: people, columns: [email, backup, tags, doc]}\n"
        "- {table: seats, columns: [email]}\n"
        "- {table: notes, columns: [author]}\n",
    )
    mapping = {f"u{i}@old.com": f"u{i}@new.com" for i in range(1, 25)}
    mapping["u7@old.com"] = 'ü7\\"x@new.com'
    ws.mappings(mapping)
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


def _outcome(path: Path, header: Any, body: list[str], fast: bool) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        if not fast:
            mp.setattr(planfile, "_PLAIN_PG_LINE", re.compile(r"(?!)"))  # never matches: the full check
        try:
            lines = [(line + "\n").encode("utf-8", "surrogatepass") for line in body]
            counts, ranges = planfile._check_lines(path, header, lines, 1, 0)
            return ("ok", sorted(counts.items()), sorted(ranges.items()))
        except UserError as e:
            return ("error", str(e))


def _header(path: Path) -> Any:
    return planfile.read_plan(path)


def test_a_real_plan_is_checked_the_same_with_and_without_the_pattern(ws: Any, db: Any) -> None:
    plan = _estate_plan(ws, db)
    header = _header(plan)
    body = plan_lines(plan)[1:]
    plain = [line for line in body if planfile._PLAIN_PG_LINE.fullmatch(line)]
    assert 40 < len(plain) < len(body)  # both ways are taken
    kinds = {loads(line)["kind"] for line in body}
    assert {"update", "array-replace", "delete-on-conflict"} <= kinds
    assert not any("\\" in line or '"key":{"email"' in line for line in plain)
    docs = [line for line in body if '"column":"doc"' in line]
    assert any(line in plain for line in docs) and not all(line in plain for line in docs)  # flat ones, not nested
    fast, slow = _outcome(plan, header, body, True), _outcome(plan, header, body, False)
    assert fast[0] == "ok" and fast == slow


EDITS = [
    # (what, old, new): each applied to the first place it fits in a line the pattern takes
    ("a space after a colon", '"kind":', '"kind": '),
    ("a field out of order", '"column":', '"zcolumn":'),
    ("a field given twice", '"kind":"update",', '"kind":"update","kind":"update",'),
    ("an escaped character", "@new.com", "@new\\u002ecom"),
    ("an escaped slash", "@new.com", "@new\\/com"),
    ("a raw tab", "@new.com", "@new\t.com"),
    ("a number with a leading zero", '"step":', '"step":0'),
    ("minus zero", '"step":1', '"step":-0'),
    ("a float step", '"step":1', '"step":1.0'),
    ("a null value", '"old":"', '"old":null,"x":"'),
    ("an unknown kind", '"kind":"update"', '"kind":"upsert"'),
    ("another store", '"store":"postgres"', '"store":"dynamodb"'),
    ("an unknown target", '"target":"core"', '"target":"elsewhere"'),
    ("an extra field", '"step":', '"live":true,"step":'),
    ("a string mapping", '"mappings":[', '"mappings":["1",'),
    ("an empty column", '"column":"', '"column":"",'),
    ("a key of two columns", '"key":{"id":', '"key":{"id":1,"zz":'),
    ("a key out of order", '"key":{"id":', '"key":{"zz":1,"id":'),
    ("a string key", '"key":{"id":', '"key":{"id":"1","x":'),
    ("a huge integer", '"step":', '"step":1234567890123456789012345'),
    ("no closing brace", '"}', '"'),
    ("an id changed", '"id":"pg-', '"id":"pg-0'),
    ("document members swapped", '"a":true,"a!":1', '"a!":1,"a":true'),
    ("a document member twice", '"a":true,', '"a":true,"a":true,'),
    ("a document member dropped", '"a":true,', ""),
    ("a nested document", '"m":"x"', '"m":{"x":1}'),
    ("a decimal in a document", '"a!":1', '"a!":1.0'),
    ("an exponent in a document", '"a!":1', '"a!":1e0'),
    ("a capitalised literal", '"a":true', '"a":True'),
    ("a document member escaped", '"z z":', '"z\\u0020z":'),
    ("a space in a document", '"a":true,', '"a": true,'),
]


@pytest.mark.parametrize(("what", "old", "new"), EDITS, ids=[e[0] for e in EDITS])
def test_an_edited_line_gets_the_same_answer_from_both_checks(ws: Any, db: Any, what: str, old: str, new: str) -> None:
    plan = _estate_plan(ws, db)
    header = _header(plan)
    body = plan_lines(plan)[1:]
    edited = 0
    for n, line in enumerate(body):
        if planfile._PLAIN_PG_LINE.fullmatch(line) and old in line and edited < 3:
            changed = body[:n] + [line.replace(old, new, 1)] + body[n + 1 :]
            fast = _outcome(plan, header, changed, True)
            assert fast == _outcome(plan, header, changed, False), (what, changed[n])
            edited += 1
    assert edited, f"no line to edit with {what}"


def test_random_edits_of_plain_lines_get_the_same_answer_from_both_checks(ws: Any, db: Any) -> None:
    plan = _estate_plan(ws, db)
    header = _header(plan)
    body = plan_lines(plan)[1:]
    plain_at = [n for n, line in enumerate(body) if planfile._PLAIN_PG_LINE.fullmatch(line)]
    rng = random.Random(19)
    alphabet = ['"', "\\", ",", ":", "{", "}", "[", "]", " ", "0", "1", "-", "a", "é", "\t", "\x7f", "null"]
    answers = set()
    for _ in range(300):
        n = rng.choice(plain_at)
        line = body[n]
        at = rng.randrange(len(line))
        how = rng.randrange(3)
        if how == 0:
            line = line[:at] + line[at + 1 :]
        elif how == 1:
            line = line[:at] + rng.choice(alphabet) + line[at:]
        else:
            line = line[:at] + rng.choice(alphabet) + line[at + 1 :]
        changed = body[:n] + [line] + body[n + 1 :]
        fast = _outcome(plan, header, changed, True)
        assert fast == _outcome(plan, header, changed, False), line
        answers.add(fast[0])
    assert answers == {"ok", "error"}  # some edits still make a valid plan (an email changed), most do not
