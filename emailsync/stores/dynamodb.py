"""DynamoDB: connecting, reading configured tables, and planning item changes.

One Scan pass per table (parallel segments), whatever the number of mappings: every item is matched against
the mapping in memory, and only items that will change are kept. Those are then read whole with strongly
consistent BatchGetItem, and every decision is made on the whole item. Items are handled as DynamoDB JSON
({"S": ...}, {"N": ...}, {"SS": [...]}, binary as base64) so nothing is lost to type conversion.
"""

from __future__ import annotations

import base64
import copy
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from emailsync import progress
from emailsync.config import DynamoAttribute, DynamoTable, DynamoTarget
from emailsync.errors import UserError
from emailsync.mappings import Mapping, MappingSet, match_key
from emailsync.plan import dumps
from emailsync.retry import backoff_sleep, retry

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


def client_for(target: DynamoTarget, probe: bool = False) -> DynamoDBClient:
    # Adaptive retries: botocore backs off on throttling by itself, client-side rate limiting included. A probe
    # (the first contact, which finds a wrong endpoint) gives up quickly instead.
    # Imported here: boto3 and botocore.config take 0.2 s to import, paid only by runs that use DynamoDB.
    import boto3
    import botocore.config

    cfg = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": 2} if probe else {"mode": "adaptive", "max_attempts": 10},
        connect_timeout=5 if probe else 10,
        read_timeout=60,
    )
    try:
        session = boto3.Session(profile_name=target.profile, region_name=target.region)
        return session.client("dynamodb", endpoint_url=target.endpoint_url, config=cfg)
    except botocore.exceptions.ProfileNotFound:
        raise UserError(f"target {target.name!r}: AWS profile {target.profile!r} is not configured") from None
    except botocore.exceptions.NoRegionError:
        raise UserError(
            f"target {target.name!r}: no AWS region; set `region:` for the target or AWS_DEFAULT_REGION"
        ) from None


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
    target: DynamoTarget, client: DynamoDBClient, table: str, keys: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Whole items by key (boto3 form), strongly consistent, 100 keys a request, unprocessed keys retried with
    backoff. Returns keystr(plan JSON key) -> item (boto3 form)."""
    out: dict[str, dict[str, Any]] = {}
    names = list(keys[0]) if keys else []
    unique = list({keystr(item_to_json(k)): k for k in keys}.values())  # a request may not repeat a key
    for i in range(0, len(unique), MAX_BATCH_GET):
        pending = {table: {"Keys": unique[i : i + MAX_BATCH_GET], "ConsistentRead": True}}
        for attempt in range(BATCH_GET_ATTEMPTS):
            if attempt:
                backoff_sleep(attempt - 1)
            resp = call(target, f"read {table}", client.batch_get_item, RequestItems=pending)
            for item in resp.get("Responses", {}).get(table, []):
                out[keystr(item_to_json({k: item[k] for k in names}))] = item
            pending = resp.get("UnprocessedKeys") or {}
            if not pending:
                break
        else:
            raise UserError(f"target {target.name!r}: {table}: reads kept being throttled; try again later")
    return out


# --- values --------------------------------------------------------------------------------------------------


def to_json(av: dict[str, Any]) -> dict[str, Any]:
    """A boto3 AttributeValue as plan JSON: binary as base64, sets sorted (sets have no order)."""
    ((t, v),) = av.items()
    if t == "B":
        return {"B": base64.b64encode(v).decode()}
    if t == "BS":
        return {"BS": sorted(base64.b64encode(x).decode() for x in v)}
    if t in ("SS", "NS"):
        return {t: sorted(v)}
    if t == "M":
        return {"M": {k: to_json(x) for k, x in v.items()}}
    if t == "L":
        return {"L": [to_json(x) for x in v]}
    return {t: v}


def from_json(av: dict[str, Any]) -> dict[str, Any]:
    ((t, v),) = av.items()
    if t == "B":
        return {"B": base64.b64decode(v)}
    if t == "BS":
        return {"BS": [base64.b64decode(x) for x in v]}
    if t == "M":
        return {"M": {k: from_json(x) for k, x in v.items()}}
    if t == "L":
        return {"L": [from_json(x) for x in v]}
    return {t: v}


def item_to_json(item: dict[str, Any]) -> dict[str, Any]:
    return {k: to_json(v) for k, v in item.items()}


def item_from_json(item: dict[str, Any]) -> dict[str, Any]:
    return {k: from_json(v) for k, v in item.items()}


def normalized(item: dict[str, Any] | None) -> Any:
    """An item for comparison: sets as sorted lists, numbers as their decimal value."""
    if item is None:
        return None

    def norm(av: dict[str, Any]) -> Any:
        ((t, v),) = av.items()
        if t in ("SS", "BS"):
            return (t, sorted(v))
        if t == "NS":
            return (t, sorted(_num(x) for x in v))
        if t == "N":
            return (t, _num(v))
        if t == "M":
            return (t, {k: norm(x) for k, x in v.items()})
        if t == "L":
            return (t, [norm(x) for x in v])
        return (t, v)

    return {k: norm(v) for k, v in item.items()}


def _num(text: str) -> Any:
    from decimal import Decimal

    return Decimal(text).normalize()


def item_size(item: dict[str, Any]) -> int:
    """DynamoDB's item size: attribute names plus values (UTF-8), close enough to enforce the 400 KB limit."""

    def size(av: dict[str, Any]) -> int:
        ((t, v),) = av.items()
        if t == "S":
            return len(v.encode())
        if t == "N":
            return len(v) // 2 + 2
        if t == "B":
            return len(base64.b64decode(v)) if isinstance(v, str) else len(v)
        if t in ("SS", "NS", "BS"):
            return sum(size({t[0]: x}) for x in v)
        if t == "M":
            return 3 + sum(len(k.encode()) + size(x) + 1 for k, x in v.items())
        if t == "L":
            return 3 + sum(size(x) + 1 for x in v)
        return 1

    return sum(len(k.encode()) + size(v) for k, v in item.items())


