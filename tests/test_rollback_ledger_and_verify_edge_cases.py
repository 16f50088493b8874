"""The audit trail on harder cases: rollback round trips on harder estates, ledger and locks, verify, replan-check,
and error handling (real PostgreSQL, moto DynamoDB, the CLI in-process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import DDB_ONLY, MIXED_TARGETS, assert_user_error, hook_dynamodb, mixed_estate
from helpers import apply_confirmed as _apply
from helpers import raw_items as _raw_items
from helpers import rollback_plan as _rollback
from helpers import table_dump as _dump

import emailsync.archive


def _plan(ws: Any) -> Path:
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    return plan


def _pg(ws: Any, db: Any, tables: str, mappings: Any) -> Path:
    ws.postgres_targets({"core": db}, tables)
    ws.mappings(mappings)
    return _plan(ws)


def _round_trip(ws: Any, plan: Path, snapshot: Any) -> Path:
    """Apply, roll back, apply the rollback: the stores must be exactly as before, and verify of the original
    plan must find every action in its before state."""
    before = snapshot()
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert snapshot() != before
    rb = _rollback(ws, plan)
    r = _apply(ws, rb)
    assert r.code == 0, r.out + r.err
    assert snapshot() == before
    r = ws.run("verify", str(plan), "--format", "json")
    n = len(ws.plan_json(plan)["actions"])
    assert json.loads(r.out)["counts"] == {"after": 0, "before": n, "drifted": 0}, r.out
    r = ws.run("verify", str(rb))
    assert r.code == 0, r.out + r.err
    r = _apply(ws, rb, "--force")  # the rollback applied twice: nothing changes
    assert r.code == 0, r.out + r.err
    assert snapshot() == before
    return rb


# -- rollback: PostgreSQL ------------------------------------------------------------------------------------------


def test_rollback_email_key_with_a_generated_column_derived_from_the_email(ws, db):
    """A table keyed by email with a generated column computed from it (email_domain). The rollback's
    image of the row after the apply must hold what PostgreSQL computed, or the revert is stale and the
    rollback can never be applied. Expected: a clean round trip."""
    db.execute(
        "CREATE TABLE accounts (email text PRIMARY KEY, "
        "domain text GENERATED ALWAYS AS (split_part(email, '@', 2)) STORED, tier text)"
    )
    db.execute("INSERT INTO accounts (email, tier) VALUES ('a@old.com', 'gold'), ('z@x.com', 'free')")
    plan = _pg(ws, db, "- {table: accounts, columns: [email]}", {"a@old.com": "a@new.com"})
    _round_trip(ws, plan, lambda: _dump(db, "accounts"))


def test_rollback_after_a_partial_apply_and_an_aborted_rerun(ws, db):
    """Run 1 (--on-stale skip) applies row 1; row 2 is stale. Run 2 (default abort) finds row 2 still stale
    and writes nothing, reporting row 1 as `not-applied` in that run. Row 1 is still changed in the database,
    so the rollback must still undo it: a later run that wrote nothing must not erase the record of an
    earlier run's writes."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@old.com'), (2, 'b@old.com')")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@old.com": "a@new.com", "b@old.com": "b@new.com"})
    db.execute("UPDATE employees SET email = 'other@x.com' WHERE id = 2")
    assert _apply(ws, plan, "--on-stale", "skip").code == 3
    assert _apply(ws, plan).code == 3  # still stale: nothing written this time
    assert db.rows("SELECT email FROM employees ORDER BY id") == [("a@new.com",), ("other@x.com",)]
    r = ws.run("rollback", str(plan.parent))
    assert r.code == 0, r.out + r.err
    rb = Path(r.out.split("Plan: ")[1].split()[0])
    assert _apply(ws, rb).code == 0
    assert db.rows("SELECT email FROM employees ORDER BY id") == [("a@old.com",), ("other@x.com",)]


