"""The examples shipped with the project stay true to the CLI: every emailsync command and option they use exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from helpers import plan_doc

ROOT = Path(__file__).resolve().parents[1]


def test_github_actions_example_uses_real_commands_and_options(ws):
    wf = yaml.safe_load((ROOT / "examples/github-actions/emailsync.yml").read_text())
    jobs = wf["jobs"]
    assert set(jobs) == {"plan", "apply"}
    assert jobs["apply"]["environment"] == "production"  # the approval gate
    scripts = "\n".join(step.get("run", "") for job in jobs.values() for step in job["steps"])
    uses = re.findall(r"emailsync (\w+)((?:[^\n\\]|\\\n)*)", scripts)
    assert {cmd for cmd, _ in uses} >= {"plan", "apply", "verify"}
    for cmd, rest in uses:
        if cmd in ("plan", "apply", "verify"):
            help_text = ws.run(cmd, "--help").out
            for option in re.findall(r"--[a-z-]+", rest):
                assert option in help_text, f"emailsync {cmd} has no option {option}"


def test_docker_compose_estate_is_the_sandbox_estate_and_plans(ws, pg_server, ddb):
    """docker-compose.yml's services and files are consistent, its files are exactly what the sandbox generates,
    and the estate they describe plans: init.sql run on a real PostgreSQL, the DynamoDB tables on moto."""
    import psycopg

    from emailsync import sandbox

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "dynamodb", "dynamodb-seed"}
    assert services["dynamodb"]["image"].startswith("amazon/dynamodb-local")
    for service in services.values():
        for volume in service.get("volumes", []):
            assert (ROOT / volume.split(":")[0]).is_file(), volume
    docker = ROOT / "examples/docker"
    assert (docker / "init.sql").read_text() == sandbox.postgres_init_sql()
    assert (docker / "seed-dynamodb.sh").read_text() == sandbox.dynamodb_seed_script()
    assert (docker / "targets.yaml").read_text() == sandbox.compose_targets()
    assert json.loads((docker / "email_mappings.json").read_text()) == sandbox.MAPPINGS
    env_vars = set(re.findall(r"\$\{(\w+)\}", (docker / "targets.yaml").read_text()))
    example = dict(line.split("=", 1) for line in (docker / ".env.example").read_text().splitlines() if "=" in line)
    assert set(example) == env_vars

    # init.sql as psql would run it: statements, and \connect to switch databases.
    host = pg_server.get_uri().split("host=", 1)[1]
    dsns: dict[str, str] = {}
    conn = psycopg.connect(f"host={host} dbname=postgres user=postgres", autocommit=True)
    try:
        for line in (docker / "init.sql").read_text().splitlines():
            if line.startswith("\\connect"):
                name = line.split('"')[1]
                conn.close()
                dsns[name] = f"host={host} dbname={name} user=postgres"
                conn = psycopg.connect(dsns[name], autocommit=True)
            elif line and not line.startswith("--"):
                conn.execute(line)
    finally:
        conn.close()
    try:
        for table, (hash_key, range_key) in sandbox.DYNAMO_TABLES.items():
            ddb.create(table, hash_key, range_key)
            for item in sandbox.DYNAMO_ITEMS[table]:
                ddb.client.put_item(TableName=table, Item=item)
        ws.monkeypatch.setenv("TYMEPLUSHR_CORE_DSN", dsns["tymeplushr_core"])
        ws.monkeypatch.setenv("TYMEPLUSHR_LEAVE_DSN", dsns["tymeplushr_leave"])
        out = ws.path / "p" / "plan.jsonl.gz"
        r = ws.run("plan", "--targets", str(docker / "targets.yaml"), "--out", str(out))
        assert r.code == 0, r.err
        kinds = {(a["table"], a["kind"]) for a in plan_doc(out)["actions"]}
        assert {("public.employees", "delete-on-conflict"), ("hr-profiles", "merge-and-move")} <= kinds
        assert ("userAuthentication", "live-swap") in kinds
    finally:
        with psycopg.connect(f"host={host} dbname=postgres user=postgres", autocommit=True) as c:
            for name in dsns:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_readme_commands_exist(ws):
    """Every `emailsync <command> --option` the README shows (tour, workflow, troubleshooting) is real."""
    readme = (ROOT / "README.md").read_text()
    uses = re.findall(r"emailsync (\w+)((?: (?:[^\s`#|]+))*)", readme)
    commands = {cmd for cmd, _ in uses}
    assert {"discover", "plan", "show", "apply", "verify", "rollback", "sandbox", "demo", "unlock"} <= commands
    helps: dict[str, str] = {}
    for cmd, rest in uses:
        if cmd not in commands & {"discover", "plan", "show", "apply", "verify", "rollback", "diff", "unlock", "demo"}:
            continue
        help_text = helps.setdefault(cmd, ws.run(cmd, "--help").out)
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
            assert option in help_text, f"README: emailsync {cmd} has no option {option}"
