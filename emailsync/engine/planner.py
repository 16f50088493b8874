"""Builds a Plan from targets.yaml and the mappings. Reads the stores, writes nothing anywhere."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from emailsync import __version__
from emailsync.config import LoadedTargets
from emailsync.engine.executor import DEFAULT_PACE, Pace, default_width, run_all
from emailsync.engine.parts import Forked, InProcess
from emailsync.errors import UserError
from emailsync.forking import CAN_FORK
from emailsync.mappings import MappingSet
from emailsync.plan import (
    Inputs,
    Plan,
    ReadRecord,
    SummaryRow,
    TargetFingerprint,
    seal_parts,
)
from emailsync.planfile import PLAN_NAME
from emailsync.stores import registry


def build_plan(
    loaded: LoadedTargets,
    mset: MappingSet,
    *,
    now: datetime | None = None,
    parallel: int | None = None,
    pace: Pace = DEFAULT_PACE,
    deflate: bool = True,
) -> Plan:
    """Plan every target (read-only), `parallel` targets at a time (default: executor.default_width); the plan is
    the same whatever the width. `deflate`: each target's lines are also deflated where they are made, for a .gz
    plan file (a plan made without is deflated when written to one, to the same bytes).

    Two phases per target (engine/parts.py): each is read through its store (stores/base.py); the order of the
    mapping entries (levels) is then decided across all of them; then each makes its actions and writes them,
    sorted, as its part of the body, which is the parts in target order. Planning several targets at once, those
    whose planning is Python work run in processes of their own."""
    stores = registry.stores(loaded, pace=pace)
    width = parallel if parallel is not None else default_width(len(stores))
    forking = CAN_FORK and width > 1 and sum(s.plans_in_a_process for s in stores) > 1
    makers: list[InProcess | Forked] = []
    try:
        # Forked here, before any executor thread starts.
        makers += [
            Forked(s, mset, deflate) if forking and s.plans_in_a_process else InProcess(s, mset, deflate)
            for s in stores
        ]
        reads = run_all([m.read() for m in makers], width)
        levels = _levels({e for r in reads for e in r.edges}, mset)
        made = run_all([m.make(levels) for m in makers], width)
    finally:
        for m in makers:
            m.close()
    summary: dict[tuple[str, str, str, str], int] = defaultdict(int)
    ids: set[str] = set()
    for target, maker in zip(made, makers, strict=True):
        maker.part.runs = target.runs
        for k, n in target.summary:
            summary[k] += n
        before = len(ids)
        ids.update(target.ids)
        if len(ids) != before + len(target.ids):  # 64-bit ids: a clash is astronomically unlikely, never silent
            raise UserError("internal: two actions got the same id; please report this with the inputs")
    for target in made:  # skipped changes are counted after every action, as seal() counts them
        for k, n in target.skipped:
            summary[k] += n
    now = now or datetime.now(UTC)
    body = dict(
        created_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        tool_version=__version__,
        inputs=Inputs(
            targets_file=loaded.path.name,
            targets_sha256=loaded.sha256,
            mappings_file=mset.path.name,
            mappings_sha256=mset.sha256,
            match=loaded.config.match,
            mapping_count=len(mset.mappings),
        ),
        targets={r.name: TargetFingerprint(store=s.kind, **r.reached) for s, r in zip(stores, reads, strict=True)},
        reads=[ReadRecord(**x) for r in reads for x in r.reads],
        summary=[SummaryRow(target=k[0], table=k[1], column=k[2], kind=k[3], count=n) for k, n in summary.items()],
        warnings=list(mset.warnings) + [w for r in reads for w in r.warnings],
        notes=[n for r in reads for n in r.notes],
    )
    return seal_parts(body, [m.part for m in makers])


def _levels(edges: set[tuple[int, int]], mset: MappingSet) -> dict[int, int]:
    """Longest-path level of each mapping entry: an entry runs after every entry it depends on."""
    after: dict[int, set[int]] = defaultdict(set)
    nodes: set[int] = set()
    for a, b in edges:
        after[a].add(b)
        nodes.update((a, b))
    level: dict[int, int] = {}
    state: dict[int, int] = {}  # 1 = visiting, 2 = done
    by_ord = {m.ord: m for m in mset.mappings}
    # Iterative depth-first search: a long chain of mappings must not hit Python's recursion limit.
    for root in sorted(nodes):
        if state.get(root) == 2:
            continue
        path: list[int] = [root]
        stack: list[tuple[int, list[int]]] = [(root, sorted(after[root]))]
        state[root] = 1
        while stack:
            n, todo = stack[-1]
            if todo:
                b = todo.pop()
                if state.get(b) == 1:
                    cyc = path[path.index(b) :] + [b]
                    raise UserError(
                        "the mappings cannot be ordered: under a unique index these changes each wait for the other "
                        "(for example a swap that a case-insensitive index sees as one value). Split them into two "
                        "plans",
                        problems=[f"{by_ord[o].where}: {by_ord[o].old} → {by_ord[o].new}" for o in cyc if o in by_ord],
                    )
                if state.get(b) != 2:
                    state[b] = 1
                    path.append(b)
                    stack.append((b, sorted(after[b])))
                continue
            level[n] = max((level[b] + 1 for b in after[n]), default=0)
            state[n] = 2
            stack.pop()
            path.pop()
    return level


def default_plan_path(plans_dir: Path, plan: Plan) -> Path:
    stamp = plan.created_at.replace("-", "").replace(":", "")
    return plans_dir / f"{stamp}-{plan.digest.split(':')[1][:12]}" / PLAN_NAME
