"""Jittered exponential back-off (emailsync/retry.py) and the DynamoDB retries built on it: how long each wait is,
how many tries there are, and which errors are tried again."""

from __future__ import annotations

import json
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import botocore.exceptions
import pytest
from botocore.awsrequest import AWSResponse
from helpers import hook_dynamodb

import emailsync.retry
import emailsync.stores.dynamodb.applier
import emailsync.stores.dynamodb.client as ddb_store
from emailsync.errors import UserError
from emailsync.retry import BASE, CAP, backoff_delay, retry

# The documented waits, before jitter: 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, then 2.0 for every later attempt.
UNJITTERED = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0]


def _client_error(code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": f"injected {code}"}}, "PutItem")


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The attempt number of every back-off wait, from every caller, instead of sleeping."""
    seen: list[int] = []
    for module in (emailsync.retry, ddb_store, emailsync.stores.dynamodb.applier):
        monkeypatch.setattr(module, "backoff_sleep", seen.append)
    return seen


# --- the delays ---------------------------------------------------------------------------------------------------


def test_the_wait_doubles_from_base_and_stops_growing_at_the_cap():
    assert (BASE, CAP) == (0.05, 2.0)
    # The jitter factor is 0.5 + rand(): rand() = 0.5 is the unjittered wait.
    assert [backoff_delay(n, rand=lambda: 0.5) for n in range(10)] == pytest.approx(UNJITTERED)
    assert backoff_delay(10_000, rand=lambda: 0.5) == CAP  # no overflow on an absurd attempt number


@pytest.mark.parametrize("attempt", range(10))
def test_the_jitter_stays_between_half_and_one_and_a_half_of_the_wait(attempt: int):
    wait = UNJITTERED[attempt]
    assert backoff_delay(attempt, rand=lambda: 0.0) == pytest.approx(0.5 * wait)
    assert backoff_delay(attempt, rand=lambda: 1 - 2**-53) <= 1.5 * wait  # random() < 1, but 0.5 + it rounds
    samples = [backoff_delay(attempt) for _ in range(2000)]
    assert all(0.5 * wait <= s <= 1.5 * wait for s in samples)
    # Really jittered: spread over the range, not one value (two throttled clients must not retry in step).
    assert min(samples) < 0.6 * wait and max(samples) > 1.4 * wait
    assert len(set(samples)) > 1900
    assert max(samples) <= 1.5 * CAP  # never more than 3 s


def test_backoff_sleep_sleeps_the_jittered_delay(monkeypatch: pytest.MonkeyPatch):
    slept: list[float] = []
    monkeypatch.setattr(emailsync.retry.time, "sleep", slept.append)
    for n in (0, 3, 9):
        emailsync.retry.backoff_sleep(n)
    assert [0.5 * w <= s <= 1.5 * w for s, w in zip(slept, (0.05, 0.4, 2.0), strict=True)] == [True] * 3


# --- retry() ------------------------------------------------------------------------------------------------------


class Flaky:
    """Raises the given exceptions in turn, then returns "done"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_retry_returns_once_a_retryable_error_goes_away(waits: list[int]):
    fn = Flaky(KeyError("a"), KeyError("b"))
    assert retry(fn, attempts=5, retryable=lambda e: isinstance(e, KeyError)) == "done"
    assert fn.calls == 3 and waits == [0, 1]


def test_retry_gives_up_after_the_configured_attempts_and_reraises_the_last_error(waits: list[int]):
    errors = [KeyError(i) for i in range(10)]
    fn = Flaky(*errors)
    with pytest.raises(KeyError) as raised:
        retry(fn, attempts=4, retryable=lambda e: True)
    assert raised.value is errors[3]  # the last call's error, as it was raised
    assert fn.calls == 4
    assert waits == [0, 1, 2]  # a wait between calls, none after the last


def test_retry_raises_an_error_that_is_not_retryable_at_once(waits: list[int]):
    error = ValueError("bad request")
    fn = Flaky(KeyError("busy"), error)
    with pytest.raises(ValueError) as raised:
        retry(fn, attempts=8, retryable=lambda e: isinstance(e, KeyError))
    assert raised.value is error and fn.calls == 2 and waits == [0]


def test_retry_with_one_attempt_never_waits(waits: list[int]):
    fn = Flaky(KeyError("busy"))
    with pytest.raises(KeyError):
        retry(fn, attempts=1, retryable=lambda e: True)
    assert fn.calls == 1 and waits == []
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        retry(fn, attempts=0, retryable=lambda e: True)


# --- DynamoDB: single writes (with_backoff) -------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(ddb_store.RETRYABLE))
def test_with_backoff_retries_throttling_and_conflicts(waits: list[int], code: str):
    fn = Flaky(_client_error(code), _client_error(code))
    assert ddb_store.with_backoff(fn) == "done"
    assert fn.calls == 3 and waits == [0, 1]


def test_with_backoff_gives_up_after_eight_tries(waits: list[int]):
    fn = Flaky(*(_client_error("ThrottlingException") for _ in range(20)))
    with pytest.raises(botocore.exceptions.ClientError, match="ThrottlingException"):
        ddb_store.with_backoff(fn)
    assert fn.calls == 8 and waits == list(range(7))


@pytest.mark.parametrize(
    "error",
    [
        _client_error("ConditionalCheckFailedException"),  # resolved by reading the item, never retried blindly
        _client_error("ValidationException"),
        _client_error("TransactionCanceledException"),
        ValueError("not a ClientError"),
    ],
    ids=lambda e: type(e).__name__ + ":" + getattr(e, "response", {}).get("Error", {}).get("Code", ""),
)
def test_with_backoff_does_not_retry_other_errors(waits: list[int], error: Exception):
    fn = Flaky(error)
    with pytest.raises(type(error)) as raised:
        ddb_store.with_backoff(fn)
    assert raised.value is error and fn.calls == 1 and waits == []


# --- DynamoDB: reads with unprocessed keys (batch_get) ----------------------------------------------------------

HR: Any = SimpleNamespace(name="hr")  # the target: only its name is read (in messages)


class BatchGetClient:
    """batch_get_item that leaves every key unprocessed for the first `throttled` requests."""

    def __init__(self, throttled: int) -> None:
        self.throttled = throttled
        self.requests: list[Any] = []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:  # noqa: N803 (boto3's name)
        self.requests.append(RequestItems)
        ((table, req),) = RequestItems.items()
        if len(self.requests) <= self.throttled:
            return {"Responses": {table: []}, "UnprocessedKeys": RequestItems}
        return {"Responses": {table: [{**k, "email": {"S": "a@x.com"}} for k in req["Keys"]]}}


def test_batch_get_retries_unprocessed_keys_with_backoff(waits: list[int]):
    client = BatchGetClient(throttled=3)
    keys = [{"id": {"S": "1"}}, {"id": {"S": "2"}}]
    out = ddb_store.batch_get(HR, client, "users", keys)
    assert sorted(out) == ['{"id":{"S":"1"}}', '{"id":{"S":"2"}}']
    assert len(client.requests) == 4 and waits == [0, 1, 2]


def test_batch_get_gives_up_after_ten_requests_without_a_last_useless_wait(waits: list[int]):
    client = BatchGetClient(throttled=100)
    with pytest.raises(UserError, match="users: reads kept being throttled; try again later"):
        ddb_store.batch_get(HR, client, "users", [{"id": {"S": "1"}}])
    assert len(client.requests) == 10
    assert waits == list(range(9))


# --- DynamoDB: transactions (the applier's own loop) -------------------------------------------------------------


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any):
        yield self._body


