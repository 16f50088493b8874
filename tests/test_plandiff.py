"""Plan diffs: two real plans (the real planner against real PostgreSQL or moto) compared action by action."""

from __future__ import annotations

import gzip
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import emailsync.engine.plandiff as plandiff
from emailsync.engine.plandiff import (
    ActionChange,
    FieldChange,
    PlanDiff,
    archive_diff,
    diff_plans,
    find_previous,
    render_json,
    render_markdown,
    render_text,
)
from emailsync.engine.planner import default_plan_path
from emailsync.errors import UserError
from emailsync.plan import Plan, dumps, loads, seal
from emailsync.planfile import read_header, read_plan, write_plan

EMP = "- table: public.employees\n  columns: [email, manager_email]\n"
T = "public.employees"


def _emp(db: Any, rows: list[tuple[Any, ...]]) -> None:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, manager_email text, name text NOT NULL)")
    for r in rows:
        db.execute("INSERT INTO employees VALUES (%s, %s, %s, %s)", r)


def _plan(ws: Any) -> tuple[Path, Plan]:
    r, path = ws.plan()
    assert r.code == 0, (r.out, r.err)
    return path, read_plan(path)


def _at(plan: Plan, created_at: str) -> Plan:
    """The same real plan as if made at another time (re-sealed: a valid plan with its own digest)."""
    body = plan.model_dump(mode="python")
    del body["digest"]
    return seal({**body, "created_at": created_at, "actions": list(plan.actions), "skipped": list(plan.skipped)})


def _archive(plans_dir: Path, plan: Plan) -> Path:
    """Write a plan where `emailsync plan` would: plans/<UTC time>-<digest12>/plan.jsonl.gz."""
    path = default_plan_path(plans_dir, plan)
    write_plan(plan, path)
    return path


def _action(plan: Plan, id_: str | None = None, **match: Any) -> Any:
    (a,) = [
        a for a in plan.actions if (id_ is None or a.id == id_) and all(getattr(a, k) == v for k, v in match.items())
    ]
    return a


# --- what changed between two plans --------------------------------------------------------------------------


@pytest.fixture
def two_plans(db: Any, ws: Any) -> tuple[Plan, Plan]:
    """p1, then a row added, a row changed and a mapping removed (and another added), then p2."""
    _emp(db, [(1, "a@old.com", "b@old.com", "A"), (2, "b@old.com", None, "B"), (3, "c@old.com", None, "C")])
    ws.postgres_targets({"core": db}, EMP)
    ws.mappings({"a@old.com": "a@new.com", "b@old.com": "b@new.com", "c@old.com": "c@new.com"})
    _, p1 = _plan(ws)
    db.execute("UPDATE employees SET manager_email = 'a@old.com' WHERE id = 1")  # row changed
    db.execute("INSERT INTO employees VALUES (4, 'd@old.com', NULL, 'D')")  # row added
    ws.mappings({"a@old.com": "a@new.com", "b@old.com": "b@new.com", "d@old.com": "d@new.com"})  # c removed
    _, p2 = _plan(ws)
    return p1, p2


