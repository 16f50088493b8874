"""docs/reliability.md is rendered from what the reliability tests recorded (tests/reliability.py)."""

from __future__ import annotations

from reliability import render


def test_the_table_sums_cases_per_class_and_result() -> None:
    rows = [
        ("kill -9 during apply (PostgreSQL)", "nothing lost", 1, "pg-step:2", "t.py::a[1]"),
        ("kill -9 during apply (PostgreSQL)", "nothing lost", 1, "pg-step:3", "t.py::a[2]"),
        ("hostile input: mapping files", "refused, exit 1, nothing written", 50, "hypothesis", "h.py::b"),
    ]
    text = render(rows)
    assert "| kill -9 during apply (PostgreSQL) | 2 | nothing lost | 2 |" in text
    assert "| hostile input: mapping files | 50 | refused, exit 1, nothing written | 1 |" in text
    assert "3 tests, 52 cases" in text
    assert "- pg-step:3: nothing lost (1 case; `t.py::a[2]`)" in text
    # classes in order, so a re-run of the same suite gives the same table
    assert text.index("| hostile input") < text.index("| kill -9")
