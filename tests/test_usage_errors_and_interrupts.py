"""How the command line meets a person or a CI job: usage mistakes are one `error:` line and exit 1 (never 2,
`plan --detailed-exitcode`'s "changes"), contradictory flags are refused, a missing plan is named before anything
else, Ctrl-C anywhere is one line and exit 130; --version, shell completion, plain help and NO_COLOR."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import listing, refused, snapshot

from emailsync import __version__
from emailsync.errors import INTERRUPTED

SCRIPT = Path(sys.executable).with_name("emailsync")  # the installed console script, as a user runs it


def _estate(ws: Any, db: Any) -> Path:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@o.com'), (2, 'b@o.com')")
    ws.postgres_targets({"core": db}, "- {table: employees, columns: [email]}")
    ws.mappings({"a@o.com": "a@n.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    return plan


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("plan", "--bogus"), "No such option: --bogus"),
        (("plan", "--detailed-exitcode", "--bogus"), "No such option: --bogus"),
        (("plan", "--detailed-exitcode=3"), "does not take a value"),
        (("plan", "--targets"), "requires an argument"),
        (("apply",), "Missing argument 'PLAN'"),
        (("aply", "plan.jsonl.gz"), "No such command 'aply'"),
        (("show", "plan.jsonl.gz", "--format", "xml"), "'xml' is not one of"),
        (("verify", "plan.jsonl.gz", "--format", "yaml"), "'yaml' is not one of"),
    ],
)
def test_usage_mistakes_are_one_error_line_and_exit_1(ws, db, args, fragment):
    _estate(ws, db)
    msg = refused(ws, [db], args, fragment)
    assert msg.count("\n") <= 1 and "--help" in msg  # one line, pointing at the help


def test_usage_mistake_from_the_installed_program_is_one_line_not_a_box(ws):
    r = subprocess.run([str(SCRIPT), "plan", "--detailed-exitcode", "--bgus"], cwd=ws.path, capture_output=True)
    assert r.returncode == 1
    assert r.stdout == b""
    err = r.stderr.decode()
    assert len(err.splitlines()) == 1 and "╭" not in err, err
    assert err.startswith("error: No such option: --bgus") and err.rstrip().endswith("see `emailsync plan --help`")


def test_no_command_prints_the_help_and_is_not_a_success(ws):
    r = ws.run()
    assert r.code == 1
    assert "Usage: emailsync" in r.out and "plan" in r.out and "apply" in r.out


def test_confirm_live_and_skip_live_together_are_refused(ws, db):
    plan = _estate(ws, db)
    refused(
        ws,
        [db],
        ("apply", str(plan), "--auto-approve", "--confirm-live", "--skip-live"),
        "--confirm-live and --skip-live contradict each other",
    )


def test_a_missing_plan_is_named_before_asking_for_a_terminal(ws, db):
    _estate(ws, db)
    refused(ws, [db], ("apply", "plans/nope/plan.jsonl.gz"), "plans/nope/plan.jsonl.gz: plan file not found")
    # With a real plan and no terminal the approval is what is missing.
    plan = sorted(ws.path.glob("plans/*/plan.jsonl.gz"))[0]
    refused(ws, [db], ("apply", str(plan)), "no terminal to confirm on", "--auto-approve")


def test_version_option_and_command(ws):
    assert ws.run("--version").out.strip() == __version__
    assert ws.run("version").out.strip() == __version__


def test_help_is_plain_names_dynamodb_and_flags_take_no_value(ws):
    top = " ".join(ws.run("--help").out.split())
    assert "PostgreSQL databases and DynamoDB tables" in top and "login table" in top
    assert "--version" in top and "--install-completion" in top
    apply_help = ws.run("apply", "--help").out
    assert "<bool>" not in apply_help and "--no-auto-approve" not in apply_help
    assert re.search(r"^\s+--auto-approve\s+Do not ask", apply_help, re.M), apply_help
    assert "╭" not in apply_help


def test_shell_completion_completes_commands_and_options(ws):
    env = {**os.environ, "_EMAILSYNC_COMPLETE": "complete_bash", "COMP_WORDS": "emailsync ap", "COMP_CWORD": "1"}
    r = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, cwd=ws.path)
    assert r.returncode == 0, r.stderr
    assert "apply" in r.stdout.split()
    env |= {"COMP_WORDS": "emailsync apply --confirm", "COMP_CWORD": "2"}
    r = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, cwd=ws.path)
    assert "--confirm-live" in r.stdout.split()
    # The script `--install-completion` installs, asked for by name: `--show-completion` guesses the shell from the
    # process tree, which a test run under pytest-xdist does not always have.
    env = {**os.environ, "_EMAILSYNC_COMPLETE": "source_bash"}
    script = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, cwd=ws.path)
    assert script.returncode == 0 and "_EMAILSYNC_COMPLETE" in script.stdout and "complete" in script.stdout


# -- Ctrl-C -----------------------------------------------------------------------------------------------------


def _loaded_site_packages(pid: int) -> bool:
    try:
        return "site-packages" in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


def _interrupt_when(proc: subprocess.Popen[bytes], ready: Any, timeout: float = 30.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the moment to interrupt never came"
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode()


def _interrupt_while_blocked(ws: Any, db: Any, lock_sql: str, *args: str) -> tuple[int, str]:
    """Run `emailsync ARGS` while another session holds a lock (`lock_sql`, in its open transaction); Ctrl-C it once
    it waits on that lock. The holder's transaction is rolled back afterwards."""
    import psycopg

    with psycopg.connect(db.dsn) as holder, psycopg.connect(db.dsn, autocommit=True) as watcher:
        holder.execute(lock_sql)
        proc = subprocess.Popen(
            [str(SCRIPT), *args], cwd=ws.path, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

        def waiting() -> bool:
            q = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            return watcher.execute(q).fetchone()[0] > 0

        result = _interrupt_when(proc, waiting)
        holder.rollback()
    return result


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the modules load")
@pytest.mark.parametrize("attempt", range(3))
def test_ctrl_c_while_the_program_loads_is_one_line_and_exit_130(ws, attempt):
    """The signal arrives while the first compiled extension is mapped: psycopg, pydantic and botocore are still
    loading (hundreds of milliseconds), before any command runs."""
    proc = subprocess.Popen([str(SCRIPT), "plan"], cwd=ws.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, err = _interrupt_when(proc, lambda: _loaded_site_packages(proc.pid))
    assert (code, err) == (130, INTERRUPTED)
    assert listing(ws.path) == {}


@pytest.mark.parametrize("module", ["psycopg", "botocore.exceptions", "typer", "pydantic", "yaml", "emailsync.cli"])
def test_ctrl_c_landing_in_any_import_is_one_line_and_exit_130(ws, module):
    """Deterministic: a KeyboardInterrupt raised exactly when `module` is imported, as a Ctrl-C there would. The
    targets name both stores, whose drivers are imported only for a run that uses them."""
    ws.targets(
        "version: 1\nmappings: m.json\npostgres:\n  - name: core\n    dsn: postgresql://u@127.0.0.1:1/db\n"
        "    tables: [{table: t, columns: [email]}]\ndynamodb:\n  - name: d\n    endpoint_url: http://127.0.0.1:1\n"
        "    tables: [{table: users, attributes: [email]}]\n"
    )
    ws.mappings({"a@x.com": "b@x.com"}, "m.json")
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        f"    if name == {module!r}:\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "sys.argv = ['emailsync', 'plan']\n"
        "from emailsync.console import main\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ws.path, capture_output=True, text=True)
    assert (r.returncode, r.stderr, r.stdout) == (130, INTERRUPTED, "")


def test_ctrl_c_while_planning_is_one_line_exit_130_and_writes_no_plan(ws, db, make_db):
    """Planning waits on a lock another session holds; Ctrl-C there ends it cleanly: no plan, no traceback."""
    _estate(ws, db)
    before = listing(ws.path)
    rows = snapshot(db)
    code, err = _interrupt_while_blocked(ws, db, "LOCK TABLE employees IN ACCESS EXCLUSIVE MODE", "plan", "--quiet")
    assert (code, err) == (130, INTERRUPTED)
    assert listing(ws.path) == before
    assert snapshot(db) == rows


# -- NO_COLOR ---------------------------------------------------------------------------------------------------

COLOUR = re.compile(rb"\x1b\[[0-9;]*(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")


class _Terminal:
    """A command on a pseudo-terminal (progress bars, colours and prompts show only there), read as it writes.
    Every wait is bounded: a command that does not end is killed and the test fails, it never hangs the run."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.chdir(cwd)
            os.execve(args[0], args, env)
        self.out = b""
        self.status: int | None = None

    def read_until(self, text: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out:
            assert time.monotonic() < deadline, self.out
            self._read(1)

    def _read(self, wait: float) -> bool:
        """Read what is there within `wait` seconds; False at the end of output."""
        try:
            ready, _, _ = select.select([self.fd], [], [], wait)
            chunk = os.read(self.fd, 65536) if ready else None
        except OSError:  # the child closed the terminal
            return False
        if chunk == b"":
            return False
        self.out += chunk or b""
        return True

    def exited(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is not None

    def finish(self, timeout: float = 60, nudge: bytes | None = None) -> int:
        """Read to the end and reap the child; `nudge` is typed again every 2 s while it runs (a keystroke the
        terminal took while the program was switching its mode is lost, as with a person)."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        try:
            while not self.exited():
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    raise AssertionError(f"still running after {timeout} s: {self.out[-2000:]!r}")
                self._read(0.2)
                if nudge is not None and time.monotonic() - last > 2:
                    os.write(self.fd, nudge)
                    last = time.monotonic()
            while self._read(0.2):
                pass
        finally:
            os.close(self.fd)
        assert self.status is not None
        return self.status


def _on_a_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> bytes:
    t = _Terminal(args, cwd, env)
    t.finish()
    return t.out


def test_no_color_is_honoured_on_a_terminal(ws, db):
    _estate(ws, db)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM")}
    env["TERM"] = "xterm-256color"
    coloured = _on_a_terminal([str(SCRIPT), "plan", "--out", "c/plan.jsonl.gz"], ws.path, env)
    assert COLOUR.search(coloured), "the progress bar shows colours on a terminal (the check below means something)"
    plain = _on_a_terminal([str(SCRIPT), "plan", "--out", "p/plan.jsonl.gz"], ws.path, env | {"NO_COLOR": "1"})
    assert b"action(s)" in plain
    assert not COLOUR.search(plain), plain[:500]
    for args in (["--help"], ["apply", "--help"], ["plan", "--bogus"]):
        out = _on_a_terminal([str(SCRIPT), *args], ws.path, env | {"NO_COLOR": "1"})
        assert not COLOUR.search(out) and b"\x1b[" not in out, out[:300]


def test_ctrl_c_at_the_approval_prompt_is_one_line_exit_130_and_writes_nothing(ws, db):
    """On a real terminal: apply asks for `yes`; Ctrl-C there (the terminal sends SIGINT) ends it like anywhere
    else, and the database is untouched."""
    plan = _estate(ws, db)
    rows = db.rows("SELECT * FROM employees ORDER BY id")
    t = _Terminal([str(SCRIPT), "apply", str(plan), "--quiet"], ws.path, dict(os.environ, NO_COLOR="1"))
    t.read_until(b"Only 'yes' is accepted")
    os.write(t.fd, b"\x03")  # Ctrl-C, as typed
    assert t.finish(nudge=b"\x03") == 130, t.out
    out = t.out
    after_prompt = out.split(b"Only 'yes' is accepted", 1)[1].decode()
    lines = [ln for ln in after_prompt.replace("\r", "").replace("^C", "").splitlines() if ln.strip(": ")]
    assert lines == [INTERRUPTED.strip()], out
    assert "Traceback" not in out.decode()
    assert db.rows("SELECT * FROM employees ORDER BY id") == rows
    assert db.rows("SELECT count(*) FROM emailsync.ledger") == [(0,)]  # no run recorded: it never started


def test_ctrl_c_while_applying_rolls_back_and_a_rerun_finishes_the_plan(ws, db):
    """Apply waits for a row another session holds; Ctrl-C there: one line, exit 130, the transaction rolled back
    (no row changed), and running the same command again applies the whole plan."""
    plan = _estate(ws, db)
    rows = db.rows("SELECT * FROM employees ORDER BY id")
    lock = "SELECT * FROM employees WHERE id = 1 FOR UPDATE"
    code, err = _interrupt_while_blocked(ws, db, lock, "apply", str(plan), "--auto-approve", "--quiet")
    assert (code, err) == (130, INTERRUPTED)
    assert db.rows("SELECT * FROM employees ORDER BY id") == rows
    r = subprocess.run(
        [str(SCRIPT), "apply", str(plan), "--auto-approve", "--quiet"], cwd=ws.path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert db.rows("SELECT * FROM employees ORDER BY id") == [(1, "a@n.com"), (2, "b@o.com")]
    assert db.rows("SELECT status FROM emailsync.ledger WHERE status = 'complete'") == [("complete",)]
