"""on_conflict: fail refuses the plan with every conflict of every table of the target at once, so one run of
`plan` shows a reviewer all that must be resolved, not the first table's alone."""

from __future__ import annotations

from typing import Any

from helpers import assert_user_error


def test_every_table_with_on_conflict_fail_is_listed_in_one_error(db: Any, ws: Any) -> None:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@x.com'), (2, 'b@x.com'), (3, 'c@x.com'), (4, 'd@x.com')")
    db.execute("CREATE TABLE contacts (id int PRIMARY KEY, address text UNIQUE)")
    db.execute("INSERT INTO contacts VALUES (1, 'a@x.com'), (2, 'b@x.com'), (3, 'c@x.com')")
    db.execute("CREATE TABLE notes (id int PRIMARY KEY, author text)")  # no unique index: never a conflict
    db.execute("INSERT INTO notes VALUES (1, 'a@x.com')")
    ws.postgres_targets(
        {"core": db},
        "- table: employees\n  columns: [email]\n  on_conflict: fail\n"
        "- table: contacts\n  columns: [address]\n  on_conflict: fail\n"
        "- table: notes\n  columns: [author]\n",
    )
    # a -> b and c -> d collide in employees; a -> b alone in contacts (nothing holds d there)
    ws.mappings({"a@x.com": "b@x.com", "c@x.com": "d@x.com"})
    r, plan = ws.plan()
    err = assert_user_error(r, "have on_conflict: fail", "tables[0] (public.employees)", "tables[1] (public.contacts)")
    assert "public.employees key" in err and "public.contacts key" in err
    assert err.count("public.employees key") == 2 and err.count("public.contacts key") == 1
    assert not plan.exists()


def test_one_table_keeps_its_own_message(db: Any, ws: Any) -> None:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees SELECT i, 'u' || i || '@x.com' FROM generate_series(1, 25) i")
    db.execute("INSERT INTO employees SELECT 100 + i, 'x' || i || '@x.com' FROM generate_series(1, 25) i")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n  on_conflict: fail\n")
    # 25 rows moving onto addresses other rows keep: the first 20 are listed, then how many more
    ws.mappings({f"u{i}@x.com": f"x{i}@x.com" for i in range(1, 26)})
    r, _ = ws.plan()
    err = assert_user_error(r, "tables[0] (public.employees) has on_conflict: fail")
    assert err.count("public.employees key") == 20 and "public.employees: ... and 5 more" in err


def _conflicting(d: Any, rows: int) -> None:
    d.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    d.execute(f"INSERT INTO employees SELECT i, 'u' || i || '@x.com' FROM generate_series(1, {rows}) i")
    d.execute(f"INSERT INTO employees SELECT 100 + i, 'x' || i || '@x.com' FROM generate_series(1, {rows}) i")


def test_every_target_is_planned_and_their_conflicts_listed_in_one_error(make_db: Any, ws: Any) -> None:
    """Each PostgreSQL target is planned on its own (a process of its own when several run at once): a refusal in
    one stops none of the others, and the plan's error lists them all. A target with no conflict is not named."""
    one, two, calm = make_db(), make_db(), make_db()
    _conflicting(one, 2)
    _conflicting(two, 3)
    calm.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    calm.execute("INSERT INTO employees VALUES (1, 'u1@x.com')")
    ws.postgres_targets(
        {"one": one, "two": two, "calm": calm}, "- table: employees\n  columns: [email]\n  on_conflict: fail\n"
    )
    ws.mappings({f"u{i}@x.com": f"x{i}@x.com" for i in range(1, 4)})
    for parallel in ("1", "3"):  # one target after another, and all at once
        r, plan = ws.plan("--parallel", parallel)
        err = assert_user_error(r, "the plan is refused in 2 targets")
        assert "postgres[0].tables[0] (public.employees) has on_conflict: fail" in err
        assert "postgres[1].tables[0] (public.employees) has on_conflict: fail" in err
        assert "postgres[2]" not in err
        assert err.count("public.employees key") == 5  # 2 rows of one, 3 of two
        assert not plan.exists()
