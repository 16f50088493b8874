"""Signed plans (EMAILSYNC_PLAN_KEY) and plan.md redacted for public pull requests, against real PostgreSQL."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import plan_doc, write_plan_doc

KEY = "k" * 20 + "-a-long-shared-secret-for-tests-0123456789"
OTHER_KEY = "o" * 20 + "-another-long-shared-secret-9876543210abc"
ROWS = [
    (1, "ann@oldco.com", "Ann Example", "+44 20 7946 0001"),
    (2, "bob@oldco.com", "Bob Example", "+44 20 7946 0002"),
    (3, "bob@newco.com", "Robert Collision", "+44 20 7946 0003"),  # holds bob's new address: bob's row is deleted
]
MAPPING = {"ann@oldco.com": "ann@newco.com", "bob@oldco.com": "bob@newco.com"}


@pytest.fixture
def estate(db: Any, ws: Any) -> Any:
    db.execute("CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE, full_name text, phone text)")
    for r in ROWS:
        db.execute("INSERT INTO people VALUES (%s, %s, %s, %s)", r)
    ws.postgres_targets({"core": db}, "- table: people\n  columns: [email]\n  on_conflict: delete")
    ws.mappings(MAPPING)
    ws.monkeypatch.delenv("EMAILSYNC_PLAN_KEY", raising=False)
    return db


def _rows(db: Any) -> list[tuple[Any, ...]]:
    return db.rows("SELECT id, email, full_name, phone FROM people ORDER BY id")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _readable(name: str, data: bytes) -> str:
    """A file's text as a person reads it: a gzip'd plan (plan.jsonl.gz) uncompressed."""
    return (gzip.decompress(data) if name.endswith(".gz") else data).decode(errors="replace")


def _refused_and_untouched(ws: Any, db: Any, plan: Path, r: Any, before: dict[str, bytes], *words: str) -> None:
    assert r.code == 1, (r.code, r.out, r.err)
    assert "Traceback" not in r.out + r.err and r.err.startswith("error:")
    for w in words:
        assert w in r.err, (w, r.err)
    assert _rows(db) == ROWS  # nothing written to the database
    assert _files(ws.path) == before  # no report, no journal, the plan byte for byte as it was


# --- signing -------------------------------------------------------------------------------------------------


def test_signed_plan_applies_with_the_same_key(estate: Any, ws: Any, reliability: Any) -> None:
    ws.monkeypatch.setenv("EMAILSYNC_PLAN_KEY", KEY)
    r, plan = ws.plan()
    assert r.code == 0, r.err
    data = plan_doc(plan)
    assert re.fullmatch(r"hmac-sha256:[0-9a-f]{64}", data["signature"])
    assert (data["format"], data["digest_scheme"]) == ("emailsync.plan/v2", "sha256-jsonl/1")
    assert "(signed)" in plan.with_name("plan.md").read_text()
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert _rows(estate) == [
        (1, "ann@newco.com", "Ann Example", "+44 20 7946 0001"),
        (3, "bob@newco.com", "Robert Collision", "+44 20 7946 0003"),
    ]
    everything = r.out + r.err + "".join(_readable(name, b) for name, b in _files(ws.path).items())
    assert data["body_sha256"] in everything  # the plan file was searched uncompressed
    assert KEY not in everything  # the key itself is never written or printed
    reliability("plan signing (EMAILSYNC_PLAN_KEY)", "signed plan applied, key never written")


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("unsigned", ("not signed", "EMAILSYNC_PLAN_KEY is set")),
        ("other-key", ("signature does not match",)),
        ("edited-signature", ("signature does not match",)),
        ("signature-removed", ("not signed",)),
        ("signature-copied-to-another-plan", ("signature does not match",)),
    ],
)
def test_apply_refuses_plans_the_key_did_not_sign(
    estate: Any, ws: Any, case: str, words: tuple[str, ...], reliability: Any
) -> None:
    if case != "unsigned":
        ws.monkeypatch.setenv("EMAILSYNC_PLAN_KEY", OTHER_KEY if case == "other-key" else KEY)
    r, plan = ws.plan()
    assert r.code == 0, r.err
    if case in ("edited-signature", "signature-removed", "signature-copied-to-another-plan"):
        # A hand edit of the header line's signature alone: the digest does not cover it, so only the signature
        # check can catch it.
        original, doc = plan_doc(plan), plan_doc(plan)
        sig = doc["signature"]
        if case == "edited-signature":
            doc["signature"] = sig[:-1] + ("0" if sig[-1] != "0" else "1")
        elif case == "signature-removed":
            del doc["signature"]
        else:
            # a valid signature of another plan (another mapping) pasted into this one
            ws.mappings({"ann@oldco.com": "ann@elsewhere.com"}, name="other.json")
            r2, other = ws.plan("--mappings", "other.json")
            assert r2.code == 0, r2.err
            doc["signature"] = plan_doc(other)["signature"]
            assert doc["signature"] != sig
        write_plan_doc(plan, doc)
        edited = plan_doc(plan)
        assert edited.get("signature") != sig
        assert {k: v for k, v in edited.items() if k != "signature"} == {
            k: v for k, v in original.items() if k != "signature"
        }  # nothing else changed
    ws.monkeypatch.setenv("EMAILSYNC_PLAN_KEY", KEY)
    before = _files(ws.path)
    r = ws.run("apply", str(plan), "--auto-approve")
    _refused_and_untouched(ws, estate, plan, r, before, *words)
    reliability("plan signing (EMAILSYNC_PLAN_KEY)", "refused, exit 1, nothing written", detail=case)


def test_a_short_key_is_refused_before_anything_is_read_or_written(estate: Any, ws: Any, reliability: Any) -> None:
    ws.monkeypatch.setenv("EMAILSYNC_PLAN_KEY", "short-secret")
    before = _files(ws.path)
    r, plan = ws.plan()
    assert r.code == 1 and "shorter than 32 characters" in r.err and "short-secret" not in r.err
    assert _files(ws.path) == before and not plan.exists()
    reliability("plan signing (EMAILSYNC_PLAN_KEY)", "refused, exit 1, nothing written", detail="key too short")


def test_a_signed_plan_without_the_key_applies_with_a_warning(estate: Any, ws: Any) -> None:
    ws.monkeypatch.setenv("EMAILSYNC_PLAN_KEY", KEY)
    r, plan = ws.plan()
    ws.monkeypatch.delenv("EMAILSYNC_PLAN_KEY")
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert "is signed, but EMAILSYNC_PLAN_KEY is not set here, so its signature was not checked" in r.err
    assert _rows(estate)[0] == (1, "ann@newco.com", "Ann Example", "+44 20 7946 0001")


def test_rollback_plans_are_signed_too(estate: Any, ws: Any) -> None:
    ws.monkeypatch.setenv("EMAILSYNC_PLAN_KEY", KEY)
    r, plan = ws.plan()
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    out = plan.parent.parent / "rollback" / "plan.jsonl.gz"
    r = ws.run("rollback", str(plan.parent), "--out", str(out))
    assert r.code == 0, r.out + r.err
    assert plan_doc(out)["signature"].startswith("hmac-sha256:")
    r = ws.run("apply", str(out), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert _rows(estate) == ROWS  # put back, the deleted row included


# --- redaction -------------------------------------------------------------------------------------------------

PERSONAL = [r[1] for r in ROWS] + [v for v in MAPPING.values()] + ["Robert", "Bob Example", "+44 20"]


def _tokens(text: str) -> list[str]:
    return re.findall(r"h-[0-9a-f]{12}@[a-z.]+", text)


def test_plan_redact_writes_a_plan_md_without_personal_data(estate: Any, ws: Any, reliability: Any) -> None:
    r, plan = ws.plan("--redact")
    assert r.code == 0, r.err
    md = plan.with_name("plan.md").read_text()
    leaked = [p for p in PERSONAL if p in md]
    assert not leaked, leaked
    assert "**redacted**" in md and "3 fields" not in md  # the deleted row shows its field names only
    assert "4 fields: email, full_name, id, phone" in md
    tokens = _tokens(md)
    assert {t.split("@")[1] for t in tokens} == {"oldco.com", "newco.com"}  # domains kept for review
    # plan.jsonl.gz keeps what apply needs, and the digest shown is the real plan's
    data = plan_doc(plan)
    assert data["digest"] in md and "bob@oldco.com" in gzip.decompress(plan.read_bytes()).decode()
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    assert _rows(estate)[0][1] == "ann@newco.com"
    reliability("personal data in plan.md (--redact)", "no address, name or phone in plan.md")


def test_show_redact_is_stable_under_the_key_and_unlinkable_without(estate: Any, ws: Any) -> None:
    r, plan = ws.plan()
    one, two = (ws.run("show", str(plan), "--redact") for _ in range(2))
    assert one.code == two.code == 0
    assert not [p for p in PERSONAL if p in one.out]
    # the same address is the same hash throughout one rendering (bob's old address: its update and its delete)
    assert len(set(_tokens(one.out))) < len(_tokens(one.out))
    assert set(_tokens(one.out)).isdisjoint(_tokens(two.out))  # a random key per rendering without the plan key
    ws.monkeypatch.setenv("EMAILSYNC_PLAN_KEY", KEY)
    three, four = (ws.run("show", str(plan), "--redact") for _ in range(2))
    assert three.out == four.out and _tokens(three.out)  # keyed: the same hashes every time


def test_show_redact_refuses_json(estate: Any, ws: Any) -> None:
    r, plan = ws.plan()
    r = ws.run("show", str(plan), "--redact", "--format", "json")
    assert r.code == 1 and "--redact renders plan.md only" in r.err and not r.out
