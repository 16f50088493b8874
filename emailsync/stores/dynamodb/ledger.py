"""The ledger and lock of a DynamoDB target: the table named by `ledger_table` (created on first apply) holds one
item per run and a lock item per target, taken with a conditional Put. A lock whose holder process is gone from
this host is taken over; any other holder is reported by name, with the `emailsync unlock` command for a holder
that crashed elsewhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from emailsync import __version__
from emailsync.config import DynamoTarget
from emailsync.errors import UserError
from emailsync.stores.base import Progress
from emailsync.stores.dynamodb.client import call
from emailsync.stores.ledger import PastRun, Run, now, only_rechecked, process_alive, who_text

if TYPE_CHECKING:
    from types_boto3_dynamodb.client import DynamoDBClient


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

    def _runs(self) -> Iterator[dict[str, Any]]:
        """This target's run records of the plan, oldest first (the sort key starts with the start time)."""
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
            yield from resp.get("Items", [])
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def completed(self) -> list[PastRun]:
        out: list[PastRun] = []
        for it in self._runs():
            if it.get("status", {}).get("S") == "complete":
                s = {k: v["S"] for k, v in it.items() if "S" in v}
                who = who_text(s.get("user"), s.get("host"), s.get("approver"))
                started, finished = s.get("started_at", ""), s.get("finished_at")
                out.append(PastRun(self.target.name, "complete", started, finished, who, s.get("run_id")))
        return out

    def progress(self) -> Progress:
        """This plan's applies on the target as the ledger table records them (reads only)."""
        p = Progress(self.target.name, "dynamodb", "not started")
        items = list(self._runs())
        p.runs = len(items)
        if items:
            last = items[-1]  # sorted by the sort key: target, start time, run
            p.state = last.get("status", {}).get("S", "unknown")
            counts = {k: int(v["N"]) for k, v in last.get("counts", {}).get("M", {}).items()}
            p.rows_done = counts.get("applied", 0) + counts.get("already-applied", 0)
            p.stale = counts.get("stale", 0)
        return p

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
