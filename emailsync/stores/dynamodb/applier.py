"""Applying a plan's DynamoDB actions to one target.

DynamoDB has no transaction across a whole table, so safety comes from conditions on every write:
- merge-and-move is one TransactWriteItems: Put the merged item (condition: nothing there, or still exactly the
  planned existing item) and Delete the old item (condition: still exactly the planned old item). An item is
  never lost and never duplicated, even if apply dies between two transactions. Independent moves of a step
  share transactions up to DynamoDB's limits (100 items, 4 MB).
- update / array-replace is one UpdateItem whose condition is that every changed attribute still holds its
  planned value.
A failed condition is resolved by reading the items: the action either already happened (a rerun) or is stale;
it is never retried blindly and never overwrites. Before writing, every action is checked (--on-stale abort
writes nothing if any is stale); after each step, every written item is read back and compared.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import botocore.exceptions

from emailsync import progress
from emailsync.config import DynamoTarget
from emailsync.engine.executor import Workers
from emailsync.engine.online import DEFAULT_ONLINE, Online, Rate
from emailsync.errors import UserError
from emailsync.plan import DynamoAction
from emailsync.retry import backoff_sleep
from emailsync.stores.dynamodb.client import (
    MAX_EXPRESSION,
    MAX_TX_BYTES,
    MAX_TX_ITEMS,
    RETRYABLE,
    batch_get,
    call,
    with_backoff,
)
from emailsync.stores.dynamodb.items import (
    from_json,
    item_from_json,
    item_size,
    item_to_json,
    keystr,
    normalized,
    set_path,
)
from emailsync.stores.outcome import Outcome, TargetResult

if TYPE_CHECKING:
    from types_boto3_dynamodb.client import DynamoDBClient
    from types_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

MAX_ATTEMPTS = 8
UPDATE_BATCH = 100
MOVES = ("merge-and-move", "live-swap", "restore-item")


class DynamoApplier:
    def __init__(
        self,
        target: DynamoTarget,
        client: DynamoDBClient,
        actions: list[DynamoAction],
        on_stale: str,
        journal: Callable[[dict[str, Any]], None] | None = None,
        concurrency: int = 1,
        online: Online = DEFAULT_ONLINE,
    ) -> None:
        self.target = target
        self.online = online
        self.workers = Workers(concurrency)  # requests in flight; their order is kept by what is handed to them
        self.client = client
        self.actions = actions
        self.on_stale = on_stale
        self.journal = journal or (lambda entry: None)
        self._bar = progress.Task()  # the apply phase's bar while run() writes; nothing shown otherwise
        self.status: dict[str, Outcome] = {}
        self.cache: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.pre: dict[tuple[str, str], dict[str, Any] | None] = {}  # items as the preflight found them
        # (table, key) -> the moves of this plan arriving there, so lookups stay linear in the plan's size
        self.arriving: dict[tuple[str, str], list[DynamoAction]] = defaultdict(list)
        # (table, key) -> the actions on the item under that key (moves leaving it, updates of it)
        self.at_key: dict[tuple[str, str], list[DynamoAction]] = defaultdict(list)
        # (table, keystr) of each action's key and new key, made once: looked up many times per action
        self.old_k = {x.id: (x.table, keystr(x.key)) for x in actions}
        self.new_k = {x.id: (x.table, keystr(x.new_key or {})) for x in actions}
        for x in actions:
            self.at_key[self.old_k[x.id]].append(x)
            if x.kind in MOVES:
                self.arriving[self.new_k[x.id]].append(x)
        self.key_names = {a.table: tuple(a.key) for a in actions}  # the key attributes, in the plan's own words
        self.version_attr = {t.table: t.version_attribute for t in target.tables}
        self.email_attrs = {t.table: [a.path[0] for a in t.attributes] for t in target.tables}

    def run(self) -> TargetResult:
        res = TargetResult(self.target.name)
        try:
            self._preflight()
            stale = {i: o for i, o in self.status.items() if o.status == "stale"}
            if stale and self.on_stale == "abort":
                for a in self.actions:
                    if a.id not in stale and self.status[a.id].status != "already-applied":
                        self.status[a.id] = Outcome("not-applied", "nothing written: stale items and --on-stale abort")
                res.outcomes = dict(self.status)
                res.error = f"{len(stale)} stale action(s); nothing written to this target (--on-stale abort)"
                return res
            todo_count = sum(1 for o in self.status.values() if o.status == "pending")
            live = " (live)" if any(a.live for a in self.actions) else ""
            with progress.task(f"apply {self.target.name}{live}", total=todo_count) as bar:
                self._bar = bar
                rate = Rate(self.online.max_rate, self.online.pause)
                graceful = self.online.pause.graceful() if self.online.batch_size else contextlib.nullcontext()
                with graceful:  # a first signal waits for the batch in flight
                    self._steps(res, rate)
        except UserError as e:
            # Credentials or a table gone while writing: other targets may have committed already, so this is
            # reported with them rather than raised past the report.
            res.error = str(e)
        except botocore.exceptions.BotoCoreError as e:
            res.error = f"DynamoDB error: {type(e).__name__}: {e}"
        except botocore.exceptions.ClientError as e:
            err = e.response.get("Error", {})
            res.error = f"DynamoDB error: {err.get('Code')}: {err.get('Message')}"
        finally:
            self.workers.close()
        for a in self.actions:
            o = self.status.get(a.id)
            if o is None or o.status == "pending":
                why = res.error or ("paused before this write; apply the plan again to go on" if res.paused else None)
                o = Outcome("failed" if res.error else "not-applied", why)
            res.outcomes[a.id] = o
        res.committed = res.error is None
        return res

    def _steps(self, res: TargetResult, rate: Rate) -> None:
        """Each step's writes, wave by wave; with --batch-size that many items at a time, a pause stopping between
        them (res.paused)."""
        for step in sorted({a.step for a in self.actions}):
            todo = [a for a in self.actions if a.step == step and self.status[a.id].status == "pending"]
            # A step's actions change distinct items (the planner puts every later write to an item in a
            # later step): they go out `concurrency` requests at a time. Should two touch one item, the
            # second waits for a wave of its own, in the order they would have run one by one. With
            # --batch-size, a wave goes out that many items at a time, and a pause stops between them.
            for wave in _waves(todo, self._swapped):
                for batch in _batches(wave, self.online.batch_size):
                    if self.online.pause.requested:
                        res.paused = True
                        break
                    self.workers.each(_run, self._units(batch))
                    rate.wrote(len(batch))
                if res.paused:
                    break
            self._verify([a for a in todo if self.status[a.id].status == "applied"])
            if res.paused:
                break

    def _units(self, wave: list[DynamoAction]) -> list[Callable[[], None]]:
        """A wave's writes as units of work for the workers, each journaled before and after: transactions of
        moves, one live swap (its phases in order), or a share of the updates, made small enough that every
        worker has one (a unit's requests go out one after another)."""
        moves = [a for a in wave if a.kind in MOVES and not self._swapped(a)]
        updates = [a for a in wave if a.kind not in MOVES]
        units: list[Callable[[], None]] = [partial(self._transact, b) for b in self._transactions(moves)]
        units += [partial(self._swap_one, a) for a in wave if a.kind in MOVES and self._swapped(a)]
        size = _share(len(updates), self.workers.width, UPDATE_BATCH)
        units += [partial(self._updates, updates[i : i + size]) for i in range(0, len(updates), size)]
        return units

    def _updates(self, chunk: list[DynamoAction]) -> None:
        self._journal_batch("update", chunk, "before")
        for a in chunk:
            self._update(a)
        self._journal_batch("update", chunk, "after")
        self._bar.advance(len(chunk))

    def _swap_one(self, a: DynamoAction) -> None:
        self._swap(a)
        self._bar.advance()

    def stale_before_writing(self) -> dict[str, Outcome]:
        """The actions apply would find stale before writing anything (reads only). Unlike classify_only, a swap
        stopped half way is not stale here: apply resumes it."""
        with self.workers:
            self._preflight()
        return {i: o for i, o in self.status.items() if o.status == "stale"}

    def classify_only(self) -> dict[str, Outcome]:
        """Each action's state, reading only (for `emailsync verify`): pending, already-applied or stale."""
        with self.workers:
            self._preflight()
        out = dict(self.status)
        for a in self.actions:
            there = self.cache.get(self.new_k[a.id])
            pending = self._swapped(a) and out[a.id].status == "pending" and a.existing != a.merged
            if pending and normalized(there) == normalized(a.merged):
                # Both items exist: the swap stopped between its write and its delete; apply resumes it.
                out[a.id] = Outcome("stale", "half done: the new item is written, the old one not yet deleted")
        return out

    # -- reading -----------------------------------------------------------------------------------------------

    def _get(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        resp = call(
            self.target,
            f"read {table}",
            self.client.get_item,
            TableName=table,
            Key=item_from_json(key),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return item_to_json(item) if item is not None else None

    def _fetch(self, wanted: set[tuple[str, str]]) -> None:
        """Read the items under these (table, keystr) keys into the cache, batched (100 keys a request)."""
        by_table: dict[str, list[str]] = defaultdict(list)
        for table, ks in wanted:
            by_table[table].append(ks)
        for table, texts in by_table.items():
            found = batch_get(
                self.target, self.client, table, [item_from_json(json.loads(ks)) for ks in texts], self.workers
            )
            for ks in texts:  # the plan's own key text is batch_get's: keystr of the key's plan JSON
                item = found.get(ks)
                self.cache[(table, ks)] = item_to_json(item) if item is not None else None

    def _preflight(self) -> None:
        """Classify every action against the table as it is now: pending, already-applied or stale."""
        first_arrival: dict[tuple[str, str], DynamoAction] = {}
        later: dict[tuple[str, str], list[DynamoAction]] = defaultdict(list)
        wanted: set[tuple[str, str]] = set()
        for a in sorted(self.actions, key=lambda a: a.step):
            wanted.add(self.old_k[a.id])
            if a.kind in MOVES:
                k = self.new_k[a.id]
                wanted.add(k)
                first_arrival.setdefault(k, a)
                later[k].append(a)
        self._fetch(wanted)
        self.pre = dict(self.cache)
        for a in self.actions:
            current = self.cache[self.old_k[a.id]]
            if a.kind in MOVES:
                self.status[a.id] = self._classify_move(a, current, later[self.new_k[a.id]])
            else:
                self.status[a.id] = self._classify_update(a, current)
        # The first pending arrival at a key also needs that key still as planned, unless the item there is one
        # this plan moves away first (the write's own condition checks it then).
        leaving = {self.old_k[a.id] for a in self.actions if a.kind in MOVES and self.status[a.id].status == "pending"}
        updated = {self.old_k[x.id]: x for x in self.actions if x.kind not in MOVES}
        for k, a in first_arrival.items():
            pending = [x for x in later[k] if self.status[x.id].status == "pending"]
            if pending and pending[0] is a and k not in leaving:
                there = self.cache[k]
                # If the item there has its own pending update in this plan, it must be as that update expects.
                own = updated.get(k)
                expected = own.row if own is not None and self.status[own.id].status == "pending" else a.existing
                # A swap interrupted after its write finds its own result there: it resumes with the delete.
                resumed = self._swapped(a) and normalized(there) == normalized(a.merged)
                if normalized(there) != normalized(expected) and not resumed:
                    self.status[a.id] = Outcome("stale", _what_changed("the item at the new key", a.existing, there))

    def _classify_move(
        self, a: DynamoAction, current: dict[str, Any] | None, same_target: list[DynamoAction]
    ) -> Outcome:
        # First: is this what another move of this plan brought here (its own old item gone)? Items can be
        # identical apart from the key, so this is decided before comparing with this action's own item.
        there = self.cache[self.new_k[a.id]]
        # A move back out of a merge leaves the pre-merge item: done if the moved item is back too.
        if a.kind == "restore-item" and a.remains is not None and normalized(there) == normalized(a.merged):
            # The pre-merge item (or what later moves back out of the same key leave), perhaps with this plan's
            # later updates of it already made.
            later = [x.remains for x in self.at_key[self.old_k[a.id]] if x.kind == a.kind and x.step > a.step]
            left = [normalized(v) for r in [a.remains, *later] if r is not None for v in (r, self._updated_later(a, r))]
            if normalized(current) in left or (current is None and None in later):
                return Outcome("already-applied")
        if current is not None and not self._refilled(a, current):
            if normalized(current) == normalized(a.row) or self._left_for(a, current):
                return Outcome("pending")
            return Outcome("stale", _what_changed("the item", a.row, current))
        # Gone from the old key, or it holds what another move of this plan brought there (a chain applied
        # before): this item already moved on. Judge it by its new key: applied if the new key holds this
        # move's result, or a later arrival's.
        mine = same_target.index(a) if a in same_target else 0
        if there is not None and any(normalized(there) == normalized(x.merged) for x in same_target[mine:]):
            return Outcome("already-applied")
        return Outcome("stale", "the item is gone from its old key and the new key does not hold the planned result")

    def _left_for(self, a: DynamoAction, current: dict[str, Any]) -> bool:
        """Moves back out of a double merge (m1, m2 -> m) leave `m` twice: the first leaves the item the second
        moves. Pending if an earlier move back, still to do, leaves exactly a's item."""
        return a.kind == "restore-item" and any(
            x.kind == a.kind
            and x.step < a.step
            and normalized(x.remains) == normalized(a.row)
            and normalized(x.row) == normalized(current)
            for x in self.at_key[self.old_k[a.id]]
        )

    def _updated_later(self, a: DynamoAction, item: dict[str, Any]) -> dict[str, Any]:
        """`item` (under a's key) with the changes of this plan's later updates of that key applied."""
        out = copy.deepcopy(item)
        for x in self.at_key[self.old_k[a.id]]:
            if x.kind not in MOVES and x.step > a.step:
                for c in x.changes or []:
                    set_path(out, tuple(c.attribute.split(".")), c.new)
        return out

    def _refilled(
        self, a: DynamoAction, current: dict[str, Any], fresh: bool = False, seen: frozenset[str] = frozenset()
    ) -> bool:
        """Whether the item now under `a`'s old key is the result of a move of this plan into that key: that
        move's result is there and its own old item has left its key (gone, or itself replaced by what the plan
        leaves or brings there: chains of any length), or, for a live swap (which keeps its old item until its
        write is verified), its result is there and cannot be mistaken for `a`'s own item."""
        for x in self.arriving.get(self.old_k[a.id], ()):
            if x.id in seen or normalized(current) != normalized(x.merged):
                continue
            if self._swapped(x) and normalized(current) != normalized(a.row):
                return True  # a swap stopped between its write and its delete: it resumes later in this run
            left = self._get(x.table, x.key) if fresh else self.cache.get(self.old_k[x.id])
            if left is None or (x.kind == "restore-item" and normalized(left) == normalized(x.remains)):
                return True
            if self._refilled(x, left, fresh, seen | {a.id, x.id}):
                return True
        return False

    def _classify_update(self, a: DynamoAction, current: dict[str, Any] | None) -> Outcome:
        if current is None:
            return Outcome("stale", "the item no longer exists")
        olds = [_at(current, c.attribute) for c in a.changes or []]
        if all(normalized({"v": o}) == normalized({"v": c.old}) for o, c in zip(olds, a.changes or [], strict=True)):
            return Outcome("pending")
        if all(normalized({"v": o}) == normalized({"v": c.new}) for o, c in zip(olds, a.changes or [], strict=True)):
            return Outcome("already-applied")
        changed = [
            c.attribute
            for o, c in zip(olds, a.changes or [], strict=True)
            if normalized({"v": o}) != normalized({"v": c.old})
        ]
        return Outcome("stale", f"{', '.join(changed)} changed since the plan")

    # -- moves -------------------------------------------------------------------------------------------------

    def _transactions(self, moves: list[DynamoAction]) -> list[list[DynamoAction]]:
        """Moves grouped into transactions: DynamoDB's limits (100 items, 4 MB, no item twice in one), and no more
        moves in one than gives every worker a transaction of its own."""
        most = _share(len(moves), self.workers.width, MAX_TX_ITEMS // 2)
        out: list[list[DynamoAction]] = []
        batch: list[DynamoAction] = []
        size = 0
        keys: set[tuple[str, str]] = set()
        for a in moves:
            need = item_size(a.merged or {}) + item_size(a.row or {}) + item_size(a.existing or {}) + 1024
            mine = {self.old_k[a.id], self.new_k[a.id]}
            if batch and (len(batch) + 1 > most or size + need > MAX_TX_BYTES or mine & keys):
                out.append(batch)
                batch, size, keys = [], 0, set()
            batch.append(a)
            size += need
            keys |= mine
        if batch:
            out.append(batch)
        return out

    def _transact(self, batch: list[DynamoAction]) -> None:
        self._journal_batch("transact-write", batch, "before")
        try:
            self._transact_batch(list(batch))
        finally:
            self._journal_batch("transact-write", batch, "after")
            self._bar.advance(len(batch))

    def _transact_batch(self, batch: list[DynamoAction]) -> None:
        attempt = 0
        while batch:
            items: list[dict[str, dict[str, Any]]] = []
            for a in batch:
                kind, req = self._new_item_request(a)
                items.append({kind: req})
                items.append(dict([self._vacate(a)]))
            try:
                # Each item is {"Put" | "Update" | "Delete": request}, built as a plain dict like every request here
                # (the stubs type each operation's request as its own TypedDict).
                self.client.transact_write_items(TransactItems=cast("list[TransactWriteItemTypeDef]", items))
            except botocore.exceptions.ClientError as e:
                code = e.response.get("Error", {}).get("Code", "")
                reasons = [r.get("Code") for r in e.response.get("CancellationReasons") or []]
                if code == "TransactionCanceledException" and "ConditionalCheckFailed" in reasons:
                    failed = {i // 2 for i, r in enumerate(reasons) if r == "ConditionalCheckFailed"}
                    for i in failed:
                        self._resolve_move(batch[i])
                    batch = [a for i, a in enumerate(batch) if i not in failed]
                    continue
                retryable = code in RETRYABLE or (
                    code == "TransactionCanceledException" and all(r in RETRYABLE or r == "None" for r in reasons)
                )
                attempt += 1
                if retryable and attempt < MAX_ATTEMPTS:
                    backoff_sleep(attempt)
                    continue
                detail = f"{code}: {e.response.get('Error', {}).get('Message', '')} {reasons or ''}".strip()
                for a in batch:
                    self.status[a.id] = Outcome("failed", detail)
                return
            for a in batch:
                self.status[a.id] = Outcome("applied")
            return

    def _resolve_move(self, a: DynamoAction) -> None:
        """A condition failed: the move happened already (a rerun), or something changed: never force it."""
        old = self._get(a.table, a.key)
        there = self._get(a.table, a.new_key or {})
        moved_on = old is None or self._refilled(a, old, fresh=True)
        if a.kind == "restore-item" and a.remains is not None:
            moved_on = normalized(old) == normalized(a.remains)
        if moved_on and normalized(there) == normalized(a.merged):
            self.status[a.id] = Outcome("already-applied")
        elif old is not None and not moved_on and normalized(old) != normalized(a.row):
            self.status[a.id] = Outcome("stale", _what_changed("the item", a.row, old))
        else:
            self.status[a.id] = Outcome("stale", _what_changed("the item at the new key", a.existing, there))

    def _put(self, a: DynamoAction) -> dict[str, Any]:
        req: dict[str, Any] = {"TableName": a.table, "Item": item_from_json(a.merged or {})}
        if a.existing is None:
            k = next(iter(a.key))
            req.update(ConditionExpression="attribute_not_exists(#k)", ExpressionAttributeNames={"#k": k})
        else:
            req.update(self._equals(a.table, a.existing))
        return req

    def _delete(self, a: DynamoAction) -> dict[str, Any]:
        req: dict[str, Any] = {"TableName": a.table, "Key": item_from_json(a.key)}
        req.update(self._equals(a.table, a.row or {}))
        return req

    def _vacate(self, a: DynamoAction) -> tuple[str, dict[str, Any]]:
        """The old key's write: Delete the planned item, or for a move back out of a merge, Put back the item
        that was there before the merge; either only while the planned item is still there."""
        if a.kind == "restore-item" and a.remains is not None:
            req: dict[str, Any] = {"TableName": a.table, "Item": item_from_json(a.remains)}
            req.update(self._equals(a.table, a.row or {}))
            return "Put", req
        return "Delete", self._delete(a)

    def _swapped(self, a: DynamoAction) -> bool:
        """Moves on a live table are verified swaps, item by item; elsewhere they go in transactions."""
        return a.kind == "live-swap" or (a.kind == "restore-item" and a.live)

    def _equals(self, table: str, image: dict[str, Any]) -> dict[str, Any]:
        """A condition that the item still equals `image`, attribute by attribute.

        DynamoDB caps an expression at 4 KB. For an item with too many attributes, the condition falls back to
        the table's version_attribute if configured, else to the key and the configured email attributes.
        """
        attrs = sorted(image)
        expr = " AND ".join(f"#a{i} = :v{i}" for i in range(len(attrs)))
        if len(expr) > MAX_EXPRESSION:
            version = self.version_attr.get(table)
            keep = [version] if version and version in image else []
            keep += [a for a in self.email_attrs.get(table, []) if a in image]
            keep += [k for k in self.key_names[table] if k in image]
            attrs = sorted(set(keep))
            expr = " AND ".join(f"#a{i} = :v{i}" for i in range(len(attrs)))
        return {
            "ConditionExpression": expr,
            "ExpressionAttributeNames": {f"#a{i}": n for i, n in enumerate(attrs)},
            "ExpressionAttributeValues": {f":v{i}": from_json(image[n]) for i, n in enumerate(attrs)},
        }

    # -- live swaps ---------------------------------------------------------------------------------------------

    def _swap(self, a: DynamoAction) -> None:
        """The login table, the old script's safe order: (1) create the new item or merge into the existing one,
        (2) read it back with ConsistentRead and compare it field by field, (3) only then delete the old item.
        Every write is journaled before and after. A mismatch keeps both items for a person to review.

        Three requests for a new item (as a careful hand-written swap takes): its Put's condition says nothing is
        there, and the read-back of (2) reads the old item in the same request, to compare it whole before the
        delete (whose condition cannot see attributes added since the plan). A merge reads the existing item
        first as well."""
        new_key = a.new_key or {}
        # Written already (a rerun of a swap stopped before its delete, or a merge that adds nothing): as the
        # preflight found it; the read-back below checks it is still so.
        if normalized(self.pre.get(self.new_k[a.id])) != normalized(a.merged) and not self._write_swap(a):
            return
        both = batch_get(self.target, self.client, a.table, [item_from_json(new_key), item_from_json(a.key)])
        there, old_now = (
            item_to_json(found) if (found := both.get(keystr(k))) is not None else None for k in (new_key, a.key)
        )
        if normalized(there) != normalized(a.merged):
            why = _what_changed("the new item", a.merged, there) + "; both items kept"
            self.status[a.id] = Outcome("needs-review", why)
            self._journal(a, "verify", "mismatch", why)
            return
        if normalized(old_now) != normalized(a.row):
            why = _what_changed("the old item", a.row, old_now) + " since the plan; both items kept"
            self.status[a.id] = Outcome("needs-review", why)
            self._journal(a, "delete", "refused", why)
            return
        self._journal(a, "delete", "before")
        try:
            kind, req = self._vacate(a)
            with_backoff(lambda: (self.client.delete_item if kind == "Delete" else self.client.put_item)(**req))
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            old = self._get(a.table, a.key)
            left = a.remains if a.kind == "restore-item" else None
            done = normalized(old) == normalized(left)
            detail = None if done else "the old item changed after the new one was written; both items kept"
            self.status[a.id] = Outcome("applied") if done else Outcome("needs-review", detail)
            self._journal(a, "delete", "refused", detail)
            return
        self._journal(a, "delete", "after")
        self.status[a.id] = Outcome("applied")

    def _write_swap(self, a: DynamoAction) -> bool:
        """A swap's step (1); False when it was refused (the status says why)."""
        if a.existing is not None:
            # A condition cannot say "no other attributes": the existing item is compared whole first, so an
            # attribute added to it since the plan is never overwritten (the condition then covers the rest).
            there = self._get(a.table, a.new_key or {})
            if normalized(there) == normalized(a.merged):
                return True
            if normalized(there) != normalized(a.existing):
                self.status[a.id] = Outcome("stale", _what_changed("the item at the new key", a.existing, there))
                self._journal(a, "put", "refused", self.status[a.id].detail)
                return False
        self._journal(a, "put", "before")
        try:
            with_backoff(lambda: self._write_new(a))
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            # A write whose answer was lost (a 5xx) is retried by botocore, and the retry's condition then fails on
            # our own write: the new item is exactly the planned one and the old item is untouched. That is this
            # swap half done, so it goes on to verify and delete, as a rerun would.
            own = normalized(self._get(a.table, a.new_key or {})) == normalized(a.merged)
            if not (own and normalized(self._get(a.table, a.key)) == normalized(a.row)):
                self._resolve_move(a)
                self._journal(a, "put", "refused", self.status[a.id].detail)
                return False
        self._journal(a, "put", "after")
        return True

    def _write_new(self, a: DynamoAction) -> None:
        kind, req = self._new_item_request(a)
        (self.client.put_item if kind == "Put" else self.client.update_item)(**req)

    def _new_item_request(self, a: DynamoAction) -> tuple[str, dict[str, Any]]:
        """Create the new item (Put, condition: none there), or merge into the existing one with SET only
        (Update, condition: the planned attributes unchanged): an attribute someone added to it in the meantime
        survives, and the read-back then reports the difference, instead of being overwritten."""
        if a.existing is None:
            return "Put", self._put(a)
        keys = set(self.key_names[a.table])
        attrs = sorted(k for k in (a.merged or {}) if k not in keys)
        cond = self._equals(a.table, a.existing)
        names = dict(cond["ExpressionAttributeNames"])
        values = dict(cond["ExpressionAttributeValues"])
        sets = []
        for i, k in enumerate(attrs):
            names[f"#s{i}"] = k
            values[f":s{i}"] = from_json((a.merged or {})[k])
            sets.append(f"#s{i} = :s{i}")
        update = "SET " + ", ".join(sets)
        if not sets or len(update) > MAX_EXPRESSION:
            return "Put", self._put(a)  # too wide for an update expression: the whole-item Put
        return "Update", {
            "TableName": a.table,
            "Key": item_from_json(a.new_key or {}),
            "UpdateExpression": update,
            "ConditionExpression": cond["ConditionExpression"],
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def _journal_batch(self, op: str, batch: list[DynamoAction], phase: str) -> None:
        entry: dict[str, Any] = {
            "event": "write",
            "phase": phase,
            "store": "dynamodb",
            "target": self.target.name,
            "op": op,
            "actions": [a.id for a in batch],
        }
        if phase == "after":
            entry["outcomes"] = {a.id: self.status[a.id].status for a in batch if a.id in self.status}
        self.journal(entry)

    def _journal(self, a: DynamoAction, write: str, phase: str, detail: str | None = None) -> None:
        """A live write, item by item: the login table's every step is on record before and after."""
        entry = {
            "event": "write",
            "store": "dynamodb",
            "live": a.live,
            "action": a.id,
            "target": a.target,
            "table": a.table,
            "kind": a.kind,
            "write": write,
            "phase": phase,
            "key": a.key,
            "new_key": a.new_key,
        }
        if detail:
            entry["detail"] = detail
        self.journal(entry)

    # -- updates -----------------------------------------------------------------------------------------------

    def _update(self, a: DynamoAction) -> None:
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        sets, conds = [], []

        def path(attribute: str) -> str:
            parts = []
            for p in attribute.split("."):
                alias = next((k for k, v in names.items() if v == p), None) or f"#n{len(names)}"
                names[alias] = p
                parts.append(alias)
            return ".".join(parts)

        for i, c in enumerate(a.changes or []):
            p = path(c.attribute)
            values[f":new{i}"], values[f":old{i}"] = from_json(c.new), from_json(c.old)
            sets.append(f"{p} = :new{i}")
            conds.append(f"{p} = :old{i}")
        if a.live:
            self._journal(a, "update", "before")
        try:
            with_backoff(
                lambda: self.client.update_item(
                    TableName=a.table,
                    Key=item_from_json(a.key),
                    UpdateExpression="SET " + ", ".join(sets),
                    ConditionExpression=" AND ".join(conds),
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                )
            )
            self.status[a.id] = Outcome("applied")
            if a.live:
                self._journal(a, "update", "after")
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            self.status[a.id] = self._classify_update(a, self._get(a.table, a.key))
            if self.status[a.id].status == "pending":  # it matched again: someone changed it back and forth
                self.status[a.id] = Outcome("stale", "the item changed while it was being written")
            if a.live:
                self._journal(a, "update", "refused", self.status[a.id].detail)

    # -- verification ------------------------------------------------------------------------------------------

    def _verify(self, done: list[DynamoAction]) -> None:
        """Read every written item back (strongly consistent, batched) and compare it field by field. A live swap
        was verified before its delete (its read-back), and its delete's condition held: what it left is known."""
        for a in (a for a in done if self._swapped(a)):
            self.pre[self.new_k[a.id]] = a.merged
            self.pre[self.old_k[a.id]] = a.remains if a.kind == "restore-item" else None
        done = [a for a in done if not self._swapped(a)]
        wanted = {self.old_k[a.id] for a in done}
        wanted |= {self.new_k[a.id] for a in done if a.new_key}
        self._fetch(wanted)
        for a in done:
            if a.kind in MOVES:
                there, old = self.cache[self.new_k[a.id]], self.cache[self.old_k[a.id]]
                problems = []
                if normalized(there) != normalized(a.merged):
                    problems.append(_what_changed("the moved item", a.merged, there))
                if a.kind == "restore-item" and a.remains is not None:
                    if normalized(old) != normalized(a.remains):
                        problems.append(_what_changed("the item left at the old key", a.remains, old))
                elif old is not None:
                    problems.append("the old item still exists")
            else:
                # What was there when checked (the condition covered only the changed attributes), plus the changes.
                expected = copy.deepcopy(self.pre.get(self.old_k[a.id]) or a.row or {})
                for c in a.changes or []:
                    set_path(expected, tuple(c.attribute.split(".")), c.new)
                now = self.cache[self.old_k[a.id]]
                problems = [] if normalized(now) == normalized(expected) else [_what_changed("the item", expected, now)]
            if problems:
                self.status[a.id] = Outcome("needs-review", "; ".join(problems))
        # Updates of later steps start from the items as these moves left them, not as the preflight found them.
        for a in done:
            if a.kind in MOVES:
                for k in (self.old_k[a.id], self.new_k[a.id]):
                    self.pre[k] = self.cache[k]


def _run(unit: Callable[[], None]) -> None:
    unit()


def _batches(wave: list[DynamoAction], size: int | None) -> list[list[DynamoAction]]:
    if not size:
        return [wave]
    return [wave[i : i + size] for i in range(0, len(wave), size)]


def _share(n: int, width: int, most: int) -> int:
    """How many of n items one unit of work takes: enough units for `width` workers, at most `most` items each."""
    return max(1, min(most, -(-n // width)))


def _waves(actions: list[DynamoAction], swapped: Callable[[DynamoAction], bool]) -> list[list[DynamoAction]]:
    """Actions split into waves that each change any item at most once, keeping the order in which they would run
    one by one (moves in transactions, then live swaps, then updates). A wave runs concurrently; waves one by one."""
    ordered = [a for a in actions if a.kind in MOVES and not swapped(a)]
    ordered += [a for a in actions if a.kind in MOVES and swapped(a)]
    ordered += [a for a in actions if a.kind not in MOVES]
    last: dict[tuple[str, str], int] = {}
    waves: list[list[DynamoAction]] = []
    for a in ordered:
        keys = [(a.table, keystr(a.key))]
        if a.kind in MOVES:
            keys.append((a.table, keystr(a.new_key or {})))
        w = max((last[k] + 1 for k in keys if k in last), default=0)
        if w == len(waves):
            waves.append([])
        waves[w].append(a)
        for k in keys:
            last[k] = w
    return waves


def _at(item: dict[str, Any], attribute: str) -> Any:
    node: Any = item.get(attribute.split(".")[0])
    for part in attribute.split(".")[1:]:
        node = node.get("M", {}).get(part) if isinstance(node, dict) else None
    return node


def _what_changed(what: str, expected: dict[str, Any] | None, found: dict[str, Any] | None) -> str:
    if found is None:
        return f"{what} does not exist"
    if expected is None:
        return f"{what} exists but the plan expected none"
    from deepdiff import DeepDiff  # 0.15 s to import; needed only to explain a difference

    diff = DeepDiff(normalized(expected), normalized(found), verbose_level=2)
    fields = sorted({p.split("[")[1].strip("'\"]") for kind in diff for p in diff[kind]} if diff else set())
    return f"{what} differs from the plan in {', '.join(fields) or 'its content'}"
