"""What the example estates' tests share (tests/test_example_*_estate.py): loading an example into a fresh database,
and reading a table whole to compare it with the seed and the cells the plan changes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(db: Any, ws: Any, example: Path, dsn_variable: str) -> None:
    """The example's schema and seed in a fresh database; its targets.yaml and mappings in the workspace, with the
    variable its targets.yaml reads pointing at the database."""
    db.execute((example / "schema.sql").read_text())
    db.execute((example / "seed.sql").read_text())
    for name in ("targets.yaml", "email_mappings.json"):
        shutil.copy(example / name, ws.path / name)
    ws.monkeypatch.setenv(dsn_variable, db.dsn)


def table(db: Any, name: str, order: str = "id") -> list[dict[str, Any]]:
    """Every row of a table, every column, as PostgreSQL renders it (to_jsonb)."""
    return [row for (row,) in db.rows(f"SELECT to_jsonb(t) FROM {name} t ORDER BY {order}")]


def changed(
    before: list[dict[str, Any]], changes: dict[Any, dict[str, Any]], deleted: tuple[Any, ...] = (), key: str = "id"
) -> list[dict[str, Any]]:
    """The seed's rows with exactly these cells changed and these rows gone: every other cell must be as seeded."""
    keys = {r[key] for r in before}
    assert set(changes) <= keys and set(deleted) <= keys, "a key in the expectation is not in the seed"
    return [{**r, **changes.get(r[key], {})} for r in before if r[key] not in deleted]