def test_added_removed_and_changed_actions_with_field_paths(two_plans: tuple[Plan, Plan]) -> None:
    p1, p2 = two_plans
    d = diff_plans(p1, p2)

    (added,) = d.added
    assert added.id == _action(p2, key={"id": 4}).id
    assert (added.target, added.table, added.kind, added.key, added.column) == ("core", T, "update", {"id": 4}, "email")
    assert (added.old, added.new, added.store, added.step) == ("d@old.com", "d@new.com", "postgres", 1)

    (removed,) = d.removed
    assert removed.id == _action(p1, key={"id": 3}).id
    assert (removed.key, removed.column, removed.old, removed.new) == ({"id": 3}, "email", "c@old.com", "c@new.com")

    mgr_old = _action(p1, key={"id": 1}, column="manager_email")
    mgr_new = _action(p2, key={"id": 1}, column="manager_email")
    assert mgr_old.id == mgr_new.id  # same target, table, key, column and kind: the same action
    assert d.changed == [
        ActionChange(
            id=mgr_new.id,
            target="core",
            table=T,
            kind="update",
            key={"id": 1},
            column="manager_email",
            fields=[
                FieldChange(path="mappings[0]", old=mgr_old.mappings[0], new=mgr_new.mappings[0]),
                FieldChange(path="new", old="b@new.com", new="a@new.com"),
                FieldChange(path="old", old="b@old.com", new="a@old.com"),
            ],
        )
    ]
    assert mgr_old.mappings != mgr_new.mappings  # b's mapping before, a's now

    # Header: only the mappings file's content changed (same count, same targets, no warnings).
    assert d.header == [
        FieldChange(path="inputs.mappings_sha256", old=p1.inputs.mappings_sha256, new=p2.inputs.mappings_sha256)
    ]
    c = d.counts
    assert (c.old_actions, c.new_actions, c.added, c.removed, c.changed, c.unchanged) == (4, 4, 1, 1, 1, 2)
    assert [(r.target, r.table, r.kind, r.added, r.removed, r.changed) for r in d.by_table] == [
        ("core", T, "update", 1, 1, 1)
    ]
    assert (d.old_digest, d.new_digest) == (p1.digest, p2.digest)
    assert not d.is_empty

    text = render_text(d)
    assert "1 added, 1 removed, 1 changed, 2 unchanged" in text
    assert f"  + core {T} id=4 update: email: d@old.com → d@new.com" in text
    assert f"  - core {T} id=3 update: email: c@old.com → c@new.com" in text
    assert f"  ~ core {T} id=1 manager_email update" in text
    assert "      new: b@new.com → a@new.com" in text

    md = render_markdown(d)
    assert "| core | public.employees | update | 1 | 1 | 1 |" in md  # counts per target/table/kind
    assert "## Added (only in this plan)" in md and "| core | public.employees | id=4 | update | email: d@old.com" in md
    assert "## Removed (only in the previous plan)" in md and "| id=3 | update | email: c@old.com → c@new.com |" in md
    assert "| core | public.employees | id=1 | manager_email | update | mappings[0] |" in md
    assert "| | | | | | new | b@new.com | a@new.com |" in md
    assert "| inputs.mappings_sha256 |" in md
    assert "Truncated" not in md


def test_reverse_diff_swaps_added_and_removed(two_plans: tuple[Plan, Plan]) -> None:
    p1, p2 = two_plans
    fwd, back = diff_plans(p1, p2), diff_plans(p2, p1)
    assert back.added == fwd.removed and back.removed == fwd.added
    assert [(f.path, f.old, f.new) for f in back.changed[0].fields] == [
        (f.path, f.new, f.old) for f in fwd.changed[0].fields
    ]


def test_diff_json_round_trips_and_is_canonical(two_plans: tuple[Plan, Plan]) -> None:
    d = diff_plans(*two_plans)
    text = render_json(d)
    assert text == dumps(d.model_dump(mode="python"), indent=2) + "\n"
    again = PlanDiff.model_validate(loads(text))
    assert again == d and render_json(again) == text
    assert loads(text)["format"] == "emailsync.plandiff/v1"
    assert {"digest", "created_at", "tool_version"}.isdisjoint(f["path"] for f in loads(text)["header"])


def test_identical_data_replanned_is_an_empty_diff(db: Any, ws: Any) -> None:
    _emp(db, [(1, "a@old.com", "b@old.com", "A"), (2, "b@old.com", None, "B")])
    ws.postgres_targets({"core": db}, EMP)
    ws.mappings({"a@old.com": "a@new.com", "b@old.com": "b@new.com"})
    _, p1 = _plan(ws)
    _, p2 = _plan(ws)
    p2 = _at(p2, "2099-01-01T00:00:00Z")  # a later re-plan: another digest and time, the same content
    assert p1.digest != p2.digest
    assert [a.id for a in p1.actions] == [a.id for a in p2.actions]  # ids are stable across re-plans
    d = diff_plans(p1, p2)
    assert d.is_empty
    assert (d.added, d.removed, d.changed, d.header, d.skipped_added, d.skipped_removed) == ([], [], [], [], [], [])
    assert d.counts.unchanged == len(p1.actions) == 3
    assert "no differences" in render_text(d)
    md = render_markdown(d)
    assert "**No differences.**" in md and p1.digest in md and p2.digest in md


