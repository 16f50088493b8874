"""A mappings file whose renames go round in a circle is refused, and the message names the file, every member of
each cycle in the order the renames follow each other (from the earliest entry), the places of those entries, and
why it cannot be applied; chains that merely lead into a cycle are not named."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from emailsync.errors import UserError
from emailsync.mappings import load_mappings

WHY = "no update order can apply it"


def _json(tmp_path: Path, pairs: list[tuple[str, str]]) -> Path:
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"old": o, "new": n} for o, n in pairs]))
    return path


def _refusal(path: Path, match: str = "exact") -> UserError:
    with pytest.raises(UserError) as info:
        load_mappings(path, match)  # type: ignore[arg-type]
    return info.value


def test_a_three_cycle_names_its_members_in_order_and_not_the_chains_around_it(tmp_path: Path):
    path = _json(
        tmp_path,
        [
            ("x@x.com", "y@x.com"),  # [0] a chain leading into the cycle ...
            ("b@x.com", "c@x.com"),  # [1] cycle
            ("p@x.com", "q@x.com"),  # [2] an unrelated chain
            ("c@x.com", "a@x.com"),  # [3] cycle
            ("y@x.com", "a@x.com"),  # [4] ... at a
            ("a@x.com", "b@x.com"),  # [5] cycle
            ("q@x.com", "r@x.com"),  # [6]
        ],
    )
    err = _refusal(path)
    assert str(err).splitlines()[0] == f"{path}: 1 problem(s) in the mappings file"
    assert err.problems == [f"[1]: cycle: b@x.com → c@x.com → a@x.com → b@x.com (entries [1], [3], [5]); {WHY}"]


def test_every_cycle_is_reported_once_at_its_earliest_line(tmp_path: Path):
    path = tmp_path / "m.csv"
    rows = [
        ("d@x.com", "e@x.com"),  # line 2: 3-cycle d e f
        ("s1@x.com", "s2@x.com"),  # line 3: swap
        ("e@x.com", "f@x.com"),  # line 4
        ("s2@x.com", "s1@x.com"),  # line 5
        ("k@x.com", "l@x.com"),  # line 6: not a cycle
        ("w@x.com", "x@x.com"),  # line 7: 4-cycle w x y z, entered at x
        ("z@x.com", "w@x.com"),  # line 8
        ("f@x.com", "d@x.com"),  # line 9
        ("y@x.com", "z@x.com"),  # line 10
        ("x@x.com", "y@x.com"),  # line 11
    ]
    path.write_text("old_email,new_email\n" + "".join(f"{o},{n}\n" for o, n in rows))
    assert _refusal(path).problems == [
        f"line 2: cycle: d@x.com → e@x.com → f@x.com → d@x.com (entries line 2, line 4, line 9); {WHY}",
        f"line 3: cycle: s1@x.com → s2@x.com → s1@x.com (entries line 3, line 5); {WHY}",
        f"line 7: cycle: w@x.com → x@x.com → y@x.com → z@x.com → w@x.com (entries line 7, line 11, line 10, line 8); "
        f"{WHY}",
    ]


def test_an_address_mapped_onto_itself_is_not_a_cycle_but_a_skipped_entry(tmp_path: Path):
    path = _json(tmp_path, [("a@x.com", "a@x.com"), ("b@x.com", "c@x.com")])
    ms = load_mappings(path)
    assert [(m.old, m.new) for m in ms.mappings] == [("b@x.com", "c@x.com")]
    assert ms.warnings == (f"{path}: [0]: old and new are the same ('a@x.com'); entry skipped",)


def test_a_case_only_self_chain_is_a_cycle_of_two_in_exact_mode_and_no_cycle_under_casefold(tmp_path: Path):
    path = _json(tmp_path, [("a@x.com", "A@x.com"), ("A@x.com", "a@x.com")])
    assert _refusal(path).problems == [f"[0]: cycle: a@x.com → A@x.com → a@x.com (entries [0], [1]); {WHY}"]
    one = _json(tmp_path, [("a@x.com", "A@x.com")])
    assert len(load_mappings(one, "casefold").mappings) == 1  # a case-only rename goes nowhere else


def test_a_long_chain_into_a_cycle_and_a_long_cycle_are_found_in_linear_time(tmp_path: Path):
    n = 100_000
    chain = [(f"c{i}@x.com", f"c{i + 1}@x.com") for i in range(n)]
    cycle = [(f"c{n}@x.com", "t1@x.com"), ("t1@x.com", "t2@x.com"), ("t2@x.com", f"c{n}@x.com")]
    big = [(f"r{i}@x.com", f"r{(i + 1) % n}@x.com") for i in range(n)]  # one cycle through n entries
    path = _json(tmp_path, chain + cycle + big)
    started = time.perf_counter()
    err = _refusal(path)
    assert time.perf_counter() - started < 30  # seconds; a quadratic search would take hours
    assert len(err.problems) == 2
    assert err.problems[0] == (
        f"[{n}]: cycle: c{n}@x.com → t1@x.com → t2@x.com → c{n}@x.com (entries [{n}], [{n + 1}], [{n + 2}]); {WHY}"
    )
    members = err.problems[1].split(": cycle: ")[1].split(" (entries")[0].split(" → ")
    assert members == [f"r{i}@x.com" for i in range(n)] + ["r0@x.com"]
