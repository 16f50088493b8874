"""The live login table: races, chains, reruns, journaling and confirmation (moto server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import hook_dynamodb

LIVE = """version: 1
mappings: m.json
dynamodb:
  - name: auth
    endpoint_url: ${{DYNAMODB_ENDPOINT}}
    tables:
      - table: userAuthentication
        live: {live}
        client_attribute: clientId
        attributes: [{attrs}]
      - table: hr-profiles
        attributes: [email]
{extra}"""

OTHER = """  - name: other
    endpoint_url: ${DYNAMODB_ENDPOINT}
    tables:
      - table: other-profiles
        attributes: [email]
"""


def _setup(ddb, ws, mappings, auth_items, *, live="true", attrs="email", extra="", profiles=None) -> Path:
    ddb.create("userAuthentication", "email", "clientId")
    ddb.create("hr-profiles", "id")
    ddb.put("userAuthentication", *auth_items)
    ddb.put("hr-profiles", *(profiles or [{"id": "p1", "email": "a@old.com"}]))
    ws.targets(LIVE.format(live=live, attrs=attrs, extra=extra))
    ws.mappings(mappings, name="m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


def _journal(plan: Path) -> list[dict]:
    paths = list(plan.parent.glob("apply-*.jsonl"))
    return [json.loads(line) for p in paths for line in p.read_text().splitlines()]


def _report(plan: Path) -> dict:
    return json.loads((plan.parent / "report.json").read_text())


def _statuses(plan: Path) -> list[str]:
    return sorted(a["status"] for a in _report(plan)["actions"])


def _by_email(items: list[dict]) -> list[dict]:
    return sorted(items, key=lambda i: (i["email"], i["clientId"]))


def _apply(ws, plan: Path, *extra: str):
    return ws.run("apply", str(plan), "--auto-approve", *extra)


# --- failing: bugs ---------------------------------------------------------------------------------------------


def test_rerun_of_chain_does_not_delete_the_item_that_moved_into_the_old_key(ddb, ws):
    """b@old -> c@new and a@old -> b@old, items without other distinguishing attributes. After a complete apply
    the item at b@old is a's moved item, identical to b's planned `row`. A rerun must not delete it."""
    items = [
        {"email": "a@old.com", "clientId": "1", "role": "user"},
        {"email": "b@old.com", "clientId": "1", "role": "user"},
    ]
    plan = _setup(ddb, ws, [{"old": "b@old.com", "new": "c@new.com"}, {"old": "a@old.com", "new": "b@old.com"}], items)
    r = _apply(ws, plan, "--confirm-live")
    assert r.code == 0, r.out + r.err
    after = [
        {"email": "b@old.com", "clientId": "1", "role": "user"},
        {"email": "c@new.com", "clientId": "1", "role": "user"},
    ]
    assert ddb.items("userAuthentication") == after
    r = _apply(ws, plan, "--confirm-live")
    assert ddb.items("userAuthentication") == after  # a's login must still be there
    assert r.code == 0, r.out + r.err
    assert set(_statuses(plan)) == {"already-applied"}


def test_attribute_added_to_existing_new_item_during_apply_is_not_overwritten(ddb, ws):
    """Regression: merge into an existing item. An attribute added to it between the preflight and the write must
    survive (the merge sets attributes, it does not replace the item), and the read-back then reports the
    difference: both items kept."""
    items = [
        {"email": "a@old.com", "clientId": "1", "pwd": "h1"},
        {"email": "a@new.com", "clientId": "1", "role": "admin"},
    ]
    plan = _setup(ddb, ws, [{"old": "a@old.com", "new": "a@new.com", "client_id": "1"}], items)
    done = []

    def concurrent_writer(**_):
        if not done:
            done.append(1)
            ddb.put("userAuthentication", {"email": "a@new.com", "clientId": "1", "role": "admin", "mfa": "totp"})

    hook_dynamodb(ws, "before-call.dynamodb.UpdateItem", concurrent_writer)  # the merge into the existing item
    r = _apply(ws, plan, "--confirm-live")
    rows = ddb.items("userAuthentication")
    assert any(i.get("mfa") == "totp" for i in rows), rows  # the user's new MFA setting is not lost
    assert {"email": "a@old.com", "clientId": "1", "pwd": "h1"} in rows  # not verified as planned: old kept
    assert r.code == 3, r.out + r.err


def test_change_to_old_item_right_before_delete_keeps_the_old_item(ddb, ws):
    """The delete's condition is "still the planned item", attribute by attribute. A writer that changes the item
    (here bumping its version, as writers of a live table should) between the read-back and the delete makes the
    delete fail: both items are kept for review. (A condition cannot reject an attribute merely added without any
    planned attribute changing; the README documents that window and the version attribute that closes it.)"""
    item = {"email": "a@old.com", "clientId": "1", "pwd": "h1", "v": 1}
    plan = _setup(ddb, ws, {"a@old.com": "a@new.com"}, [item])
    done = []

    def concurrent_writer(**_):
        if not done:
            done.append(1)
            ddb.put("userAuthentication", {**item, "mfa": "totp", "v": 2})

    hook_dynamodb(ws, "before-call.dynamodb.DeleteItem", concurrent_writer)
    r = _apply(ws, plan, "--confirm-live")
    assert ddb.items("userAuthentication") == [
        {"email": "a@new.com", "clientId": "1", "pwd": "h1", "v": 1},
        {"email": "a@old.com", "clientId": "1", "pwd": "h1", "v": 2, "mfa": "totp"},
    ]
    assert r.code == 3, r.out + r.err


def test_live_update_of_a_non_key_attribute_is_journaled(ddb, ws):
    """A live table's UpdateItem (an email in a non-key attribute) is a live write too: journaled before/after."""
    items = [{"email": "x@keep.com", "clientId": "1", "recoveryEmail": "a@old.com"}]
    plan = _setup(ddb, ws, {"a@old.com": "a@new.com"}, items, attrs="email, recoveryEmail")
    acts = ws.plan_json(plan)["actions"]
    assert [(a["kind"], a["live"]) for a in acts if a["table"] == "userAuthentication"] == [("update", True)]
    r = _apply(ws, plan, "--confirm-live")
    assert r.code == 0, r.out + r.err
    assert ddb.items("userAuthentication") == [{"email": "x@keep.com", "clientId": "1", "recoveryEmail": "a@new.com"}]
    steps = [(e["table"], e["phase"]) for e in _journal(plan) if e.get("live")]
    assert ("userAuthentication", "before") in steps and ("userAuthentication", "after") in steps, steps


