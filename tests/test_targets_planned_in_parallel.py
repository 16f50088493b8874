"""`emailsync plan --parallel N`: targets are planned at the same time on their own connections; the plan is the same
whatever N; a failing target stops the others and is the one reported; Ctrl-C stops every target at once, even one
waiting on a lock (real PostgreSQL)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from helpers import assert_user_error, listing, plan_doc

from emailsync.engine.executor import run_all
from emailsync.errors import INTERRUPTED

SCRIPT = Path(sys.executable).with_name("emailsync")


def _estate(ws: Any, make_db: Any, n: int = 4) -> list[Any]:
    dbs = [make_db() for _ in range(n)]
    for k, d in enumerate(dbs):
        d.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, manager_email text)")
        d.execute(
            "INSERT INTO employees SELECT g, 'u' || g || '@old.com', 'u' || (g % 11 + 1) || '@old.com' "
            f"FROM generate_series(1, {200 * (k + 1)}) g"
        )
    ws.postgres_targets(
        {f"t{k}": d for k, d in enumerate(dbs)}, "- table: employees\n  columns: [email, manager_email]\n"
    )
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(1, 1000)})
    return dbs


def _body(plan: Path) -> dict[str, Any]:
    data = plan_doc(plan)
    return {k: v for k, v in data.items() if k not in ("digest", "created_at", "signature")}


def test_the_plan_is_the_same_whatever_the_width(ws, make_db):
    _estate(ws, make_db)
    bodies = []
    for width in ("1", "2", "4"):
        r, plan = ws.plan("--parallel", width)
        assert r.code == 0, r.out + r.err
        bodies.append(_body(plan))
    assert bodies[0] == bodies[1] == bodies[2]
    assert list(bodies[0]["targets"]) == ["t0", "t1", "t2", "t3"]
    assert len(bodies[0]["actions"]) > 1000


def test_a_failing_target_is_the_one_reported_and_nothing_is_written(ws, make_db):
    dbs = _estate(ws, make_db)
    dbs[2].execute("DROP TABLE employees")
    files = listing(ws.path)
    for width in ("1", "4"):
        r = ws.run("plan", "--parallel", width)
        assert_user_error(r, "postgres[2]", "employees")
    assert listing(ws.path) == files


class _Slow:
    def __init__(self, value: int, fail: bool = False) -> None:
        self.value, self.fail, self.cancelled, self.ran = value, fail, False, False

    def run(self) -> int:
        self.ran = True
        for _ in range(200):
            if self.cancelled:
                raise RuntimeError(f"step {self.value} stopped")
            if self.fail:
                raise ValueError(f"step {self.value} failed")
            time.sleep(0.01)
        return self.value

    def cancel(self) -> None:
        self.cancelled = True


def test_run_all_keeps_order_stops_the_rest_and_reports_the_real_failure():
    assert run_all([_Slow(i) for i in range(5)], 3) == list(range(5))
    steps = [_Slow(0), _Slow(1), _Slow(2, fail=True), _Slow(3)]
    started = time.monotonic()
    try:
        run_all(steps, 4)
    except ValueError as e:
        assert str(e) == "step 2 failed"  # not "step 0 stopped", though step 0 comes first
    else:
        raise AssertionError("no error")
    assert time.monotonic() - started < 1.5  # the others were stopped, not run to the end (2 s)
    # Each other step was stopped while running, or dropped before it started.
    assert all(s.cancelled or not s.ran for s in (steps[0], steps[1], steps[3]))
    assert any(s.cancelled for s in (steps[0], steps[1], steps[3]))


def test_ctrl_c_stops_every_target_even_one_waiting_on_a_lock(ws, make_db):
    dbs = _estate(ws, make_db, n=3)
    with psycopg.connect(dbs[1].dsn) as holder, psycopg.connect(dbs[1].dsn, autocommit=True) as watcher:
        holder.execute("LOCK TABLE employees IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen(
            [str(SCRIPT), "plan", "--quiet", "--parallel", "3"],
            cwd=ws.path,
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        q = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        deadline = time.monotonic() + 30
        while watcher.execute(q).fetchone()[0] == 0:  # type: ignore[index]
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=10)  # the lock is still held: only a cancelled query lets it end
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("a target kept waiting after Ctrl-C") from None
        assert (proc.returncode, err.decode()) == (130, INTERRUPTED)
        assert watcher.execute(q).fetchone()[0] == 0  # type: ignore[index]  # no query of ours left waiting
    assert not list(ws.path.glob("plans/*/plan.jsonl.gz"))


def _on_a_terminal(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 60) -> bytes:
    """The output of a command run on a pseudo-terminal (progress bars are drawn only there), to its end."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.chdir(cwd)
        os.execve(args[0], args, env)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                out += data
    finally:
        with contextlib.suppress(ChildProcessError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(fd)
    return out


def test_targets_planned_in_processes_show_their_own_progress_bars(ws, make_db):
    """With several PostgreSQL targets planned at once, each is planned in a process of its own; their progress
    bars are drawn by the command on the terminal, one per target, and the plan is the one width 1 makes."""
    _estate(ws, make_db, n=3)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")} | {"TERM": "xterm"}
    out = _on_a_terminal([str(SCRIPT), "plan", "--parallel", "3", "--out", "w3/plan.jsonl.gz"], ws.path, env)
    text = out.decode(errors="replace")
    assert all(f"plan t{k}: reading" in text for k in range(3)), text[-2000:]
    assert "Traceback" not in text
    r, one = ws.plan("--parallel", "1")
    assert r.code == 0, r.err
    assert _body(ws.path / "w3" / "plan.jsonl.gz") == _body(one)


def test_a_planning_process_ends_when_the_command_is_killed(ws, make_db):
    """kill -9 of `emailsync plan` while its target processes wait on a lock: they end too (their queries are
    cancelled, their sessions gone), and nothing is left behind: no plan, no temporary file."""
    dbs = _estate(ws, make_db, n=2)
    tmp = ws.path / "tmp"
    tmp.mkdir()
    with psycopg.connect(dbs[1].dsn) as holder, psycopg.connect(dbs[1].dsn, autocommit=True) as watcher:
        holder.execute("LOCK TABLE employees IN ACCESS EXCLUSIVE MODE")
        env = os.environ.copy() | {"TMPDIR": str(tmp)}
        proc = subprocess.Popen([str(SCRIPT), "plan", "--quiet", "--parallel", "2"], cwd=ws.path, env=env)
        q = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        deadline = time.monotonic() + 30
        while watcher.execute(q).fetchone()[0] == 0:  # type: ignore[index]
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while watcher.execute(q).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "a planning process kept waiting after its command was killed"
            time.sleep(0.05)
        holder.rollback()
    assert not list(ws.path.glob("plans/*/plan.jsonl.gz"))
    assert not list(tmp.iterdir())  # the parts' files were never named


def test_a_planning_process_that_dies_is_one_error_and_nothing_is_written(ws, make_db, monkeypatch):
    """A target's process ends without a word (killed, out of memory) while making its actions: the command says
    which target and how it ended, exit 1, no traceback, and writes no plan."""
    from emailsync.stores.postgres.store import PostgresStore

    _estate(ws, make_db, n=2)
    files = listing(ws.path)
    monkeypatch.setattr(PostgresStore, "actions", lambda self, read, levels, skipped: os._exit(9))
    r = ws.run("plan", "--parallel", "2")
    assert_user_error(r, "the process planning it ended unexpectedly (exit code 9)")
    assert listing(ws.path) == files


def test_an_uncompressed_plan_file_has_the_same_body_and_a_plan_made_for_one_deflates_to_the_same_bytes(ws, make_db):
    """Each target's lines are deflated where they are made only for a .gz file; a plan made without that is
    deflated when written to one, to exactly the bytes of a plan made with it."""
    from datetime import UTC, datetime

    from emailsync.config import load_targets
    from emailsync.engine.planner import build_plan
    from emailsync.mappings import load_mappings
    from emailsync.planfile import write_plan

    _estate(ws, make_db)
    r, gz = ws.plan("--parallel", "2")
    assert r.code == 0, r.out + r.err
    r = ws.run("plan", "--parallel", "2", "--out", "plans/flat/plan.jsonl")
    assert r.code == 0, r.out + r.err
    flat = ws.path / "plans/flat/plan.jsonl"
    assert flat.read_bytes()[:1] == b"{" and _body(flat) == _body(gz)

    loaded = load_targets(ws.path / "targets.yaml")
    mset = load_mappings(loaded.mappings_path(None), loaded.config.match)
    at = datetime(2026, 1, 2, tzinfo=UTC)
    files = []
    for deflate in (True, False):
        plan = build_plan(loaded, mset, now=at, parallel=2, deflate=deflate)
        files.append(ws.path / f"made-{deflate}.jsonl.gz")
        write_plan(plan, files[-1])
    assert files[0].read_bytes() == files[1].read_bytes()
    assert _body(files[1]) == _body(gz)