def test_rollback_after_an_interrupt_between_commit_and_journal(ws, db):
    """Ctrl-C right after the PostgreSQL transaction committed but before its `after` journal line: the
    changes are in the database (the ledger says complete), so the rollback must count them as (maybe)
    applied, as recorded_outcomes promises for a killed run, instead of saying nothing was applied."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@old.com')")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@old.com": "a@new.com"})
    real = emailsync.archive.journal_writer

    def killed_after_commit(path: Path) -> Any:
        write = real(path)

        def w(entry: Any) -> None:
            entries = [entry] if isinstance(entry, dict) else list(entry)  # several records come as an iterable
            if any(e.get("event") == "write" and e.get("phase") == "after" for e in entries):
                raise KeyboardInterrupt
            write(entries)

        return w

    ws.monkeypatch.setattr(emailsync.archive, "journal_writer", killed_after_commit)
    r = _apply(ws, plan)
    assert r.code != 0
    ws.monkeypatch.setattr(emailsync.archive, "journal_writer", real)
    assert db.rows("SELECT email FROM employees") == [("a@new.com",)]  # committed
    rb = _rollback(ws, plan)
    assert _apply(ws, rb).code == 0
    assert db.rows("SELECT email FROM employees") == [("a@old.com",)]


# -- ledger and lock ------------------------------------------------------------------------------------------------


def test_two_postgres_targets_in_one_database_lock_each_other_out(ws, db):
    """Two targets in targets.yaml may name the same database (for example one per schema or team). The
    advisory lock is per database, so the apply's second connection must not find the lock held by its own
    first connection and refuse: expected, the plan applies."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("CREATE TABLE contacts (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@old.com')")
    db.execute("INSERT INTO contacts VALUES (1, 'a@old.com')")
    ws.monkeypatch.setenv("CORE_DSN", db.dsn)
    ws.targets(
        "version: 1\nmappings: email_mappings.json\npostgres:\n"
        "  - name: hr\n    dsn: ${CORE_DSN}\n    tables:\n      - {table: employees, columns: [email]}\n"
        "  - name: crm\n    dsn: ${CORE_DSN}\n    tables:\n      - {table: contacts, columns: [email]}\n"
    )
    ws.mappings({"a@old.com": "a@new.com"})
    plan = _plan(ws)
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT email FROM employees UNION ALL SELECT email FROM contacts") == [("a@new.com",)] * 2


# -- rollback: DynamoDB ---------------------------------------------------------------------------------------------


def _ddb(ws: Any, tables: str, mappings: Any) -> Path:
    ws.targets(DDB_ONLY.format(tables=tables))
    ws.mappings(mappings, name="m.json")
    return _plan(ws)


def test_rollback_of_a_merge_into_an_item_that_has_its_own_update(ws, ddb):
    """a@old moves into the existing a@new, whose `backup` attribute is itself updated (b@old -> b@new) in
    step 0. The rollback restores a@new to the updated item, then reverts the update; the revert's
    read-back must compare with the item as the restore left it, not as the preflight found it. Expected:
    exit 0 and the items exactly as before."""
    ddb.create("profiles", "email")
    ddb.put("profiles", {"email": "a@old.com", "name": "A"}, {"email": "a@new.com", "backup": "b@old.com", "floor": 3})
    plan = _ddb(
        ws,
        "      - table: profiles\n        attributes: [email, backup]\n",
        {"a@old.com": "a@new.com", "b@old.com": "b@new.com"},
    )
    _round_trip(ws, plan, lambda: _raw_items(ddb, "profiles"))


def test_rerun_of_that_rollback_finds_it_already_applied(ws, ddb):
    """The same estate: once the rollback has put the items back, applying the rollback plan again (--force)
    must change nothing and report everything already applied (exit 0). The move back must recognise a@new
    holding the pre-merge item with the rollback's own later revert of its update already made."""
    ddb.create("profiles", "email")
    ddb.put("profiles", {"email": "a@old.com", "name": "A"}, {"email": "a@new.com", "backup": "b@old.com", "floor": 3})
    plan = _ddb(
        ws,
        "      - table: profiles\n        attributes: [email, backup]\n",
        {"a@old.com": "a@new.com", "b@old.com": "b@new.com"},
    )
    before = _raw_items(ddb, "profiles")
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    _apply(ws, rb)
    assert _raw_items(ddb, "profiles") == before  # the items are back (whatever the first run's exit code)
    r = _apply(ws, rb, "--force")
    assert r.code == 0, r.out + r.err
    assert _raw_items(ddb, "profiles") == before


# -- rollback round trips expected to work (probes) ---------------------------------------------------------------


def test_rollback_round_trip_email_key_chain_and_delete_then_move_into_the_freed_value(ws, db):
    """settings keyed by email with a chain (a->b, b->c); employees where x@o is deleted (its new value w@o is
    held by another row) and y@o then moves into x@o: the rollback must revert the move before re-inserting."""
    db.execute("CREATE TABLE settings (email text PRIMARY KEY, theme text)")
    db.execute("INSERT INTO settings VALUES ('a@o.com', 'dark'), ('b@o.com', 'light'), ('z@o.com', 'blue')")
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, name text)")
    db.execute("INSERT INTO employees VALUES (1, 'x@o.com', 'X'), (2, 'w@o.com', 'W'), (3, 'y@o.com', 'Y')")
    plan = _pg(
        ws,
        db,
        "- {table: settings, columns: [email]}\n- {table: employees, columns: [email], on_conflict: delete}",
        {"a@o.com": "b@o.com", "b@o.com": "c@o.com", "x@o.com": "w@o.com", "y@o.com": "x@o.com"},
    )
    kinds = sorted(a["kind"] for a in ws.plan_json(plan)["actions"])
    assert "delete-on-conflict" in kinds
    _round_trip(ws, plan, lambda: _dump(db, "settings", "employees"))