def test_target_fingerprints_and_warnings_are_header_differences(make_db: Any, ws: Any) -> None:
    one, two = make_db(), make_db()
    for d in (one, two):
        _emp(d, [(1, "a@old.com", None, "A")])
    ws.postgres_targets({"core": one}, EMP)
    ws.mappings({"a@old.com": "a@new.com"})
    _, p1 = _plan(ws)
    ws.postgres_targets({"core": two}, EMP, match="casefold")
    _, p2 = _plan(ws)
    d = diff_plans(p1, p2)
    paths = {f.path: (f.old, f.new) for f in d.header}
    assert paths["targets.core.database"] == (one.name, two.name)
    assert paths["inputs.match"] == ("exact", "casefold")
    assert paths["inputs.targets_sha256"] == (p1.inputs.targets_sha256, p2.inputs.targets_sha256)
    assert set(paths) == {"targets.core.database", "inputs.match", "inputs.targets_sha256"}
    assert not d.is_empty and d.counts.unchanged == 1  # same row in another database: the same action id

    # Warnings compare as a set of messages: order does not matter, one gone and one new do.
    d = diff_plans(p2.model_copy(update={"warnings": ["w2", "w0"]}), p2.model_copy(update={"warnings": ["w1", "w2"]}))
    assert d.header == [
        FieldChange(path="warnings", old="w0", change="removed"),
        FieldChange(path="warnings", new="w1", change="added"),
    ]
    assert not d.added and not d.removed and not d.changed and not d.is_empty
    md = render_markdown(d)
    assert "| warnings | w0 | (none) |" in md and "| warnings | (none) | w1 |" in md
    assert "  warnings: − w0\n  warnings: + w1\n" in render_text(d)


def test_skipped_changes_appear_and_disappear(db: Any, ws: Any) -> None:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'old@x.com'), (2, 'new@x.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n  on_conflict: skip\n")
    ws.mappings({"old@x.com": "new@x.com"})
    _, p1 = _plan(ws)
    db.execute("DELETE FROM employees WHERE id = 2")  # the conflict is gone: the change is planned now
    _, p2 = _plan(ws)
    assert p1.skipped and not p1.actions and p2.actions and not p2.skipped
    d = diff_plans(p1, p2)
    assert d.skipped_removed == list(p1.skipped) and len(p1.skipped) == 1 and d.skipped_added == []
    assert [(a.key, a.old, a.new) for a in d.added] == [({"id": 1}, "old@x.com", "new@x.com")]
    assert (d.counts.skipped_removed, d.counts.skipped_added) == (1, 0)
    md = render_markdown(d)
    assert "## No longer skipped" in md and "| core | public.employees | id=1 | email | old@x.com → new@x.com |" in md
    back = diff_plans(p2, p1)
    assert back.skipped_added == list(p1.skipped) and len(back.removed) == 1
    assert "newly skipped:\n  + core public.employees id=1 email: old@x.com → new@x.com (" in render_text(back)


# --- exact numbers ------------------------------------------------------------------------------------------

BIG = "12345678901234567890.0123456789"
BIG2 = "12345678901234567890.0123456790"


def test_decimals_stay_exact_in_fields_and_json(db: Any, ws: Any) -> None:
    """A delete carries the whole row: a change in the 10th decimal place, and in scale alone, are differences."""
    db.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text UNIQUE, balance numeric(30,10))")
    db.execute(f"INSERT INTO accounts VALUES (1, 'a@old.com', {BIG}), (2, 'b@new.com', 1.5)")
    ws.postgres_targets({"core": db}, "- table: public.accounts\n  columns: [email]\n")
    ws.mappings({"a@old.com": "b@new.com"})
    _, p1 = _plan(ws)
    db.execute("UPDATE accounts SET balance = balance + 0.0000000001 WHERE id = 1")
    _, p2 = _plan(ws)
    db.execute("ALTER TABLE accounts ALTER COLUMN balance TYPE numeric(40,12)")
    _, p3 = _plan(ws)

    d = diff_plans(p1, p2)
    (ch,) = d.changed
    assert ch.kind == "delete-on-conflict" and ch.key == {"id": 1}
    assert ch.fields == [FieldChange(path="row.balance", old=Decimal(BIG), new=Decimal(BIG2))]
    assert str(ch.fields[0].old) == BIG and str(ch.fields[0].new) == BIG2
    text = render_json(d)
    assert f'"old": {BIG},' in text and f'"new": {BIG2},' in text  # bare, exact numbers, never floats
    back = PlanDiff.model_validate(loads(text))
    assert str(back.changed[0].fields[0].new) == BIG2
    assert f"| row.balance | {BIG} | {BIG2} |" in render_markdown(d)

    # Only the scale changed: equal as Python numbers, but not the same plan (apply compares the rendering).
    (ch,) = diff_plans(p2, p3).changed
    (f,) = ch.fields
    assert (f.path, str(f.old), str(f.new)) == ("row.balance", BIG2, BIG2 + "00")
    assert f"{BIG2}00" in render_json(diff_plans(p2, p3))


