"""The plan file: tamper-evident (digest), versioned, strict JSON Lines, exact round trip, deterministic.

Every refusal must be one `error:` message, exit 1, no traceback, and leave the database untouched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_user_error, employees, plan_doc, plan_lines, resealed, write_plan_lines

from emailsync.plan import DIGEST_SCHEME, PLAN_FORMAT, PLAN_FORMAT_MINOR, dumps, header_digest, loads
from emailsync.planfile import beside, read_plan, write_plan

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


def content(path: Path) -> bytes:
    """The plan file's JSON Lines, uncompressed (as `zcat` shows them)."""
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def rewrite(path: Path, edit: Any, *, sealed: bool = False) -> None:
    """Parse every line exactly (Decimal numbers) into one document (the header's fields, `actions`: the body's
    lines), let `edit` change it, write it back as compact lines, NOT re-sealed unless `sealed`."""
    lines = plan_lines(path)
    data = loads(lines[0])
    data["actions"] = [loads(line) for line in lines[1:]]
    edit(data)
    body = [dumps(a) for a in data.pop("actions")]
    lines = [dumps(data), *body]
    write_plan_lines(path, resealed(lines) if sealed else lines)


def apply_refused(ws: Any, db: Any, path: Path, *fragments: str) -> str:
    before = path.read_bytes()
    r = ws.run("apply", str(path), "--auto-approve")
    message = assert_user_error(r, str(path), *fragments)
    assert employees(db) == ROWS
    assert not beside(path, "report.json").exists()
    assert path.read_bytes() == before
    return message


# --- tampering ----------------------------------------------------------------------------------------------


def test_untampered_plan_applies(planned: tuple[Any, Any, Path]) -> None:
    """Control for the tampering tests: the same plan, unedited, applies."""
    ws, db, path = planned
    r = ws.run("apply", str(path), "--auto-approve")
    assert r.code == 0, (r.out, r.err)
    assert employees(db) == [(1, "a@new.com"), (2, "b@new.com"), (3, "keep@x.com")]


def test_recompressed_but_unchanged_plan_still_applies(planned: tuple[Any, Any, Path]) -> None:
    """The digest is over the content (the uncompressed lines), not the compression: the same lines gzip'd again, at
    another level and with a time and a name in the gzip header, are accepted."""
    ws, db, path = planned
    original = path.read_bytes()
    rewrite(path, lambda data: None)  # re-serialising the lines without an edit writes them exactly as they were
    assert content(path) == gzip.decompress(original)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="renamed.jsonl", mode="wb", fileobj=buf, compresslevel=9, mtime=1_700_000_000) as f:
        f.write(gzip.decompress(original))
    path.write_bytes(buf.getvalue())
    assert path.read_bytes() != original and content(path) == gzip.decompress(original)
    r = ws.run("apply", str(path), "--auto-approve")
    assert r.code == 0, (r.out, r.err)
    assert employees(db) == [(1, "a@new.com"), (2, "b@new.com"), (3, "keep@x.com")]


def test_edited_new_value_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    lines = plan_lines(path)
    assert "\n".join(lines).count('"new":"a@new.com"') == 1
    write_plan_lines(path, [line.replace('"new":"a@new.com"', '"new":"attacker@evil.com"') for line in lines])
    apply_refused(ws, db, path, "digest mismatch", "the body hashes to", "re-run `emailsync plan`")
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


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("changes", [], "changes"),  # a DynamoDB field on a PostgreSQL action
        ("new_key", {"id": 1}, "new_key"),
        ("kind", "live-swap", "kind"),  # a DynamoDB kind on a PostgreSQL action
        ("store", "oracle", "store"),  # no such store
    ],
)
def test_an_action_with_another_stores_fields_is_refused(
    planned: tuple[Any, Any, Path], reliability: Any, field: str, value: Any, where: str
) -> None:
    """Actions are a union told apart by their store: each store's actions have only their own fields and kinds.
    Re-sealed, so what refuses the line is its schema, not the digest."""
    ws, db, path = planned

    def edit(data: dict[str, Any]) -> None:
        data["actions"][0][field] = value

    rewrite(path, edit, sealed=True)
    apply_refused(ws, db, path, "line 2: not a valid plan line at " + where)
    reliability("hostile input: plans edited by hand", "refused, exit 1, nothing written", detail=f"a foreign {field}")