def _conflict(request: Any, **_: Any) -> AWSResponse:
    body = {
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        "message": "injected",
        "CancellationReasons": [{"Code": "TransactionConflict"}, {"Code": "None"}],
    }
    headers = {"x-amzn-requestid": "injected", "content-type": "application/x-amz-json-1.0"}
    return AWSResponse(request.url, 400, headers, _Raw(json.dumps(body).encode()))


def test_a_transaction_that_keeps_conflicting_is_tried_eight_times_then_reported_failed(ddb, ws, waits: list[int]):
    ddb.create("users", "email")
    ddb.put("users", {"email": "a@old.com", "i": Decimal(1)})
    ws.targets(
        "version: 1\nmappings: m.json\ndynamodb:\n  - name: hr\n    endpoint_url: ${DYNAMODB_ENDPOINT}\n"
        "    tables: [{table: users, attributes: [email]}]\n"
    )
    ws.mappings({"a@old.com": "a@new.com"}, name="m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.err
    sent: list[Any] = []

    def conflict(request: Any, **_: Any) -> AWSResponse:
        sent.append(request)
        return _conflict(request)

    hook_dynamodb(ws, "before-send.dynamodb.TransactWriteItems", conflict)
    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 3, r.out + r.err
    assert len(sent) == 8  # MAX_ATTEMPTS
    assert waits == [1, 2, 3, 4, 5, 6, 7]  # the applier counts from 1: its first wait is 0.1 s before jitter
    (action,) = json.loads((plan.parent / "report.json").read_text())["actions"]
    assert action["status"] == "failed" and "TransactionConflict" in json.dumps(action)
    assert ddb.items("users") == [{"email": "a@old.com", "i": Decimal(1)}]
