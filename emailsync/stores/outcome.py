"""What applying a plan did, per action and per target: shared by every store."""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field


@dataclass(slots=True)
class Outcome:
    status: str  # applied | already-applied | stale | failed | needs-review | not-applied
    detail: str | None = None
    # Where the action is, for the report, when the store reports it (PostgreSQL reads it from its action table, so
    # the plan's actions need not be held in memory to say where each outcome belongs).
    table: str | None = None
    kind: str | None = None


class CompactOutcomes(MutableMapping[str, Outcome]):
    """The outcomes of many actions in little memory (about 80 bytes each, against some 250 for a dict of Outcome
    objects): the ids in a list, statuses, tables and kinds as small numbers, details only where there is one.
    Appended in order and read by iterating; looking one up by id builds an index the first time."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._status = array("B")
        self._table = array("H")
        self._kind = array("B")
        self._details: dict[int, str] = {}
        self._names: dict[str | None, int] = {}
        self._values: list[str | None] = []
        self._index: dict[str, int] | None = None

    def _code(self, value: str | None) -> int:
        code = self._names.get(value)
        if code is None:
            code = self._names[value] = len(self._values)
            self._values.append(value)
        return code

    def add(self, aid: str, o: Outcome) -> None:
        if self._index is not None:
            self._index[aid] = len(self._ids)
        if o.detail is not None:
            self._details[len(self._ids)] = o.detail
        self._ids.append(aid)
        self._status.append(self._code(o.status))
        self._table.append(self._code(o.table))
        self._kind.append(self._code(o.kind))

    def _at(self, i: int) -> Outcome:
        v = self._values
        return Outcome(v[self._status[i]] or "", self._details.get(i), v[self._table[i]], v[self._kind[i]])

    def __getitem__(self, aid: str) -> Outcome:
        if self._index is None:
            self._index = {x: i for i, x in enumerate(self._ids)}
        return self._at(self._index[aid])

    def __setitem__(self, aid: str, o: Outcome) -> None:
        if aid in self:
            raise ValueError(f"outcome of {aid} recorded twice")
        self.add(aid, o)

    def __delitem__(self, aid: str) -> None:
        raise TypeError("outcomes are only added")

    def __contains__(self, aid: object) -> bool:
        if self._index is None:
            self._index = {x: i for i, x in enumerate(self._ids)}
        return aid in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def items(self) -> Iterator[tuple[str, Outcome]]:  # type: ignore[override]  # an iterator, not a view
        return ((aid, self._at(i)) for i, aid in enumerate(self._ids))

    def values(self) -> Iterator[Outcome]:  # type: ignore[override]
        return (self._at(i) for i in range(len(self._ids)))

    def statuses(self) -> Mapping[str, str]:
        """id -> status, without another copy."""
        return _Statuses(self)


class _Statuses(Mapping[str, str]):
    def __init__(self, outcomes: CompactOutcomes) -> None:
        self._o = outcomes

    def __getitem__(self, aid: str) -> str:
        return self._o[aid].status

    def __iter__(self) -> Iterator[str]:
        return iter(self._o)

    def __len__(self) -> int:
        return len(self._o)

    def values(self) -> Iterator[str]:  # type: ignore[override]
        v = self._o._values
        return (v[c] or "" for c in self._o._status)


@dataclass
class TargetResult:
    target: str
    outcomes: MutableMapping[str, Outcome] = field(default_factory=dict)
    error: str | None = None
    committed: bool = False
