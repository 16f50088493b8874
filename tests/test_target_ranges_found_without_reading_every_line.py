"""apply reads a plan with its lines' check still running (read_plan early=True) and sends each target's lines to
its database meanwhile: where each target's lines are is then found by bisecting the sorted body, not by the check.
It must find exactly the ranges the check finds, however finely it bisects, for targets with many lines, few, or
none; and a plan whose lines are not in order is still refused, by the check, when it is waited for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import plan_lines, write_plan_lines

from emailsync import planfile
from emailsync.errors import UserError


def _estate(ws: Any, make_db: Any, rows: list[int]) -> Path:
    dbs = [make_db() for _ in rows]
    for db, n in zip(dbs, rows, strict=True):
        db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE, note text)")
        for i in range(1, n + 1):
            db.execute("INSERT INTO employees VALUES (%s, %s, %s)", (i, f"u{i}@old.com", "x" * (i % 50)))
        db.execute("INSERT INTO employees VALUES (0, 'nobody@else.com', '')")
    ws.postgres_targets({f"db{k}": db for k, db in enumerate(dbs)}, "- {table: employees, columns: [email]}")
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(1, max(rows) + 1)})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    return plan


def _ranges(plan: Any) -> dict[str, tuple[int, int]]:
    return dict(plan.unchecked_actions._copy.ranges)


@pytest.mark.parametrize("scan", [1 << 20, 256, 1])
def test_bisected_ranges_are_the_checks(ws: Any, make_db: Any, monkeypatch: pytest.MonkeyPatch, scan: int) -> None:
    # db1 has no changes at all (its one row is not mapped): no range; the others have many lines or one.
    plan = _estate(ws, make_db, [120, 0, 1, 60])
    monkeypatch.setattr(planfile, "_SCAN_BYTES", scan)
    checked = planfile.read_plan(plan, 1)
    early = planfile.read_plan(plan, 1, early=True)
    found = _ranges(early)
    early.checked()
    assert found == _ranges(checked) == _ranges(early)
    assert sorted(found) == ["db0", "db2", "db3"]
    # The ranges hold exactly each target's lines, one after another.
    starts = sorted(found.values())
    assert all(a + n == b for (a, n), (b, _) in zip(starts, starts[1:], strict=False))
    assert [a.target for a in early.actions] == ["db0"] * 120 + ["db2"] + ["db3"] * 60


def test_a_plan_out_of_order_is_refused_when_its_check_is_waited_for(ws: Any, make_db: Any) -> None:
    plan = _estate(ws, make_db, [5, 5])
    lines = plan_lines(plan)
    lines[1], lines[-1] = lines[-1], lines[1]  # db1's last line first: out of order (the header re-sealed)
    write_plan_lines(plan, lines, reseal=True)
    early = planfile.read_plan(plan, 1, early=True)
    with pytest.raises(UserError, match="out of order or repeated"):
        early.checked()
    with pytest.raises(UserError, match="out of order or repeated"):
        list(early.actions)  # every later use of the actions says so too