def test_rollback_round_trip_identity_generated_composite_array_jsonb(ws, db):
    """Identity (GENERATED ALWAYS) and generated columns on a row deleted on conflict; a composite key; a row
    updated in three columns (text, text[] array-replace, jsonb)."""
    db.execute(
        "CREATE TABLE people (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text UNIQUE, name text, "
        "shout text GENERATED ALWAYS AS (upper(name)) STORED, amount numeric(10,3), born date)"
    )
    db.execute(
        "INSERT INTO people (email, name, amount, born) VALUES ('a@o.com', 'a', 1.250, '2001-02-03'), "
        "('a@n.com', 'a2', 2, NULL), ('k@o.com', 'k', 3, NULL)"
    )
    db.execute("CREATE TABLE members (org text, seat int, email text, cc text[], prefs jsonb, PRIMARY KEY (org, seat))")
    db.execute(
        "INSERT INTO members VALUES ('acme', 1, 'a@o.com', ARRAY['q@o.com', 'a@o.com', 'b@o.com'], "
        '\'{"notify": ["a@o.com", 1.50], "x": {"y": "b@o.com"}}\'), (\'acme\', 2, \'z@z.com\', NULL, NULL)'
    )
    plan = _pg(
        ws,
        db,
        "- {table: people, columns: [email]}\n- {table: members, columns: [email, cc, prefs]}",
        {"a@o.com": "a@n.com", "b@o.com": "b@n.com"},
    )
    kinds = {(a["table"], a["kind"]) for a in ws.plan_json(plan)["actions"]}
    assert {("public.people", "delete-on-conflict"), ("public.members", "array-replace")} <= kinds
    _round_trip(ws, plan, lambda: _dump(db, "people", "members"))


def test_rollback_round_trip_foreign_keys(ws, db):
    """A parent keyed by email with an ON UPDATE CASCADE child (not configured), and a NO ACTION child that is
    configured: parent and children move back together."""
    db.execute("CREATE TABLE users (email text PRIMARY KEY, name text)")
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, email text REFERENCES users ON UPDATE CASCADE)")
    db.execute("CREATE TABLE notes (id int PRIMARY KEY, email text REFERENCES users)")
    db.execute("INSERT INTO users VALUES ('a@o.com', 'A'), ('k@o.com', 'K')")
    db.execute("INSERT INTO orders VALUES (1, 'a@o.com'), (2, 'a@o.com'), (3, 'k@o.com')")
    db.execute("INSERT INTO notes VALUES (1, 'a@o.com')")
    plan = _pg(
        ws,
        db,
        "- {table: users, columns: [email]}\n- {table: notes, columns: [email]}",
        {"a@o.com": "a@n.com"},
    )
    _round_trip(ws, plan, lambda: _dump(db, "users", "orders", "notes"))


def test_rollback_round_trip_dynamodb_chain_merges_and_nested(ws, ddb):
    """A chain of moves (a->b, b->c), two merges into one new key (m1, m2 -> m), a merge into an existing
    item, a nested attribute update, a string-set array-replace, all in one table keyed by email, and a
    table keyed by id with a nested path."""
    ddb.create("profiles", "email")
    ddb.put(
        "profiles",
        {"email": "a@o.com", "name": "A"},
        {"email": "b@o.com", "name": "B", "tags": {"t"}},
        {"email": "m1@o.com", "one": 1},
        {"email": "m2@o.com", "two": 2, "one": 9},
        {"email": "e@o.com", "from": "e"},
        {"email": "e@n.com", "there": True},
        {"email": "s@o.com", "cc": {"a@o.com", "x@x.com"}},
    )
    ddb.create("people", "id")
    ddb.put("people", {"id": "p1", "profile": {"contact": "a@o.com", "n": 1}, "list": ["b@o.com", "a@o.com"]})
    plan = _ddb(
        ws,
        "      - table: profiles\n        attributes: [email, cc]\n"
        "      - table: people\n        attributes: [profile.contact, list]\n",
        {
            "a@o.com": "b@o.com",
            "b@o.com": "c@o.com",
            "m1@o.com": "m@n.com",
            "m2@o.com": "m@n.com",
            "e@o.com": "e@n.com",
        },
    )
    _round_trip(ws, plan, lambda: [_raw_items(ddb, "profiles"), _raw_items(ddb, "people")])


def test_rollback_of_live_swaps_needs_confirm_live(ws, ddb):
    """A rollback of live swaps restores the login table, and, like any live change, only with --confirm-live."""
    ddb.create("logins", "email", "clientId")
    ddb.put(
        "logins",
        {"email": "a@o.com", "clientId": "1", "pwd": "h1"},
        {"email": "a@n.com", "clientId": "1", "pwd": "h0", "mfa": True},
        {"email": "b@o.com", "clientId": "1", "pwd": "h2"},
    )
    plan = _ddb(
        ws,
        "      - table: logins\n        live: true\n        attributes: [email]\n",
        {"a@o.com": "a@n.com", "b@o.com": "b@n.com"},
    )
    before = _raw_items(ddb, "logins")
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    after = _raw_items(ddb, "logins")
    assert_user_error(ws.run("apply", str(rb), "--auto-approve"), "--confirm-live")
    assert _raw_items(ddb, "logins") == after
    r = _apply(ws, rb)
    assert r.code == 0, r.out + r.err
    assert _raw_items(ddb, "logins") == before