# --- DynamoDB -----------------------------------------------------------------------------------------------


def test_dynamodb_move_changes_show_attribute_paths(ddb: Any, ws: Any) -> None:
    ddb.create("users", "email")
    ddb.put("users", {"email": "a@x.com", "name": "Ann", "n": Decimal("1.50")})
    ws.targets(
        "version: 1\nmappings: email_mappings.json\ndynamodb:\n  - name: hr\n    region: us-east-1\n"
        "    endpoint_url: ${DYNAMODB_ENDPOINT}\n    tables:\n      - table: users\n        attributes: [email]\n"
    )
    ws.mappings({"a@x.com": "b@x.com"})
    _, p1 = _plan(ws)
    ddb.put("users", {"email": "c@x.com", "name": "Cat"})
    ws.mappings({"a@x.com": "c@x.com"})  # now moves onto an existing item: merged
    _, p2 = _plan(ws)
    d = diff_plans(p1, p2)
    (ch,) = d.changed
    assert ch.kind == "merge-and-move" and ch.key == {"email": {"S": "a@x.com"}} and ch.column is None
    by_path = {f.path: (f.old, f.new, f.change) for f in ch.fields}
    assert by_path["changes[0].new.S"] == ("b@x.com", "c@x.com", "changed")
    assert by_path["new_key.email.S"] == ("b@x.com", "c@x.com", "changed")
    assert by_path["existing"] == (None, {"email": {"S": "c@x.com"}, "name": {"S": "Cat"}}, "changed")
    assert by_path["merged.name.S"] == ("Ann", "Cat", "changed")  # the existing item's attributes win
    assert by_path["merged.email.S"] == ("b@x.com", "c@x.com", "changed")
    assert "merged.n.N" not in by_path  # "1.5" both times: not a difference
    assert "~ hr users email=a@x.com merge-and-move" in render_text(d)
    assert "      changes[0].new.S: b@x.com → c@x.com" in render_text(d)


# --- the archive: which plan is the previous one ------------------------------------------------------------


@pytest.fixture
def base(db: Any, make_db: Any, ws: Any) -> tuple[Plan, Plan]:
    """A real plan for target `core` (db), and a real plan for the same name on another database."""
    _emp(db, [(1, "a@old.com", None, "A")])
    ws.postgres_targets({"core": db}, EMP)
    ws.mappings({"a@old.com": "a@new.com"})
    _, p = _plan(ws)
    other = make_db()
    _emp(other, [(1, "a@old.com", None, "A")])
    ws.postgres_targets({"core": other}, EMP)
    _, q = _plan(ws)
    assert p.targets != q.targets
    return p, q


