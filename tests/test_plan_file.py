"""The plan file: tamper-evident (digest), versioned, strict JSON, exact round trip, deterministic.

Every refusal must be one `error:` message, exit 1, no traceback, and leave the database untouched.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_user_error, employees, plan_doc

from emailsync.plan import compute_digest, dumps, loads, read_plan, render_json

EMPLOYEES = "- table: public.employees\n  columns: [email]\n"
ROWS = [(1, "a@old.com"), (2, "b@old.com"), (3, "keep@x.com")]
MAPPING = {"a@old.com": "a@new.com", "b@old.com": "b@new.com"}
BIG = "12345678901234567890.0123456789"


# --- helpers ------------------------------------------------------------------------------------------------


@pytest.fixture
def planned(ws: Any, db: Any) -> tuple[Any, Any, Path]:
    """A workspace with a reviewed-looking plan of two updates; returns (ws, db, plan path)."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    for i, email in ROWS:
        db.execute("INSERT INTO employees VALUES (%s, %s)", (i, email))
    ws.postgres_targets({"core": db}, EMPLOYEES)
    ws.mappings(MAPPING)
    r, path = ws.plan()
    assert r.code == 0, (r.out, r.err)
    assert len(ws.plan_json(path)["actions"]) == 2
    return ws, db, path


def rewrite(path: Path, edit: Any) -> None:
    """Parse the plan exactly (Decimal numbers), let `edit` change it, write it back WITHOUT re-sealing."""
    data = loads(path.read_text())
    edit(data)
    path.write_text(dumps(data, indent=2) + "\n")


def apply_refused(ws: Any, db: Any, path: Path, *fragments: str) -> str:
    r = ws.run("apply", str(path), "--auto-approve")
    message = assert_user_error(r, str(path), *fragments)
    assert employees(db) == ROWS
    assert not path.with_name("report.json").exists()
    return message


# --- tampering ----------------------------------------------------------------------------------------------


def test_untampered_plan_applies(planned: tuple[Any, Any, Path]) -> None:
    """Control for the tampering tests: the same plan, unedited, applies."""
    ws, db, path = planned
    r = ws.run("apply", str(path), "--auto-approve")
    assert r.code == 0, (r.out, r.err)
    assert employees(db) == [(1, "a@new.com"), (2, "b@new.com"), (3, "keep@x.com")]


def test_rewritten_but_unchanged_plan_still_applies(planned: tuple[Any, Any, Path]) -> None:
    """The digest is over the content, not the formatting: re-serialising without edits is accepted."""
    ws, db, path = planned
    rewrite(path, lambda data: None)
    r = ws.run("apply", str(path), "--auto-approve")
    assert r.code == 0, (r.out, r.err)
    assert employees(db) == [(1, "a@new.com"), (2, "b@new.com"), (3, "keep@x.com")]


def test_edited_new_value_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    text = path.read_text()
    assert text.count('"new":"a@new.com"') == 1
    path.write_text(text.replace('"new":"a@new.com"', '"new":"attacker@evil.com"'))
    apply_refused(ws, db, path, "digest mismatch", "re-run `emailsync plan`")
    reliability("hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a changed value")


def test_removed_action_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    rewrite(path, lambda data: data["actions"].pop())
    apply_refused(ws, db, path, "digest mismatch")
    reliability("hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a removed action")


