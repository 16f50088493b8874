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
