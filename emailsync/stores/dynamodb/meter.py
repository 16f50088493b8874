"""What a DynamoDB target's requests cost, table by table, and the caps that keep an apply from taking a production
table's whole capacity.

Everything is read from botocore's own events on the target's client, so no call site can forget it:
- every request that can asks for its ConsumedCapacity (TOTAL), which is summed per table;
- every attempt is counted (botocore's retries too), and so is every attempt refused by throttling;
- throttling narrows the target's window of requests in flight (halved, at most once per round of requests) and
  requests that go through widen it again, one more per window's worth (TCP's AIMD), up to --concurrency: the
  requests back off together when DynamoDB says it is too much, and come back as it lets them;
- with --max-rcu / --max-wcu, a request waits before it is sent while its table's bucket is empty. A bucket holds at
  most one second of its rate and is charged with what each request actually consumed, once it is known: the rate
  over any few seconds stays at the cap, give or take the requests already in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types_boto3_dynamodb.client import DynamoDBClient

READS = {"GetItem", "BatchGetItem", "Scan", "Query", "TransactGetItems"}
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
THROTTLES = {
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "Throttling",
}


@dataclass
class TableCost:
    table: str
    requests: int = 0  # attempts sent, retries included
    read_units: float = 0.0
    write_units: float = 0.0
    throttled: int = 0  # attempts refused by throttling (retried, by botocore or by the caller)
    waited_s: float = 0.0  # seconds requests waited under --max-rcu / --max-wcu, all threads together


class Bucket:
    """A token bucket of capacity units: `rate` a second, at most one second's worth saved up."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def wait(self) -> float:
        """Block until the bucket is not in debt; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                if self._tokens > 0:
                    return waited
                pause = -self._tokens / self.rate + 0.001
            time.sleep(pause)
            waited += pause

    def charge(self, units: float) -> None:
        with self._lock:
            self._refill()
            self._tokens -= units


class Window:
    """At most `limit` requests in flight, between 1 and `most`: halved by throttling, widened by success.

    Until the first throttle nothing is counted (the target's workers already keep `most` in flight at most): a
    request then costs no lock here. From the first throttle on, requests are counted as they enter; those already
    in flight then are not, so for one round the window may hold a few more than its limit."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.limit = float(most)
        self.engaged = False
        self._in_flight = 0
        self._cut_at = 0.0  # when the window was last halved: throttles of requests sent before do not count again
        self._cond = threading.Condition()

    def enter(self) -> tuple[float, bool]:
        """Wait for a place; returns when the request was let in, and whether it holds a counted place."""
        if not self.engaged:
            return time.monotonic(), False
        with self._cond:
            while self._in_flight >= int(self.limit):
                self._cond.wait()
            self._in_flight += 1
            return time.monotonic(), True

    def leave(self, counted: bool) -> None:
        if counted:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify()

    def throttled(self, sent: float) -> None:
        with self._cond:
            self.engaged = True
            if sent >= self._cut_at:
                self.limit = max(1.0, self.limit / 2)
                self._cut_at = time.monotonic()

    def went_through(self) -> None:
        if self.limit >= self.most:
            return
        with self._cond:
            if self.limit < self.most:
                self.limit = min(float(self.most), self.limit + 1 / self.limit)
                self._cond.notify_all()


class Meter:
    def __init__(self, max_rcu: float | None = None, max_wcu: float | None = None, concurrency: int = 1024) -> None:
        self.max_rcu, self.max_wcu = max_rcu, max_wcu
        self.window = Window(concurrency)
        self._lock = threading.Lock()
        self._tables: dict[str, TableCost] = {}
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._reads_seen: dict[str, tuple[int, float]] = {}  # read operation -> (requests, units consumed)

    def attach(self, client: DynamoDBClient) -> DynamoDBClient:
        events = client.meta.events
        events.register("provide-client-params.dynamodb", self._ask)
        events.register("before-call.dynamodb", self._before)
        events.register("needs-retry.dynamodb", self._attempt)
        events.register("after-call.dynamodb", self._after)
        events.register("after-call-error.dynamodb", self._failed)
        return client

    def costs(self) -> list[TableCost]:
        with self._lock:
            return [TableCost(**vars(c)) for _, c in sorted(self._tables.items())]

    # -- the events --------------------------------------------------------------------------------------------

    def _ask(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        op = model.name
        if op in READS or op in WRITES:
            params.setdefault("ReturnConsumedCapacity", "TOTAL")
        context["emailsync_tables"] = _tables_of(params)
        context["emailsync_kind"] = "read" if op in READS else "write" if op in WRITES else None
        context["emailsync_op"] = op

    def _before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        """Under a cap: wait while the table's bucket is in debt, then reserve what the request will likely cost,
        so requests sent together do not all find the bucket full. The reservation is settled once the response
        says what was consumed."""
        kind = context.get("emailsync_kind")
        cap = self.max_rcu if kind == "read" else self.max_wcu if kind == "write" else None
        tables = context.get("emailsync_tables", ())
        if kind is not None:
            context["emailsync_sent"] = self.window.enter()  # (when, counted): left in _after or _failed
        if cap is None or not tables or kind is None:
            return
        estimate = self._estimate(kind, params, context) / len(tables)
        for t in tables:
            bucket = self._bucket(t, kind, cap)
            waited = bucket.wait()
            bucket.charge(estimate)
            if waited:
                with self._lock:
                    self._cost(t).waited_s += waited
        context["emailsync_reserved"] = estimate

    def _estimate(self, kind: str, params: dict[str, Any], context: dict[str, Any]) -> float:
        # A write costs a unit per KB written (twice in a transaction): the request's body is about that. A read's
        # size is not known before its answer: the average of this kind of request so far, one unit at first.
        if kind == "write":
            units = max(1.0, len(params.get("body") or b"") / 1024)
            return units * (2 if context.get("emailsync_op") == "TransactWriteItems" else 1)
        with self._lock:
            n, total = self._reads_seen.get(context.get("emailsync_op", ""), (0, 0.0))
        return total / n if n else 1.0

    def _attempt(self, request_dict: dict[str, Any], response: Any, **_: Any) -> None:
        """Every attempt, as botocore decides whether to retry it (returns None: that decision stays botocore's)."""
        context = request_dict.get("context", {})
        tables = context.get("emailsync_tables") or ("?",)
        code = ""
        if response is not None:
            code = (response[1] or {}).get("Error", {}).get("Code", "")
        if code in THROTTLES and "emailsync_sent" in context:
            self.window.throttled(context["emailsync_sent"][0])
        with self._lock:
            for t in tables[:1]:  # a request counts once, under its first table
                cost = self._cost(t)
                cost.requests += 1
                cost.throttled += code in THROTTLES

    def _failed(self, context: dict[str, Any], **_: Any) -> None:
        """No answer (a connection lost, botocore's retries spent): the request's place in the window is freed."""
        if (sent := context.pop("emailsync_sent", None)) is not None:
            self.window.leave(sent[1])
        context.pop("emailsync_reserved", None)  # what it reserved stays spent: it may have been consumed

    def _after(self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if (sent := context.pop("emailsync_sent", None)) is not None:
            self.window.leave(sent[1])
            if http_response.status_code < 300:
                self.window.went_through()
        kind = context.get("emailsync_kind")
        reserved = context.pop("emailsync_reserved", 0.0)
        consumed = parsed.get("ConsumedCapacity") or []
        spent: dict[str, tuple[float, float]] = {}
        for c in consumed if isinstance(consumed, list) else [consumed]:
            reads = float(c.get("ReadCapacityUnits", 0.0))
            writes = float(c.get("WriteCapacityUnits", 0.0))
            if not reads and not writes:
                total = float(c.get("CapacityUnits", 0.0))
                reads, writes = (total, 0.0) if kind == "read" else (0.0, total)
            r0, w0 = spent.get(c.get("TableName", "?"), (0.0, 0.0))
            spent[c.get("TableName", "?")] = (r0 + reads, w0 + writes)
        with self._lock:
            for table, (reads, writes) in spent.items():
                cost = self._cost(table)
                cost.read_units += reads
                cost.write_units += writes
            if kind == "read":
                n, total = self._reads_seen.get(context.get("emailsync_op", ""), (0, 0.0))
                self._reads_seen[context.get("emailsync_op", "")] = (n + 1, total + sum(r for r, _ in spent.values()))
        # Settle each table's reservation with what was actually consumed (a failed request may consume nothing).
        for table in context.get("emailsync_tables", ()):
            reads, writes = spent.get(table, (0.0, 0.0))
            if kind == "read" and self.max_rcu is not None:
                self._bucket(table, "read", self.max_rcu).charge(reads - reserved)
            elif kind == "write" and self.max_wcu is not None:
                self._bucket(table, "write", self.max_wcu).charge(writes - reserved)

    def _cost(self, table: str) -> TableCost:
        cost = self._tables.get(table)
        if cost is None:
            cost = self._tables[table] = TableCost(table)
        return cost

    def _bucket(self, table: str, kind: str, rate: float) -> Bucket:
        with self._lock:
            b = self._buckets.get((table, kind))
            if b is None:
                b = self._buckets[(table, kind)] = Bucket(rate)
            return b


def _tables_of(params: dict[str, Any]) -> tuple[str, ...]:
    if "TableName" in params:
        return (params["TableName"],)
    if "RequestItems" in params:
        return tuple(params["RequestItems"])
    items: Iterable[dict[str, Any]] = params.get("TransactItems", ())
    return tuple(dict.fromkeys(req["TableName"] for item in items for req in item.values() if "TableName" in req))
