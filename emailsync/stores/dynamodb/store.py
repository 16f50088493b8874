"""A DynamoDB target behind the store protocol (stores/base.py): planned with one Scan pass per table, applied
with conditional writes and transactions (its live tables in a stage of their own, swap by swap), verified by
reading only.

A target's actions are held here, in the order its applier writes them (step by step, in key order within a
step): DynamoDB targets are small next to PostgreSQL's, and the concurrent applier (its own issue) streams them.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import botocore.exceptions

from emailsync.config import DynamoTarget, LoadedTargets
from emailsync.engine.executor import DEFAULT_PACE, Call, Pace, Step
from emailsync.engine.online import DEFAULT_ONLINE, Online
from emailsync.engine.stages import Stage
from emailsync.errors import UserError
from emailsync.mappings import MappingSet
from emailsync.plan import Action, AttrChange, DynamoAction, Section, Skipped, Store, TargetFingerprint, dumps
from emailsync.stores.base import KEYS_KEPT, Journal, Progress, TargetRead, Warn, action_id
from emailsync.stores.dynamodb.applier import DynamoApplier
from emailsync.stores.dynamodb.client import call, reached
from emailsync.stores.dynamodb.ledger import DynamoLedger
from emailsync.stores.dynamodb.meter import Meter
from emailsync.stores.dynamodb.planner import DynamoPlanner, DynamoTargetPlan
from emailsync.stores.ledger import NoLedger, PastRun, Run
from emailsync.stores.outcome import CompactOutcomes, Outcome, TargetResult, ledger_status

if TYPE_CHECKING:
    from types_boto3_dynamodb.client import DynamoDBClient

ClientFor = Callable[..., "DynamoDBClient"]


class DynamoStore:
    kind: ClassVar[Store] = "dynamodb"
    plans_in_a_process: ClassVar[bool] = False  # its planning waits on requests: threads overlap it
    loads_unchecked: ClassVar[bool] = False  # take() reads the actions

    def __init__(
        self,
        loaded: LoadedTargets,
        index: int,
        client_for: ClientFor,
        pace: Pace = DEFAULT_PACE,
        online: Online = DEFAULT_ONLINE,
    ) -> None:
        self.target: DynamoTarget = loaded.config.dynamodb[index]
        self.online = online  # --batch-size: items between pause checks; --max-rate; the pause itself
        self.concurrency = pace.concurrency  # requests in flight, plan and apply
        # What this target's requests cost; its caps, and its window of requests in flight.
        self.meter = Meter(pace.max_rcu, pace.max_wcu, pace.concurrency)
        self.name = self.target.name
        self._loaded, self._client_for = loaded, client_for
        self._where = f"{loaded.path.name}: dynamodb[{index}]"
        self._client: DynamoDBClient | None = None
        self._actions: list[DynamoAction] = []
        self._full = True
        self._ledger: DynamoLedger | NoLedger = NoLedger()
        # --on-stale abort: why this target is held back (nothing more written to it), and its stale live actions
        self._held: str | None = None
        self._live_stale: dict[str, Outcome] = {}

    # -- plan ------------------------------------------------------------------------------------------------

    def reader(self, mset: MappingSet) -> Step[TargetRead]:
        t = self.target
        planner = DynamoPlanner(
            t,
            self._where,
            mset,
            self.meter.attach(self._client_for(t, connections=self.concurrency)),
            self._client_for(t, probe=True),
            self.concurrency,
            groups=tuple(
                (g.label(i), g)
                for i, g in enumerate(self._loaded.config.unique_groups)
                if g.members[0].target == self.name
            ),
        )

        def read() -> TargetRead:
            dp = planner.plan()
            return TargetRead(self.name, dp.reached, warnings=dp.warnings, reads=dp.reads, state=dp)

        return Call(read, planner.cancel)

    def actions(self, read: TargetRead, levels: dict[int, int], skipped: list[Skipped]) -> Iterator[DynamoAction]:
        dp: DynamoTargetPlan = read.state
        skipped += dp.skipped
        for d in dp.actions:
            kid = action_id(self.kind, d["target"], d["table"], dumps(d["key"]), "", d["kind"])
            yield DynamoAction(id=kid, **dict(d, changes=[AttrChange(**c) for c in d["changes"]]))
        dp.actions = []

    def sections(self, read: TargetRead, levels: dict[int, int]) -> list[Section]:
        return []  # every item's change is made in Python, from what planning read

    # -- apply and verify ------------------------------------------------------------------------------------

    def take(self, rows: Iterable[Action], planned: int, skip_live: bool) -> int:
        acts: list[DynamoAction] = []
        changed: set[str] = set()
        for a in rows:
            if not isinstance(a, DynamoAction):  # read_plan checked each line's target; its store is checked here
                raise UserError(
                    f"the plan's action {a.id} is a {a.store} action under DynamoDB target {self.name!r}; the plan "
                    "was edited or damaged: re-plan"
                )
            # Which tables are live is the targets file's word: a table that became live (or stopped being live)
            # since the plan needs a new plan, whose actions get the live treatment and confirmation.
            if self.target.is_live(a.table) != a.live:
                changed.add(a.table)
            if not (skip_live and a.live):
                acts.append(a)
        if changed:
            path = self._loaded.path
            raise UserError(
                f"the plan does not match {path}",
                problems=[
                    f"{self.name}/{table} is {'live' if self.target.is_live(table) else 'not live'} in {path.name} "
                    f"now but was {'not ' if self.target.is_live(table) else ''}live when the plan was made; re-plan"
                    for table in sorted(changed)
                ],
            )
        acts.sort(key=lambda a: (a.step, a.table, dumps(a.key)))
        self._actions, self._full = acts, len(acts) == planned
        return len(acts)

    def reach(self) -> TargetFingerprint:
        self._client = self.meter.attach(self._client_for(self.target, connections=self.concurrency))
        return TargetFingerprint(store=self.kind, **reached(self.target, self._client))

    @property
    def client(self) -> DynamoDBClient:
        assert self._client is not None, "reach() first"
        return self._client

    def prepare(self, columns: dict[str, set[str]], run: Run | None, warn: Warn) -> None:
        self._check_tables()
        if run is None:
            return
        t = self.target
        if t.ledger_table:
            self._ledger = DynamoLedger(t, self.client, run)
        else:
            warn(
                f"DynamoDB target {t.name!r} has no ledger_table in {self._loaded.path.name}: this apply is not "
                "recorded in the target, and nothing stops a second applier running at the same time"
            )
        call(t, f"ledger table {t.ledger_table}", self._ledger.ensure)
        call(t, f"lock in {t.ledger_table}", self._ledger.lock)

    def _check_tables(self) -> None:
        """Every table the actions change is still listed, exists, and has the key the plan's items were read
        with: a table recreated with another key since the plan is refused here, before any write."""
        target = self.target
        probe = self._client_for(target, probe=True)
        known = {t.table for t in target.tables}
        keys: dict[str, dict[str, str]] = {}  # table -> the key attributes and their types, as the plan's items show
        for a in self._actions:
            if a.table not in known:
                raise UserError(
                    f"the plan changes DynamoDB table {a.table!r} in target {target.name!r}, which "
                    f"{self._loaded.path.name} no longer lists; apply with the targets file the plan was made from"
                )
            if a.table not in keys:
                keys[a.table] = {name: next(iter(v)) for name, v in a.key.items() if isinstance(v, dict) and v}
        problems = []
        for table, planned in keys.items():
            desc = call(target, f"describe {table}", probe.describe_table, TableName=table)["Table"]
            types = {d["AttributeName"]: d["AttributeType"] for d in desc.get("AttributeDefinitions", [])}
            now = {k["AttributeName"]: types.get(k["AttributeName"], "?") for k in desc.get("KeySchema", [])}
            if now != planned:
                problems.append(
                    f"{table}: the key is {_key_text(now)} now, but the plan's items were read with "
                    f"{_key_text(planned)}"
                )
        if problems:
            raise UserError(
                f"target {target.name!r}: DynamoDB table(s) changed their key since the plan (recreated?); nothing "
                "was written. Re-plan against the tables as they are now",
                problems=problems,
            )

    def past_runs(self) -> list[PastRun]:
        return call(self.target, "ledger", self._ledger.completed)  # type: ignore[no-any-return]

    def start_run(self) -> None:
        call(self.target, "ledger", self._ledger.start)

    def live_actions(self) -> list[DynamoAction]:
        return [a for a in self._actions if a.live]

    def step(self, stage: Stage, on_stale: str, write: Journal) -> Step[TargetResult] | None:
        if stage.store != self.kind:
            return None
        group = [a for a in self._actions if a.live == stage.live]
        if not group:
            return None
        run = self._run_live if stage.live else self._run_other
        return Call(lambda: self._where_each(run(group, on_stale, write)))

    def _run_other(self, group: list[DynamoAction], on_stale: str, write: Journal) -> TargetResult:
        # --on-stale abort writes nothing to a target with a stale item, its live table included: the live actions
        # run last, in a stage of their own, so the target is held back as a whole here.
        live = self.live_actions()
        if on_stale == "abort" and live:
            probe = self._applier(live, on_stale, write)
            self._live_stale = call(self.target, "reading the live items", probe.stale_before_writing)
            if self._live_stale:
                self._held = f"{len(self._live_stale)} stale live action(s)"
                return _held_back(self.name, group, self._held)
        res = self._applier(group, on_stale, write).run()
        if on_stale == "abort" and any(o.status == "stale" for o in res.outcomes.values()):
            self._held = "stale action(s) in its other tables"
        return res

    def _run_live(self, group: list[DynamoAction], on_stale: str, write: Journal) -> TargetResult:
        if self._held is not None:
            res = _held_back(self.name, group, self._held)
            res.outcomes.update(self._live_stale)  # the stale ones say why
            return res
        return self._applier(group, on_stale, write).run()

    def _applier(self, group: list[DynamoAction], on_stale: str, write: Journal | None = None) -> DynamoApplier:
        return DynamoApplier(self.target, self.client, group, on_stale, write, self.concurrency, self.online)

    def _where_each(self, res: TargetResult) -> TargetResult:
        """Each outcome says its table and kind, as PostgreSQL's do (the report reads them from the outcomes)."""
        index = {a.id: a for a in self._actions}
        for aid, o in res.outcomes.items():
            a = index.get(aid)
            if a is not None:
                o.table, o.kind = a.table, a.kind
        return res

    def finish(self, results: list[TargetResult]) -> None:
        outcomes = {i: o.status for r in results if r.target == self.name for i, o in r.outcomes.items()}
        with contextlib.suppress(botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            counts = dict(Counter(outcomes.values()))
            self._ledger.finish(ledger_status(counts, self._full), counts)

    def classify(self) -> tuple[CompactOutcomes, dict[str, dict[str, Any]]]:
        index = {a.id: a for a in self._actions}
        found = CompactOutcomes()
        keys: dict[str, dict[str, Any]] = {}
        # Live and other tables are classified separately, exactly as apply runs them.
        for group in ([a for a in self._actions if not a.live], [a for a in self._actions if a.live]):
            if group:
                for aid, o in self._applier(group, "abort").classify_only().items():
                    a = index[aid]
                    found.add(aid, Outcome(o.status, o.detail, a.table, a.kind))
                    if o.status == "stale" and len(keys) < KEYS_KEPT:
                        keys[aid] = a.key
        return found, keys

    def progress(self, plan_digest: str) -> Progress:
        t = self.target
        if not t.ledger_table:
            return Progress(t.name, self.kind, "unknown", note="the target keeps no ledger (no ledger_table)")
        self._client = self._client_for(t, probe=True)
        ledger = DynamoLedger(t, self.client, Run(plan_digest, None))
        return call(t, f"ledger table {t.ledger_table}", ledger.progress)  # type: ignore[no-any-return]

    def request_costs(self) -> list[dict[str, Any]]:
        return [
            {
                "target": self.name,
                "table": c.table,
                "requests": c.requests,
                "read_units": round(c.read_units, 1),
                "write_units": round(c.write_units, 1),
                "throttled": c.throttled,
                "waited_s": round(c.waited_s, 2),
            }
            for c in self.meter.costs()
        ]

    def close(self) -> None:
        with contextlib.suppress(botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            self._ledger.release()


def _held_back(target: str, actions: list[DynamoAction], why: str) -> TargetResult:
    """Actions of a target that --on-stale abort keeps from running because of stale actions elsewhere in it."""
    res = TargetResult(target)
    res.outcomes = {a.id: Outcome("not-applied", f"nothing written: {why} and --on-stale abort") for a in actions}
    res.error = f"{why}; nothing written to this target (--on-stale abort)"
    return res


def _key_text(key: dict[str, str]) -> str:
    return ", ".join(f"{name} ({kind})" for name, kind in key.items()) or "(none)"