def test_find_previous_picks_latest_earlier_plan_for_the_same_targets(base: tuple[Plan, Plan], tmp_path: Path) -> None:
    p, q = base
    plans = tmp_path / "archive"
    a10 = _archive(plans, _at(p, "2030-01-01T10:00:00Z"))
    manual = plans / "manual" / "plan.jsonl.gz"  # a folder not named by time (from --out): still considered
    write_plan(_at(p, "2030-01-01T10:30:00Z"), manual)
    a11 = _archive(plans, _at(p, "2030-01-01T11:00:00Z"))
    _archive(plans, _at(q, "2030-01-01T11:30:00Z"))  # other targets: never a previous plan of p
    corrupt = plans / "20300101T114500Z-000000000000" / "plan.jsonl.gz"
    corrupt.parent.mkdir()
    corrupt.write_text("{not json")
    tampered = _archive(plans, _at(p, "2030-01-01T11:50:00Z"))
    # An action's line edited inside the gzip: the header still reads, the body's sha256 no longer matches.
    tampered.write_bytes(gzip.compress(gzip.decompress(tampered.read_bytes()).replace(b"a@new.com", b"evil@new.com")))
    assert read_header(tampered) is not None
    with pytest.raises(UserError, match="digest mismatch"):
        read_plan(tampered)
    (plans / "20300101T115500Z-111111111111").mkdir()  # a folder without a plan
    (plans / "20300101T115800Z-notes.txt").write_text("not a folder")
    p12 = _at(p, "2030-01-01T12:00:00Z")
    a12 = _archive(plans, p12)
    a13 = _archive(plans, _at(p, "2030-01-01T13:00:00Z"))  # later: never previous

    assert find_previous(plans, p12, exclude=a12) == a11
    assert find_previous(plans, p12) == a11  # itself (same digest) is not its own previous plan
    assert find_previous(plans, _at(p, "2030-01-01T11:10:00Z")) == a11
    assert find_previous(plans, _at(p, "2030-01-01T11:00:00Z"), exclude=a11) == manual
    assert find_previous(plans, _at(p, "2030-01-01T10:45:00Z")) == manual
    assert find_previous(plans, _at(p, "2030-01-01T10:00:00Z"), exclude=a10) is None
    assert find_previous(plans, _at(p, "2031-01-01T00:00:00Z")) == a13
    q12 = _at(q, "2030-01-01T12:00:00Z")
    assert find_previous(plans, q12) == default_plan_path(plans, _at(q, "2030-01-01T11:30:00Z"))
    assert find_previous(plans, _at(q, "2030-01-01T11:00:00Z")) is None
    assert find_previous(tmp_path / "missing", p12) is None


def test_find_previous_with_equal_timestamps_uses_the_order_plans_were_written(
    db: Any, ws: Any, base: tuple[Plan, Plan], tmp_path: Path
) -> None:
    """Two plans in the same second: the same folder stamp, names differing only by digest."""
    p, _ = base
    db.execute("INSERT INTO employees VALUES (2, 'b@old.com', 'a@old.com', 'B')")
    ws.postgres_targets({"core": db}, EMP)  # back to p's database (the fixture last planned another one)
    _, other = _plan(ws)
    when = "2030-01-01T12:00:00Z"
    x, y = _at(p, when), _at(other, when)
    assert x.digest != y.digest and x.targets == y.targets
    plans = tmp_path / "archive"
    xp, yp = _archive(plans, x), _archive(plans, y)
    assert xp.parent.name[:16] == yp.parent.name[:16]
    t = 1_900_000_000 * 10**9
    os.utime(xp, ns=(t, t))
    os.utime(yp, ns=(t + 10**9, t + 10**9))  # x written first
    assert find_previous(plans, y, exclude=yp) == xp
    assert find_previous(plans, x, exclude=xp) is None
    os.utime(xp, ns=(t + 2 * 10**9, t + 2 * 10**9))  # now x was written after y
    assert find_previous(plans, x, exclude=xp) == yp
    assert find_previous(plans, y, exclude=yp) is None
    # Not yet on disk: every plan already in the archive is earlier; the latest written wins.
    z = _at(p, when).model_copy(update={"digest": "sha256:" + "f" * 64})
    assert find_previous(plans, z) == xp


