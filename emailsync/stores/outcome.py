"""What applying a plan did, per action and per target: shared by every store."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Outcome:
    status: str  # applied | already-applied | stale | failed | needs-review | not-applied
    detail: str | None = None
    # Where the action is, for the report, when the store reports it (PostgreSQL reads it from its action table, so
    # the plan's actions need not be held in memory to say where each outcome belongs).
    table: str | None = None
    kind: str | None = None


@dataclass
class TargetResult:
    target: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    error: str | None = None
    committed: bool = False