def test_table_marked_live_after_the_plan_is_not_written_without_confirm_live(ddb, ws):
    """The plan was made before the login table was marked live; targets.yaml now says live: true. The
    fingerprint ignores `live` and the plan's own flag is trusted, so --auto-approve alone moves login items."""
    plan = _setup(ddb, ws, {"a@old.com": "a@new.com"}, [{"email": "a@old.com", "clientId": "1"}], live="false")
    ws.targets(LIVE.format(live="true", attrs="email", extra=""))
    r = _apply(ws, plan)
    assert ddb.items("userAuthentication") == [{"email": "a@old.com", "clientId": "1"}]
    assert ddb.items("hr-profiles") == [{"id": "p1", "email": "a@old.com"}]
    assert r.code == 1, r.out + r.err


# --- passing: tricky cases -------------------------------------------------------------------------------------


def test_three_items_merge_into_one_key_interrupted_in_the_middle(ddb, ws):
    items = [
        {"email": "a@old.com", "clientId": "1", "pwd": "h1"},
        {"email": "b@old.com", "clientId": "1", "mfa": "sms"},
        {"email": "c@old.com", "clientId": "1", "role": "admin", "pwd": "h3"},
    ]
    mappings = {"a@old.com": "z@new.com", "b@old.com": "z@new.com", "c@old.com": "z@new.com"}
    plan = _setup(ddb, ws, mappings, items)
    puts = []

    class Crash(Exception):
        pass

    tables: list[str] = []

    def note(params, **_):
        tables.append(params.get("TableName", ""))

    def crash(**_):
        if tables and tables[-1] == "userAuthentication":
            puts.append(1)
            if len(puts) == 2:
                raise Crash("killed after the second write to the live table")

    # The first arrival creates the item (PutItem), the next ones merge into it (UpdateItem): count both.
    unhook_note = hook_dynamodb(ws, "provide-client-params.dynamodb", note)
    unhook_update = hook_dynamodb(ws, "after-call.dynamodb.UpdateItem", crash)
    unhook = hook_dynamodb(ws, "after-call.dynamodb.PutItem", crash)
    with pytest.raises(Crash):
        _apply(ws, plan, "--confirm-live")
    assert len(ddb.items("userAuthentication")) == 3  # one moved, one written but not deleted, one untouched
    unhook()
    unhook_update()
    unhook_note()
    r = _apply(ws, plan, "--confirm-live")
    assert r.code == 0, r.out + r.err
    (merged,) = ddb.items("userAuthentication")
    assert merged["email"] == "z@new.com" and merged["clientId"] == "1"
    assert {k: merged.get(k) for k in ("pwd", "mfa", "role")} == {"pwd": "h1", "mfa": "sms", "role": "admin"}
    r = _apply(ws, plan, "--confirm-live")
    assert r.code == 0 and set(_statuses(plan)) == {"already-applied"}
    assert ddb.items("userAuthentication") == [merged]


