"""apply --batch-size under the two things it is for: a kill -9 at any moment, after which applying the plan again
goes on at the first batch not committed and ends exactly where one transaction would; and a busy database, whose
other writers keep changing the planned rows' other columns during the whole apply without ever waiting long on a
lock and without any of their changes being lost.

The kill -9 test runs the CLI through tests/crash_harness.py (a subprocess that SIGKILLs itself at a deterministic
point). The points are chosen by a seeded random generator from the events of an uninterrupted batched run of the
same estate: `pg-step` (inside a batch's open transaction), `pg-batch` (right after a batch committed) and
`report`. After each kill the database must be exactly "the estate with the committed batches' actions applied
and nothing else", those batches are the ones `emailsync.batches` and the killed run's journal name; then a rerun
without --batch-size finishes the plan, and its rows equal those of a one-transaction apply of a twin database.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
from helpers import cli_process
from test_online_batched_apply import MAPPINGS, TABLES, dump, seed

HARNESS = Path(__file__).with_name("crash_harness.py")
TIMEOUT = 120

# -- 1. kill -9 at seeded points ---------------------------------------------------------------------------------

SIZE = 3  # rows a batch: the estate of test_online_batched_apply.py then makes dozens of batches (>= 10 asserted)
SEED = 20240917
N_STEPS, N_BATCHES = 6, 5  # seeded kill points of each kind; `report` besides
ESTATE_TABLES = ("employees", "settings", "badges", "cards", "requests")


def _ident(table: str, row: dict[str, Any]) -> Any:
    """What names a row for the whole apply: its id; settings' key is the email that moves, its theme is unique."""
    return row["theme"] if table == "settings" else row["id"]


def _rows(db: Any) -> dict[str, dict[Any, dict[str, Any]]]:
    """Every row of the estate's tables as {table: {identity: row as to_jsonb renders it}}."""
    out: dict[str, dict[Any, dict[str, Any]]] = {}
    for t in ESTATE_TABLES:
        rows = [json.loads(r) for (r,) in db.rows(f"SELECT to_jsonb(x)::text FROM {t} x")]
        out[t] = {_ident(t, r): r for r in rows}
        assert len(out[t]) == len(rows), f"{t}: two rows with one identity"
    return out


class Model:
    """The plan's actions against the estate as it was: what the tables hold once a given set of actions is done."""

    def __init__(self, initial: dict[str, dict[Any, dict[str, Any]]], actions: list[dict[str, Any]]) -> None:
        self.initial = initial
        self.actions = actions
        by_email = {r["email"]: theme for theme, r in initial["settings"].items()}
        self.where: dict[str, tuple[str, Any]] = {}
        cells: Counter[tuple[str, Any, str]] = Counter()
        for a in actions:
            table = a["table"].removeprefix("public.")
            ident = by_email[a["key"]["email"]] if table == "settings" else a["key"]["id"]
            assert ident in initial[table], a
            self.where[a["id"]] = (table, ident)
            if a["kind"] != "delete-on-conflict":
                cells[(table, ident, a["column"])] += 1
                assert initial[table][ident][a["column"]] == a["old"], a
        assert max(cells.values()) == 1, "one action a cell: the model below needs no order"

    def state(self, done: set[str]) -> dict[str, dict[Any, dict[str, Any]]]:
        out = {t: {i: dict(r) for i, r in rows.items()} for t, rows in self.initial.items()}
        for a in self.actions:
            if a["id"] in done and a["kind"] != "delete-on-conflict":
                table, ident = self.where[a["id"]]
                out[table][ident][a["column"]] = a["new"]
        for a in self.actions:
            if a["id"] in done and a["kind"] == "delete-on-conflict":
                table, ident = self.where[a["id"]]
                del out[table][ident]
        return out


def _journal(plan: Path) -> list[list[dict[str, Any]]]:
    return [[json.loads(x) for x in p.read_text().splitlines()] for p in sorted(plan.parent.glob("apply-*.jsonl"))]


