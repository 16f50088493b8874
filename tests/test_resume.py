"""Kill -9 during apply, run the same command again: the plan finishes, nothing twice, nothing lost.

Each test builds a real estate: two PostgreSQL databases (updates, arrays, jsonb, delete-on-conflict, a chain on
an email primary key) and three DynamoDB tables on the moto server (in-place updates; merge-and-move with chains,
merges and a move into an existing item, in several transactions; a `live: true` login table with verified
swaps, one of them into an existing item; the target has a `ledger_table`, so a killed run also leaves its apply
lock behind, which the rerun takes over). It plans once, in-process. Then `emailsync apply` runs as a subprocess
through tests/crash_harness.py, which kills it with SIGKILL at a chosen point of the PostgreSQL or DynamoDB work;
the intermediate stores are checked for consistency, the same command is run again (a plain `python -m
emailsync` subprocess), and the final stores must equal the expected state exactly and report.json must list
every action once, as `already-applied` if the killed run had finished it and `applied` otherwise. The apply
journals (apply-*.jsonl beside the plan) must agree: at every kill, each write visible in the stores was announced
by a `before` record first, and each outcome a journal records as done is done in the stores; the final run's
journal holds the same outcomes as report.json and its run-end. Identities are counted before and after:
PostgreSQL rows per table (less the rows deleted on conflict), DynamoDB items by their `from_<tag>`.

The expected final state is (a) written out explicitly for a core of rows and items (`_check_core`) and (b) for
everything, the state a clean, uninterrupted apply of the same plan produces on a second copy of the estate
(computed once per session and cached). That clean apply runs through the crash harness without a kill point
and records every event the harness counts: the space of kill points (tests/test_reliability_faults.py).

Every DynamoDB item of the moving tables carries a `from_<tag>` attribute, unique to it. Moves keep it and merges
collect it, so "nothing lost, nothing left behind" is: every tag is in exactly one item (the one exception: a live
swap interrupted between its write and its delete, where the old item and its verified copy both exist).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from reliability import Record

from emailsync.archive import DONE as DONE_STATUSES
from emailsync.archive import recorded_outcomes

HARNESS = Path(__file__).with_name("crash_harness.py")
N_USERS = 56  # bulk moves in the DynamoDB users table: step 0 alone needs two transactions (50 moves each)
N_PROFILES = 16  # in-place DynamoDB updates, one UpdateItem each
N_PG = 20  # bulk PostgreSQL rows per table
N_AUTH = 4  # live swaps without an existing item (client 1), plus one for client 2
TABLES = {"users": ("email",), "profiles": ("id",), "auth": ("email", "clientId")}
TIMEOUT = 120

TARGETS = """version: 1
mappings: email_mappings.json
postgres:
  - name: core
    dsn: ${RESUME_CORE_DSN}
    tables:
      - table: employees
        columns: [email, manager_email]
      - table: settings
        columns: [email]
  - name: leave
    dsn: ${RESUME_LEAVE_DSN}
    tables:
      - table: requests
        columns: [email, approvers, meta]
dynamodb:
  - name: hr
    region: us-east-1
    endpoint_url: ${DYNAMODB_ENDPOINT}
    ledger_table: emailsync-ledger  # the run ledger and the apply lock (a killed run leaves its lock behind)
    tables:
      - table: users
        attributes: [email]
      - table: profiles
        attributes: [email, watchers]
      - table: auth
        live: true
        client_attribute: clientId
        attributes: [email]
