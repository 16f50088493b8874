"""Past a bound, the lines of a plan being made (or a rollback being built) are sorted in runs on disk, and the
outcomes of an apply or verify are kept in a temporary file: with the bounds lowered to a few actions, the plan file
is the same line for line, and apply, verify, the report, the journal and the rollback do exactly what they do
with everything in memory (the stores' final contents are checked)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import plan_doc, plan_lines, rollback_plan

import emailsync.plan
import emailsync.stores.outcome

N = 40  # rows; with a unique email and a few conflicts, about fifty actions in several sections


def _estate(ws: Any, db: Any) -> list[tuple[Any, ...]]:
    db.execute("CREATE TABLE users (email text PRIMARY KEY, name text)")
    db.execute("CREATE TABLE logins (id int PRIMARY KEY, email text UNIQUE, aliases text[])")
    for i in range(N):
        db.execute("INSERT INTO users VALUES (%s, %s)", (f"u{i}@old.com", f"name {i}\twith a tab"))
        db.execute("INSERT INTO logins VALUES (%s, %s, %s)", (i, f"u{i}@old.com", [f"u{i}@old.com", "x@y.com"]))
    # Five new addresses already taken: those rows are deleted on conflict, and put back by the rollback.
    for i in range(5):
        db.execute("INSERT INTO logins VALUES (%s, %s, %s)", (1000 + i, f"u{i}@new.com", None))
    tables = "- {table: users, columns: [email]}\n- {table: logins, columns: [email, aliases]}"
    ws.postgres_targets({"core": db}, tables)
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(N)})
    return _contents(db)


def _contents(db: Any) -> list[tuple[Any, ...]]:
    return [
        *db.rows("SELECT 'users', email, name, NULL::text[] FROM users ORDER BY email"),
        *db.rows("SELECT 'logins', email, id::text, aliases FROM logins ORDER BY id"),
    ]


def _body(plan: Path) -> list[str]:
    return plan_lines(plan)[1:]


def test_a_plan_sorted_in_runs_on_disk_is_the_same_file_and_applies_and_rolls_back(
    ws: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _estate(ws, db)
    r, in_memory = ws.plan()
    assert r.code == 0, r.err
    monkeypatch.setattr(emailsync.plan, "SPILL_BYTES", 2000)  # a few lines per run: a dozen runs
    monkeypatch.setattr(emailsync.stores.outcome, "SPILL_AFTER", 3)
    r, spilled = ws.plan()
    assert r.code == 0, r.err
    body = _body(spilled)
    assert body == _body(in_memory) and len(body) > 80
    kinds = {json.loads(line)["kind"] for line in body}
    assert {"update", "array-replace", "delete-on-conflict"} <= kinds

    r = ws.run("verify", str(spilled), "--format", "json")
    assert r.code == 3, r.out + r.err  # 3: not every action is in its after state yet
    states = json.loads(r.out)
    assert len(states["actions"]) == len(body) and {a["state"] for a in states["actions"]} == {"before"}

    r = ws.run("apply", str(spilled), "--auto-approve")
    assert r.code == 0, r.out + r.err
    r = ws.run("verify", str(spilled), "--format", "json")
    assert r.code == 0 and json.loads(r.out)["counts"] == {"after": len(body), "before": 0, "drifted": 0}, r.out
    after = _contents(db)
    assert ("users", "u7@new.com", "name 7\twith a tab", None) in after
    assert not any("@old.com" in str(row) for row in after)
    assert sum(1 for row in after if row[0] == "logins") == N  # the five conflicting rows were deleted
    report = json.loads(spilled.with_name("report.json").read_text())
    ids = sorted(json.loads(line)["id"] for line in body)
    assert sorted(a["id"] for a in report["actions"]) == ids
    assert {a["status"] for a in report["actions"]} == {"applied"}

    rb = rollback_plan(ws, spilled)
    undo = plan_doc(rb)["actions"]
    assert sum(1 for a in undo if a["kind"] == "insert-row") == 5
    r = ws.run("apply", str(rb), "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert _contents(db) == before


def test_a_rollback_sorted_in_runs_is_the_same_file_as_one_sorted_in_memory(
    ws: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _estate(ws, db)
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    folder = plan.parent
    out_a, out_b = folder / "rb-a.jsonl.gz", folder / "rb-b.jsonl.gz"
    assert ws.run("rollback", str(folder), "--out", str(out_a)).code == 0
    monkeypatch.setattr(emailsync.plan, "SPILL_BYTES", 1500)
    assert ws.run("rollback", str(folder), "--out", str(out_b)).code == 0
    assert _body(out_a) == _body(out_b) and len(_body(out_a)) > 40
    # Same header apart from when it was made, so the same digest scheme covers the same body.
    ha, hb = (json.loads(gzip.decompress(p.read_bytes()).split(b"\n", 1)[0]) for p in (out_a, out_b))
    assert ha["body_sha256"] == hb["body_sha256"] and ha["summary"] == hb["summary"]


def test_spilled_outcomes_keep_ids_and_details_that_look_like_the_file_format() -> None:
    """Ids and details with tabs, newlines, quotes and non-ASCII text come back exactly, in order, whether held or
    spilled, and can be looked up by id."""
    from emailsync.stores.outcome import CompactOutcomes, Outcome

    outcomes = CompactOutcomes()
    weird = ['"quoted', "tab\there", "new\nline", "plain", "é\u2028", "x" * 300]
    expected = []
    for n in range(3 * len(weird)):
        aid = f"{weird[n % len(weird)]}-{n}"
        o = Outcome(["applied", "stale", "failed"][n % 3], None if n % 2 else f'detail\t{n}\n"é"', f"t{n % 4}", "k")
        outcomes.add(aid, o)
        expected.append((aid, o))
    assert outcomes._spilled > 0  # noqa: SLF001  # the point of the test: part of them is on disk
    assert list(outcomes.items()) == expected
    assert list(outcomes) == [aid for aid, _ in expected] and len(outcomes) == len(expected)
    assert outcomes[expected[4][0]] == expected[4][1] and expected[-1][0] in outcomes and "absent" not in outcomes
    assert list(outcomes.statuses().values()) == [o.status for _, o in expected]


@pytest.fixture(autouse=True)
def _small_spill_for_the_unit_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.name.startswith("test_spilled_outcomes"):
        monkeypatch.setattr(emailsync.stores.outcome, "SPILL_AFTER", 4)


def test_outcomes_added_in_runs_spill_and_read_back_exactly_as_added_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """add_run (a table written whole) and add give the same outcomes, spilled or not, whatever the ids hold: ids that
    must be quoted on disk (a leading quote, a tab, a newline) take the slow way, the rest are written at once."""
    from emailsync.stores.outcome import CompactOutcomes, Outcome

    monkeypatch.setattr(emailsync.stores.outcome, "SPILL_AFTER", 4)
    ids = [f"pg-{i:03d}" for i in range(11)] + ['"quoted', "tab\there", "new\nline", "", "pg-last"]
    one, runs = CompactOutcomes(), CompactOutcomes()
    for n, aid in enumerate(ids):
        one.add(aid, Outcome("applied", None, "public.t", "update" if n % 5 else "array-replace"))
    one.add("stale-1", Outcome("stale", "email changed since the plan", "public.t", "update"))
    # Runs of several ids across spill boundaries, each of one kind (the kind changes at every fifth id).
    for start, end in ((0, 1), (1, 5), (5, 6), (6, 10), (10, 11), (11, 15), (15, 16)):
        runs.add_run(ids[start:end], "applied", "public.t", "update" if start % 5 else "array-replace")
    runs.add("stale-1", Outcome("stale", "email changed since the plan", "public.t", "update"))
    assert list(runs.items()) == list(one.items())
    assert runs.tally() == one.tally()
    assert runs["new\nline"] == Outcome("applied", None, "public.t", "update")
    assert runs["stale-1"].detail == "email changed since the plan"

    whole = CompactOutcomes()
    whole.add_run([f"id-{i}" for i in range(10)], "applied", "public.big", "update")
    assert [aid for aid, _ in whole.items()] == [f"id-{i}" for i in range(10)]
    assert whole.tally() == {("applied", "public.big", "update"): 10}


def test_outcomes_written_in_blocks_give_the_same_report_and_journal_bytes_as_one_by_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The report, the journal's outcome events and its after records are made a block of alike outcomes at a time;
    whatever the ids and details hold, the bytes are those of rendering each outcome on its own."""
    from emailsync import archive
    from emailsync.engine.applier import ReportActions
    from emailsync.stores import outcome as outcome_module
    from emailsync.stores.outcome import CompactOutcomes, Outcome, TargetResult
    from emailsync.stores.postgres import journaling as pg_store

    monkeypatch.setattr(outcome_module, "SPILL_AFTER", 7)
    monkeypatch.setattr(pg_store, "BATCH", 5)
    results = []
    for target in ("core", 'we"ird\ttarget'):
        found = CompactOutcomes()
        found.add_run([f"pg-{target[:2]}{i}" for i in range(12)], "applied", "public.t", "update")
        found.add('quote"d', Outcome("applied", None, "public.t", "update"))
        found.add("back\\slash", Outcome("stale", 'email changed; it now holds "x"\n', "public.t", "update"))
        found.add_run(["ctl\x01", "é", "\u2028"], "applied", None, "array-replace")
        found.add("plain", Outcome("failed", "verification mismatch: a", "public.u", "delete-on-conflict"))
        found.add_run([f"id-{i}" for i in range(9)], "already-applied", "public.u", "update")
        results.append(TargetResult(target, found, None, True))
    actions = ReportActions(results)

    one_by_one = list(archive.outcome_texts(actions.records()))
    report = "".join(archive.report_chunks({"actions": actions, "run": 1}))
    assert ",\n    ".join(one_by_one) in report and report.count("\n    {") == len(one_by_one) == 2 * 27

    journal = tmp_path / "journal.jsonl"
    archive.journal_writer(journal)(
        archive.Rendered("\n".join(lines))
        for lines in archive.outcome_text_blocks(actions.blocks(), event=True)
        if lines
    )
    written = journal.read_text().split("\n")[:-1]  # not splitlines: an id may hold U+2028
    at = written[0][: written[0].index(", ") + 2]
    assert written == [at + t[1:] for t in archive.outcome_texts(actions.records(), event=True)]

    after = {"event": "write", "phase": "after"}
    for r in results:
        assert isinstance(r.outcomes, CompactOutcomes)
        blocked = list(pg_store.status_records(after, r.outcomes))
        single = list(pg_store.journal_records(after, ((a, s) for a, s, *_ in r.outcomes.records()), "outcomes"))
        assert blocked == single and len(blocked) == 6
    assert list(pg_store.status_records(after, CompactOutcomes())) == [{**after, "outcomes": {}}]