def test_added_copied_action_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned

    def add(data: dict[str, Any]) -> None:
        copy = dict(data["actions"][0])
        copy["id"] = "pg-00000000deadbeef"
        data["actions"].append(copy)

    rewrite(path, add)
    apply_refused(ws, db, path, "digest mismatch")
    reliability("hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="an added action")


def test_changed_digest_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    fake = "sha256:" + "f" * 64
    rewrite(path, lambda data: data.update(digest=fake))
    msg = apply_refused(ws, db, path, "digest mismatch", fake)
    assert plan_doc(path)["digest"] == fake
    assert "re-run `emailsync plan`" in msg
    reliability("hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a changed digest")


# --- format versions and malformed files --------------------------------------------------------------------


def test_format_v2_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    rewrite(path, lambda data: data.update(format="emailsync.plan/v2"))
    apply_refused(ws, db, path, "emailsync.plan/v2", "emailsync.plan/v1")
    reliability(
        "hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a newer major format"
    )


def test_newer_minor_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    rewrite(path, lambda data: data.update(format_minor=99))
    apply_refused(ws, db, path, "99", "newer", "upgrade emailsync")
    reliability(
        "hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a newer minor format"
    )


def test_duplicate_key_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    text = path.read_text()
    assert text.startswith("{\n")
    # A second "digest" after the real one: a lax reader would silently take the last.
    path.write_text(text.replace("{\n", '{\n  "digest": "sha256:' + "0" * 64 + '",\n', 1))
    apply_refused(ws, db, path, "'digest'", "more than once")
    reliability(
        "hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a duplicate top-level key"
    )


def test_duplicate_key_inside_an_action_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    text = path.read_text()
    path.write_text(text.replace('"new":"a@new.com"', '"new":"a@new.com","new":"attacker@evil.com"', 1))
    apply_refused(ws, db, path, "'new'", "more than once")
    reliability(
        "hostile input: plans edited by hand",
        "refused, exit 1, nothing written",
        detail="a duplicate key inside an action",
    )


def test_not_json_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    path.write_text("this is not a plan\n")
    apply_refused(ws, db, path, "not valid JSON", "line 1")
    reliability("hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="not JSON")


def test_truncated_plan_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    apply_refused(ws, db, path, "not valid JSON")
    reliability("hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a truncated file")


def test_missing_plan_file_is_refused(planned: tuple[Any, Any, Path]) -> None:
    ws, db, path = planned
    missing = path.with_name("nope.json")
    r = ws.run("apply", str(missing), "--auto-approve")
    assert_user_error(r, str(missing), "plan file not found")
    assert employees(db) == ROWS
    assert not missing.exists()
    assert not missing.with_name("report.json").exists()


# --- show ---------------------------------------------------------------------------------------------------


def test_show_renders_the_plan(planned: tuple[Any, Any, Path]) -> None:
    ws, db, path = planned
    digest = ws.plan_json(path)["digest"]
    r = ws.run("show", str(path))
    assert r.code == 0, (r.out, r.err)
    assert digest in r.out
    assert "`a@old.com` → `a@new.com`" in r.out
    assert "`b@old.com` → `b@new.com`" in r.out
    assert r.out.startswith(path.with_name("plan.md").read_text().strip())
    assert r.out.rstrip().endswith("Not applied yet (no apply journal).")
    assert employees(db) == ROWS


def test_show_refuses_a_tampered_plan(planned: tuple[Any, Any, Path]) -> None:
    ws, db, path = planned
    path.write_text(path.read_text().replace('"new":"a@new.com"', '"new":"attacker@evil.com"'))
    r = ws.run("show", str(path))
    assert_user_error(r, str(path), "digest mismatch")
    assert "attacker@evil.com" not in r.out


# --- exactness ----------------------------------------------------------------------------------------------


def test_plan_round_trips_byte_for_byte(planned: tuple[Any, Any, Path]) -> None:
    _, _, path = planned
    text = path.read_text(encoding="utf-8")
    assert render_json(read_plan(path)) == text


@pytest.fixture
def numeric_plan(ws: Any, db: Any) -> tuple[Any, Any, Path]:
    """Row 1 moves onto an email row 2 already holds under UNIQUE(email): row 1 is deleted-on-conflict."""
    db.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text UNIQUE, balance numeric(30,10))")
    db.execute(f"INSERT INTO accounts VALUES (1, 'a@old.com', {BIG}), (2, 'b@new.com', 1.5)")
    ws.postgres_targets({"core": db}, "- table: public.accounts\n  columns: [email]\n")
    ws.mappings({"a@old.com": "b@new.com"})
    r, path = ws.plan()
    assert r.code == 0, (r.out, r.err)
    return ws, db, path


def test_numeric_row_image_is_exact_and_delete_applies(numeric_plan: tuple[Any, Any, Path]) -> None:
    ws, db, path = numeric_plan
    text = path.read_text(encoding="utf-8")
    assert BIG in text
    (action,) = loads(text)["actions"]
    assert action["kind"] == "delete-on-conflict"
    assert action["key"] == {"id": 1}
    assert action["row"] == {"id": 1, "email": "a@old.com", "balance": Decimal(BIG)}
    assert str(action["row"]["balance"]) == BIG
    assert render_json(read_plan(path)) == text  # the Decimal survives the round trip too

    r = ws.run("apply", str(path), "--auto-approve")
    assert r.code == 0, (r.out, r.err)
    rows = db.rows("SELECT id, email, balance::text FROM accounts ORDER BY id")
    assert rows == [(2, "b@new.com", "1.5000000000")]


def test_numeric_row_changed_since_plan_is_not_deleted(numeric_plan: tuple[Any, Any, Path]) -> None:
    """The row image is compared exactly: a change in the last decimal place makes the delete stale."""
    ws, db, path = numeric_plan
    db.execute("UPDATE accounts SET balance = balance + 0.0000000001 WHERE id = 1")
    r = ws.run("apply", str(path), "--auto-approve")
    assert r.code == 3, (r.code, r.out, r.err)
    assert "Traceback" not in r.out + r.err
    assert db.rows("SELECT id, balance::text FROM accounts ORDER BY id") == [
        (1, "12345678901234567890.0123456790"),
        (2, "1.5000000000"),
    ]


def test_recomputed_digest_matches(planned: tuple[Any, Any, Path]) -> None:
    _, _, path = planned
    data = loads(path.read_text())
    assert compute_digest(data) == data["digest"]


# --- determinism --------------------------------------------------------------------------------------------


def _without_volatile(md: str) -> list[str]:
    return [ln for ln in md.splitlines() if not ln.startswith(("- digest:", "- created:"))]


def test_planning_twice_is_deterministic(ws: Any, db: Any) -> None:
    db.execute(
        "CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE, manager_email text, aliases text[], prefs jsonb)"
    )
    db.execute("CREATE TABLE invites (code text PRIMARY KEY, email text)")
    db.execute(
        """
        INSERT INTO people VALUES
          (1, 'a@old.com', 'boss@old.com', '{a@old.com,x@y.com}', '{"cc": ["a@old.com"], "n": 1.50}'),
          (2, 'b@old.com', 'a@old.com', NULL, NULL),
          (3, 'boss@old.com', NULL, '{boss@old.com}', '{"owner": "boss@old.com"}'),
          (4, 'c@new.com', 'b@old.com', NULL, NULL),
          (5, 'c@old.com', NULL, NULL, NULL)
        """
    )
    db.execute("INSERT INTO invites VALUES ('z', 'a@old.com'), ('y', 'c@old.com'), ('x', 'nobody@x.com')")
    ws.postgres_targets(
        {"core": db},
        "- table: public.people\n  columns: [email, manager_email, aliases, prefs]\n"
        "- table: public.invites\n  columns: [email]\n",
    )
    ws.mappings(
        {
            "a@old.com": "a@new.com",
            "b@old.com": "b@new.com",
            "boss@old.com": "boss@new.com",
            "c@old.com": "c@new.com",  # row 4 already holds it: row 5 is deleted-on-conflict
        }
    )
    r1, p1 = ws.plan()
    r2, p2 = ws.plan()
    assert r1.code == 0 and r2.code == 0, (r1.err, r2.err)
    a1, a2 = ws.plan_json(p1)["actions"], ws.plan_json(p2)["actions"]
    assert a1 == a2
    kinds = {a["kind"] for a in a1}
    assert kinds == {"update", "array-replace", "delete-on-conflict"}
    assert len({a["id"] for a in a1}) == len(a1)
    md1 = p1.with_name("plan.md").read_text()
    md2 = p2.with_name("plan.md").read_text()
    assert _without_volatile(md1) == _without_volatile(md2)
    # Everything but created_at/digest is identical in the JSON too.
    j1, j2 = ws.plan_json(p1), ws.plan_json(p2)
    for j in (j1, j2):
        del j["created_at"], j["digest"]
    assert j1 == j2