# -- ledger, lock, replay ------------------------------------------------------------------------------------------


def _mixed(ws: Any, db: Any, ddb: Any, ledger: str = "emailsync-ledger") -> Path:
    return mixed_estate(ws, db, ddb, ledger)


def _state(db: Any, ddb: Any) -> Any:
    return _dump(db, "employees"), _raw_items(ddb, "profiles"), _raw_items(ddb, "logins")


def test_only_target_and_skip_live_runs_then_the_rest_then_replay_refused(ws, db, ddb):
    """--only-target core, then --skip-live, then the live rest: each run goes on; the next run is a replay
    and is refused naming every target, who and when; nothing is written by the refusal."""
    plan = _mixed(ws, db, ddb)
    r = _apply(ws, plan, "--only-target", "core", "--approver", "Ann")
    assert r.code == 0, r.out + r.err
    r = _apply(ws, plan, "--skip-live")
    assert r.code == 0, r.out + r.err
    assert [i["email"] for i in ddb.items("logins")] == ["a@o.com"]
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert [i["email"] for i in ddb.items("logins")] == ["a@n.com"]
    state = _state(db, ddb)
    journals = sorted(plan.parent.glob("apply-*.jsonl"))
    r = _apply(ws, plan)
    msg = assert_user_error(r, "already been applied completely", "core: complete on", "auth: complete on", "Ann")
    assert "--force" in msg
    assert _state(db, ddb) == state and sorted(plan.parent.glob("apply-*.jsonl")) == journals
    assert [i for i in ddb.items("emailsync-ledger") if i["pk"] == "lock"] == []


def test_dynamodb_lock_held_by_a_live_process_on_this_host_is_refused(ws, db, ddb):
    """A lock item whose holder (same host) is alive is never taken over."""
    import os
    import socket

    plan = _mixed(ws, db, ddb)
    assert _apply(ws, plan, "--only-target", "core").code == 0  # creates nothing in DynamoDB
    ddb.create("emailsync-ledger", "pk", "sk")
    ddb.put(
        "emailsync-ledger",
        {
            "pk": "lock",
            "sk": "auth",
            "lock_id": "LIVE1",
            "user": "me",
            "host": socket.gethostname(),
            "pid": os.getppid(),
            "run_id": "r9",
            "acquired_at": "2026-11-24T10:00:00Z",
        },
    )
    state = _state(db, ddb)
    assert_user_error(_apply(ws, plan), "'auth' is locked", "LIVE1")
    assert _state(db, ddb) == state
    assert [i["lock_id"] for i in ddb.items("emailsync-ledger") if i["pk"] == "lock"] == ["LIVE1"]