def keystr(key: dict[str, Any]) -> str:
    return dumps(key)


def get_path(item: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = item.get(path[0])
    for part in path[1:]:
        if not node or "M" not in node:
            return None
        node = node["M"].get(part)
    return node


def set_path(item: dict[str, Any], path: tuple[str, ...], value: dict[str, Any]) -> None:
    if len(path) == 1:
        item[path[0]] = value
        return
    node = item[path[0]]["M"]
    for part in path[1:-1]:
        node = node[part]["M"]
    node[path[-1]] = value


# --- planning -----------------------------------------------------------------------------------------------


@dataclass
class TableInfo:
    cfg: DynamoTable
    index: int
    hash_key: str
    range_key: str | None
    size_bytes: int
    item_count: int = 0  # DynamoDB's estimate (refreshed about every six hours): for progress only

    @property
    def key_names(self) -> tuple[str, ...]:
        return (self.hash_key,) + ((self.range_key,) if self.range_key else ())


@dataclass
class Candidate:
    key: dict[str, Any]
    item: dict[str, Any]
    new_item: dict[str, Any]
    changes: list[tuple[str, Any, Any]]
    entries: set[int]
    moves: bool
    key_entries: set[int] = field(default_factory=set)  # mappings that changed the key: decide merge order

    @property
    def keystr(self) -> str:
        return keystr(self.key)


@dataclass
class DynamoTargetPlan:
    target: DynamoTarget
    reached: dict[str, str | None] = field(default_factory=dict)  # where the client's requests went (reached())
    actions: list[dict[str, Any]] = field(default_factory=list)
    reads: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Lookup:
    """old email -> mapping, honouring client scope where the table has a client attribute."""

    def __init__(self, mset: MappingSet, cfg: DynamoTable, where: str) -> None:
        self.match = mset.match
        self.scoped: dict[tuple[str | None, str], Mapping] = {}
        if cfg.client_attribute:
            for m in mset.mappings:
                self.scoped.setdefault((m.client_id, match_key(m.old, self.match)), m)
        else:
            ctx = f"{where} ({cfg.table}) has no client_attribute, so client_id is ignored there"
            for m in mset.unscoped(ctx):
                self.scoped.setdefault((None, match_key(m.old, self.match)), m)

    def __call__(self, email: str, client: str | None) -> Mapping | None:
        k = match_key(email, self.match)
        if client is not None:
            m = self.scoped.get((client, k))
            if m is not None:
                return m
        return self.scoped.get((None, k))


def _remap_string(s: str, attr: DynamoAttribute, lookup: Lookup, client: str | None) -> tuple[str, int] | None:
    before, after = attr.affixes
    if not (s.startswith(before) and s.endswith(after) and len(s) >= len(before) + len(after)):
        return None
    email = s[len(before) : len(s) - len(after)] if after else s[len(before) :]
    m = lookup(email, client)
    if m is None or m.new == email:  # already the new value (a case-only rename under casefold)
        return None
    return before + m.new + after, m.ord


def remap_value(
    value: dict[str, Any], attr: DynamoAttribute, lookup: Lookup, client: str | None
) -> tuple[dict[str, Any], set[int]] | None:
    """The attribute's new value, or None when nothing in it matches."""
    ((t, v),) = value.items()
    used: set[int] = set()
    if t == "S":
        hit = _remap_string(v, attr, lookup, client)
        if hit is None:
            return None
        return {"S": hit[0]}, {hit[1]}
    if t == "L":
        out = []
        for el in v:
            hit = _remap_string(el["S"], attr, lookup, client) if "S" in el else None
            if hit is None:
                out.append(el)
            else:
                out.append({"S": hit[0]})
                used.add(hit[1])
        return ({"L": out}, used) if used else None
    if t == "SS":
        new = set()
        for el in v:
            hit = _remap_string(el, attr, lookup, client)
            if hit is None:
                new.add(el)
            else:
                new.add(hit[0])
                used.add(hit[1])
        # Set semantics: duplicates collapse; a set never becomes empty (every element maps to one element).
        return ({"SS": sorted(new)}, used) if used else None
    return None


def merge(existing: dict[str, Any] | None, incoming: dict[str, Any]) -> dict[str, Any]:
    """The old script's merge: attributes present and non-null in the existing item win, the rest are filled
    from the incoming (moved) item."""
    if existing is None:
        return dict(incoming)
    out = dict(existing)
    for k, v in incoming.items():
        if k not in out or out[k] == {"NULL": True}:
            out[k] = v
    return out


class DynamoPlanner:
    def __init__(self, target: DynamoTarget, where: str, mset: MappingSet) -> None:
        self.target = target
        self.where = where
        self.mset = mset
        self.client = client_for(target)
        self.probe = client_for(target, probe=True)
        self.out = DynamoTargetPlan(target)
        self._stop = threading.Event()

    def run(self) -> DynamoTargetPlan:  # executor.Step
        return self.plan()

    def cancel(self) -> None:
        """From another thread: stop scanning after the pages in flight."""
        self._stop.set()

    def plan(self) -> DynamoTargetPlan:
        self.out.reached = reached(self.target, self.client)
        for i, cfg in enumerate(self.target.tables):
            self._plan_table(self._describe(i, cfg))
        return self.out

    def _describe(self, i: int, cfg: DynamoTable) -> TableInfo:
        where = f"{self.where}.tables[{i}]"
        t = call(self.target, f"describe {cfg.table}", self.probe.describe_table, TableName=cfg.table)["Table"]
        keys = {k["KeyType"]: k["AttributeName"] for k in t["KeySchema"]}
        types = {a["AttributeName"]: a["AttributeType"] for a in t.get("AttributeDefinitions", [])}
        info = TableInfo(
            cfg, i, keys["HASH"], keys.get("RANGE"), int(t.get("TableSizeBytes", 0)), int(t.get("ItemCount", 0))
        )
        for a in cfg.attributes:
            if a.path[0] in info.key_names and (len(a.path) > 1 or types.get(a.path[0]) != "S"):
                raise UserError(
                    f"{where}.attributes: key attribute {a.name!r} of {cfg.table} is of type "
                    f"{types.get(a.path[0])}; only String keys can hold emails"
                )
        return info

    def _segments(self, info: TableInfo) -> int:
        if info.cfg.segments:
            return info.cfg.segments
        # About one segment per GB, within what two cores and the default connection pool sustain.
        return max(1, min(8, info.size_bytes // (1 << 30) + 1))

    def _scan(self, info: TableInfo) -> Iterator[dict[str, Any]]:
        names: dict[str, str] = {}
        wanted = list(info.key_names) + [a.path[0] for a in info.cfg.attributes]
        if info.cfg.client_attribute:
            wanted.append(info.cfg.client_attribute)
        for n in dict.fromkeys(wanted):
            names[f"#p{len(names)}"] = n
        projection = ", ".join(names)
        segments = self._segments(info)
        counters = {"requests": 0, "items": 0}

        def segment(seg: int) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            kwargs: dict[str, Any] = dict(
                TableName=info.cfg.table,
                ConsistentRead=True,
                ProjectionExpression=projection,
                ExpressionAttributeNames=names,
                Segment=seg,
                TotalSegments=segments,
            )
            while True:
                if self._stop.is_set():
                    raise UserError(f"target {self.target.name!r}: planning stopped while scanning {info.cfg.table}")
                page = call(self.target, f"scan {info.cfg.table}", self.client.scan, **kwargs)
                counters["requests"] += 1
                counters["items"] += len(page.get("Items", []))
                bar.advance(len(page.get("Items", [])))
                found.extend(i for i in page.get("Items", []) if self._changes(info, i) is not None)
                if "LastEvaluatedKey" not in page:
                    return found
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

        description = f"plan {self.target.name}: scanning {info.cfg.table}"
        with (
            progress.task(description, total=info.item_count or None) as bar,
            ThreadPoolExecutor(max_workers=min(segments, 8)) as pool,
        ):
            try:
                found = [item for items in pool.map(segment, range(segments)) for item in items]
            except BaseException:  # a segment failed, or Ctrl-C: the others stop after their page in flight
                self._stop.set()
                raise
        yield from found
        self.out.reads.append(
            dict(
                target=self.target.name,
                table=info.cfg.table,
                method="scan",
                segments=segments,
                requests=counters["requests"],
                items_read=counters["items"],
            )
        )

    def _changes(self, info: TableInfo, item: dict[str, Any]) -> Candidate | None:
        lookup = self._lookups[info.cfg.table]
        client = None
        if info.cfg.client_attribute:
            cv = item.get(info.cfg.client_attribute)
            client = cv.get("S", cv.get("N")) if cv else None
        new_item = copy.deepcopy(item)
        changes: list[tuple[str, Any, Any]] = []
        entries: set[int] = set()
        key_entries: set[int] = set()
        moves = False
        for attr in info.cfg.attributes:
            value = get_path(item, attr.path)
            if value is None:
                continue
            hit = remap_value(value, attr, lookup, client)
            if hit is None:
                continue
            new_value, used = hit
            set_path(new_item, attr.path, new_value)
            changes.append((attr.name, value, new_value))
            entries |= used
            if len(attr.path) == 1 and attr.path[0] in info.key_names:
                moves = True
                key_entries |= used
        if not changes:
            return None
        key = {k: item[k] for k in info.key_names}
        return Candidate(key, item, new_item, changes, entries, moves, key_entries)

    def _batch_get(self, table: str, keys: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return batch_get(self.target, self.client, table, keys)

    def _plan_table(self, info: TableInfo) -> None:
        if not hasattr(self, "_lookups"):
            self._lookups: dict[str, Lookup] = {}
        self._lookups[info.cfg.table] = Lookup(self.mset, info.cfg, f"{self.where}.tables[{info.index}]")
        table = info.cfg.table
        scanned = list(self._scan(info))
        # Decide on whole, strongly consistent items, not on the projection the scan returned.
        whole = self._batch_get(table, [{k: i[k] for k in info.key_names} for i in scanned])
        cands: dict[str, Candidate] = {}
        for item in whole.values():
            c = self._changes(info, item)
            if c is not None:
                cj = self._to_plan_candidate(c)
                cands[cj.keystr] = cj
        movers = sorted((c for c in cands.values() if c.moves), key=lambda c: (min(c.key_entries), c.keystr))
        updates = {k: c for k, c in cands.items() if not c.moves}
        new_keys = {}
        for c in movers:
            nk = {k: c.new_item[k] for k in info.key_names}
            self._check_key(info, c, nk)
            new_keys[c.keystr] = nk
        distinct = {keystr(nk): nk for nk in new_keys.values()}
        existing_raw = self._batch_get(table, [item_from_json(nk) for nk in distinct.values()]) if movers else {}
        existing = {k: item_to_json(v) for k, v in existing_raw.items()}
        leaving = {c.keystr for c in movers}
        arrivals: dict[str, list[Candidate]] = {}
        for c in movers:
            arrivals.setdefault(keystr(new_keys[c.keystr]), []).append(c)
        steps: dict[str, int] = {}  # keystr of a mover -> its step
        prev: dict[str, str | None] = {}  # mover -> the mover (or updated item) it must follow
        for target_key, group in arrivals.items():
            if target_key in leaving:
                # The item now at the target key moves away first; the arrivals then start from nothing.
                current, before = None, target_key
            elif target_key in updates:
                # The item there changes too: its own update runs first (step 0), the arrivals merge into its
                # updated version, so a stale arrival never holds back that update.
                current, before = updates[target_key].new_item, "update:" + target_key
                steps[before] = 0
            else:
                current, before = existing.get(target_key), None
            for c in group:
                merged = merge(current, c.new_item)
                self._check_size(info, c, merged)
                self._emit_move(info, c, new_keys[c.keystr], current, merged)
                prev[c.keystr] = before
                current = merged
                before = c.keystr
        for c in updates.values():
            self._check_size(info, c, c.new_item)
            kind = "update" if any("S" in old for _, old, _ in c.changes) else "array-replace"
            self._emit(info, c, kind, step=0)

        def step_of(k: str) -> int:
            # Walk back along the chain of moves iteratively: a merge of thousands of items into one key is a
            # chain that long.
            chain: list[tuple[str, str]] = []  # (a mover, the key it follows)
            seen: set[str] = set()
            while k not in steps:
                if k in seen:
                    raise UserError(f"{self.where}: {table}: item moves form a cycle at key {k}; split the mappings")
                seen.add(k)
                p = prev.get(k)
                if p is None:
                    steps[k] = 0
                    break
                chain.append((k, p))
                k = p
            for x, p in reversed(chain):
                steps[x] = steps[p] + 1
            return steps[chain[0][0]] if chain else steps[k]

        for a in self.out.actions:
            if a["table"] == table and a["kind"] in ("merge-and-move", "live-swap"):
                a["step"] = step_of(keystr(a["key"]))

    def _to_plan_candidate(self, c: Candidate) -> Candidate:
        return Candidate(
            key=item_to_json(c.key),
            item=item_to_json(c.item),
            new_item=item_to_json(c.new_item),
            changes=[(n, to_json(o), to_json(v)) for n, o, v in c.changes],
            entries=c.entries,
            moves=c.moves,
            key_entries=c.key_entries,
        )

    def _check_key(self, info: TableInfo, c: Candidate, nk: dict[str, Any]) -> None:
        limits = {info.hash_key: MAX_HASH_KEY_BYTES}
        if info.range_key:
            limits[info.range_key] = MAX_RANGE_KEY_BYTES
        for k, limit in limits.items():
            if nk[k] == c.key[k] or "S" not in nk[k]:
                continue  # unchanged (numbers and binaries never hold emails)
            if len(nk[k]["S"].encode()) > limit:
                raise UserError(
                    f"{self.where}.tables[{info.index}] ({info.cfg.table}): item {c.keystr} would move to a "
                    f"{k} of {len(nk[k]['S'].encode())} bytes; DynamoDB allows {limit}. Fix the mapping or template"
                )

    def _check_size(self, info: TableInfo, c: Candidate, item: dict[str, Any]) -> None:
        if item_size(item) > MAX_ITEM_BYTES:
            raise UserError(
                f"{self.where}.tables[{info.index}] ({info.cfg.table}): item {c.keystr} would grow past DynamoDB's "
                "400 KB item limit"
            )

    def _emit_move(
        self,
        info: TableInfo,
        c: Candidate,
        new_key: dict[str, Any],
        existing: dict[str, Any] | None,
        merged: dict[str, Any],
    ) -> None:
        if self.target.is_live(info.cfg.table):
            # The login table: no transaction, but create/merge, read back and compare, then delete the old item.
            self._emit(
                info,
                c,
                "live-swap",
                step=0,
                new_key=new_key,
                existing=existing,
                merged=merged,
                reason="create or merge the new item, read it back (ConsistentRead) and compare it field by field "
                "with `merged`; only if equal, delete the old item (condition: still the planned item)",
            )
            return
        self._emit(info, c, "merge-and-move", step=0, new_key=new_key, existing=existing, merged=merged)

    def _emit(self, info: TableInfo, c: Candidate, kind: str, step: int, **extra: Any) -> None:
        self.out.actions.append(
            dict(
                kind=kind,
                store="dynamodb",
                target=self.target.name,
                table=info.cfg.table,
                key=c.key,
                step=step,
                live=self.target.is_live(info.cfg.table),
                mappings=sorted(c.entries),
                row=c.item,
                changes=[{"attribute": n, "old": o, "new": v} for n, o, v in c.changes],
                **extra,
            )
        )
