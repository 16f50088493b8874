"""A target's ledger records a plan's run once: reruns that only re-check a completed target (--skip-live,
--only-target) add nothing to its ledger, and a later refusal names each target once (real PostgreSQL, DynamoDB
Local)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import apply_confirmed as _apply
from helpers import assert_user_error, mixed_estate


def _estate(ws: Any, db: Any, ddb: Any) -> Path:
    return mixed_estate(ws, db, ddb)


def _runs(db: Any, ddb: Any) -> tuple[list[Any], list[tuple[str, str]]]:
    exists = db.rows("SELECT to_regclass('emailsync.ledger') IS NOT NULL")[0][0]
    pg = db.rows("SELECT target, status FROM emailsync.ledger ORDER BY started_at") if exists else []
    items = [i for i in ddb.items("emailsync-ledger") if i["pk"] != "lock"]
    return pg, sorted((i["sk"].split("#")[0], i["status"]) for i in items)


def test_skip_live_reruns_record_the_completed_target_once_and_the_refusal_names_it_once(ws, db, ddb_local):
    ddb = ddb_local
    plan = _estate(ws, db, ddb)
    for _ in range(3):
        r = _apply(ws, plan, "--skip-live")
        assert r.code == 0, r.out + r.err
    pg_runs, ddb_runs = _runs(db, ddb)
    # The database's changes committed in the first run; the two reruns only re-checked them.
    assert pg_runs == [("core", "complete")]
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@n.com"), (2, "k@k.com")]
    # Each --skip-live run is a real run of the DynamoDB target (its live part still to do): one row each.
    assert ddb_runs == [("auth", "incomplete")] * 3
    assert [i["email"] for i in ddb.items("logins")] == ["a@o.com"]

    r = _apply(ws, plan)  # the live rest
    assert r.code == 0, r.out + r.err
    assert r.err.count("already applied completely on target core") == 1
    assert [i["email"] for i in ddb.items("logins")] == ["a@n.com"]
    pg_runs, ddb_runs = _runs(db, ddb)
    assert pg_runs == [("core", "complete")]
    assert ddb_runs == [("auth", "complete")] + [("auth", "incomplete")] * 3

    msg = assert_user_error(_apply(ws, plan), "already been applied completely")
    assert msg.count("core: complete on") == 1 and msg.count("auth: complete on") == 1, msg
    assert _runs(db, ddb) == (pg_runs, ddb_runs)  # the refusal records nothing


def test_force_still_records_its_run(ws, db, ddb_local):
    """--force is a deliberate second run: the ledger keeps it."""
    plan = _estate(ws, db, ddb_local)
    assert _apply(ws, plan).code == 0
    r = _apply(ws, plan, "--force")
    assert r.code == 0, r.out + r.err
    pg_runs, ddb_runs = _runs(db, ddb_local)
    assert pg_runs == [("core", "complete")] * 2
    assert ddb_runs == [("auth", "complete")] * 2
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@n.com"), (2, "k@k.com")]


def test_a_rerun_that_writes_to_a_completed_target_is_recorded(ws, db, ddb_local):
    """A row changed back to its old address after a complete run: the next rerun writes it again (it is pending),
    and that run is in the target's ledger with what it did; a rerun that finds a row changed to a third value
    records the stale finding."""
    ddb = ddb_local
    plan = _estate(ws, db, ddb)
    assert _apply(ws, plan, "--skip-live").code == 0
    db.execute("UPDATE employees SET email = 'a@o.com' WHERE id = 1")  # changed back since
    r = _apply(ws, plan, "--skip-live")
    assert r.code == 0, r.out + r.err
    assert "already applied completely on target core" in r.err and "written again" in r.err
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@n.com"), (2, "k@k.com")]
    runs = db.rows("SELECT status, counts FROM emailsync.ledger ORDER BY started_at")
    assert runs == [("complete", {"applied": 1}), ("complete", {"applied": 1})]

    db.execute("UPDATE employees SET email = 'third@x.com' WHERE id = 1")  # changed to something else
    r = _apply(ws, plan, "--skip-live")
    assert r.code == 3, r.out + r.err
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "third@x.com"), (2, "k@k.com")]
    runs = db.rows("SELECT status, counts FROM emailsync.ledger ORDER BY started_at")
    assert [s for s, _ in runs] == ["complete", "complete", "incomplete"] and runs[2][1] == {"stale": 1}


def test_a_rerun_that_moves_an_item_again_on_a_completed_dynamodb_target_is_recorded(ws, db, ddb_local):
    ddb = ddb_local
    plan = _estate(ws, db, ddb)
    assert _apply(ws, plan, "--only-target", "auth").code == 0  # auth complete, live table included
    assert _runs(db, ddb)[1] == [("auth", "complete")]
    ddb.client.delete_item(TableName="profiles", Key={"email": {"S": "a@n.com"}})
    ddb.put("profiles", {"email": "a@o.com", "n": 1})  # moved back since
    r = _apply(ws, plan)  # core still to do: the run goes on, auth is re-checked
    assert r.code == 0, r.out + r.err
    assert [i["email"] for i in ddb.items("profiles")] == ["a@n.com"]
    assert [i["email"] for i in ddb.items("logins")] == ["a@n.com"]
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@n.com"), (2, "k@k.com")]
    assert _runs(db, ddb)[1] == [("auth", "complete"), ("auth", "complete")]
    # A rerun of a target that finds everything applied records nothing more.
    db.execute("DELETE FROM emailsync.ledger")  # core not complete any more in its ledger: the run goes on
    r = _apply(ws, plan)
    assert r.code == 0, r.out + r.err
    assert _runs(db, ddb)[1] == [("auth", "complete"), ("auth", "complete")]