def test_postgres_ledger_is_not_complete_when_verification_rolls_back(ws, db):
    """A trigger changes another column on update: the read-back differs, the transaction rolls back, and the
    ledger must not say complete (a rerun is then not refused as a replay)."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text, touched int DEFAULT 0)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com', 0)")
    db.execute(
        "CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN NEW.touched := OLD.touched + 1; RETURN NEW; END$$"
    )
    db.execute("CREATE TRIGGER t BEFORE UPDATE ON employees FOR EACH ROW EXECUTE FUNCTION bump()")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com"})
    r = _apply(ws, plan)
    assert r.code == 3
    assert db.rows("SELECT email, touched FROM employees") == [("a@o.com", 0)]
    assert [s for (s,) in db.rows("SELECT status FROM emailsync.ledger")] == ["failed"]
    r = _apply(ws, plan)
    assert r.code == 3 and "already been applied" not in r.err


# -- verify, diff, replan-check --------------------------------------------------------------------------------------


def test_verify_half_done_live_swap_and_drift_in_json(ws, db, ddb):
    """A swap stopped between its write and its delete is drifted (half done); a drifted PostgreSQL row is
    named with what it holds now."""
    plan = _mixed(ws, db, ddb)
    ddb.put("logins", {"email": "a@n.com", "pwd": "h"})  # the swap's write happened, its delete not yet
    db.execute("UPDATE employees SET email = 'moved@x.com' WHERE id = 1")
    r = ws.run("verify", str(plan), "--format", "json")
    assert r.code == 3, r.out + r.err
    out = json.loads(r.out)
    assert out["counts"] == {"after": 0, "before": 1, "drifted": 2}
    by_table = {a["table"]: a for a in out["actions"]}
    assert "half done" in by_table["logins"]["detail"] and "moved@x.com" in by_table["public.employees"]["detail"]


def test_verify_with_a_targets_file_that_does_not_match_is_a_user_error(ws, db, ddb):
    plan = _mixed(ws, db, ddb)
    other = ws.path / "other.yaml"
    other.write_text(MIXED_TARGETS.format(ledger="emailsync-ledger").replace("name: core", "name: core2"))
    assert_user_error(ws.run("verify", str(plan), "--targets", str(other)), "does not match", "core")


def test_replan_check_refuses_a_changed_mappings_file_and_passes_after_skip_live(ws, db, ddb):
    plan = _mixed(ws, db, ddb)
    state = _state(db, ddb)
    ws.mappings({"a@o.com": "a@other.com"}, name="m.json")
    assert_user_error(_apply(ws, plan, "--replan-check"), "--replan-check", "m.json", "sha256")
    assert_user_error(_apply(ws, plan, "--replan-check", "--mappings", "nope.json"))
    assert _state(db, ddb) == state
    ws.mappings({"a@o.com": "a@n.com"}, name="m.json")
    assert _apply(ws, plan, "--replan-check", "--skip-live").code == 0
    r = _apply(ws, plan, "--replan-check")
    assert r.code == 0, r.out + r.err


def test_diff_between_a_plan_and_its_rollback(ws, db):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com')")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com"})
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    r = ws.run("diff", str(plan), str(rb), "--format", "json")
    assert r.code == 2, r.out + r.err
    d = json.loads(r.out)
    assert len(d["added"]) == 1 and len(d["removed"]) == 1
    assert ws.run("diff", str(rb), str(rb)).code == 0


# -- user errors ------------------------------------------------------------------------------------------------------


def test_rollback_user_errors(ws, db):
    """No plan in the folder, a rollback plan, a journal damaged in the middle, a missing folder: exit 1, one
    error line, nothing written."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com')")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com"})
    empty = ws.path / "plans" / "empty"
    empty.mkdir()
    assert_user_error(ws.run("rollback", str(empty)))
    assert_user_error(ws.run("rollback", str(ws.path / "plans" / "nope")))
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    assert _apply(ws, rb).code == 0
    assert_user_error(ws.run("rollback", str(rb.parent)), "itself a rollback")
    (journal,) = plan.parent.glob("apply-*.jsonl")
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    folders = sorted(p.name for p in (ws.path / "plans").iterdir())
    assert_user_error(ws.run("rollback", str(plan.parent)), "line 2")
    assert_user_error(ws.run("show", str(plan)), "line 2")
    assert sorted(p.name for p in (ws.path / "plans").iterdir()) == folders


