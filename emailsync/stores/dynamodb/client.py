"""DynamoDB clients: made per target, where they arrive, every call's errors and retries, and batched reads.

DynamoDB's real limits are enforced here whether or not the endpoint enforces them.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from emailsync.config import DynamoTarget
from emailsync.engine.executor import Workers
from emailsync.errors import UserError
from emailsync.retry import backoff_sleep, retry
from emailsync.stores.dynamodb.items import item_from_json, item_to_json, keystr

if TYPE_CHECKING:
    from types_boto3_dynamodb.client import DynamoDBClient


# DynamoDB's real limits, enforced here whether or not the endpoint enforces them.
MAX_TX_ITEMS = 100
MAX_TX_BYTES = 4 * 1024 * 1024
MAX_BATCH_GET = 100
BATCH_GET_ATTEMPTS = 10  # requests per 100 keys while some come back unprocessed (throttled)
MAX_EXPRESSION = 4096
MAX_ITEM_BYTES = 400 * 1024
MAX_HASH_KEY_BYTES = 2048
MAX_RANGE_KEY_BYTES = 1024

RETRYABLE = {
    "TransactionConflict",
    "TransactionConflictException",
    "ThrottlingException",
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
}


def client_for(target: DynamoTarget, probe: bool = False, connections: int = 10) -> DynamoDBClient:
    """A client of the target; `connections`: its pool of HTTP connections, one per request in flight (botocore
    keeps 10 and makes any thread beyond that wait, or open a connection it then throws away)."""
    # Standard retries: botocore backs off each throttled request by itself (jittered, exponential); the target's
    # window of requests in flight narrows and widens with throttling (meter.Window), rather than botocore's
    # adaptive mode, whose rate limiter fell to ~5 requests a second after one throttle and took tens of seconds to
    # come back. A probe (the first contact, which finds a wrong endpoint) gives up quickly instead.
    # Imported here: boto3 and botocore.config take 0.2 s to import, paid only by runs that use DynamoDB.
    import boto3
    import botocore.config

    cfg = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": 2 if probe else 10},
        connect_timeout=5 if probe else 10,
        read_timeout=60,
        max_pool_connections=max(10, connections),
        # Every request is built here, not typed by a person, and DynamoDB validates it again: botocore's own
        # check of each request against the API model costs about a quarter of a millisecond of CPU a request.
        parameter_validation=probe,
    )
    try:
        session = boto3.Session(profile_name=target.profile, region_name=target.region)
        client = session.client("dynamodb", endpoint_url=target.endpoint_url, config=cfg)
        for op in ("GetItem", "BatchGetItem", "Scan"):
            client.meta.events.register(f"before-parse.dynamodb.{op}", _read_answer)
        return client
    except botocore.exceptions.ProfileNotFound:
        raise UserError(f"target {target.name!r}: AWS profile {target.profile!r} is not configured") from None
    except botocore.exceptions.NoRegionError:
        raise UserError(
            f"target {target.name!r}: no AWS region; set `region:` for the target or AWS_DEFAULT_REGION"
        ) from None


def _read_answer(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    """A read's successful answer is DynamoDB JSON already: decoded here by one json.loads, binary values made
    bytes as botocore makes them, and handed to botocore whole, instead of botocore walking every attribute value
    through the API model (about half the CPU of reading a page of items). Errors are botocore's to parse."""
    body = response_dict.get("body")
    if response_dict.get("status_code") != 200 or not body:
        return
    doc = json.loads(body)
    if b'"B' in body:  # a binary value, or only an attribute named so: items are walked for B and BS values
        for field in ("Item", "LastEvaluatedKey"):
            if field in doc:
                doc[field] = item_from_json(doc[field])
        if "Items" in doc:
            doc["Items"] = [item_from_json(i) for i in doc["Items"]]
        for table, items in doc.get("Responses", {}).items():
            doc["Responses"][table] = [item_from_json(i) for i in items]
        for req in doc.get("UnprocessedKeys", {}).values():
            req["Keys"] = [item_from_json(k) for k in req.get("Keys", [])]
    customized_response_dict.update(doc)
    response_dict["body"] = b"{}"  # what botocore still parses: only the metadata from the headers


# AWS's own DynamoDB endpoints: only behind those does an AWS account stand, which STS can name.
_AWS_HOST_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")


