"""What applying a plan did, per action and per target: shared by every store."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Outcome:
    status: str  # applied | already-applied | stale | failed | needs-review | not-applied
    detail: str | None = None


@dataclass
class TargetResult:
    target: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    error: str | None = None
    committed: bool = False