def _batch_ids(entries: list[dict[str, Any]]) -> dict[int, set[str]]:
    """The action ids of each batch (from 0) a run announced in its journal before writing it."""
    out: dict[int, set[str]] = {}
    for x in entries:
        if x.get("event") == "write" and x.get("op") == "transaction" and x.get("phase") == "before":
            out.setdefault(x["batch"] - 1, set()).update(x["actions"])
    return out


def _md5(ids: set[str]) -> str:
    return hashlib.md5("\n".join(sorted(ids)).encode()).hexdigest()


def _batches_table(db: Any) -> list[tuple[Any, ...]]:
    if not db.rows("SELECT to_regclass('emailsync.batches') IS NOT NULL")[0][0]:
        return []
    return db.rows(
        "SELECT batch, batches, batch_size, ids_md5, run_id, committed_at, counts FROM emailsync.batches ORDER BY batch"
    )


def _harness(ws: Any, point: str, plan: Path, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(HARNESS), point, "--", "apply", str(plan), "--auto-approve", "--batch-size", str(SIZE)]
    return subprocess.run(cmd, cwd=ws.path, env={**os.environ, **env}, capture_output=True, text=True, timeout=TIMEOUT)


def _planned(ws: Any, make_db: Any) -> tuple[Any, Path]:
    """A fresh copy of the estate, with its own plan (targets.yaml then names this database)."""
    db = make_db()
    seed(db)
    ws.postgres_targets({"core": db}, TABLES)
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    return db, plan