def test_changed_digest_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    fake = "sha256:" + "f" * 64
    rewrite(path, lambda data: data.update(digest=fake))
    msg = apply_refused(ws, db, path, "digest mismatch", fake, "its header hashes to")
    assert plan_doc(path)["digest"] == fake
    assert "re-run `emailsync plan`" in msg
    reliability("hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a changed digest")


# --- format versions and malformed files --------------------------------------------------------------------


def test_format_v3_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    rewrite(path, lambda data: data.update(format="emailsync.plan/v3"))
    apply_refused(ws, db, path, "unknown plan format", "'emailsync.plan/v3'", "'emailsync.plan/v2'")
    reliability(
        "hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a newer major format"
    )


def test_a_v1_plan_is_refused_by_name(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    """A plan made by an emailsync before 0.2 (format v1: one indented JSON document, plan.json) is refused, naming
    both formats; so is a v1 document on one line, or renamed to plan.jsonl.gz."""
    ws, db, path = planned
    doc = plan_doc(path)
    for v2_only in ("digest_scheme", "action_count", "skipped_count", "body_sha256"):
        del doc[v2_only]
    doc |= {"format": "emailsync.plan/v1", "format_minor": 3}
    v1 = path.with_name("plan.json")
    v1.write_text(dumps(doc, indent=2) + "\n")
    msg = apply_refused(
        ws, db, v1, "not a plan of format emailsync.plan/v2", "emailsync.plan/v1", "Make the plan again"
    )
    assert "digest" not in msg  # said for what it is, not as tampering
    path.write_text(dumps(doc, indent=2) + "\n")
    apply_refused(ws, db, path, "not a plan of format emailsync.plan/v2", "emailsync.plan/v1")
    v1.write_text(dumps(doc) + "\n")
    apply_refused(ws, db, v1, "unknown plan format 'emailsync.plan/v1'", "'emailsync.plan/v2'")
    reliability("hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a v1 plan")


def test_newer_minor_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    rewrite(path, lambda data: data.update(format_minor=99))
    apply_refused(ws, db, path, "99", "newer", "upgrade emailsync")
    reliability(
        "hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a newer minor format"
    )


def test_duplicate_key_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    lines = plan_lines(path)
    assert lines[0].startswith('{"')
    # A second "digest" before the real one: a lax reader would silently take the last.
    lines[0] = '{"digest":"sha256:' + "0" * 64 + '",' + lines[0][1:]
    write_plan_lines(path, lines)
    apply_refused(ws, db, path, "'digest'", "more than once")
    reliability(
        "hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a duplicate top-level key"
    )


def test_duplicate_key_inside_an_action_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    lines = plan_lines(path)
    (n,) = [i for i, line in enumerate(lines) if '"new":"a@new.com"' in line]
    lines[n] = lines[n].replace('"new":"a@new.com"', '"new":"a@new.com","new":"attacker@evil.com"', 1)
    write_plan_lines(path, lines)
    apply_refused(ws, db, path, "digest mismatch")
    # With body_sha256 and the digest recomputed, the line itself is refused, naming the key given twice.
    write_plan_lines(path, resealed(lines))
    apply_refused(ws, db, path, f"line {n + 1}: key ", "appears more than once", "edited by hand")
    reliability(
        "hostile input: plans edited by hand",
        "refused, exit 1, nothing written",
        detail="a duplicate key inside an action",
    )


def test_not_json_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    path.write_text("this is not a plan\n")
    apply_refused(ws, db, path, "line 1 is not valid JSON")
    path.write_bytes(gzip.compress(b"this is not a plan\n"))
    apply_refused(ws, db, path, "line 1 is not valid JSON")
    reliability("hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="not JSON")


def test_truncated_plan_is_refused(planned: tuple[Any, Any, Path], reliability: Any) -> None:
    ws, db, path = planned
    raw, text = path.read_bytes(), content(path)
    path.write_bytes(raw[: len(raw) // 2])  # the gzip stream cut off: a partial copy or download
    apply_refused(ws, db, path, "cannot read the plan file", "end-of-stream marker")
    path.write_bytes(gzip.compress(text[:-10]))  # the last action cut off, gzip'd whole
    apply_refused(ws, db, path, "digest mismatch")
    path.write_bytes(gzip.compress(text[: text.index(b"\n") // 2]))  # the header cut in half
    apply_refused(ws, db, path, "line 1 is not valid JSON")
    reliability("hostile input: plans edited by hand", "refused, exit 1, nothing written", detail="a truncated file")


def test_missing_plan_file_is_refused(planned: tuple[Any, Any, Path]) -> None:
    ws, db, path = planned
    missing = path.with_name("nope.jsonl.gz")
    r = ws.run("apply", str(missing), "--auto-approve")
    assert_user_error(r, str(missing), "plan file not found")
    assert employees(db) == ROWS
    assert not missing.exists()
    assert not beside(missing, "report.json").exists()
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
    write_plan_lines(
        path, [line.replace('"new":"a@new.com"', '"new":"attacker@evil.com"') for line in plan_lines(path)]
    )
    r = ws.run("show", str(path))
    assert_user_error(r, str(path), "digest mismatch")
    assert "attacker@evil.com" not in r.out


# --- exactness ----------------------------------------------------------------------------------------------


def test_plan_round_trips_byte_for_byte(planned: tuple[Any, Any, Path]) -> None:
    """Read and written again, a plan is the same file: gzip'd byte for byte, and as plain JSON Lines its content."""
    _, _, path = planned
    again, plain = path.parent / "again" / "copy.jsonl.gz", path.parent / "again" / "copy.jsonl"
    write_plan(read_plan(path), again)
    write_plan(read_plan(path), plain)
    assert again.read_bytes() == path.read_bytes()
    assert plain.read_bytes() == content(path)
    assert plain.read_bytes()[:1] == b"{"


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
    assert BIG.encode() in content(path)
    header, *body = plan_lines(path)
    (action,) = [loads(line) for line in body]
    assert action["kind"] == "delete-on-conflict"
    assert action["key"] == {"id": 1}
    assert action["row"] == {"id": 1, "email": "a@old.com", "balance": Decimal(BIG)}
    assert str(action["row"]["balance"]) == BIG
    again = path.parent / "again" / "copy.jsonl.gz"
    write_plan(read_plan(path), again)
    assert again.read_bytes() == path.read_bytes()  # the Decimal survives the round trip too

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
    """Digest scheme sha256-jsonl/1, recomputed by hand: body_sha256 is the sha256 of the uncompressed lines after
    the first (`zcat plan.jsonl.gz | tail -n +2 | sha256sum`), the digest the sha256 of the header's canonical JSON
    without digest (and signature)."""
    _, _, path = planned
    lines = plan_lines(path)
    header = json.loads(lines[0])
    assert (header["format"], header["format_minor"]) == (PLAN_FORMAT, PLAN_FORMAT_MINOR) == ("emailsync.plan/v2", 1)
    assert header["digest_scheme"] == DIGEST_SCHEME == "sha256-jsonl/1"
    assert "signature" not in header  # unsigned: absent, not null
    assert (header["action_count"], header["skipped_count"]) == (2, 0) and len(lines) == 3
    body = content(path).split(b"\n", 1)[1]
    assert body == "".join(line + "\n" for line in lines[1:]).encode()
    assert hashlib.sha256(body).hexdigest() == header["body_sha256"]
    canonical = json.dumps(
        {k: v for k, v in header.items() if k != "digest"}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert "sha256:" + hashlib.sha256(canonical.encode()).hexdigest() == header["digest"]
    assert header_digest(header) == header["digest"]
    assert lines[0] == dumps(header)  # the header line is canonical JSON too


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
    # The bodies, byte for byte: the same actions in the same order, written the same way.
    assert content(p1).split(b"\n", 1)[1] == content(p2).split(b"\n", 1)[1]