def test_chain_with_distinct_items_and_rerun(ddb, ws):
    items = [
        {"email": "a@old.com", "clientId": "1", "pwd": "ha"},
        {"email": "b@old.com", "clientId": "1", "pwd": "hb"},
    ]
    plan = _setup(ddb, ws, [{"old": "b@old.com", "new": "c@new.com"}, {"old": "a@old.com", "new": "b@old.com"}], items)
    after = [
        {"email": "b@old.com", "clientId": "1", "pwd": "ha"},
        {"email": "c@new.com", "clientId": "1", "pwd": "hb"},
    ]
    assert _apply(ws, plan, "--confirm-live").code == 0
    assert ddb.items("userAuthentication") == after
    r = _apply(ws, plan, "--confirm-live")
    assert r.code == 0 and set(_statuses(plan)) == {"already-applied"}
    assert ddb.items("userAuthentication") == after


def test_client_scoped_and_global_mappings(ddb, ws):
    items = [
        {"email": "a@old.com", "clientId": "1", "pwd": "h1"},
        {"email": "a@old.com", "clientId": "2", "pwd": "h2"},
        {"email": "b@old.com", "clientId": "1", "pwd": "hb1"},
        {"email": "b@old.com", "clientId": "2", "pwd": "hb2"},
    ]
    mappings = [
        {"old": "a@old.com", "new": "a@one.com", "client_id": 1},  # an integer client id, string attribute
        {"old": "b@old.com", "new": "b@all.com"},
    ]
    plan = _setup(ddb, ws, mappings, items)
    r = _apply(ws, plan, "--confirm-live")
    assert r.code == 0, r.out + r.err
    assert _by_email(ddb.items("userAuthentication")) == [
        {"email": "a@old.com", "clientId": "2", "pwd": "h2"},
        {"email": "a@one.com", "clientId": "1", "pwd": "h1"},
        {"email": "b@all.com", "clientId": "1", "pwd": "hb1"},
        {"email": "b@all.com", "clientId": "2", "pwd": "hb2"},
    ]


def test_only_target_with_skip_live_and_then_confirm_live(ddb, ws):
    ddb.create("other-profiles", "id")
    ddb.put("other-profiles", {"id": "o1", "email": "a@old.com"})
    plan = _setup(ddb, ws, {"a@old.com": "a@new.com"}, [{"email": "a@old.com", "clientId": "1"}], extra=OTHER)
    # A non-live target alone needs no live confirmation.
    r = _apply(ws, plan, "--only-target", "other")
    assert r.code == 0, r.out + r.err
    assert ddb.items("other-profiles") == [{"id": "o1", "email": "a@new.com"}]
    assert ddb.items("hr-profiles") == [{"id": "p1", "email": "a@old.com"}]
    # The live target without confirmation: refused, nothing written there.
    r = _apply(ws, plan, "--only-target", "auth")
    assert r.code == 1 and "--confirm-live" in r.err
    assert ddb.items("hr-profiles") == [{"id": "p1", "email": "a@old.com"}]
    r = _apply(ws, plan, "--only-target", "auth", "--skip-live")
    assert r.code == 0, r.out + r.err
    assert ddb.items("hr-profiles") == [{"id": "p1", "email": "a@new.com"}]
    assert ddb.items("userAuthentication") == [{"email": "a@old.com", "clientId": "1"}]
    r = _apply(ws, plan, "--only-target", "auth", "--confirm-live")
    assert r.code == 0, r.out + r.err
    assert ddb.items("userAuthentication") == [{"email": "a@new.com", "clientId": "1"}]
    assert sorted(_statuses(plan)) == ["already-applied", "applied"]


def test_live_runs_after_non_live_tables(ddb, ws):
    plan = _setup(ddb, ws, {"a@old.com": "a@new.com"}, [{"email": "a@old.com", "clientId": "1"}])
    seen = []

    def record(params, **_):
        seen.append(params["TableName"])

    hook_dynamodb(ws, "before-parameter-build.dynamodb.UpdateItem", record)
    hook_dynamodb(ws, "before-parameter-build.dynamodb.PutItem", record)
    r = _apply(ws, plan, "--confirm-live")
    assert r.code == 0, r.out + r.err
    assert seen and seen[0] == "hr-profiles" and seen[-1] == "userAuthentication", seen


def test_interrupted_swap_then_new_item_changed_keeps_both(ddb, ws):
    plan = _setup(ddb, ws, {"a@old.com": "a@new.com"}, [{"email": "a@old.com", "clientId": "1", "pwd": "h1"}])

    class Crash(Exception):
        pass

    def crash(**_):
        raise Crash("killed after the put")

    unhook = hook_dynamodb(ws, "after-call.dynamodb.PutItem", crash)
    with pytest.raises(Crash):
        _apply(ws, plan, "--confirm-live")
    unhook()
    ddb.put("userAuthentication", {"email": "a@new.com", "clientId": "1", "pwd": "changed"})
    r = _apply(ws, plan, "--confirm-live", "--on-stale", "skip")
    assert r.code == 3
    assert ddb.items("userAuthentication") == [
        {"email": "a@new.com", "clientId": "1", "pwd": "changed"},
        {"email": "a@old.com", "clientId": "1", "pwd": "h1"},
    ]