"""

MAPPINGS = [
    {"old": "a@x.com", "new": "b@x.com"},  # a chain: b moves to c first, then a to b
    {"old": "b@x.com", "new": "c@x.com"},
    {"old": "p@x.com", "new": "m@x.com"},  # a merge: p first, then q into it
    {"old": "q@x.com", "new": "m@x.com"},
    {"old": "d@old.com", "new": "d@new.com"},  # d@new.com exists already: delete-on-conflict / move into it
    *({"old": f"u{i}@old.com", "new": f"u{i}@new.com"} for i in range(max(N_USERS, N_PG, N_PROFILES + 1))),
]


# --- the estate ---------------------------------------------------------------------------------------------


def _seed_pg(core: Any, leave: Any) -> None:
    core.execute(
        "CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, manager_email text, name text NOT NULL)"
    )
    rows = [
        (1, "a@x.com", "b@x.com", "Ann"),
        (2, "b@x.com", "u0@old.com", "Ben"),
        (3, "p@x.com", None, "Pat"),
        (4, "q@x.com", "p@x.com", "Quinn"),  # q -> m collides with p -> m (mapped first): deleted
        (5, "d@old.com", None, "Dee"),  # d@new.com is row 6's: deleted
        (6, "d@new.com", "d@old.com", "Dee New"),
        (99, "keep@y.com", None, "Keep"),
        *(
            (10 + i, f"u{i}@old.com", f"u{i + 1}@old.com" if i < N_PG - 1 else "keep@y.com", f"U{i}")
            for i in range(N_PG)
        ),
    ]
    with core.connect() as c, c.cursor() as cur:
        cur.executemany("INSERT INTO employees VALUES (%s, %s, %s, %s)", rows)
    core.execute("CREATE TABLE settings (email text PRIMARY KEY, theme text)")
    core.execute(
        "INSERT INTO settings VALUES ('a@x.com', 'dark'), ('b@x.com', 'light'), ('c@x.com', 'blue'), "
        "('u1@old.com', 'green'), ('u2@old.com', 'red'), ('zz@y.com', 'plain')"
    )
    leave.execute("CREATE TABLE requests (id int PRIMARY KEY, email text, approvers text[], meta jsonb)")
    with leave.connect() as c, c.cursor() as cur:
        cur.executemany(
            "INSERT INTO requests VALUES (%s, %s, %s, %s)",
            [
                (i, f"u{i}@old.com", [f"u{i + 1}@old.com", "keep@y.com"], json.dumps({"cc": "a@x.com", "n": i}))
                for i in range(N_PG)
            ],
        )


def _seed_ddb(ddb: Any) -> None:
    for table, keys in TABLES.items():
        ddb.create(table, *keys)
    _put(
        ddb,
        "users",
        {"email": "a@x.com", "from_a": "1", "name": "A", "n": Decimal(1)},
        {"email": "b@x.com", "from_b": "1", "name": "B", "n": Decimal(2)},
        {"email": "p@x.com", "from_p": "1", "name": "P", "phone": None, "only_p": "yes"},
        {"email": "q@x.com", "from_q": "1", "name": "Q", "phone": "555", "only_q": "yes"},
        {"email": "d@old.com", "from_d": "1", "name": "D", "phone": "777", "team": "red"},
        {"email": "d@new.com", "from_dn": "1", "name": "D New", "phone": None},
        {"email": "keep@y.com", "from_keep": "1"},
        *({"email": f"u{i}@old.com", f"from_u{i}": "1", "i": Decimal(i)} for i in range(N_USERS)),
    )
    _put(
        ddb,
        "profiles",
        {"id": "pr-a", "email": "a@x.com", "watchers": ["b@x.com", "keep@y.com"], "note": "chain"},
        {"id": "pr-keep", "email": "keep@y.com", "watchers": ["keep@y.com"]},
        *(
            {"id": f"pr{i:02d}", "email": f"u{i}@old.com", "watchers": [f"u{i + 1}@old.com", "keep@y.com"]}
            for i in range(N_PROFILES)
        ),
    )
    _put(
        ddb,
        "auth",
        {"email": "a@x.com", "clientId": "1", "from_aa": "1", "pwd": "ha"},
        {"email": "b@x.com", "clientId": "1", "from_ab": "1", "pwd": "hb"},
        {"email": "d@old.com", "clientId": "1", "from_ad": "1", "pwd": "hd", "mfa": "sms"},
        {"email": "d@new.com", "clientId": "1", "from_adn": "1", "pwd": None, "role": "admin"},
        {"email": "u0@old.com", "clientId": "2", "from_au0c2": "1", "pwd": "x"},
        {"email": "keep@y.com", "clientId": "1", "from_akeep": "1"},
        *({"email": f"u{i}@old.com", "clientId": "1", f"from_au{i}": "1", "pwd": f"h{i}"} for i in range(N_AUTH)),
    )


def _put(ddb: Any, table: str, *items: dict[str, Any]) -> None:
    """Like ddb.put, 25 items a request."""
    ser = TypeSerializer()
    reqs = [{"PutRequest": {"Item": {k: ser.serialize(v) for k, v in i.items()}}} for i in items]
    for n in range(0, len(reqs), 25):
        pending: Any = {table: reqs[n : n + 25]}
        while pending:
            pending = ddb.client.batch_write_item(RequestItems=pending).get("UnprocessedItems")


def _state(core: Any, leave: Any, ddb: Any) -> dict[str, Any]:
    """Everything the plan touches: PostgreSQL per database, DynamoDB per table as {key tuple: item}."""
    return {
        "core": (
            core.rows("SELECT * FROM employees ORDER BY id"),
            core.rows("SELECT * FROM settings ORDER BY email"),
        ),
        "leave": (leave.rows("SELECT * FROM requests ORDER BY id"),),
        **{t: {tuple(i[k] for k in keys): i for i in ddb.items(t)} for t, keys in TABLES.items()},
    }


def _check_core(s: dict[str, Any]) -> None:
    """The expected final state, written out, for the interesting rows and items."""
    employees, settings = s["core"]
    by_id = {r[0]: r for r in employees}
    assert 4 not in by_id and 5 not in by_id  # deleted on conflict
    assert [by_id[i] for i in (1, 2, 3, 6, 99)] == [
        (1, "b@x.com", "c@x.com", "Ann"),
        (2, "c@x.com", "u0@new.com", "Ben"),
        (3, "m@x.com", None, "Pat"),
        (6, "d@new.com", "d@new.com", "Dee New"),
        (99, "keep@y.com", None, "Keep"),
    ]
    assert by_id[10] == (10, "u0@new.com", "u1@new.com", "U0")
    assert len(employees) == 5 + N_PG
    assert settings == [
        ("b@x.com", "dark"),
        ("c@x.com", "blue"),
        ("u1@new.com", "green"),
        ("u2@new.com", "red"),
        ("zz@y.com", "plain"),
    ]
    (requests,) = s["leave"]
    assert requests[0] == (0, "u0@new.com", ["u1@new.com", "keep@y.com"], {"cc": "b@x.com", "n": 0})
    assert len(requests) == N_PG
    users = s["users"]
    assert users[("b@x.com",)] == {"email": "b@x.com", "from_a": "1", "name": "A", "n": 1}
    assert users[("c@x.com",)] == {"email": "c@x.com", "from_b": "1", "name": "B", "n": 2}
    assert users[("m@x.com",)] == {
        "email": "m@x.com",
        "from_p": "1",
        "from_q": "1",
        "name": "P",
        "phone": "555",  # null in p's item: filled from q's
        "only_p": "yes",
        "only_q": "yes",
    }
    assert users[("d@new.com",)] == {
        "email": "d@new.com",
        "from_dn": "1",
        "from_d": "1",
        "name": "D New",
        "phone": "777",
        "team": "red",
    }
    assert users[("u7@new.com",)] == {"email": "u7@new.com", "from_u7": "1", "i": 7}
    assert sorted(k[0] for k in users) == sorted(
        ["b@x.com", "c@x.com", "m@x.com", "d@new.com", "keep@y.com", *(f"u{i}@new.com" for i in range(N_USERS))]
    )
    profiles = s["profiles"]
    assert profiles[("pr-a",)] == {
        "id": "pr-a",
        "email": "b@x.com",
        "watchers": ["c@x.com", "keep@y.com"],
        "note": "chain",
    }
    assert profiles[("pr03",)] == {"id": "pr03", "email": "u3@new.com", "watchers": ["u4@new.com", "keep@y.com"]}
    assert profiles[("pr-keep",)] == {"id": "pr-keep", "email": "keep@y.com", "watchers": ["keep@y.com"]}
    assert len(profiles) == N_PROFILES + 2
    assert s["auth"] == {
        ("b@x.com", "1"): {"email": "b@x.com", "clientId": "1", "from_aa": "1", "pwd": "ha"},
        ("c@x.com", "1"): {"email": "c@x.com", "clientId": "1", "from_ab": "1", "pwd": "hb"},
        ("d@new.com", "1"): {
            "email": "d@new.com",
            "clientId": "1",
            "from_adn": "1",
            "from_ad": "1",
            "pwd": "hd",
            "role": "admin",
            "mfa": "sms",
        },
        ("u0@new.com", "2"): {"email": "u0@new.com", "clientId": "2", "from_au0c2": "1", "pwd": "x"},
        ("keep@y.com", "1"): {"email": "keep@y.com", "clientId": "1", "from_akeep": "1"},
        **{
            (f"u{i}@new.com", "1"): {"email": f"u{i}@new.com", "clientId": "1", f"from_au{i}": "1", "pwd": f"h{i}"}
            for i in range(N_AUTH)
        },
    }


class Estate:
    def __init__(self, make_db: Any, ddb: Any, ws: Any) -> None:
        self.ddb, self.ws = ddb, ws
        self.expected: dict[str, Any] = {}  # set by the fixture: the clean apply's final state
        self.core, self.leave = make_db(), make_db()
        ws.monkeypatch.setenv("RESUME_CORE_DSN", self.core.dsn)
        ws.monkeypatch.setenv("RESUME_LEAVE_DSN", self.leave.dsn)
        ddb.drop_all_tables()  # a second estate in one test starts from no tables too
        _seed_pg(self.core, self.leave)
        _seed_ddb(ddb)
        r, self.plan = ws.plan()
        assert r.code == 0, r.out + r.err
        self.actions = ws.plan_json(self.plan)["actions"]
        # --parallel 1 and --concurrency 1: the kill points are counted with the databases applied one after another
        # and DynamoDB's requests sent one at a time (at once, their order is not fixed: test_apply_in_parallel and
        # test_dynamodb_requests_in_flight cover that).
        self.apply_args = [
            "apply", str(self.plan), "--targets", "targets.yaml", "--auto-approve", "--confirm-live", "--parallel", "1",
            "--concurrency", "1",
        ]  # fmt: skip
        self.initial = self.state()

    def state(self) -> dict[str, Any]:
        return _state(self.core, self.leave, self.ddb)

    def crash(self, kill_point: str) -> subprocess.CompletedProcess[str]:
        """apply in a subprocess, killed with SIGKILL at `kill_point` (see crash_harness.py)."""
        cmd = [sys.executable, str(HARNESS), kill_point, "--", *self.apply_args]
        p = self._run(cmd)
        assert p.returncode == -signal.SIGKILL, (kill_point, p.returncode, p.stdout, p.stderr)
        assert f"crash_harness: SIGKILL at {kill_point}" in p.stderr, p.stderr
        assert not (self.plan.parent / "report.json").exists(), "a killed run must not have written a report"
        return p

    def rerun(self) -> subprocess.CompletedProcess[str]:
        """The same command again, as a plain CLI subprocess."""
        return self._run([sys.executable, "-m", "emailsync", *self.apply_args])

    def _run(self, cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd, cwd=self.ws.path, env={**os.environ, **env}, capture_output=True, text=True, timeout=TIMEOUT
        )

    def counted(self) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
        """apply through the harness without a kill point: the run, and every event the harness counted."""
        events = self.plan.parent / "harness-events.jsonl"
        p = self._run([sys.executable, str(HARNESS), "none", "--", *self.apply_args], CRASH_HARNESS_EVENTS=str(events))
        return p, [json.loads(line) for line in events.read_text().splitlines()]


_clean: dict[str, Any] = {}


def _clean_apply(make_db: Any, ddb: Any, ws: Any) -> dict[str, Any]:
    """The state an uninterrupted apply produces on a copy of the estate (once per session), its plan, and the
    events crash_harness counts in it (in order: what a kill point can name)."""
    if not _clean:
        copy = Estate(make_db, ddb, ws)
        r, events = copy.counted()
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
        report = json.loads((copy.plan.parent / "report.json").read_text())
        assert sorted(a["id"] for a in report["actions"]) == sorted(a["id"] for a in copy.actions)
        assert {a["status"] for a in report["actions"]} == {"applied"}
        state = copy.state()
        _check_core(state)
        _check_shape(copy.actions)
        # Filled only once everything above held: a failed clean apply is not cached for the next test.
        _clean.update(state=state, actions=[_comparable(a) for a in copy.actions], events=events)
    return _clean


def _check_shape(actions: list[dict[str, Any]]) -> None:
    """The plan exercises what the kill points need: several PostgreSQL steps, several move transactions."""
    kinds: dict[tuple[str, str], int] = {}
    for a in actions:
        kinds[(a["table"], a["kind"])] = kinds.get((a["table"], a["kind"]), 0) + 1
    assert kinds[("public.employees", "delete-on-conflict")] == 2
    assert kinds[("public.settings", "delete-on-conflict")] == 1
    assert kinds[("users", "merge-and-move")] == N_USERS + 5  # step 0 alone: two transactions
    assert kinds[("auth", "live-swap")] == N_AUTH + 4
    assert len({a["step"] for a in actions if a["target"] == "core"}) >= 3
    assert len({a["step"] for a in actions if a["table"] == "users"}) >= 2


def _comparable(a: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in a.items() if k not in ("conflict",)}


@pytest.fixture
def estate(make_db: Any, ddb: Any, ws: Any) -> Estate:
    return make_estate(make_db, ddb, ws)


def make_estate(make_db: Any, ddb: Any, ws: Any) -> Estate:
    """A fresh estate, planned, with the clean apply's final state as its expected state."""
    ws.targets(TARGETS)
    ws.mappings(MAPPINGS)
    clean = _clean_apply(make_db, ddb, ws)
    e = Estate(make_db, ddb, ws)
    e.expected = clean["state"]
    # The same plan (targets aside): same actions, ids, steps and planned items.
    assert [_comparable(a) for a in e.actions] == clean["actions"]
    return e


