"""What the commands print: progress bars on a terminal only, --quiet, and --json documents for machines."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import assert_user_error, plan_doc


def _setup(db: Any, ws: Any, rows: int = 50) -> None:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute(f"INSERT INTO employees SELECT g, 'u' || g || '@oldco.com' FROM generate_series(1, {rows}) g")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({f"u{i}@oldco.com": f"u{i}@newco.com" for i in range(1, rows + 1)})


def _run_with_tty_stderr(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """The CLI in a subprocess whose stderr is a terminal (a pty) and whose stdout is a pipe."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "emailsync", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(slave)
    err = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            err += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    out = proc.stdout.read().decode() if proc.stdout else ""
    return proc.wait(), out, err.decode(errors="replace")


def test_progress_bars_on_a_terminal_and_never_in_stdout(db, ws):
    _setup(db, ws)
    code, out, err = _run_with_tty_stderr(["plan", "--out", "p/plan.jsonl.gz"], ws.path)
    assert code == 0, err
    assert "plan core: reading" in err and "1/1" in err  # the bar, its last state drawn: done of total
    assert "plan core" not in out and "\x1b[" not in out  # stdout stays clean for redirection
    code, out, err = _run_with_tty_stderr(["apply", "p/plan.jsonl.gz", "--auto-approve"], ws.path)
    assert code == 0, err
    assert "apply core" in err and "50/50" in err
    assert db.rows("SELECT count(*) FROM employees WHERE email LIKE '%@newco.com'") == [(50,)]


def test_quiet_and_json_show_no_bars_even_on_a_terminal(db, ws):
    _setup(db, ws)
    code, out, err = _run_with_tty_stderr(["plan", "--out", "p/plan.jsonl.gz", "--quiet"], ws.path)
    assert code == 0 and "plan core" not in err and "\x1b[" not in err, err
    code, out, err = _run_with_tty_stderr(["verify", "p/plan.jsonl.gz", "--json"], ws.path)
    assert code == 3 and "\x1b[" not in err, err
    assert json.loads(out)["counts"] == {"before": 50, "after": 0, "drifted": 0}


def test_no_bars_when_stderr_is_not_a_terminal(db, ws):
    _setup(db, ws, rows=3)
    r = subprocess.run(
        [sys.executable, "-m", "emailsync", "plan", "--out", "p/plan.jsonl.gz"],
        cwd=ws.path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stderr and "reading" not in r.stderr


def test_plan_apply_verify_json(db, ws):
    _setup(db, ws, rows=3)
    r = ws.run("plan", "--out", "p/plan.jsonl.gz", "--json", "--detailed-exitcode")
    assert r.code == 2, r.err
    doc = json.loads(r.out)  # stdout is exactly one JSON document
    plan_file = Path(doc["plan"])
    assert doc["digest"] == plan_doc(plan_file)["digest"]
    assert (doc["actions"], doc["skipped"], doc["has_changes"]) == (3, 0, True)
    assert doc["summary"] == [
        {"target": "core", "table": "public.employees", "column": "email", "kind": "update", "count": 3}
    ]
    assert Path(doc["markdown"]).exists()

    r = ws.run("apply", str(plan_file), "--auto-approve", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["exit_code"] == 0 and report["plan_digest"] == doc["digest"]
    assert {a["status"] for a in report["actions"]} == {"applied"}
    assert json.loads(Path(report["report"]).read_text())["run_id"] == report["run_id"]
    assert db.rows("SELECT email FROM employees ORDER BY id") == [
        ("u1@newco.com",),
        ("u2@newco.com",),
        ("u3@newco.com",),
    ]

    r = ws.run("verify", str(plan_file), "--json")
    assert r.code == 0
    assert json.loads(r.out)["counts"] == {"before": 0, "after": 3, "drifted": 0}

    # A refusal under --json is still one `error:` line on stderr, exit 1, and nothing on stdout.
    r = ws.run("apply", str(plan_file), "--auto-approve", "--json")
    assert_user_error(r, "already been applied completely")
    assert r.out == ""


def test_apply_json_prompts_on_stderr(db, ws, monkeypatch):
    import emailsync.cli

    _setup(db, ws, rows=2)
    r, plan = ws.plan()
    monkeypatch.setattr(emailsync.cli, "_interactive", lambda: True)
    r = ws.run("apply", str(plan), "--json", input="yes\n")
    assert r.code == 0, r.err
    assert "Apply these changes?" in r.err and "public.employees" in r.err
    # stdout: only the report. (CliRunner echoes the typed answer into stdout, as a terminal would on screen.)
    start = r.out.index("{")
    assert r.out[:start].strip() == "yes"
    assert json.loads(r.out[start:])["summary"][0]["status"] == "applied"
    assert db.rows("SELECT count(*) FROM employees WHERE email LIKE '%@newco.com'") == [(2,)]


def test_quiet_plan_keeps_warnings_and_result(db, ws):
    _setup(db, ws, rows=2)
    ws.mappings({"u1@oldco.com": "u1@newco.com", "u2@oldco.com": "u2@oldco.com"})
    r = ws.run("plan", "--out", "p/plan.jsonl.gz", "--quiet")
    assert r.code == 0, r.err
    assert "warning:" in r.err and "old and new are the same" in r.err  # warnings stay under --quiet
    assert "1 action(s)" in r.out


def test_progress_bars_for_dynamodb_scans_and_writes(ddb, ws):
    ddb.create("profiles", "email")
    ddb.put("profiles", *({"email": f"u{i}@oldco.com", "n": i} for i in range(30)))
    ws.targets(
        "version: 1\nmappings: email_mappings.json\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n"
        "    region: us-east-1\n    tables:\n      - table: profiles\n        attributes: [email]\n"
    )
    ws.mappings({f"u{i}@oldco.com": f"u{i}@newco.com" for i in range(30)})
    code, out, err = _run_with_tty_stderr(["plan", "--out", "p/plan.jsonl.gz"], ws.path)
    assert code == 0, err
    assert "plan hr: scanning profiles" in err and "30/30" in err
    code, out, err = _run_with_tty_stderr(["apply", "p/plan.jsonl.gz", "--auto-approve"], ws.path)
    assert code == 0, out + err
    assert "apply hr" in err and "30/30" in err
    assert {i["email"] for i in ddb.items("profiles")} == {f"u{i}@newco.com" for i in range(30)}


def test_progress_shows_the_rate_and_the_time_left():
    """A phase of known size shows units per second and an estimate of the time left while it runs."""
    import io
    import re
    import time

    from rich.console import Console

    from emailsync import progress

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160, color_system=None)
    with progress.shown(True, console=console), progress.task("apply core: writing", total=1000) as bar:
        for _ in range(20):
            bar.advance(10)
            time.sleep(0.05)
        assert progress._display is not None
        progress._display.progress.refresh()
    frames = buf.getvalue()
    # done of total, the rate, the time elapsed, then the time left (MM:SS)
    assert re.search(r"200/1000 +[\d,]+/s +0:00:0\d +\d\d:\d\d", frames), frames[-500:]