def test_rollback_and_show_with_a_journal_that_is_not_utf8(ws, db):
    """A journal damaged into bytes that are not UTF-8 (a disk error, a bad merge) is a damaged journal like
    any other: exit 1 with one error line naming it, not a UnicodeDecodeError traceback. read_journal only
    catches OSError around read_text."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com')")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com"})
    assert _apply(ws, plan).code == 0
    (journal,) = plan.parent.glob("apply-*.jsonl")
    data = journal.read_bytes()
    assert b"run-start" in data
    journal.write_bytes(data.replace(b"run-start", b"run-st\xffart", 1))
    for args in (("rollback", str(plan.parent)), ("show", str(plan))):
        try:
            r = ws.run(*args)
        except UnicodeDecodeError as e:  # ws.run re-raises what escaped the CLI
            raise AssertionError(f"{args[0]}: traceback instead of a user error: {e!r}") from None
        assert_user_error(r, journal.name)


def test_unlock_and_verify_user_errors(ws, db, ddb):
    plan = _mixed(ws, db, ddb, ledger="never-created")
    assert_user_error(ws.run("unlock", "nope", "--lock-id", "x"), "no target named 'nope'")
    assert_user_error(ws.run("unlock", "auth", "--lock-id", "x"), "does not exist")
    assert_user_error(ws.run("verify", str(plan.parent / "missing.json")), "not found")
    assert_user_error(ws.run("diff", str(plan), str(plan.parent / "missing.json")), "not found")
    assert_user_error(_apply(ws, plan, "--only-target", "nope"), "nope")


# -- second round -----------------------------------------------------------------------------------------------------


def test_rollback_after_skip_undoes_only_what_was_applied(ws, db):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@old.com'), (2, 'b@old.com')")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@old.com": "a@new.com", "b@old.com": "b@new.com"})
    db.execute("UPDATE employees SET email = 'other@x.com' WHERE id = 2")
    assert _apply(ws, plan, "--on-stale", "skip").code == 3
    rb = _rollback(ws, plan)
    assert len(ws.plan_json(rb)["actions"]) == 1
    r = ws.run("verify", str(rb))
    assert r.code == 3 and "1 before" in r.out, r.out
    assert _apply(ws, rb).code == 0
    assert db.rows("SELECT email FROM employees ORDER BY id") == [("a@old.com",), ("other@x.com",)]
    r = ws.run("verify", str(rb))
    assert r.code == 0, r.out


def test_rollback_email_key_row_updated_in_two_columns(ws, db):
    db.execute("CREATE TABLE settings (email text PRIMARY KEY, backup text, theme text)")
    db.execute("INSERT INTO settings VALUES ('a@o.com', 'b@o.com', 'dark'), ('b@o.com', 'a@o.com', 'light')")
    plan = _pg(ws, db, "- {table: settings, columns: [email, backup]}", {"a@o.com": "a@n.com", "b@o.com": "b@n.com"})
    rb = _round_trip(ws, plan, lambda: _dump(db, "settings"))
    assert ws.run("verify", str(rb)).code == 0


def test_rollback_email_key_table_with_an_updated_at_trigger(ws, db):
    """The same family as the generated column: an email-keyed table whose trigger sets updated_at on every
    update (listed in verify_ignore, as the README says to). The revert's row image is predicted from the plan
    with the old updated_at, so the revert is stale and the rollback cannot be applied. Expected: round trip
    (the email back; updated_at is the trigger's business)."""
    db.execute("CREATE TABLE settings (email text PRIMARY KEY, theme text, updated_at int NOT NULL DEFAULT 0)")
    db.execute("INSERT INTO settings VALUES ('a@o.com', 'dark', 0)")
    db.execute(
        "CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN NEW.updated_at := OLD.updated_at + 1; RETURN NEW; END$$"
    )
    db.execute("CREATE TRIGGER t BEFORE UPDATE ON settings FOR EACH ROW EXECUTE FUNCTION bump()")
    plan = _pg(ws, db, "- {table: settings, columns: [email], verify_ignore: [updated_at]}", {"a@o.com": "a@n.com"})
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    r = _apply(ws, rb)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT email, theme FROM settings") == [("a@o.com", "dark")]


def test_rollback_includes_a_dynamodb_move_that_needs_review(ws, ddb):
    """A merge into an existing item to which someone added an attribute after the plan: the Update keeps
    that attribute, the old item is deleted, and the read-back reports `needs-review` (exit 3). The move was
    written, so the rollback must list it (restore-item), not report that nothing was applied."""
    ddb.create("profiles", "email")
    ddb.put("profiles", {"email": "a@o.com", "name": "A"}, {"email": "a@n.com", "floor": 3})
    plan = _ddb(ws, "      - table: profiles\n        attributes: [email]\n", {"a@o.com": "a@n.com"})
    fired = []

    def concurrent_writer(**kwargs: Any) -> None:
        if not fired:  # between apply's check and its transaction, another writer adds an attribute
            fired.append(1)
            ddb.put("profiles", {"email": "a@n.com", "floor": 3, "late": "added meanwhile"})

    unhook = hook_dynamodb(ws, "before-call.dynamodb.TransactWriteItems", concurrent_writer)
    r = _apply(ws, plan)
    unhook()
    assert r.code == 3 and "needs-review" in r.out, r.out
    assert [i["email"] for i in ddb.items("profiles")] == ["a@n.com"]  # the old item is gone: the move happened
    r = ws.run("rollback", str(plan.parent))
    assert r.code == 0, r.out + r.err
    rb = Path(r.out.split("Plan: ")[1].split()[0])
    assert {a["kind"] for a in ws.plan_json(rb)["actions"]} == {"restore-item"}


def test_plans_sharing_a_folder_do_not_share_their_apply_history(ws, db):
    """`plan --out` may put two plans in one folder. Each journal's run-start names the plan digest, so `show`
    and `rollback` of the plan that was never applied must not take the other plan's journals as its own:
    expected no history for b.jsonl.gz and a refusal to roll it back (it was never applied)."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com')")
    ws.postgres_targets({"core": db}, "- {table: employees, columns: [email]}")
    ws.mappings({"a@o.com": "a@n.com"})
    folder = ws.path / "review"
    assert ws.run("plan", "--out", str(folder / "a.jsonl.gz")).code == 0
    ws.mappings({"a@o.com": "a@other.com"})
    assert ws.run("plan", "--out", str(folder / "b.jsonl.gz")).code == 0
    assert _apply(ws, folder / "a.jsonl.gz").code == 0
    r = ws.run("show", str(folder / "b.jsonl.gz"), "--format", "json")
    assert r.code == 0 and "apply_history" not in r.out, r.out[-600:]
    assert_user_error(ws.run("rollback", str(folder / "b.jsonl.gz")), "never applied")


def test_replan_check_after_a_partial_apply_of_a_chain(ws, db):
    """Chain a->b, b->c on an email key. The first apply (--on-stale skip) moves b->c but finds a's row
    changed (stale); the row is then put back. The reviewed plan's remaining action is exactly what a re-plan
    finds, except for its step number (a re-plan no longer needs b->c first). --replan-check is documented to
    pass when the only differences are applied actions: it must not refuse the rest over an ordering number."""
    db.execute("CREATE TABLE settings (email text PRIMARY KEY, theme text)")
    db.execute("INSERT INTO settings VALUES ('a@o.com', 'dark'), ('b@o.com', 'light')")
    plan = _pg(ws, db, "- {table: settings, columns: [email]}", {"a@o.com": "b@o.com", "b@o.com": "c@o.com"})
    db.execute("UPDATE settings SET theme = 'changed' WHERE email = 'a@o.com'")
    assert _apply(ws, plan, "--on-stale", "skip").code == 3
    db.execute("UPDATE settings SET theme = 'dark' WHERE email = 'a@o.com'")
    r = _apply(ws, plan, "--replan-check")
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT email, theme FROM settings ORDER BY 1") == [("b@o.com", "dark"), ("c@o.com", "light")]


def test_rollback_round_trip_keyless_table_casefold_and_row_updated_then_deleted(ws, db):
    """A table without a primary key (key: [id]) whose row is updated in one column and deleted on conflict
    in the other; citext and mixed-case values under match: casefold."""
    db.execute("CREATE TABLE staff (id int NOT NULL, email citext UNIQUE, manager text, note text)")
    db.execute(
        "INSERT INTO staff VALUES (1, 'X@O.com', 'M@o.com', 'x'), (2, 'w@o.com', 'M@o.com', 'w'), "
        "(3, 'k@k.com', NULL, NULL)"
    )
    ws.postgres_targets(
        {"core": db}, "- {table: staff, columns: [email, manager], key: [id], on_conflict: delete}", match="casefold"
    )
    ws.mappings({"x@o.com": "w@o.com", "m@o.com": "m@n.com"})
    plan = _plan(ws)
    kinds = sorted(a["kind"] for a in ws.plan_json(plan)["actions"])
    assert kinds == ["delete-on-conflict", "update", "update"], kinds
    _round_trip(ws, plan, lambda: _dump(db, "staff"))


def test_rollback_round_trip_dynamodb_template_key_and_typed_attributes(ws, ddb):
    """A key holding the email through a template, a sort key, and an item with binary, number-set, map, list,
    bool and null attributes: restored byte for byte."""
    ddb.create("users", "PK", "SK")
    ddb.put(
        "users",
        {
            "PK": "USER#a@o.com",
            "SK": "PROFILE",
            "email": "a@o.com",
            "bin": b"\x00\xff",
            "ns": {1, 2},
            "m": {"x": [1, "a@o.com"], "n": None, "ok": True},
        },
        {"PK": "USER#b@o.com", "SK": "PROFILE", "email": "b@o.com"},
        {"PK": "USER#b@n.com", "SK": "PROFILE", "email": "b@n.com", "kept": 1},
    )
    plan = _ddb(
        ws,
        "      - table: users\n        attributes:\n          - {name: PK, template: 'USER#{email}'}\n"
        "          - email\n",
        {"a@o.com": "a@n.com", "b@o.com": "b@n.com"},
    )
    _round_trip(ws, plan, lambda: _raw_items(ddb, "users"))


def test_show_of_a_rollback_plan_in_every_format(ws, db):
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com'), (2, 'a@n.com')")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com"})
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    for fmt in ("text", "markdown", "json"):
        r = ws.run("show", str(rb), "--format", fmt)
        assert r.code == 0 and "insert-row" in r.out, (fmt, r.out, r.err)
    assert "insert-row" in (rb.parent / "plan.md").read_text()


def test_rollback_with_skip_never_deletes_a_moved_item_whose_old_key_cannot_be_restored(ws, ddb):
    """a@o moved to a@n. Later someone creates a new, unrelated item under a@o. The move back (restore-item) is
    one action and one transaction, like a forward move: it is stale as a whole, so with --on-stale skip the
    moved item is not deleted from a@n while a@o cannot take it back (a regression test: the first rollback
    design had two independent halves, and the second deleted the only copy)."""
    ddb.create("profiles", "email")
    ddb.put("profiles", {"email": "a@o.com", "name": "A", "salary": 100})
    plan = _ddb(ws, "      - table: profiles\n        attributes: [email]\n", {"a@o.com": "a@n.com"})
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    ddb.put("profiles", {"email": "a@o.com", "name": "a new signup"})
    r = _apply(ws, rb, "--on-stale", "skip")
    assert r.code == 3 and "stale" in r.out, r.out
    assert any(i.get("salary") == 100 for i in ddb.items("profiles")), ddb.items("profiles")


def test_two_dynamodb_targets_sharing_a_ledger_table_keep_separate_run_records(ws, ddb):
    """Two DynamoDB targets in one account, both with `ledger_table: emailsync-ledger` (the natural setup).
    Run 1 (--on-stale skip) completes `auth` but leaves `hr` incomplete (a stale item). The rerun must go on
    and finish hr. The run item's key (run#<digest>, <started_at>#<run_id>) does not name the target, so
    both targets write the same item and the last finish() wins: hr is recorded complete and the rerun is
    refused as a replay."""
    ddb.create("profiles", "email")
    ddb.create("logins", "email")
    ddb.put("profiles", {"email": "a@o.com", "n": 1})
    ddb.put("logins", {"email": "a@o.com", "pwd": "h"})
    ws.targets(
        "version: 1\nmappings: m.json\ndynamodb:\n"
        "  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n    ledger_table: emailsync-ledger\n"
        "    tables:\n      - {table: profiles, attributes: [email]}\n"
        "  - name: auth\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n    ledger_table: emailsync-ledger\n"
        "    tables:\n      - {table: logins, attributes: [email]}\n"
    )
    ws.mappings({"a@o.com": "a@n.com"}, name="m.json")
    plan = _plan(ws)
    ddb.put("profiles", {"email": "a@o.com", "n": 2})  # hr's item changed since the plan: stale
    assert _apply(ws, plan, "--on-stale", "skip").code == 3
    assert [i["email"] for i in ddb.items("logins")] == ["a@n.com"]
    ddb.put("profiles", {"email": "a@o.com", "n": 1})  # put back as planned
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert [i["email"] for i in ddb.items("profiles")] == ["a@n.com"]


def test_journal_with_valid_json_of_the_wrong_shape_is_a_user_error(ws, db):
    """A hand-edited journal line that is JSON but not what apply writes (`actions` a number, `outcomes` a
    list) is a damaged journal: exit 1 with one error line, never a TypeError/AttributeError traceback."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com')")
    plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"a@o.com": "a@n.com"})
    assert _apply(ws, plan).code == 0
    (journal,) = plan.parent.glob("apply-*.jsonl")
    lines = journal.read_text().splitlines()
    bad = [
        json.dumps({"event": "write", "phase": "before", "actions": 5}),
        json.dumps({"event": "write", "phase": "after", "outcomes": ["x"]}),
    ]
    for line in bad:
        journal.write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
        try:
            r = ws.run("rollback", str(plan.parent))
        except (TypeError, AttributeError) as e:
            raise AssertionError(f"traceback instead of a user error for {line}: {e!r}") from None
        assert_user_error(r, journal.name)


