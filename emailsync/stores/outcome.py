"""What applying a plan did, per action and per target: shared by every store."""

from __future__ import annotations

import itertools
import json
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import IO

from emailsync.files import reader_at


@dataclass(slots=True)
class Outcome:
    status: str  # applied | already-applied | stale | failed | needs-review | not-applied
    detail: str | None = None
    # Where the action is, for the report, when the store reports it (PostgreSQL reads it from its action table, so
    # the plan's actions need not be held in memory to say where each outcome belongs).
    table: str | None = None
    kind: str | None = None


# Outcomes alike (ids, their details or None when none has one, status, table, kind), from CompactOutcomes.blocks.
Block = tuple[list[str], list[str | None] | None, str, str | None, str | None]

SPILL_AFTER = 50_000  # outcomes whose ids and details are held before they go to a temporary file


class CompactOutcomes(MutableMapping[str, Outcome]):
    """The outcomes of many actions in bounded memory: statuses, tables and kinds as small numbers (4 bytes an
    action), the ids and details of all but the last SPILL_AFTER in an unnamed temporary file, one line each.
    Appended in order and read by iterating (each pass reads the file again); looking one up by id builds an index
    the first time (only small sets of outcomes are looked up)."""

    def __init__(self) -> None:
        self._ids: list[str] = []  # the ids not yet spilled, from position self._spilled on
        self._details: dict[int, str] = {}  # by position, not yet spilled
        self._spilled = 0
        self._file: IO[bytes] | None = None
        self._status = array("B")
        self._table = array("H")
        self._kind = array("B")
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
        n = len(self._status)
        if self._index is not None:
            self._index[aid] = n
        if o.detail is not None:
            self._details[n] = o.detail
        self._ids.append(aid)
        self._status.append(self._code(o.status))
        self._table.append(self._code(o.table))
        self._kind.append(self._code(o.kind))
        if len(self._ids) >= SPILL_AFTER:
            self._spill()

    def add_run(self, ids: list[str], status: str, table: str | None, kind: str | None) -> None:
        """Many outcomes alike and without detail at once (a table written whole): no work per action but the id's."""
        n = len(self._status)
        if self._index is not None:
            self._index.update(zip(ids, range(n, n + len(ids)), strict=False))
        self._ids.extend(ids)
        for codes, value in ((self._status, status), (self._table, table), (self._kind, kind)):
            codes.extend(array(codes.typecode, [self._code(value)]) * len(ids))
        if len(self._ids) >= SPILL_AFTER:
            self._spill()

    def _spill(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(buffering=1 << 20)  # noqa: SIM115  # lives as long as the outcomes
        out = self._file
        if not self._details:
            text = "\n".join(self._ids)
            # The usual case, written at once: ids without details, none of them needing quotes (see _plain).
            if _all_plain(text, len(self._ids)):
                out.write(text.encode("utf-8", "surrogatepass") + b"\n")
                out.flush()
                self._spilled += len(self._ids)
                self._ids.clear()
                return
        for i, aid in enumerate(self._ids, self._spilled):
            # One line per outcome: the id, and the detail after a tab; JSON strings where they would be ambiguous.
            text = aid if _plain(aid) else json.dumps(aid)
            detail = self._details.get(i)
            line = text if detail is None else f"{text}\t{json.dumps(detail)}"
            out.write(line.encode("utf-8", "surrogatepass") + b"\n")
        out.flush()
        self._spilled += len(self._ids)
        self._ids.clear()
        self._details.clear()

    def _records(self) -> Iterator[tuple[int, str, str | None]]:
        """(position, id, detail) of every outcome, in order."""
        i = 0
        for ids, details in self._chunks():
            for aid, detail in zip(ids, details or itertools.repeat(None), strict=False):
                yield i, aid, detail
                i += 1

    def _chunks(self) -> Iterator[tuple[list[str], list[str | None] | None]]:
        """Every outcome's id and detail in order, a block at a time: (ids, details, or None when none has one)."""
        i = 0
        if self._file is not None:
            reader = reader_at(self._file.fileno(), 1 << 20)
            while i < self._spilled:
                block = reader.read(1 << 20)
                if not block:
                    break
                if not block.endswith(b"\n"):
                    block += reader.readline()
                text = block.decode("utf-8", "surrogatepass")
                lines = text.split("\n")[:-1][: self._spilled - i]
                i += len(lines)
                if "\t" not in text and '\n"' not in text and not text.startswith('"'):
                    yield lines, None  # plain ids alone, the usual case
                    continue
                ids: list[str] = []
                details: list[str | None] = []
                for line in lines:
                    head, _, detail = line.partition("\t")
                    ids.append(json.loads(head) if head.startswith('"') else head)
                    details.append(json.loads(detail) if detail else None)
                yield ids, details
        if self._ids:
            known = self._details
            yield list(self._ids), ([known.get(j) for j in range(i, i + len(self._ids))] if known else None)

    def blocks(self, most: int = 10_000) -> Iterator[Block]:
        """The outcomes in order, as blocks of at most `most` alike ones (status, table, kind): (ids, details or None,
        status, table, kind). For writing many outcomes with work per block rather than per action."""
        v = self._values
        chunks = self._chunks()
        ids: list[str] = []
        details: list[str | None] | None = None
        at = 0
        for (s, t, k), same in itertools.groupby(zip(self._status, self._table, self._kind, strict=True)):
            n = sum(1 for _ in same)
            while n:
                if at == len(ids):
                    ids, details = next(chunks)
                    at = 0
                take = min(n, len(ids) - at, most)
                part = None if details is None else details[at : at + take]
                yield ids[at : at + take], part, v[s] or "", v[t], v[k]
                at += take
                n -= take

    def records(self) -> Iterator[tuple[str, str, str | None, str | None, str | None]]:
        """(id, status, table, kind, detail) of every outcome, in order, without an Outcome each."""
        v, status, table, kind = self._values, self._status, self._table, self._kind
        for i, aid, detail in self._records():
            yield aid, v[status[i]] or "", v[table[i]], v[kind[i]], detail

    def _at(self, i: int, detail: str | None) -> Outcome:
        v = self._values
        return Outcome(v[self._status[i]] or "", detail, v[self._table[i]], v[self._kind[i]])

    def _indexed(self) -> dict[str, int]:
        if self._index is None:
            self._index = {aid: i for i, aid, _ in self._records()}
        return self._index

    def __getitem__(self, aid: str) -> Outcome:
        i = self._indexed()[aid]
        detail = next((d for j, _, d in self._records() if j == i), None) if i < self._spilled else self._details.get(i)
        return self._at(i, detail)

    def __setitem__(self, aid: str, o: Outcome) -> None:
        if aid in self:
            raise ValueError(f"outcome of {aid} recorded twice")
        self.add(aid, o)

    def __delitem__(self, aid: str) -> None:
        raise TypeError("outcomes are only added")

    def __contains__(self, aid: object) -> bool:
        return aid in self._indexed()

    def __iter__(self) -> Iterator[str]:
        return (aid for _, aid, _ in self._records())

    def __len__(self) -> int:
        return len(self._status)

    def items(self) -> Iterator[tuple[str, Outcome]]:  # type: ignore[override]  # an iterator, not a view
        return ((aid, self._at(i, detail)) for i, aid, detail in self._records())

    def values(self) -> Iterator[Outcome]:  # type: ignore[override]
        return (self._at(i, detail) for i, _, detail in self._records())

    def tally(self) -> Counter[tuple[str, str | None, str | None]]:
        """How many outcomes of each (status, table, kind), from the small numbers alone (no id is read)."""
        v = self._values
        coded = Counter(zip(self._status, self._table, self._kind, strict=True))
        return Counter({(v[s] or "", v[t], v[k]): n for (s, t, k), n in coded.items()})

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
    paused: bool = False  # stopped at a batch boundary when asked to (SIGTERM, Ctrl-C): a rerun goes on from there
    # A batched apply (--batch-size): batch_size, batches, committed (this run and earlier ones), resumed (earlier).
    batches: dict[str, int] | None = None


def _all_plain(joined: str, n: int) -> bool:
    """Every one of n ids joined by newlines is _plain: no id has a newline in it (n - 1 of them), a tab or a carriage
    return, or starts with a quote."""
    if "\t" in joined or "\r" in joined or '\n"' in joined or joined.startswith('"'):
        return False
    return joined.count("\n") == n - 1


def _plain(aid: str) -> bool:
    """An id written as it is: nothing in it a line, a tab or a JSON string could be confused with."""
    return not aid.startswith('"') and "\t" not in aid and "\n" not in aid and "\r" not in aid


DONE = ("applied", "already-applied")  # the statuses of an action whose change is in the store


def ledger_status(counts: Mapping[str, int], full: bool) -> str:
    """complete: every action of the plan for the target is done, so applying the plan again is a replay."""
    done = all(s in DONE for s, n in counts.items() if n)
    return "complete" if done and full else "incomplete"


def status_counts(outcomes: Mapping[str, Outcome]) -> dict[str, int]:
    """How many outcomes of each status (of compact outcomes: from their small numbers, no id read)."""
    counts: Counter[str] = Counter()
    for (status, _, _), n in tally(outcomes).items():
        counts[status] += n
    return dict(counts)


def tally(outcomes: Mapping[str, Outcome]) -> Counter[tuple[str, str | None, str | None]]:
    """How many outcomes of each (status, table, kind)."""
    if isinstance(outcomes, CompactOutcomes):
        return outcomes.tally()
    return Counter((o.status, o.table, o.kind) for o in outcomes.values())


def counts_of(res: TargetResult) -> dict[str, int]:
    return status_counts(res.outcomes)
