"""What each target remembers about applies: a ledger of runs and a lock against a second applier.

PostgreSQL: table emailsync.ledger in each database (created on first apply; `ledger: false` turns it off)
and a session-level advisory lock, which the server releases by itself when the holder's session ends, so a
killed apply never leaves it behind. The run's final ledger row is written inside the apply transaction, so
"complete" is recorded if and only if the changes committed.

DynamoDB: the table named by `ledger_table` (created on first apply) holds one item per run and a lock item
per target, taken with a conditional Put. A lock whose holder process is gone from this host is taken over;
any other holder is reported by name, with the `emailsync unlock` command for a holder that crashed elsewhere.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from emailsync import __version__
from emailsync.config import DynamoTarget, PostgresTarget
from emailsync.errors import UserError
from emailsync.stores.dynamodb import call

if TYPE_CHECKING:
    from types_boto3_dynamodb.client import DynamoDBClient

# pg_try_advisory_lock's two int4 keys: 'emsy' and the target's name hashed. Advisory locks are per database
# already; the name keeps two targets that share a database (different tables) from refusing each other.
_PG_LOCK_CLASS = 0x656D7379


def pg_lock_key(target_name: str) -> tuple[int, int]:
    return (_PG_LOCK_CLASS, zlib.crc32(target_name.encode()) & 0x7FFFFFFF)


LEDGER_SCHEMA = "emailsync"
LOCK_WAIT_SECONDS = 5.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Run:
    """One `emailsync apply` invocation: who, where, what."""

    plan_digest: str
    approver: str | None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    user: str = field(default_factory=getpass.getuser)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_at: str = field(default_factory=now)

    @property
    def who(self) -> str:
        by = f"{self.user}@{self.host}"
        return f"{by} (approver {self.approver})" if self.approver else by

    def header(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "plan_digest": self.plan_digest,
            "user": self.user,
            "host": self.host,
            "pid": self.pid,
            "approver": self.approver,
            "started_at": self.started_at,
            "tool_version": __version__,
        }


@dataclass(frozen=True)
class PastRun:
    target: str
    status: str
    started_at: str
    finished_at: str | None
    who: str
    run_id: str | None = None

    def describe(self) -> str:
        return f"{self.target}: {self.status} on {self.finished_at or self.started_at} by {self.who}"


def _who(user: str | None, host: str | None, approver: str | None) -> str:
    by = f"{user}@{host}"
    return f"{by} (approver {approver})" if approver else by


# -- PostgreSQL ---------------------------------------------------------------------------------------------------


class PgLedger:
    """The lock and ledger of one PostgreSQL target, on the connection that applies to it."""

    def __init__(self, conn: psycopg.Connection, target: PostgresTarget, run: Run) -> None:
        self.conn = conn
        self.target = target
        self.run = run
        self.started = False  # a run that only re-checks a completed target records nothing

    def lock(self) -> None:
        """Take the database's apply lock (session level: a commit does not release it, a dead session does)."""
        conn = self.conn
        # Name the session so a second applier can say who holds the lock (63 bytes at most).
        conn.execute("SELECT set_config('application_name', %s, false)", (f"emailsync apply {self.run.run_id}",))
        # Polled for a few seconds: the session of an apply killed a moment ago is ended by the server as soon
        # as it notices, and a rerun should not be refused in that instant.
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", pg_lock_key(self.target.name)).fetchone()
            conn.commit()
            if got and got[0]:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        holder = conn.execute(
            """
            SELECT a.pid, a.application_name, a.usename, a.client_hostname, a.client_addr::text,
                   to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.classid = %s AND l.objid = %s AND l.objsubid = 2
            """,
            pg_lock_key(self.target.name),
        ).fetchone()
        conn.rollback()
        who = "another session"
        if holder:
            pid, app, usename, chost, caddr, since = holder
            where = chost or caddr or "local"
            who = f"{app or 'a session'} (database user {usename}, pid {pid}, from {where}, since {since})"
        raise UserError(
            f"target {self.target.name!r} is locked: another emailsync apply is running on this database: {who}. "
            "Wait for it to finish; PostgreSQL releases the lock by itself when that session ends"
        )

    def ensure(self) -> None:
        if not self.target.ledger:
            return
        # Created once (by the first apply, or by an administrator for a role without CREATE): not re-created,
        # since CREATE ... IF NOT EXISTS needs the privilege even when there is nothing to create.
        found = self.conn.execute("SELECT to_regclass(%s)", (f"{LEDGER_SCHEMA}.ledger",)).fetchone()
        self.conn.rollback()
        if found and found[0] is not None:
            return
        try:
            self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(LEDGER_SCHEMA)))
            self.conn.execute(
                sql.SQL(
                    """
                    CREATE TABLE IF NOT EXISTS {}.ledger (
                        run_id text NOT NULL,
                        target text NOT NULL,  -- targets may share a database (different tables)
                        plan_digest text NOT NULL,
                        status text NOT NULL,
                        started_at timestamptz NOT NULL,
                        finished_at timestamptz,
                        applied_by text NOT NULL,
                        host text NOT NULL,
                        approver text,
                        tool_version text NOT NULL,
                        counts jsonb,
                        PRIMARY KEY (run_id, target)
                    )
                    """
                ).format(sql.Identifier(LEDGER_SCHEMA))
            )
            self.conn.commit()
        except psycopg.Error as e:
            self.conn.rollback()
            msg = (e.diag.message_primary or str(e)).strip()
            raise UserError(
                f"target {self.target.name!r}: cannot create the ledger table {LEDGER_SCHEMA}.ledger ({msg}); "
                "grant the apply role CREATE on the database, create it once as an administrator, or set "
                "`ledger: false` for the target"
            ) from None

    def completed(self) -> list[PastRun]:
        if not self.target.ledger:
            return []
        rows = self.conn.execute(
            sql.SQL(
                "SELECT status, started_at, finished_at, applied_by, host, approver, run_id FROM {}.ledger "
                "WHERE plan_digest = %s AND target = %s AND status = 'complete' ORDER BY finished_at"
            ).format(sql.Identifier(LEDGER_SCHEMA)),
            (self.run.plan_digest, self.target.name),
        ).fetchall()
        self.conn.rollback()
        return [
            PastRun(self.target.name, s, _ts(st), _ts(fin), _who(u, h, ap), rid) for s, st, fin, u, h, ap, rid in rows
        ]

    def start(self) -> None:
        if not self.target.ledger:
            return
        self._insert_running()
        self.conn.commit()  # recorded even if the apply is killed
        self.started = True

    def _insert_running(self) -> None:
        r = self.run
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {}.ledger (run_id, target, plan_digest, status, started_at, applied_by, host, approver, "
                "tool_version) VALUES (%s, %s, %s, 'running', %s, %s, %s, %s, %s)"
            ).format(sql.Identifier(LEDGER_SCHEMA)),
            (r.run_id, self.target.name, r.plan_digest, r.started_at, r.user, r.host, r.approver, __version__),
        )

    def finish(self, status: str, counts: dict[str, int]) -> None:
        """Record the end of the run in the current transaction (the caller commits or rolls back with it).

        A run that was not started (it only re-checks a target the ledger records as complete) is recorded here,
        in the same transaction, if it found anything but already-applied actions: what it wrote, or what it found
        stale, belongs in the ledger; a pure re-check does not."""
        if not self.target.ledger or (not self.started and only_rechecked(counts)):
            return
        if not self.started:
            self._insert_running()
        self.conn.execute(
            sql.SQL(
                "UPDATE {}.ledger SET status = %s, finished_at = now(), counts = %s WHERE run_id = %s AND target = %s"
            ).format(sql.Identifier(LEDGER_SCHEMA)),
            (status, Jsonb(counts), self.run.run_id, self.target.name),
        )