def test_ledger_created_once_by_an_administrator_is_used_by_an_apply_role_without_create(ws, db):
    """The ledger error message says: grant CREATE, or "create it once as an administrator". An apply role
    with USAGE on schema emailsync and SELECT/INSERT/UPDATE on emailsync.ledger (created by an administrator)
    but no CREATE on the database must be able to apply. PgLedger.ensure() runs CREATE SCHEMA IF NOT EXISTS
    on every apply, and PostgreSQL checks the CREATE privilege before it looks whether the schema exists."""
    role = f"r_{db.name}"
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com'), (2, 'k@o.com')")
    # the administrator's one-time setup: the ledger exists (made by an apply as the database owner)
    owner_plan = _pg(ws, db, "- {table: employees, columns: [email]}", {"k@o.com": "k@n.com"})
    assert _apply(ws, owner_plan).code == 0
    db.execute(f"CREATE ROLE {role} LOGIN")
    db.execute(f'REVOKE CREATE ON DATABASE "{db.name}" FROM PUBLIC')
    db.execute(f"GRANT USAGE ON SCHEMA emailsync TO {role}")
    db.execute(f"GRANT SELECT, INSERT, UPDATE ON emailsync.ledger TO {role}")
    db.execute(f"GRANT SELECT, UPDATE, DELETE ON employees TO {role}")
    ws.monkeypatch.setenv("CORE_DSN", db.dsn.replace("user=postgres", f"user={role}"))
    ws.mappings({"a@o.com": "a@n.com"})
    plan = _plan(ws)
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert db.rows("SELECT email FROM employees ORDER BY id") == [("a@n.com",), ("k@n.com",)]
    assert db.rows("SELECT applied_by FROM emailsync.ledger WHERE plan_digest = %s", (ws.plan_json(plan)["digest"],))


