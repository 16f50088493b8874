"""The one door every store implements, and the ledger each target keeps behind it.

The engine (planner.py, applier.py, verify.py) never names a store: it asks the registry for one Store per target
and calls these few methods, as Terraform's core calls a provider's plan and apply. Each store keeps what is
particular to it (a PostgreSQL transaction per database, DynamoDB's conditional writes and live swaps) behind them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from emailsync.engine.executor import Step
from emailsync.engine.stages import Stage
from emailsync.mappings import MappingSet
from emailsync.plan import Action, Section, Skipped, TargetFingerprint, dumps
from emailsync.plan import Store as StoreKind
from emailsync.stores.ledger import PastRun, Run
from emailsync.stores.outcome import CompactOutcomes, TargetResult

Journal = Callable[[Any], None]
Warn = Callable[[str], None]


class Ledger(Protocol):
    """What a target remembers of applies, and the lock against a second applier (stores/ledger.NoLedger: none)."""

    def ensure(self) -> None: ...
    def lock(self) -> None: ...
    def release(self) -> None: ...
    def completed(self) -> list[PastRun]: ...
    def start(self) -> None: ...
    def finish(self, status: str, counts: dict[str, int]) -> None: ...


@dataclass
class TargetRead:
    """What planning read from one target: where it was reached, what to tell the reviewer, the order the
    mapping entries must run in there (edges: (a, b) = a after b), and the target's own notes for making its
    actions (store-specific; only the store that made it reads `state`)."""

    name: str
    reached: dict[str, str | None]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the reviewer, not a warning (a generated column follows)
    edges: set[tuple[int, int]] = field(default_factory=set)
    reads: list[dict[str, Any]] = field(default_factory=list)
    state: Any = None
    tables: list[str] = field(default_factory=list)  # the target's tables in targets.yaml's order: the summary's


@dataclass
class Progress:
    """How far the applies of one plan got on one target, as the target's ledger records it (emailsync status)."""

    target: str
    store: str
    state: str  # not started | running | paused | stopped | failed | incomplete | complete | unknown
    rows_done: int = 0  # rows (items) committed by this plan's applies
    rows_total: int | None = None  # known once a batched apply has cut its batches
    stale: int = 0
    batches_done: int | None = None  # None: not batched
    batches: int | None = None
    runs: int = 0
    # The latest run's pace: rows it committed over the time from its first batch's start to its last commit.
    rows_per_s: float | None = None
    note: str | None = None

    @property
    def eta_s(self) -> float | None:
        if self.rows_total is None or not self.rows_per_s or self.state == "complete":
            return None
        return max(0.0, (self.rows_total - self.rows_done) / self.rows_per_s)


class Store(Protocol):
    """One target of targets.yaml, reached through one store."""

    kind: ClassVar[StoreKind]
    # Its planning is Python work rather than waiting on the store: planned in a process of its own when several
    # targets are planned at once (engine/parts.py), so they run on every core.
    plans_in_a_process: ClassVar[bool]
    # take() only keeps the rows, and prepare() for an apply only sends their bytes to the target, writing nothing:
    # given the plan's actions while their check still runs (the engine waits for it before anything is written).
    loads_unchecked: ClassVar[bool]
    name: str

    # -- plan (read-only) --
    def reader(self, mset: MappingSet) -> Step[TargetRead]:
        """A step that reads the target for planning; the executor runs several at once."""
        ...

    def actions(self, read: TargetRead, levels: dict[int, int], skipped: list[Skipped]) -> Iterator[Action]:
        """The target's actions from what `reader` read, made as they are taken (its skipped changes added to
        `skipped`); `levels` orders the mapping entries across every target."""
        ...

    def sections(self, read: TargetRead, levels: dict[int, int]) -> list[Section]:
        """Sections whose lines the store writes itself, in the file's order and form, beside `actions` (PostgreSQL:
        lines built in SQL); read and written once `actions` are made."""
        ...

    # -- apply and verify --
    def take(self, rows: Iterable[Action], planned: int, skip_live: bool) -> int:
        """The plan's actions for this target, streamed from the plan file on each pass (`planned` of them in the
        plan; without the live ones when `skip_live`): how many will run. A plan that no longer fits the target
        (a table that became live since) is refused here, before anything is reached."""
        ...

    def reach(self) -> TargetFingerprint:
        """Connect; where the connection arrived (refused unless it is where the plan's did)."""
        ...

    def prepare(self, columns: dict[str, set[str]], run: Run | None, warn: Warn) -> None:
        """Before any write or check: the tables the plan changes (`columns`: table -> columns, from the plan's
        summary) are still there as they were planned; for an apply (`run`), the target's lock is taken and its
        ledger is ready (by past_runs, for a store that loads_unchecked: it writes nothing here)."""
        ...

    def past_runs(self) -> list[PastRun]:
        """The runs of this plan the target's ledger records as complete (asked once the plan's check has ended)."""
        ...

    def start_run(self) -> None:
        """Record in the ledger that this run started on the target."""
        ...

    def live_actions(self) -> Sequence[Action]:
        """The actions on live tables (confirmed on their own before anything runs)."""
        ...

    def step(self, stage: Stage, on_stale: str, write: Journal) -> Step[TargetResult] | None:
        """The target's part of one stage of apply, or None when it has nothing in it."""
        ...

    def finish(self, results: list[TargetResult]) -> None:
        """After every stage: what the ledger records of this run (where it was not recorded with the writes)."""
        ...

    def classify(self) -> tuple[CompactOutcomes, dict[str, dict[str, Any]]]:
        """Each taken action's state, nothing written or locked (for verify): the outcomes, and the keys of the
        first KEYS_KEPT drifted ones."""
        ...

    def progress(self, plan_digest: str) -> Progress:
        """What the target's ledger records of this plan's applies (connects; reads only; takes no lock)."""
        ...

    def request_costs(self) -> list[dict[str, Any]]:
        """What this run's requests to the target cost, table by table (requests, capacity units consumed,
        throttled attempts), for stores that are paid by the request; [] for the others."""
        ...

    def close(self) -> None: ...


KEYS_KEPT = 1000  # drifted actions whose keys are kept for verify's report (it shows at most a few hundred)


def action_id(kind: StoreKind, target: str, table: str, keystr: str, column: str, action: str) -> str:
    """Content-derived, so the same change keeps its id across re-plans and plan diffs stay readable."""
    prefix = "pg-" if kind == "postgres" else "ddb-"
    return prefix + hashlib.sha256(dumps([target, table, keystr, column, action]).encode()).hexdigest()[:16]