def test_find_previous_reads_only_the_plan_it_returns(
    base: tuple[Plan, Plan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hundreds of folders: later ones are skipped by name, others' headers peeked, one plan read whole."""
    p, q = base
    plans = tmp_path / "archive"
    for i in range(300):
        day = f"2030-01-{1 + i // 24:02d}T{i % 24:02d}:00:00Z"
        _archive(plans, _at(p if i % 3 else q, day))
    subject = _at(p, "2030-01-08T06:30:00Z")  # 150 plans earlier, 150 later; 06:00 that day is q's
    reads: list[Path] = []
    real = plandiff.read_plan

    def counting(path: Path) -> Plan:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(plandiff, "read_plan", counting)
    found = find_previous(plans, subject)
    assert found == default_plan_path(plans, _at(p, "2030-01-08T05:00:00Z"))
    assert reads == [found]


# --- archive_diff: diff.md and diff.json beside the new plan ------------------------------------------------


def test_archive_diff_writes_both_files_beside_the_plan(two_plans: tuple[Plan, Plan], tmp_path: Path) -> None:
    p1, p2 = two_plans
    p1, p2 = _at(p1, "2030-01-01T10:00:00Z"), _at(p2, "2030-01-01T11:00:00Z")
    plans = tmp_path / "archive"
    first = _archive(plans, p1)
    assert archive_diff(first, p1, plans) is None  # nothing earlier: nothing written
    assert sorted(f.name for f in first.parent.iterdir()) == ["plan.jsonl.gz"]

    second = _archive(plans, p2)
    result = archive_diff(second, p2, plans)
    assert result == (first, second.with_name("diff.md"), second.with_name("diff.json"))
    _, md_path, json_path = result
    assert sorted(f.name for f in second.parent.iterdir()) == ["diff.json", "diff.md", "plan.jsonl.gz"]  # no .tmp

    saved = PlanDiff.model_validate(loads(json_path.read_text(encoding="utf-8")))
    rel = f"../{first.parent.name}/plan.jsonl.gz"
    assert saved == diff_plans(p1, p2).model_copy(update={"old_plan": rel, "new_plan": "plan.jsonl.gz"})
    assert json_path.read_text(encoding="utf-8") == render_json(saved)
    assert (saved.counts.added, saved.counts.removed, saved.counts.changed) == (1, 1, 1)
    assert (second.parent / saved.old_plan).resolve() == first.resolve()

    md = md_path.read_text(encoding="utf-8")
    assert md == render_markdown(saved)
    assert f"- previous plan: [`{first.parent.name}`]({rel}), digest `{p1.digest}`" in md
    assert f"- this plan: digest `{p2.digest}`" in md
    assert "| core | public.employees | id=4 | update | email: d@old.com → d@new.com |" in md
    assert f"plan diff: {p1.digest} (2030-01-01T10:00:00Z) {rel} → {p2.digest}" in render_text(saved)


def test_archive_diff_for_a_plan_outside_the_archive_names_files_after_it(
    two_plans: tuple[Plan, Plan], tmp_path: Path
) -> None:
    p1, p2 = two_plans
    plans = tmp_path / "archive"
    first = _archive(plans, _at(p1, "2030-01-01T10:00:00Z"))
    mine = tmp_path / "elsewhere" / "rebrand.jsonl.gz"
    p2 = _at(p2, "2030-01-01T11:00:00Z")
    write_plan(p2, mine)
    prev, md, js = archive_diff(mine, p2, plans) or (None, None, None)
    assert (prev, md, js) == (first, mine.with_name("rebrand.diff.md"), mine.with_name("rebrand.diff.json"))
    assert loads(js.read_text())["old_plan"] == f"../archive/{first.parent.name}/plan.jsonl.gz"
    assert first.parent.name in md.read_text()


# --- the Markdown stays under a pull request comment's limit ------------------------------------------------


def test_markdown_is_capped_and_says_what_it_left_out(db: Any, ws: Any) -> None:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees SELECT g, 'user' || g || '@oldco.com' FROM generate_series(1, 3000) g")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({f"user{i}@oldco.com": f"user{i}@newco.com" for i in range(1, 1501)})
    _, p1 = _plan(ws)
    ws.mappings({f"user{i}@oldco.com": f"user{i}@{'newerco' if i <= 1500 else 'newco'}.com" for i in range(1, 3001)})
    _, p2 = _plan(ws)
    d = diff_plans(p1, p2)
    assert (len(d.added), len(d.changed), len(d.removed)) == (1500, 1500, 0)
    assert {(f.path, f.old.split("@")[1], f.new.split("@")[1]) for c in d.changed for f in c.fields} == {
        ("new", "newco.com", "newerco.com")
    }

    md = render_markdown(d)
    assert 50_000 < len(md) < 60_000
    assert "| core | public.employees | update | 1500 | 0 | 1500 |" in md
    shown_added = len(re.findall(r"^\| core \| public\.employees \| id=\d+ \| update \| email: ", md, re.M))
    shown_changed = len(re.findall(r"^\| core \| public\.employees \| id=\d+ \| email \| update \| new \|", md, re.M))
    assert 100 < shown_added < 1500 and 100 < shown_changed < 1500  # both sections get a share
    m = re.search(r"\*\*Truncated:\*\* (\d+) entries left out .*\((\d+) added, (\d+) changed\)", md)
    assert m, md[-1000:]
    assert int(m[2]) == 1500 - shown_added and int(m[3]) == 1500 - shown_changed
    assert int(m[1]) == int(m[2]) + int(m[3])
    assert "diff.json beside this file has every difference" in md
    assert len(loads(render_json(d))["added"]) == 1500  # the JSON is never cut

    text = render_text(d)
    assert "… 1400 more (diff.json has them all)" in text