# --- checks --------------------------------------------------------------------------------------------------

_de = TypeDeserializer()


def _item(dynamo_json: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if dynamo_json is None else {k: _de.deserialize(v) for k, v in dynamo_json.items()}


def _key(a: dict[str, Any], which: str = "key") -> tuple[Any, ...]:
    k = _item(a[which]) or {}
    return tuple(k[n] for n in TABLES[a["table"]])


def _at(item: dict[str, Any] | None, path: str) -> Any:
    node: Any = item
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _tags(item: dict[str, Any] | None) -> set[str]:
    return {k for k in item or {} if k.startswith("from_")}


def _stage(e: Estate, mid: dict[str, Any], part: str) -> str:
    if mid[part] == e.initial[part]:
        return "initial"
    return "final" if mid[part] == e.expected[part] else "partial"


def _check_intermediate(
    e: Estate, mid: dict[str, Any], stages: dict[str, str], in_flight: int, killed: bool = True
) -> None:
    """What a kill may leave: each database wholly before or after its transaction; every DynamoDB item as it
    was, as planned after some of its actions, or gone from a key it moved away from; every tagged item exactly
    once, except the (single) live swap between its write and its delete, whose copy equals the planned item;
    journals written ahead of the stores (`killed`: every run so far was killed, none journaled its end)."""
    found = {part: _stage(e, mid, part) for part in stages}
    assert found == stages, found
    for db in ("core", "leave"):
        assert mid[db] in (e.initial[db], e.expected[db]), db
    # Updates: every item as it was, or with some of its planned changes made (each UpdateItem is atomic).
    for key, item in mid["profiles"].items():
        mine = [a for a in e.actions if a["table"] == "profiles" and _key(a) == key]
        before = e.initial["profiles"][key]
        for attr in {c["attribute"] for a in mine for c in a["changes"]} | set(item) | set(before):
            olds = [_de.deserialize(c["old"]) for a in mine for c in a["changes"] if c["attribute"] == attr]
            news = [_de.deserialize(c["new"]) for a in mine for c in a["changes"] if c["attribute"] == attr]
            assert _at(item, attr) in [_at(before, attr), *olds, *news], (key, attr, item)
    assert set(mid["profiles"]) == set(e.initial["profiles"])
    swaps_in_flight = []
    for table in ("users", "auth"):
        moves = [a for a in e.actions if a["table"] == table]
        allowed: dict[tuple[Any, ...], list[Any]] = {}
        for k in set(e.initial[table]) | set(e.expected[table]) | {_key(a, "new_key") for a in moves}:
            allowed[k] = [None, e.initial[table].get(k), e.expected[table].get(k)]
        for a in moves:
            allowed[_key(a, "new_key")].append(_item(a["merged"]))
        assert set(mid[table]) <= set(allowed), (table, set(mid[table]) - set(allowed))
        for k, item in mid[table].items():
            assert item in allowed[k], (table, k, item)
        # Nothing lost, nothing both moved and left behind.
        copies: dict[str, int] = {}
        for item in mid[table].values():
            for tag in _tags(item):
                copies[tag] = copies.get(tag, 0) + 1
        expected_copies = {tag: 1 for item in e.initial[table].values() for tag in _tags(item)}
        for a in moves:
            old, there = mid[table].get(_key(a)), mid[table].get(_key(a, "new_key"))
            if old == _item(a["row"]) and there == _item(a["merged"]) and old != there:
                assert a["live"], f"a non-live move is both done and not done: {a['id']}"
                swaps_in_flight.append(a["id"])
                for tag in _tags(old):
                    expected_copies[tag] += 1
        assert copies == expected_copies, (table, copies, expected_copies)
    assert len(swaps_in_flight) == in_flight, swaps_in_flight
    _check_identities(e, mid, final=False)
    _check_journals_at_kill(e, mid, finished=not killed)


def _done(e: Estate, mid: dict[str, Any], a: dict[str, Any]) -> bool:
    """Whether the killed run(s) had finished this action, judged from the stores."""
    if a["store"] == "postgres":
        return mid[a["target"]] == e.expected[a["target"]]
    if a["kind"] in ("update", "array-replace"):
        item = mid[a["table"]].get(_key(a))
        return all(_at(item, c["attribute"]) == _de.deserialize(c["new"]) for c in a["changes"])
    # A move is done once its item (its tags) left the old key.
    return not (_tags(_item(a["row"])) & _tags(mid[a["table"]].get(_key(a))))


def _check_finished(
    e: Estate, rerun: subprocess.CompletedProcess[str], mid: dict[str, Any], either: frozenset[str] = frozenset()
) -> None:
    """The stores equal the clean apply's, every identity is there once, report.json lists every action once
    (`already-applied` if done before the rerun, `applied` if not; for the ids in `either`, both are right) and
    the journals agree with it."""
    assert rerun.returncode == 0, (rerun.returncode, rerun.stdout, rerun.stderr)
    final = e.state()
    _check_core(final)
    for part in final:
        assert final[part] == e.expected[part], part
    _check_identities(e, final, final=True)
    report = json.loads((e.plan.parent / "report.json").read_text())
    ids = [x["id"] for x in report["actions"]]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(a["id"] for a in e.actions)
    assert sum(s["count"] for s in report["summary"]) == len(e.actions)
    expected = {a["id"]: "already-applied" if _done(e, mid, a) else "applied" for a in e.actions}
    statuses = {x["id"]: x["status"] for x in report["actions"]}
    wrong = {
        i: (statuses[i], want)
        for i, want in expected.items()
        if statuses[i] != want and not (i in either and statuses[i] in DONE_STATUSES)
    }
    assert not wrong, f"{len(wrong)} action(s) reported wrongly (found, expected): {wrong}"
    _check_journals_at_kill(e, final, finished=True)
    _check_final_journal(e, rerun.returncode, report)


def _check_identities(e: Estate, s: dict[str, Any], final: bool) -> None:
    """Every identity counted: PostgreSQL rows per table (fewer only by the rows deleted on conflict, once the
    database committed), the DynamoDB items' `from_<tag>` tags each in exactly one item (the live swap between
    its write and its delete aside, checked by _check_intermediate), every profile item still there."""
    deleted = Counter(a["table"].removeprefix("public.") for a in e.actions if a["kind"] == "delete-on-conflict")

    def rows(state: dict[str, Any]) -> dict[str, int]:
        (employees, settings), (requests,) = state["core"], state["leave"]
        return {"employees": len(employees), "settings": len(settings), "requests": len(requests)}

    before, now = rows(e.initial), rows(s)
    core_done = s["core"] != e.initial["core"]  # one transaction: all the deletes or none
    assert now == {t: n - (deleted[t] if core_done else 0) for t, n in before.items()}, (before, now, deleted)
    assert {r[0] for r in s["core"][0]} == {r[0] for r in e.initial["core"][0]} - (
        {a["key"]["id"] for a in e.actions if a["kind"] == "delete-on-conflict" and a["table"] == "public.employees"}
        if core_done
        else set()
    )
    assert {r[0] for r in s["leave"][0]} == {r[0] for r in e.initial["leave"][0]}
    assert set(s["profiles"]) == set(e.initial["profiles"])
    for table in ("users", "auth"):
        tags = Counter(t for item in s[table].values() for t in _tags(item))
        assert set(tags) == {t for item in e.initial[table].values() for t in _tags(item)}, table
        if final:
            assert set(tags.values()) == {1}, (table, {t: n for t, n in tags.items() if n != 1})


def _journals(e: Estate) -> list[list[dict[str, Any]]]:
    """Every apply journal beside the plan, oldest first; every line whole JSON (a kill cuts no line short: the
    harness kills between writes, never inside one)."""
    return [
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for path in sorted(e.plan.parent.glob("apply-*.jsonl"))
    ]


def _touched(e: Estate, s: dict[str, Any], a: dict[str, Any]) -> bool:
    """Whether the stores show a write of this action (begun or done)."""
    if a["store"] == "postgres":
        return s[a["target"]] != e.initial[a["target"]]
    now, before = s[a["table"]], e.initial[a["table"]]
    if a["kind"] in ("update", "array-replace"):
        item, was = now.get(_key(a)), before.get(_key(a))
        return any(_at(item, c["attribute"]) != _at(was, c["attribute"]) for c in a["changes"])
    new_key, merged = _key(a, "new_key"), _item(a["merged"])
    return now.get(_key(a)) != before.get(_key(a)) or (now.get(new_key) == merged != before.get(new_key))


def _check_journals_at_kill(e: Estate, s: dict[str, Any], finished: bool = False) -> None:
    """The journals against the stores: every write the stores show was announced by a `before` record first
    (write-ahead), and every outcome a journal records as done (a committed transaction, a batch's or a live
    delete's `after`, an outcome line) is done in the stores. Killed runs have no run-end."""
    by_id = {a["id"]: a for a in e.actions}
    announced: set[str] = set()
    done: set[str] = set()
    journals = _journals(e)
    for entries in journals:
        for x in entries:
            if x.get("event") == "write" and x.get("phase") == "before":
                announced.update(x.get("actions") or [x["action"]])
            elif x.get("event") == "write" and x.get("phase") == "after":
                # a transaction's, a batch's or a non-live update's outcomes; a live delete's own record
                done.update(i for i, status in (x.get("outcomes") or {}).items() if status in DONE_STATUSES)
                if x.get("write") == "delete":
                    done.add(x["action"])
            elif x.get("event") == "outcome" and x["status"] in DONE_STATUSES:
                done.add(x["id"])
    unannounced = [a["id"] for a in e.actions if _touched(e, s, a) and a["id"] not in announced]
    assert not unannounced, f"written without a journal record first: {unannounced}"
    not_done = sorted(i for i in done if not _done(e, s, by_id[i]))
    assert not not_done, f"journaled as done but not done in the stores: {not_done}"
    if not finished:
        assert not [x for entries in journals for x in entries if x.get("event") == "run-end"], "a killed run ended"


def _check_final_journal(e: Estate, code: int, report: dict[str, Any]) -> None:
    """The last run's journal says what report.json says: one outcome per action with the same status, and a
    run-end with the exit code and summary; over all journals, every action is recorded as done."""
    entries = _journals(e)[-1]
    (start,) = [x for x in entries if x.get("event") == "run-start"]
    assert start["run_id"] == report["run_id"]
    outcomes = [x for x in entries if x.get("event") == "outcome"]
    assert len(outcomes) == len(e.actions) == len({x["id"] for x in outcomes})
    assert {x["id"]: x["status"] for x in outcomes} == {x["id"]: x["status"] for x in report["actions"]}
    (end,) = [x for x in entries if x.get("event") == "run-end"]
    assert end["exit_code"] == code and end["summary"] == report["summary"], end
    # What a rollback reads: every action done, over all the runs' journals.
    recorded = recorded_outcomes(e.plan)
    missing = {a["id"]: recorded.get(a["id"]) for a in e.actions if recorded.get(a["id"]) not in DONE_STATUSES}
    assert not missing, f"actions the journals do not record as done: {missing}"


def kill_area(point: str) -> str:
    """The docs/reliability.md class of a kill point: which part of the apply it interrupts."""
    if point.startswith("pg-"):
        return "kill -9 during apply (PostgreSQL)"
    if "@auth:" in point:
        return "kill -9 during apply (live swap)"
    if point == "report":
        return "kill -9 during apply (before report.json)"
    return "kill -9 during apply (DynamoDB)"


# --- the tests -----------------------------------------------------------------------------------------------

INIT, DONE, PART = "initial", "final", "partial"
SCENARIOS = [
    # kill point, then where each part of the estate is when the process dies, and live swaps left half done
    pytest.param(
        "pg-step:2",
        {"core": INIT, "leave": INIT, "users": INIT, "profiles": INIT, "auth": INIT},
        0,
        id="mid-pg-transaction",
    ),
    pytest.param(
        "pg-commit:2",
        {"core": DONE, "leave": DONE, "users": INIT, "profiles": INIT, "auth": INIT},
        0,
        id="pg-done-ddb-not",
    ),
    pytest.param(
        "ddb-after:TransactWriteItems@users:1",
        {"core": DONE, "leave": DONE, "users": PART, "profiles": INIT, "auth": INIT},
        0,
        id="between-move-transactions",
    ),
    pytest.param(
        "ddb-after:UpdateItem@profiles:5",
        {"core": DONE, "leave": DONE, "users": PART, "profiles": PART, "auth": INIT},
        0,
        id="after-update",
    ),
    pytest.param(
        "ddb-after:PutItem@auth:3",
        {"core": DONE, "leave": DONE, "users": DONE, "profiles": DONE, "auth": PART},
        1,
        id="live-put-no-delete",
    ),
    pytest.param(
        # the chain's second swap (a -> b, into the key b's swap vacated), after its Put, before its Delete.
        # Regression: the rerun used to judge the finished b -> c swap stale (its old key holds a's copy, not
        # recognised as this plan's because a's old item is still there) and abort the live part, exit 3.
        "ddb-after:PutItem@auth:7",
        {"core": DONE, "leave": DONE, "users": DONE, "profiles": DONE, "auth": PART},
        1,
        id="live-chain-put-no-delete",
    ),
    # Regression: every ledger says "complete", and the rerun used to be refused as a replay (exit 1) with
    # report.json never written; a run whose journal has no run-end is now resumed.
    pytest.param(
        "report", {"core": DONE, "leave": DONE, "users": DONE, "profiles": DONE, "auth": DONE}, 0, id="before-report"
    ),
]


@pytest.mark.parametrize(("kill_point", "stages", "in_flight"), SCENARIOS)
def test_kill_9_then_rerun_finishes_the_plan(
    estate: Estate, kill_point: str, stages: dict, in_flight: int, reliability: Record
) -> None:
    estate.crash(kill_point)
    mid = estate.state()
    _check_intermediate(estate, mid, stages, in_flight)
    _check_finished(estate, estate.rerun(), mid)
    # And once more (in-process, for speed): nothing changes. A plan the ledgers record as complete everywhere is
    # refused as a replay; otherwise every action is re-checked and found already applied.
    again = estate.ws.run(*estate.apply_args)
    if again.code == 1:
        assert "already been applied completely" in again.err, again.err
    else:
        assert again.code == 0, again.out + again.err
        report = json.loads((estate.plan.parent / "report.json").read_text())
        assert {x["status"] for x in report["actions"]} == {"already-applied"}
    assert estate.state() == estate.expected
    reliability(kill_area(kill_point), "nothing lost: rerun finished the plan", detail=kill_point)


TWICE = [
    pytest.param(
        "pg-commit:1",
        {"core": DONE, "leave": INIT, "users": INIT, "profiles": INIT, "auth": INIT},
        "ddb-after:UpdateItem@auth:1",  # a live merge into an existing item, before its delete
        {"core": DONE, "leave": DONE, "users": DONE, "profiles": DONE, "auth": PART},
        id="between-pg-targets-then-live-merge",
    ),
    pytest.param(
        "ddb-after:PutItem@auth:2",
        {"core": DONE, "leave": DONE, "users": DONE, "profiles": DONE, "auth": PART},
        "ddb-before:DeleteItem@auth:1",  # the resumed swap, killed again after its verification
        {"core": DONE, "leave": DONE, "users": DONE, "profiles": DONE, "auth": PART},
        id="live-swap-killed-twice",
    ),
]


@pytest.mark.parametrize(("first", "first_stages", "second", "second_stages"), TWICE)
def test_killed_twice_then_rerun_finishes_the_plan(
    estate: Estate, first: str, first_stages: dict, second: str, second_stages: dict, reliability: Record
) -> None:
    estate.crash(first)
    _check_intermediate(estate, estate.state(), first_stages, first_stages["auth"] == PART)
    estate.crash(second)
    mid = estate.state()
    _check_intermediate(estate, mid, second_stages, 1)
    _check_finished(estate, estate.rerun(), mid)
    for point in (first, second):
        reliability(kill_area(point), "nothing lost: rerun finished the plan (killed twice)", detail=point)