def only_rechecked(counts: dict[str, int]) -> bool:
    """The run found every action already applied: nothing written, nothing to report."""
    return all(status == "already-applied" for status, n in counts.items() if n)


def _ts(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(v)


# -- DynamoDB -----------------------------------------------------------------------------------------------------


class NoLedger:
    """The ledger of a DynamoDB target without `ledger_table`: records nothing and locks nothing (apply warns), so
    the apply workflow runs one path for every target instead of asking each time whether there is a ledger."""

    def __init__(self, target: DynamoTarget) -> None:
        self.target = target

    def ensure(self) -> None:
        pass

    def lock(self) -> None:
        pass

    def release(self) -> None:
        pass

    def completed(self) -> list[PastRun]:
        return []

    def start(self) -> None:
        pass

    def finish(self, status: str, counts: dict[str, int]) -> None:
        pass


class DynamoLedger:
    """The lock and ledger of one DynamoDB target, in its `ledger_table` (hash key pk, range key sk)."""

    def __init__(self, target: DynamoTarget, client: DynamoDBClient, run: Run) -> None:
        assert target.ledger_table
        self.target = target
        self.client = client
        self.run = run
        self.table = target.ledger_table
        self.lock_id = uuid.uuid4().hex
        self.locked = False
        self.started = False  # a run that only re-checks a completed target records nothing

    @property
    def _lock_key(self) -> dict[str, Any]:
        return {"pk": {"S": "lock"}, "sk": {"S": self.target.name}}

    def ensure(self) -> None:
        try:
            self.client.describe_table(TableName=self.table)
            return
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
        try:
            call(
                self.target,
                f"create the ledger table {self.table}",
                self.client.create_table,
                TableName=self.table,
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
        except botocore.exceptions.ClientError as e:
            # Another first apply created it a moment ago: the same table; wait for it, then the lock decides.
            if e.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
        self.client.get_waiter("table_exists").wait(TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    def lock(self) -> None:
        r = self.run
        item = {
            **self._lock_key,
            "lock_id": {"S": self.lock_id},
            "run_id": {"S": r.run_id},
            "plan_digest": {"S": r.plan_digest},
            "user": {"S": r.user},
            "host": {"S": r.host},
            "pid": {"N": str(r.pid)},
            "acquired_at": {"S": now()},
        }
        held: dict[str, Any] | None = None
        for _ in range(3):  # a lock released between our Put and our read: try again, a few times
            if self._put_if(item, ConditionExpression="attribute_not_exists(pk)"):
                self.locked = True
                return
            held = self.client.get_item(TableName=self.table, Key=self._lock_key, ConsistentRead=True).get("Item")
            if held is not None:
                break
        if held is not None and "lock_id" in held and self._holder_gone(held):
            # The holder was an apply on this machine that is gone (killed): its lock is taken over, so rerunning
            # the same command resumes. Conditional on the same lock id, so two rerunners cannot both take it.
            old = {":old": held["lock_id"]}
            if self._put_if(item, ConditionExpression="lock_id = :old", ExpressionAttributeValues=old):
                self.locked = True
                return
            held = self.client.get_item(TableName=self.table, Key=self._lock_key, ConsistentRead=True).get("Item")
        raise UserError(describe_lock(self.target, held))

    def _holder_gone(self, held: dict[str, Any]) -> bool:
        """The lock item names a process on this host that no longer runs (a malformed pid counts as alive)."""
        try:
            pid = int(held.get("pid", {}).get("N", ""))
        except ValueError:
            return False
        return held.get("host", {}).get("S") == self.run.host and not process_alive(pid)

    def _put_if(self, item: dict[str, Any], **condition: Any) -> bool:
        """A conditional Put: False when the condition does not hold."""
        try:
            self.client.put_item(TableName=self.table, Item=item, **condition)
            return True
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return False

    def release(self) -> None:
        if not self.locked:
            return
        try:
            self.client.delete_item(
                TableName=self.table,
                Key=self._lock_key,
                ConditionExpression="lock_id = :me",
                ExpressionAttributeValues={":me": {"S": self.lock_id}},
            )
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
        self.locked = False

    def _run_key(self) -> dict[str, Any]:
        # The target's name first: targets may share one ledger table, each keeps its own record of a run.
        sk = f"{self.target.name}#{self.run.started_at}#{self.run.run_id}"
        return {"pk": {"S": f"run#{self.run.plan_digest}"}, "sk": {"S": sk}}

    def completed(self) -> list[PastRun]:
        out: list[PastRun] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :t)",
            "ExpressionAttributeValues": {
                ":pk": {"S": f"run#{self.run.plan_digest}"},
                ":t": {"S": f"{self.target.name}#"},
            },
            "ConsistentRead": True,
        }
        while True:
            resp = self.client.query(**kwargs)
            for it in resp.get("Items", []):
                if it.get("status", {}).get("S") == "complete":
                    s = {k: v["S"] for k, v in it.items() if "S" in v}
                    who = _who(s.get("user"), s.get("host"), s.get("approver"))
                    started, finished = s.get("started_at", ""), s.get("finished_at")
                    out.append(PastRun(self.target.name, "complete", started, finished, who, s.get("run_id")))
            if "LastEvaluatedKey" not in resp:
                return out
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def start(self) -> None:
        r = self.run
        item = {
            **self._run_key(),
            "status": {"S": "running"},
            "run_id": {"S": r.run_id},
            "user": {"S": r.user},
            "host": {"S": r.host},
            "started_at": {"S": r.started_at},
            "tool_version": {"S": __version__},
        }
        if r.approver:
            item["approver"] = {"S": r.approver}
        self.client.put_item(TableName=self.table, Item=item)
        self.started = True

    def finish(self, status: str, counts: dict[str, int]) -> None:
        """Record the end of the run; one that only re-checked a completed target is recorded if it found anything
        but already-applied actions (see PgLedger.finish)."""
        if not self.started:
            if only_rechecked(counts):
                return
            self.start()
        self.client.update_item(
            TableName=self.table,
            Key=self._run_key(),
            UpdateExpression="SET #s = :s, finished_at = :f, #c = :c",
            ExpressionAttributeNames={"#s": "status", "#c": "counts"},
            ExpressionAttributeValues={
                ":s": {"S": status},
                ":f": {"S": now()},
                ":c": {"M": {k: {"N": str(v)} for k, v in counts.items()}},
            },
        )


def describe_lock(target: DynamoTarget, held: dict[str, Any] | None) -> str:
    if held is None:
        return f"target {target.name!r} is not locked"
    s = {k: v.get("S") or v.get("N") for k, v in held.items()}
    return (
        f"target {target.name!r} is locked by another emailsync apply: {s.get('user')}@{s.get('host')} "
        f"(pid {s.get('pid')}, run {s.get('run_id')}, since {s.get('acquired_at')}, lock id {s.get('lock_id')}). "
        "Wait for it to finish; if that apply crashed, release the lock with "
        f"`emailsync unlock {target.name} --lock-id {s.get('lock_id')}`"
    )


def unlock_dynamodb(target: DynamoTarget, client: DynamoDBClient, lock_id: str) -> str:
    """Release a crashed holder's lock: only the lock with this id, never whoever holds it now."""
    assert target.ledger_table
    key = {"pk": {"S": "lock"}, "sk": {"S": target.name}}
    try:
        client.delete_item(
            TableName=target.ledger_table,
            Key=key,
            ConditionExpression="lock_id = :id",
            ExpressionAttributeValues={":id": {"S": lock_id}},
        )
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code")
        if code == "ResourceNotFoundException":
            raise UserError(
                f"target {target.name!r}: the ledger table {target.ledger_table!r} does not exist: nothing is locked"
            ) from None
        if code != "ConditionalCheckFailedException":
            raise
        held = client.get_item(TableName=target.ledger_table, Key=key, ConsistentRead=True).get("Item")
        if held is None:
            raise UserError(f"target {target.name!r} is not locked; nothing to unlock") from None
        s = {k: v.get("S") or v.get("N") for k, v in held.items()}
        raise UserError(
            f"target {target.name!r} is locked with lock id {s.get('lock_id')}, not {lock_id} "
            f"(holder {s.get('user')}@{s.get('host')}, since {s.get('acquired_at')}); nothing was changed"
        ) from None
    return f"released the lock {lock_id} of target {target.name!r}"


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
