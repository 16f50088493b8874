"""DynamoDB: reading configured tables, and planning item changes.

One Scan pass per table (parallel segments), whatever the number of mappings: every item is matched against
the mapping in memory, and only items that will change are kept. Those are then read whole with strongly
consistent BatchGetItem, and every decision is made on the whole item. Items are handled as DynamoDB JSON
({"S": ...}, {"N": ...}, {"SS": [...]}, binary as base64) so nothing is lost to type conversion.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emailsync import progress
from emailsync.config import DynamoAttribute, DynamoTable, DynamoTarget, UniqueGroup
from emailsync.engine.executor import DEFAULT_CONCURRENCY, Workers
from emailsync.engine.groups import Mover, losers, refusal
from emailsync.errors import Refusal, UserError
from emailsync.mappings import Mapping, MappingSet, match_key
from emailsync.plan import Skipped, dumps
from emailsync.stores.dynamodb.client import (
    MAX_HASH_KEY_BYTES,
    MAX_ITEM_BYTES,
    MAX_RANGE_KEY_BYTES,
    batch_get,
    call,
    reached,
)
from emailsync.stores.dynamodb.items import get_path, item_from_json, item_size, item_to_json, keystr, set_path, to_json

if TYPE_CHECKING:
    from types_boto3_dynamodb.client import DynamoDBClient


LOOKUP_GROUP = -1  # the attributes watched for the warning of a target without unique groups (_watch_lookups)
SHARED_SHOWN = 20  # items warned about per target
GroupAttr = tuple[int, DynamoAttribute, str | None]  # a unique group's attribute in a table: (group, attribute, owner)
SCAN_PAGE_BYTES = 1 << 20  # what one Scan request reads at most
WHOLE_ITEM_BYTES = 4096  # tables whose items average at most this are scanned whole (a strongly consistent read unit)

# --- planning -----------------------------------------------------------------------------------------------


@dataclass
class TableInfo:
    cfg: DynamoTable
    index: int
    hash_key: str
    range_key: str | None
    size_bytes: int
    item_count: int = 0  # DynamoDB's estimate (refreshed about every six hours): for progress only
    lookup_keys: frozenset[str] = frozenset()  # attributes a global secondary index is keyed by (a lookup)

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
    skipped: list[Skipped] = field(default_factory=list)  # left out by a unique group (on_conflict: skip)


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
    def __init__(
        self,
        target: DynamoTarget,
        where: str,
        mset: MappingSet,
        client: DynamoDBClient,
        probe: DynamoDBClient,
        concurrency: int = DEFAULT_CONCURRENCY,
        groups: tuple[tuple[str, UniqueGroup], ...] = (),
    ) -> None:
        """`client` reads the items; `probe` (no retries) describes the tables (see client.client_for);
        `concurrency`: requests in flight (its tables' scan segments and batched reads together)."""
        self.target = target
        self.concurrency = concurrency
        self._lookups: dict[str, Lookup] = {}
        self._kept: dict[str, dict[str, dict[str, Any]]] = {}  # table -> items found under new keys (whole scans)
        # Tables are planned at once: each keeps its own actions and reads, joined in the targets file's order.
        self._actions: dict[str, list[dict[str, Any]]] = {t.table: [] for t in target.tables}
        self._reads: dict[str, list[dict[str, Any]]] = {t.table: [] for t in target.tables}
        self.where = where
        self.mset = mset
        self.client = client
        self.probe = probe
        self.out = DynamoTargetPlan(target)
        self._stop = threading.Event()
        # Unique groups of this target: (group, attribute, owner) per table, and the items found holding a mapping's
        # new address in a group's attribute as the scan went by: (group, table, attribute, key, address, owner).
        self.groups = groups
        self._group_attrs: dict[str, list[GroupAttr]] = {}
        for gi, (_, g) in enumerate(groups):
            for mem in g.members:
                cfg = next(t for t in target.tables if t.table == mem.table)
                attr = next(a for a in cfg.attributes if a.name == mem.attribute)
                self._group_attrs.setdefault(mem.table, []).append((gi, attr, mem.owner))
        self._news = {m.new.lower() for m in mset.mappings} if groups else set()
        self._held: list[tuple[int, str, str, str, str, Any]] = []
        self._held_lock = threading.Lock()

    def run(self) -> DynamoTargetPlan:  # executor.Step
        return self.plan()

    def cancel(self) -> None:
        """From another thread: stop scanning after the pages in flight."""
        self._stop.set()

    def plan(self) -> DynamoTargetPlan:
        self.out.reached = reached(self.target, self.client)
        tables = self.target.tables
        with Workers(max(1, len(tables))) as workers:
            try:
                infos = workers.each(lambda it: self._describe(*it), enumerate(tables))
                if not self.groups:
                    self._watch_lookups(infos)
                workers.each(self._plan_table, infos)
            except BaseException:  # a table failed, or Ctrl-C: the others stop scanning after the pages in flight
                self._stop.set()
                raise
        for t in tables:
            self.out.actions += self._actions.pop(t.table)
            self.out.reads += self._reads.pop(t.table)
        for gi, (label, group) in enumerate(self.groups):
            self._decide_group(gi, label, group)
        if not self.groups and any(g == LOOKUP_GROUP for grouped in self._group_attrs.values() for g, _, _ in grouped):
            self._lookups_shared()
        return self.out

    def _decide_group(self, gi: int, label: str, group: UniqueGroup) -> None:
        """A unique group's attributes (engine/groups.py decides): items whose planned new address another item keeps
        (or an item whose mapping comes first takes) are refused (fail) or left out (skip), until none is."""
        while lost := self._contest(gi, label):
            if group.on_conflict == "fail":
                head, problems = refusal(label, lost)
                raise Refusal(f"{self.where}: {head}", problems=problems)
            dropped: set[int] = set()
            for m, why in lost:
                a = m.ref
                if a["kind"] in ("merge-and-move", "live-swap"):
                    raise UserError(
                        f"{self.where}: {label} would leave out {m.name}, which moves to another key (its move may "
                        "be part of a merge other items follow); use on_conflict: fail and resolve it first"
                    )
                if id(a) not in dropped:
                    dropped.add(id(a))
                    self.out.skipped += [
                        Skipped(
                            target=self.target.name,
                            table=a["table"],
                            key=a["key"],
                            column=c["attribute"],
                            old=c["old"],
                            new=c["new"],
                            reason=why,
                        )
                        for c in a["changes"]
                    ]
            # Dropped at once: removing each from the list would cost a pass over every action per item left out.
            self.out.actions = [a for a in self.out.actions if id(a) not in dropped]

    def _contest(self, gi: int, label: str) -> list[tuple[Mover, str]]:
        """The items of group `gi`'s attributes that would lose the address they move to (engine/groups.losers)."""
        attrs = {
            (table, attr.name): (attr, owner)
            for table, grouped in self._group_attrs.items()
            for g, attr, owner in grouped
            if g == gi
        }
        order = {t.table: i for i, t in enumerate(self.target.tables)}
        moving: dict[str, list[Mover]] = {}
        moved: set[tuple[str, str, str]] = set()
        for a in sorted(self.out.actions, key=lambda a: (min(a["mappings"]), order[a["table"]], keystr(a["key"]))):
            ks = keystr(a["key"])
            for c in a["changes"]:
                spec = attrs.get((a["table"], c["attribute"]))
                if spec is None:
                    continue
                moved.add((a["table"], c["attribute"], ks))
                email = _email_in(c["new"], spec[0])
                if email is not None:
                    who = ("owner", dumps(a["row"].get(spec[1]))) if spec[1] else ("item", a["table"], ks)
                    moving.setdefault(email.lower(), []).append(Mover(who, f"{a['table']} {ks}", a))
        holders: dict[str, list[tuple[Any, str]]] = {}
        for hg, table, attr, ks, addr, owner in self._held:
            if hg == gi and addr in moving and (table, attr, ks) not in moved:
                who = ("owner", dumps(owner)) if attrs[(table, attr)][1] else ("item", table, ks)
                holders.setdefault(addr, []).append((who, f"{table} {ks}"))
        return losers(label, {k: _unique_movers(v) for k, v in moving.items()}, holders)

    def _lookups_shared(self) -> None:
        """Without a unique group: a warning for each item that would move to an address another item keeps (or
        takes) in an attribute some global secondary index is keyed by (a lookup by address, such as Auth.js's
        GSI1PK = USER#<email>), where both would then be found."""
        lost = self._contest(LOOKUP_GROUP, "lookup")
        for m, why in lost[:SHARED_SHOWN]:
            self.out.warnings.append(
                f"target {self.target.name!r}: {m.name} moves to an address another item keeps or takes in an "
                f"attribute a global secondary index is keyed by ({why.split(': ', 1)[1]}); if the application keeps "
                "an address on one item, declare the attribute a unique group (unique_groups: in targets.yaml)"
            )
        if len(lost) > SHARED_SHOWN:
            self.out.warnings.append(f"target {self.target.name!r}: ... and {len(lost) - SHARED_SHOWN} more items")

    def _describe(self, i: int, cfg: DynamoTable) -> TableInfo:
        where = f"{self.where}.tables[{i}]"
        t = call(self.target, f"describe {cfg.table}", self.probe.describe_table, TableName=cfg.table)["Table"]
        keys = {k["KeyType"]: k["AttributeName"] for k in t["KeySchema"]}
        types = {a["AttributeName"]: a["AttributeType"] for a in t.get("AttributeDefinitions", [])}
        info = TableInfo(
            cfg, i, keys["HASH"], keys.get("RANGE"), int(t.get("TableSizeBytes", 0)), int(t.get("ItemCount", 0))
        )
        info.lookup_keys = frozenset(
            k["AttributeName"]
            for g in t.get("GlobalSecondaryIndexes", [])
            for k in g["KeySchema"]
            if k["KeyType"] == "HASH"
        )
        for a in cfg.attributes:
            if a.path[0] in info.key_names and (len(a.path) > 1 or types.get(a.path[0]) != "S"):
                raise UserError(
                    f"{where}.attributes: key attribute {a.name!r} of {cfg.table} is of type "
                    f"{types.get(a.path[0])}; only String keys can hold emails"
                )
        return info

    def _watch_lookups(self, infos: list[TableInfo]) -> None:
        """Without a unique group, the attributes a global secondary index is keyed by are watched like a group's
        (LOOKUP_GROUP): the scan notes the items holding a mapping's new address there, for the warning."""
        for info in infos:
            for attr in info.cfg.attributes:
                if len(attr.path) == 1 and attr.path[0] in info.lookup_keys:
                    self._group_attrs.setdefault(info.cfg.table, []).append((LOOKUP_GROUP, attr, None))
        if self._group_attrs:
            self._news = {m.new.lower() for m in self.mset.mappings}

    def _segments(self, info: TableInfo) -> int:
        if info.cfg.segments:
            return info.cfg.segments
        # A Scan page reads at most 1 MB, one round trip each: a segment per MB of table (DescribeTable's size,
        # refreshed about every six hours) puts every page in flight at once, up to --concurrency segments. A table
        # that says it is empty may just be new: a few segments cost a request each if it truly is.
        if info.size_bytes == 0 and info.item_count == 0:
            return min(4, self.concurrency)
        return max(1, min(self.concurrency, -(-info.size_bytes // SCAN_PAGE_BYTES)))

    def _whole(self, info: TableInfo) -> bool:
        """Scan whole items, not the key and the configured attributes: where items are small (DescribeTable's size
        and count say at most WHOLE_ITEM_BYTES on average), a page holds as many items either way, and the items that
        will change then need no second, whole-item read."""
        return info.item_count > 0 and 0 < info.size_bytes / info.item_count <= WHOLE_ITEM_BYTES  # 0: unknown

    def _scan(self, info: TableInfo) -> Iterator[tuple[dict[str, Any], Candidate]]:
        """The items that will change, with their changes, as the scan read them (whole items or projections)."""
        names: dict[str, str] = {}
        wanted = list(info.key_names) + [a.path[0] for a in info.cfg.attributes]
        if info.cfg.client_attribute:
            wanted.append(info.cfg.client_attribute)
        grouped = self._group_attrs.get(info.cfg.table, [])
        wanted += [owner for _, _, owner in grouped if owner]
        for n in dict.fromkeys(wanted):
            names[f"#p{len(names)}"] = n
        projection = ", ".join(names)
        segments = self._segments(info)
        whole = self._whole(info)
        counters = {"requests": 0, "items": 0}
        # Scanning whole items, the items already under an address this plan moves items to are found on the way
        # (no second read): those whose key holds a mapping's new address where the plan would put one.
        targets = self._arrival_values(info) if whole else {}
        kept = self._kept[info.cfg.table] = {}

        def segment(seg: int) -> list[tuple[dict[str, Any], Candidate]]:
            found: list[tuple[dict[str, Any], Candidate]] = []
            kwargs: dict[str, Any] = dict(
                TableName=info.cfg.table, ConsistentRead=True, Segment=seg, TotalSegments=segments
            )
            if not whole:
                kwargs.update(ProjectionExpression=projection, ExpressionAttributeNames=names)
            while True:
                if self._stop.is_set():
                    raise UserError(f"target {self.target.name!r}: planning stopped while scanning {info.cfg.table}")
                page = call(self.target, f"scan {info.cfg.table}", self.client.scan, **kwargs)
                counters["requests"] += 1
                counters["items"] += len(page.get("Items", []))
                bar.advance(len(page.get("Items", [])))
                for i in page.get("Items", []):
                    if (c := self._changes(info, i)) is not None:
                        found.append((i, c))
                    if grouped:
                        self._holding(info, i, grouped)
                    if any(i.get(name, {}).get("S") in values for name, values in targets.items()):
                        kept[keystr(item_to_json({k: i[k] for k in info.key_names}))] = i
                if "LastEvaluatedKey" not in page:
                    return found
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

        description = f"plan {self.target.name}: scanning {info.cfg.table}"
        with (
            progress.task(description, total=info.item_count or None) as bar,
            ThreadPoolExecutor(max_workers=min(segments, self.concurrency)) as pool,
        ):
            try:
                found = [hit for hits in pool.map(segment, range(segments)) for hit in hits]
            except BaseException:  # a segment failed, or Ctrl-C: the others stop after their page in flight
                self._stop.set()
                raise
        yield from found
        self._reads[info.cfg.table].append(
            dict(
                target=self.target.name,
                table=info.cfg.table,
                method="scan",
                segments=segments,
                requests=counters["requests"],
                items_read=counters["items"],
            )
        )

    def _holding(self, info: TableInfo, item: dict[str, Any], grouped: list[GroupAttr]) -> None:
        """Remember an item that holds a mapping's new address in a unique group's attribute."""
        for gi, attr, owner in grouped:
            email = _email_in(get_path(item, attr.path), attr)
            if email is not None and email.lower() in self._news:
                ks = keystr(item_to_json({k: item[k] for k in info.key_names}))
                held = (gi, info.cfg.table, attr.name, ks, email.lower(), item.get(owner) if owner else None)
                with self._held_lock:
                    self._held.append(held)

    def _arrival_values(self, info: TableInfo) -> dict[str, set[str]]:
        """Key attribute -> every value a move of this plan can give it (a mapping's new address in the
        attribute's template)."""
        out: dict[str, set[str]] = {}
        for attr in info.cfg.attributes:
            if len(attr.path) == 1 and attr.path[0] in info.key_names:
                before, after = attr.affixes
                out[attr.path[0]] = {before + m.new + after for m in self.mset.mappings}
        return out

    def _changes(self, info: TableInfo, item: dict[str, Any]) -> Candidate | None:
        lookup = self._lookups[info.cfg.table]
        client = None
        if info.cfg.client_attribute:
            cv = item.get(info.cfg.client_attribute)
            client = cv.get("S", cv.get("N")) if cv else None
        new_item: dict[str, Any] | None = None  # copied at the first match: most items scanned have none
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
            if new_item is None:
                new_item = copy.deepcopy(item)
            set_path(new_item, attr.path, new_value)
            changes.append((attr.name, value, new_value))
            entries |= used
            if len(attr.path) == 1 and attr.path[0] in info.key_names:
                moves = True
                key_entries |= used
        if new_item is None:
            return None
        key = {k: item[k] for k in info.key_names}
        return Candidate(key, item, new_item, changes, entries, moves, key_entries)

    def _batch_get(self, table: str, keys: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        with Workers(self.concurrency) as workers:
            return batch_get(self.target, self.client, table, keys, workers)

    def _plan_table(self, info: TableInfo) -> None:
        self._lookups[info.cfg.table] = Lookup(self.mset, info.cfg, f"{self.where}.tables[{info.index}]")
        table = info.cfg.table
        scanned = list(self._scan(info))
        # Decide on whole, strongly consistent items: as the scan read them, or read again if it read projections.
        if self._whole(info):
            found: Iterable[Candidate | None] = (c for _, c in scanned)
        else:
            whole = self._batch_get(table, [{k: i[k] for k in info.key_names} for i, _ in scanned])
            found = (self._changes(info, item) for item in whole.values())
        cands: dict[str, Candidate] = {}
        for c in found:
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
        if self._whole(info):
            kept = self._kept.pop(table)
            existing = {k: item_to_json(kept[k]) for k in distinct if k in kept}
        else:
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

        for a in self._actions[table]:
            if a["kind"] in ("merge-and-move", "live-swap"):
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
        self._actions[info.cfg.table].append(
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


def _email_in(value: Any, attr: DynamoAttribute) -> str | None:
    """The address a String attribute holds, inside its template if it has one; None for anything else."""
    if not isinstance(value, dict) or not isinstance(value.get("S"), str):
        return None
    text: str = value["S"]
    before, after = attr.affixes
    if len(text) <= len(before) + len(after) or not text.startswith(before) or not text.endswith(after):
        return None
    return text[len(before) : len(text) - len(after)]


def _unique_movers(movers: list[Mover]) -> list[Mover]:
    """An item changing several of a group's attributes to one address (email and GSI1PK) moves there once."""
    seen: set[int] = set()
    out = []
    for m in movers:
        if id(m.ref) not in seen:
            seen.add(id(m.ref))
            out.append(m)
    return out
