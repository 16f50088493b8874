"""Unique groups, decided the same way in every store: which rows or items moving to an address lose it.

A group (targets.yaml `unique_groups:`) is columns or attributes that share one address namespace. Given, for each
address the plan moves something to, the movers (in priority order: mapping position, then table, then key) and the
holders that keep it after the plan (holding it now and not moving away), an owner (or a single row) wins: holders
keep it, so every other owner's movers lose; with no holder, the first mover's owner takes it. One owner's rows (a
user's own rows in two tables) never conflict with each other. Stores find movers and holders; this decides.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

SHOWN = 20  # conflicts listed per group when on_conflict: fail refuses a plan


@dataclass(frozen=True)
class Mover:
    who: Hashable  # its owner, or the row itself
    name: str  # for messages: table and key
    ref: Any  # the store's own handle on the row or item


def losers(
    label: str, arrivals: dict[str, list[Mover]], holders: dict[str, list[tuple[Hashable, str]]]
) -> list[tuple[Mover, str]]:
    """(mover, why) of each mover that loses its address. `arrivals` lists each address's movers in priority order;
    `holders` each address's (owner, name) that keep it."""
    return [(x.mover, x.why) for x in contest(label, arrivals, holders)]


@dataclass(frozen=True)
class Loss:
    mover: Mover
    why: str
    address: str
    held: int | None  # the position in holders[address] of the row keeping it; None: a mover whose mapping is first


def contest(label: str, arrivals: dict[str, list[Mover]], holders: dict[str, list[tuple[Hashable, str]]]) -> list[Loss]:
    """As losers(), saying for each loser the address and who keeps it."""
    out: list[Loss] = []
    for addr, movers in arrivals.items():
        by_owner: dict[Hashable, list[Mover]] = {}
        for m in movers:
            by_owner.setdefault(m.who, []).append(m)
        held = holders.get(addr, [])
        held_by = {who for who, _ in held}
        if held:
            for who, rows in by_owner.items():
                if who not in held_by:
                    at = next(k for k, (h, _) in enumerate(held) if h != who)
                    out += [Loss(m, f"{label}: {addr} is already held by {held[at][1]}", addr, at) for m in rows]
        elif len(by_owner) > 1:
            first, *rest = by_owner.values()
            why = f"{label}: {addr} is taken by {first[0].name}, whose mapping comes first"
            out += [Loss(m, why, addr, None) for rows in rest for m in rows]
    return out


def refusal(label: str, lost: list[tuple[Mover, str]]) -> tuple[str, list[str]]:
    """The error of a group with on_conflict: fail: its head and the rows listed (the first SHOWN)."""
    problems = [f"{m.name}: {why}" for m, why in lost]
    shown = problems[:SHOWN]
    if len(problems) > SHOWN:
        shown.append(f"... and {len(problems) - SHOWN} more")
    head = (
        f"{label} has on_conflict: fail and the plan would give one address to more than one row or item across its "
        "columns and attributes; resolve these or choose on_conflict: skip"
    )
    return head, shown
