"""A PostgreSQL transaction's journal records: its actions' ids before it writes, their outcomes after, BATCH to a
record, streamed (a transaction of millions never makes one list or one line)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from emailsync.stores.outcome import CompactOutcomes

BATCH = 10_000  # actions per journal record of a PostgreSQL transaction


def journal_records(entry: dict[str, Any], pairs: Iterator[tuple[str, Any]], field: str) -> Iterator[dict[str, Any]]:
    """The entry once per BATCH actions (at least once): `field` holds their ids ("actions", with "count") or
    their statuses by id ("outcomes"). Streamed, so a transaction of millions never makes one list or one line."""
    first = True
    while True:
        batch = dict(itertools.islice(pairs, BATCH))
        if not batch and not first:
            return
        first = False
        if field == "actions":
            yield {**entry, "count": len(batch), "actions": list(batch)}
        else:
            yield {**entry, field: batch}


def status_records(entry: dict[str, Any], outcomes: CompactOutcomes) -> Iterator[dict[str, Any]]:
    """journal_records(entry, statuses, "outcomes"), made a block of alike outcomes at a time (dict.fromkeys, not
    an item each)."""
    batch: dict[str, str] = {}
    sent = False
    for ids, _, status, _, _ in outcomes.blocks():
        at = 0
        while at < len(ids):
            take = ids[at : at + BATCH - len(batch)]
            batch.update(dict.fromkeys(take, status))
            at += len(take)
            if len(batch) >= BATCH:
                yield {**entry, "outcomes": batch}
                batch, sent = {}, True
    if batch or not sent:
        yield {**entry, "outcomes": batch}
