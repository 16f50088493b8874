"""Run the emailsync CLI in this process and kill it with SIGKILL (a real `kill -9`) at a chosen moment.

Usage (from the tests, as a subprocess whose environment carries the DSN and AWS/DynamoDB variables):

    python tests/crash_harness.py KILL_POINT -- EMAILSYNC_ARGS...

for example `python tests/crash_harness.py ddb-after:PutItem@auth:2 -- apply plan.jsonl.gz --auto-approve`.

The harness installs one deterministic kill point, sets sys.argv to the CLI arguments and calls
`emailsync.cli.main()`. When the kill point is reached it flushes stdout/stderr, writes one line
`crash_harness: SIGKILL at <point>` to stderr and sends SIGKILL to its own process: no cleanup, no `finally`, no
rollback, no report; the stores are left in whatever state they are (an open PostgreSQL transaction is rolled
back by the server when the connection drops). The parent then sees return code -9.

KILL_POINT (counters start at 1 and count within this one process):

- `none`: no kill point; the CLI runs normally (exit code as the CLI's).
- `pg-step:N`: right after the N-th call of `PostgresApplier._run_step` returned (the step's statement ran inside
  the target's apply transaction, which is open and uncommitted). Every call counts, also a step that found
  nothing pending; calls are counted across PostgreSQL targets in apply order, and across the batches of a
  batched apply (--batch-size: each batch's applier runs its own steps, inside the batch's open transaction).
- `pg-commit:N`: right after the N-th PostgreSQL target finished with its transaction committed
  (`PostgresApplier.run` returned a result with `committed` set); later targets and DynamoDB not started. In a
  batched apply each batch is one such transaction, so each committed batch counts.
- `pg-batch:N`: right after the N-th batch of a batched apply (--batch-size) committed (`BatchedApply._batch`
  returned a result with `committed` set, its journal `after` record written): the batch and its row in
  `emailsync.batches` are committed, the next batch not started. Counted across targets in apply order.
- `ddb-before:Operation[@Table]:N`: just before the N-th DynamoDB `Operation` request is sent
  (botocore `before-call.dynamodb.<Operation>`), e.g. `ddb-before:DeleteItem@auth:1`.
- `ddb-after:Operation[@Table]:N`: right after the N-th *successful* (HTTP 2xx) DynamoDB `Operation` returned
  (botocore `after-call.dynamodb.<Operation>`), before emailsync sees the response, e.g.
  `ddb-after:TransactWriteItems@users:1` (between two move transactions) or `ddb-after:PutItem@auth:1` (a live
  swap after its Put and before its Delete).
  Operation is a DynamoDB API name (TransactWriteItems, UpdateItem, PutItem, DeleteItem, GetItem, ...). With
  `@Table` only requests touching that table count (for TransactWriteItems and BatchWriteItem: any of their
  items), so the writes of other tables (or of a lock or ledger table) do not shift the count.
  The hooks are registered on every DynamoDB client created in the process (botocore's Session.create_client is
  wrapped), whichever emailsync function creates it.
- `report`: just before report.json is written (`emailsync.archive.write_report`): every store is done.

If the CLI finishes without reaching the kill point, the harness says so on stderr, with what it counted, and
exits with code 97. With the environment variable CRASH_HARNESS_EVENTS set to a file path, every counted event is
appended to that file as one JSON line (point, count, tables) before the kill decision: what had happened.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from typing import Any

NOT_REACHED = 97


class KillPoint:
    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.kind, self.operation, self.table, self.n = _parse(spec)
        self.counts: Counter[str] = Counter()
        self.events_path = os.environ.get("CRASH_HARNESS_EVENTS")

    def event(self, name: str, tables: list[str] | None = None) -> None:
        """One occurrence of a countable event; kills the process if it is the chosen one."""
        self.counts[name] += 1
        if self.events_path:
            with open(self.events_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"event": name, "count": self.counts[name], "tables": tables or []}) + "\n")
        if self.kind == "none":
            return
        wanted = self.kind if self.operation is None else f"{self.kind}:{self.operation}"
        if name != wanted:
            return
        if self.table is not None:
            if self.table not in (tables or []):
                return
            self.counts[f"{name}@{self.table}"] += 1
            count = self.counts[f"{name}@{self.table}"]
        else:
            count = self.counts[name]
        if count == self.n:
            self.kill()

    def kill(self) -> None:
        sys.stdout.flush()
        sys.stderr.write(f"crash_harness: SIGKILL at {self.spec}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _parse(spec: str) -> tuple[str, str | None, str | None, int]:
    parts = spec.split(":")
    if parts == ["none"]:
        return "none", None, None, 0
    if parts == ["report"]:
        return "report", None, None, 1
    if (
        len(parts) == 2
        and parts[0] in ("pg-step", "pg-commit", "pg-batch")
        and parts[1].isdigit()
        and int(parts[1]) > 0
    ):
        return parts[0], None, None, int(parts[1])
    if len(parts) == 3 and parts[0] in ("ddb-before", "ddb-after") and parts[2].isdigit() and int(parts[2]) > 0:
        operation, _, table = parts[1].partition("@")
        if operation.isidentifier():
            return parts[0], operation, table or None, int(parts[2])
    raise SystemExit(
        f"crash_harness: bad kill point {spec!r}; expected none, report, pg-step:N, pg-commit:N, pg-batch:N, "
        "ddb-before:Operation[@Table]:N or ddb-after:Operation[@Table]:N"
    )


def _tables(params: dict[str, Any]) -> list[str]:
    """The tables a DynamoDB request touches, from its API parameters."""
    tables = []
    if isinstance(params.get("TableName"), str):
        tables.append(params["TableName"])
    for item in params.get("TransactItems") or []:
        for req in item.values():
            if isinstance(req, dict) and isinstance(req.get("TableName"), str):
                tables.append(req["TableName"])
    tables += list(params.get("RequestItems") or {})
    return sorted(set(tables))


def install(kp: KillPoint) -> None:
    import botocore.session

    import emailsync.archive
    import emailsync.cli
    from emailsync.stores.postgres.applier import PostgresApplier
    from emailsync.stores.postgres.batched import BatchedApply

    original_run_step = PostgresApplier._run_step
    original_run = PostgresApplier.run
    original_batch = BatchedApply._batch

    def run_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original_run_step(self, *args, **kwargs)
        kp.event("pg-step")
        return out

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        res = original_run(self, *args, **kwargs)
        if getattr(res, "committed", False):
            kp.event("pg-commit")
        return res

    def batch(self: Any, *args: Any, **kwargs: Any) -> Any:
        res = original_batch(self, *args, **kwargs)
        if getattr(res, "committed", False):
            kp.event("pg-batch")
        return res

    PostgresApplier._run_step = run_step  # type: ignore[method-assign]
    PostgresApplier.run = run  # type: ignore[method-assign]
    BatchedApply._batch = batch  # type: ignore[method-assign]

    def remember_tables(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["crash_harness_tables"] = _tables(params)

    def before_call(model: Any, context: dict[str, Any], **_: Any) -> None:
        kp.event(f"ddb-before:{model.name}", context.get("crash_harness_tables"))

    def after_call(model: Any, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        # after-call also fires for error responses (a failed condition): only successful calls count.
        if 200 <= getattr(http_response, "status_code", 0) < 300:
            kp.event(f"ddb-after:{model.name}", context.get("crash_harness_tables"))

    original_create_client = botocore.session.Session.create_client

    def create_client(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = original_create_client(self, service_name, *args, **kwargs)
        if service_name == "dynamodb":
            client.meta.events.register("provide-client-params.dynamodb", remember_tables)
            client.meta.events.register("before-call.dynamodb", before_call)
            client.meta.events.register("after-call.dynamodb", after_call)
        return client

    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]

    original_write_report = emailsync.archive.write_report

    def write_report(*args: Any, **kwargs: Any) -> Any:
        kp.event("report")
        return original_write_report(*args, **kwargs)

    emailsync.archive.write_report = write_report
    if hasattr(emailsync.cli, "write_report"):  # should cli.py ever import it at module level
        emailsync.cli.write_report = write_report


def main(argv: list[str]) -> None:
    if len(argv) < 2 or "--" not in argv[1:] or argv[1] == "--":
        raise SystemExit("usage: crash_harness.py KILL_POINT -- EMAILSYNC_ARGS...")
    sep = argv.index("--", 1)
    kp = KillPoint(argv[1])
    install(kp)
    import emailsync.cli

    sys.argv = ["emailsync", *argv[sep + 1 :]]
    try:
        emailsync.cli.main()
        code: Any = 0
    except SystemExit as e:
        code = e.code
    if kp.kind != "none":
        sys.stdout.flush()
        sys.stderr.write(
            f"crash_harness: kill point {kp.spec} never reached (the CLI exited with {code!r}); "
            f"counted: {dict(sorted(kp.counts.items()))}\n"
        )
        sys.exit(NOT_REACHED)
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv)