def test_rollback_never_deletes_a_moved_item_when_its_restore_is_refused_at_write_time(ws, ddb):
    """The same with the default --on-stale abort and the race at write time: the preflight finds the move back
    pending; just before its transaction is sent another writer creates an item under a@o, so the transaction
    is cancelled as a whole (stale) and the moved item (salary 100) stays at a@n."""
    ddb.create("profiles", "email")
    ddb.put("profiles", {"email": "a@o.com", "name": "A", "salary": 100})
    plan = _ddb(ws, "      - table: profiles\n        attributes: [email]\n", {"a@o.com": "a@n.com"})
    assert _apply(ws, plan).code == 0
    rb = _rollback(ws, plan)
    fired = []

    def concurrent_signup(params: dict[str, Any], **kwargs: Any) -> None:
        if not fired:
            fired.append(1)
            ddb.put("profiles", {"email": "a@o.com", "name": "a new signup"})

    # Moves back are transactions like forward moves: the signup lands just before the transaction is sent.
    unhook = hook_dynamodb(ws, "before-parameter-build.dynamodb.TransactWriteItems", concurrent_signup)
    r = _apply(ws, rb)
    unhook()
    assert fired and r.code == 3, r.out + r.err
    assert any(i.get("salary") == 100 for i in ddb.items("profiles")), ddb.items("profiles")