def reached(target: DynamoTarget, client: DynamoDBClient) -> dict[str, str | None]:
    """Where this client sends its requests, as botocore resolved it from targets.yaml, AWS_ENDPOINT_URL_DYNAMODB,
    AWS_ENDPOINT_URL, the profile and the region; and, on AWS's own endpoints, the account of the credentials.
    DynamoDB Local and other stand-ins have no account: None. Recorded in plans and checked by apply."""
    url = urllib.parse.urlsplit(client.meta.endpoint_url)
    host = url.hostname
    aws = host is not None and host.endswith(_AWS_HOST_SUFFIXES)
    return {
        "host": host,
        "port": str(url.port) if url.port else None,
        "database": client.meta.region_name,
        "account": account_of(target) if aws else None,
    }


def account_of(target: DynamoTarget) -> str:
    """The AWS account the target's credentials belong to (STS GetCallerIdentity needs no permission)."""
    import boto3
    import botocore.config

    cfg = botocore.config.Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=20)
    try:
        sts = boto3.Session(profile_name=target.profile, region_name=target.region).client("sts", config=cfg)
        return str(call(target, "STS GetCallerIdentity", sts.get_caller_identity)["Account"])
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        raise UserError(
            f"target {target.name!r}: cannot tell which AWS account the credentials belong to (STS "
            f"GetCallerIdentity: {e}); plans record the account so that one is never applied to another account"
        ) from None


def call(target: DynamoTarget, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    """One request, with the failures a user can fix turned into clear errors (never credentials)."""
    try:
        return fn(**kwargs)
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        msg = e.response.get("Error", {}).get("Message", "")
        if code == "ResourceNotFoundException":
            raise UserError(f"target {target.name!r}: {what}: table not found ({msg}); check the table name") from None
        if code in ("AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"):
            raise UserError(f"target {target.name!r}: {what}: access denied ({code}); check the credentials") from None
        raise
    except botocore.exceptions.NoCredentialsError:
        raise UserError(
            f"target {target.name!r}: no AWS credentials found; configure a profile or the AWS_* variables"
        ) from None
    except botocore.exceptions.EndpointConnectionError as e:
        raise UserError(f"target {target.name!r}: cannot reach DynamoDB at {e.kwargs.get('endpoint_url')}") from None


def is_retryable(e: Exception) -> bool:
    """Throttling, a transaction conflict or a passing server error: the same request may succeed later."""
    return isinstance(e, botocore.exceptions.ClientError) and e.response.get("Error", {}).get("Code", "") in RETRYABLE


def with_backoff(fn: Callable[[], Any], attempts: int = 8) -> Any:
    """Retry throttling and transaction conflicts with jittered exponential backoff, a bounded number of times."""
    return retry(fn, attempts=attempts, retryable=is_retryable)


def batch_get(
    target: DynamoTarget,
    client: DynamoDBClient,
    table: str,
    keys: list[dict[str, Any]],
    workers: Workers | None = None,
) -> dict[str, dict[str, Any]]:
    """Whole items by key (boto3 form), strongly consistent, 100 keys a request (`workers`' width of them at once),
    unprocessed keys retried with backoff. Returns keystr(plan JSON key) -> item (boto3 form)."""
    names = list(keys[0]) if keys else []
    unique = list({keystr(item_to_json(k)): k for k in keys}.values())  # a request may not repeat a key

    def chunk(i: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        pending = {table: {"Keys": unique[i : i + MAX_BATCH_GET], "ConsistentRead": True}}
        for attempt in range(BATCH_GET_ATTEMPTS):
            if attempt:
                backoff_sleep(attempt - 1)
            resp = call(target, f"read {table}", client.batch_get_item, RequestItems=pending)
            found += resp.get("Responses", {}).get(table, [])
            pending = resp.get("UnprocessedKeys") or {}
            if not pending:
                return found
        raise UserError(f"target {target.name!r}: {table}: reads kept being throttled; try again later")

    starts = range(0, len(unique), MAX_BATCH_GET)
    chunks = workers.each(chunk, starts) if workers is not None else [chunk(i) for i in starts]
    return {keystr(item_to_json({k: item[k] for k in names})): item for found in chunks for item in found}