def _kill_points(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Seeded kill points from the events of an uninterrupted run, each with the batches committed when it fires."""
    steps = sorted(e["count"] for e in events if e["event"] == "pg-step")
    batches = sorted(e["count"] for e in events if e["event"] == "pg-batch")
    rng = random.Random(SEED)
    chosen = [f"pg-step:{n}" for n in sorted(rng.sample(steps, N_STEPS))]
    chosen += [f"pg-batch:{n}" for n in sorted(rng.sample(batches, N_BATCHES))]
    chosen.append("report")
    committed_before: dict[str, int] = {}
    done = 0
    for e in events:
        if e["event"] == "pg-batch":
            done += 1
        committed_before[f"{e['event']}:{e['count']}" if e["event"] != "report" else "report"] = done
    return [(p, committed_before[p]) for p in chosen]


def test_kill_9_at_seeded_points_then_rerun_ends_where_one_transaction_ends(make_db: Any, ws: Any) -> None:
    ws.mappings(MAPPINGS)
    # The twin: the same estate applied in one transaction.
    ref, ref_plan = _planned(ws, make_db)
    r = ws.run("apply", str(ref_plan), "--auto-approve")
    assert r.code == 0, r.out + r.err
    expected_dump, expected_rows = dump(ref), _rows(ref)

    # An uninterrupted batched run through the harness: the space of kill points (and it ends where the twin does).
    db, plan = _planned(ws, make_db)
    actions = ws.plan_json(plan)["actions"]
    initial = _rows(db)
    model = Model(initial, actions)
    assert model.state({a["id"] for a in actions}) == expected_rows, "the model of the actions is not the apply"
    events_file = ws.path / "events.jsonl"
    p = _harness(ws, "none", plan, CRASH_HARNESS_EVENTS=str(events_file))
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert dump(db) == expected_dump
    events = [json.loads(x) for x in events_file.read_text().splitlines()]
    n_batches = len(_batches_table(db))
    kinds = Counter(e["event"] for e in events)
    assert kinds["pg-batch"] == n_batches >= 10, kinds
    assert kinds["pg-step"] >= N_STEPS and kinds["report"] == 1, kinds
    # pg-step counts on across the batches: 1, 2, 3, ... in run order, with steps between later batches' commits.
    steps = [e["count"] for e in events if e["event"] == "pg-step"]
    assert steps == list(range(1, len(steps) + 1))
    kind_order = [e["event"] for e in events if e["event"] in ("pg-step", "pg-batch")]
    assert kind_order.index("pg-batch") < len(kind_order) - 1 - kind_order[::-1].index("pg-step"), kind_order
    points = _kill_points(events)
    print("kill points (point, batches committed):", points)

    failures: list[str] = []
    for point, committed in points:
        try:
            _kill_and_rerun(ws, make_db, point, committed, n_batches, expected_dump, expected_rows)
        except AssertionError as e:
            failures.append(f"{point}: {str(e)[:3000]}")
    assert not failures, "\n\n".join(failures)


def _kill_and_rerun(
    ws: Any,
    make_db: Any,
    point: str,
    committed: int,
    n_batches: int,
    expected_dump: list[Any],
    expected_rows: dict[str, Any],
) -> None:
    db, plan = _planned(ws, make_db)
    actions = ws.plan_json(plan)["actions"]
    model = Model(_rows(db), actions)
    p = _harness(ws, point, plan)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stdout, p.stderr[-3000:])
    assert f"crash_harness: SIGKILL at {point}" in p.stderr, p.stderr[-3000:]
    assert not (plan.parent / "report.json").exists(), "a killed run wrote a report"

    # What the kill left: the batches committed before it, each once and as its journal announced it ...
    (killed,) = _journal(plan)
    killed_run = next(x["run_id"] for x in killed if x.get("event") == "run-start")
    announced = _batch_ids(killed)
    recorded = _batches_table(db)
    assert [b[0] for b in recorded] == list(range(committed)), (recorded, committed)
    for batch, batches, size, md5, run_id, _, counts in recorded:
        assert (batches, size, run_id) == (n_batches, SIZE, killed_run)
        assert md5 == _md5(announced[batch]), f"batch {batch}: the ledger's ids are not the journal's"
        assert {k: n for k, n in counts.items() if n} == {"applied": len(announced[batch])}, counts
    in_flight = set(announced) - set(range(committed))
    assert in_flight == ({committed} if point.startswith("pg-step") else set()), (sorted(announced), committed)
    # ... and in the tables exactly those batches' actions, nothing of the batch in flight, no row lost.
    done = set().union(*(announced[b] for b in range(committed)))
    now = _rows(db)
    want = model.state(done)
    for t in ESTATE_TABLES:
        assert set(now[t]) == set(want[t]), (t, "rows lost or left", set(want[t]) ^ set(now[t]))
        wrong = {i: (now[t][i], want[t][i]) for i in now[t] if now[t][i] != want[t][i]}
        assert not wrong, (t, "rows not as the committed batches leave them (found, expected)", wrong)

    # The rerun, without --batch-size: it goes on at the recorded size with the first batch not committed.
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, (r.code, r.out, r.err)
    assert dump(db) == expected_dump, "the rerun did not end where one transaction ends"
    assert _rows(db) == expected_rows
    report = json.loads((plan.parent / "report.json").read_text())
    statuses = {x["id"]: x["status"] for x in report["actions"]}
    assert len(report["actions"]) == len(statuses) == len(actions)
    want_status = {a["id"]: "already-applied" if a["id"] in done else "applied" for a in actions}
    wrong_status = {i: (statuses.get(i), s) for i, s in want_status.items() if statuses.get(i) != s}
    assert not wrong_status, ("reported (found, expected)", wrong_status)
    final = _batches_table(db)
    assert [b[0] for b in final] == list(range(n_batches)), final
    assert final[:committed] == recorded, "a batch the killed run committed was recorded again"
    assert {b[4] for b in final[committed:]} <= {report["run_id"]} and report["run_id"] != killed_run
    assert {(b[1], b[2]) for b in final} == {(n_batches, SIZE)}
    rerun = _journal(plan)[1]
    assert sorted(_batch_ids(rerun)) == list(range(committed, n_batches)), "the rerun ran a committed batch again"


# -- 2. a busy writer on the planned rows' other columns --------------------------------------------------------

N_EMP, N_DESKS, N_CHAINS = 2400, 1200, 20
BUSY_SIZE = 150

BUSY_TABLES = """\
- table: employees
  columns: [email, manager_email]
- table: desks
  columns: [owner_email]
"""


def _busy_mappings() -> dict[str, str]:
    m = {f"e{i}@old.com": f"e{i}@new.com" for i in range(N_EMP - 2 * N_CHAINS)}
    for k in range(N_CHAINS):  # chains: b moves on to c first, then a into b
        m[f"c{k}a@x.com"] = f"c{k}b@x.com"
        m[f"c{k}b@x.com"] = f"c{k}c@x.com"
    return m


def _emp_email(i: int) -> str:
    plain = N_EMP - 2 * N_CHAINS
    if i < plain:
        return f"e{i}@old.com"
    k, j = divmod(i - plain, 2)
    return f"c{k}{'ab'[j]}@x.com"


def _busy_seed(db: Any) -> None:
    db.execute(
        "CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE NOT NULL, manager_email text, "
        "full_name text NOT NULL, visits int NOT NULL DEFAULT 0)"
    )
    db.execute(
        "CREATE TABLE desks (id int PRIMARY KEY, owner_email text REFERENCES employees (email) ON UPDATE CASCADE, "
        "floor int NOT NULL, visits int NOT NULL DEFAULT 0)"
    )
    emp = [(i, _emp_email(i), _emp_email(i // 10) if i >= 10 else None, f"Person {i}") for i in range(N_EMP)]
    desks = [(d, _emp_email((d * 7) % N_EMP), d % 9) for d in range(N_DESKS)]
    with db.connect() as c, c.cursor() as cur:
        cur.executemany("INSERT INTO employees (id, email, manager_email, full_name) VALUES (%s, %s, %s, %s)", emp)
        cur.executemany("INSERT INTO desks (id, owner_email, floor) VALUES (%s, %s, %s)", desks)


class Writer(threading.Thread):
    """Another application: `UPDATE ... SET visits = visits + 1` on planned rows, one autocommit statement at a
    time, waiting at most 1 s for a row lock; half of them on the rows of the batch in flight (`hot`, from the
    apply's journal), the others anywhere. Counts its own updates per row."""

    def __init__(self, db: Any, rows: list[tuple[str, int]]) -> None:
        super().__init__(daemon=True)
        self.db, self.rows = db, rows
        self.hot: list[tuple[str, int]] = []  # set by the test as the apply announces each batch
        self.stop = threading.Event()
        self.done: Counter[tuple[str, int]] = Counter()
        self.times: list[float] = []
        self.hot_updates = 0
        self.longest = 0.0
        self.lock_timeouts = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        rng = random.Random(SEED)
        try:
            with psycopg.connect(self.db.dsn, autocommit=True) as c:
                c.execute("SET lock_timeout = '1s'")
                while not self.stop.is_set():
                    hot = self.hot
                    table, row = rng.choice(hot if hot and rng.random() < 0.5 else self.rows)
                    t = time.monotonic()
                    try:
                        n = c.execute(f"UPDATE {table} SET visits = visits + 1 WHERE id = %s", (row,)).rowcount
                    except psycopg.errors.LockNotAvailable:
                        self.lock_timeouts += 1
                        continue
                    self.longest = max(self.longest, time.monotonic() - t)
                    assert n == 1, (table, row, n)
                    self.done[(table, row)] += 1
                    self.times.append(time.time())
                    self.hot_updates += hot is self.hot and (table, row) in hot
        except BaseException as e:  # reported by the test
            self.errors.append(e)


def _follow(folder: Path, where: dict[str, tuple[str, int]], writer: Writer, running: threading.Thread) -> int:
    """While the apply runs, read its journal as it grows and point the writer at the rows of each batch it
    announces (a `before` record is written before the batch's first statement); returns how many batches it saw."""
    seen: set[int] = set()
    pos, buf, journal = 0, b"", None
    while running.is_alive():
        if journal is None:
            found = sorted(folder.glob("apply-*.jsonl"))
            journal = found[0] if found else None
        if journal is not None:
            with open(journal, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            pos += len(chunk)
            *lines, buf = (buf + chunk).split(b"\n")
            for line in lines:
                x = json.loads(line)
                if x.get("event") == "write" and x.get("phase") == "before" and "batch" in x:
                    writer.hot = [where[i] for i in x["actions"]]
                    seen.add(x["batch"])
        time.sleep(0.002)
    return len(seen)


def test_a_busy_writer_on_other_columns_never_waits_long_and_loses_nothing(make_db: Any, ws: Any) -> None:
    twin, busy = make_db(), make_db()
    _busy_seed(twin)
    _busy_seed(busy)
    ws.mappings(_busy_mappings())
    ws.postgres_targets({"core": twin}, BUSY_TABLES)
    r, twin_plan = ws.plan()
    assert r.code == 0, r.out + r.err
    r = ws.run("apply", str(twin_plan), "--auto-approve")
    assert r.code == 0, r.out + r.err

    ws.postgres_targets({"core": busy}, BUSY_TABLES)
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    actions = ws.plan_json(plan)["actions"]
    assert {a["kind"] for a in actions} == {"update"}
    where = {a["id"]: (a["table"].removeprefix("public."), a["key"]["id"]) for a in actions}
    writer = Writer(busy, sorted(set(where.values())))
    writer.start()
    out: dict[str, Any] = {}
    try:
        time.sleep(0.2)  # the writer is busy before the apply starts
        proc = cli_process(ws, "apply", str(plan), "--auto-approve", "--batch-size", str(BUSY_SIZE))
        running = threading.Thread(target=lambda: out.update(output=proc.communicate(timeout=TIMEOUT)))
        running.start()
        followed = _follow(plan.parent, where, writer, running)
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    assert not writer.errors, writer.errors
    assert proc.returncode == 0, (proc.returncode, out)

    # The writer never waited out its lock timeout, and it ran all through the batches, also on their rows.
    assert writer.lock_timeouts == 0, f"{writer.lock_timeouts} of the writer's updates hit lock_timeout = 1s"
    batches = busy.rows(
        "SELECT count(*), min(batches), extract(epoch FROM min(started_at)), extract(epoch FROM max(committed_at)) "
        "FROM emailsync.batches"
    )[0]
    assert batches[0] == batches[1] == followed >= 20, (batches, followed)
    during = sum(float(batches[2]) <= t <= float(batches[3]) for t in writer.times)
    assert during > 50, f"only {during} of the writer's {len(writer.times)} updates ran during the batches"
    assert writer.hot_updates > 50, writer.hot_updates
    report = json.loads((plan.parent / "report.json").read_text())
    statuses = Counter(x["status"] for x in report["actions"])
    assert statuses == {"applied": len(actions)}, (statuses, [x for x in report["actions"] if x["status"] != "applied"])

    # The emails: exactly those of the one-transaction apply, every row there once.
    emails = "SELECT id, email, manager_email, full_name FROM employees ORDER BY id"
    desk_emails = "SELECT id, owner_email, floor FROM desks ORDER BY id"
    assert busy.rows(emails) == twin.rows(emails)
    assert busy.rows(desk_emails) == twin.rows(desk_emails)
    assert len(busy.rows(emails)) == N_EMP and len(busy.rows(desk_emails)) == N_DESKS
    now = {e for (e,) in busy.rows("SELECT email FROM employees")}
    moved = _busy_mappings()
    for old, new in moved.items():
        assert new in now, new
        assert (old in now) == (old in moved.values()), old  # gone, unless another address moved into it (a chain)
    # And every one of the writer's updates is there: the apply overwrote none of them.
    assert twin.rows("SELECT sum(visits) FROM employees") == twin.rows("SELECT sum(visits) FROM desks") == [(0,)]
    for table, n in (("employees", N_EMP), ("desks", N_DESKS)):
        visits = dict(busy.rows(f"SELECT id, visits FROM {table}"))
        assert len(visits) == n
        lost = {i: (v, writer.done[(table, i)]) for i, v in visits.items() if v != writer.done[(table, i)]}
        assert not lost, (table, "visits (found, the writer's updates)", dict(list(lost.items())[:10]))
    print(
        f"writer: {sum(writer.done.values())} updates, {during} during the {batches[0]} batches, "
        f"{writer.hot_updates} on the batch in flight's rows, longest {writer.longest:.3f} s"
    )
