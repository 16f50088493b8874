"""A PostgreSQL target's actions cut into batches that can each commit alone (apply --batch-size).

A batch is a whole number of groups of related actions, never part of one, so each batch is a small plan that the
one-transaction applier (applier.py) applies as it would the whole: its rows locked, judged, written by conditional
statements, read back, committed with its ledger record. Actions are related when what one does depends on what the
other does:
- they name one address (case-insensitively): a chain a -> b -> c, two addresses merging into one, a row whose new
  address another row holds, a parent and the children whose foreign key points at it;
- they change one row that is deleted, put back or moved by its key: the row's changes are judged against its
  whole image, so they go together.
Plain changes of one row's different columns may go in different batches: each is conditional on its own column.

Everything here runs in PostgreSQL, on the lines load_lines put in _es_lines: no work per action in Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from emailsync.stores.postgres.catalog import TableMeta

# _es_lines' columns, as load_lines makes them: a batch's table has the same, so the applier reads it unchanged.
LINE_COLUMNS = "n, tbl, step, id, kind, col, key, old, new, image, conflict, paths, ins, k"


@dataclass(frozen=True)
class Batches:
    count: int
    rows: list[int]  # actions per batch, in order


def unbatchable(m: TableMeta) -> str | None:
    """Why the table's actions cannot be cut into batches, or None. Batches keep together the actions whose addresses
    are equal case-insensitively; a unique index that compares addresses some other way (an expression other than
    lower(), an array or jsonb column) could make two actions in different batches collide, in either order."""
    emails = set(m.email_columns)
    plain = emails | {f'"{c}"' for c in emails}
    for u in m.unique_indexes:
        if not u.columns & emails:
            continue
        for e in u.exprs:
            bare = e.removeprefix("lower(").removesuffix(")") if e.startswith("lower(") else e
            if bare in plain and m.columns[bare.strip('"')].kind == "text":
                continue
            if not any(c in e for c in emails):
                continue  # another key column of the index (tenant_id): equal addresses are grouped already
            return f"unique index {u.name} compares addresses as {e}"
        if u.predicate and any(c in u.predicate for c in emails):
            return f"unique index {u.name} holds only rows where {u.predicate}"
    return None


def split(conn: psycopg.Connection, batch_size: int, metas: list[TableMeta]) -> Batches:
    """Cut the lines in _es_lines (session-long) into batches of about batch_size actions: _es_lines becomes _es_all,
    which outlives each batch's transaction, and _es_batch numbers its lines (n) by batch. Groups go in the order of
    their first line in the plan file, so a batch covers neighbouring keys, and the same plan and size always give
    the same batches (a resumed apply checks that they did)."""
    conn.execute("ALTER TABLE _es_lines RENAME TO _es_all")
    # Tokens: what relates lines (see the module's docstring), hashed to numbers (two different tokens hashing
    # alike only join two groups: a larger batch, never a wrong one).
    conn.execute(
        """
        CREATE TEMP TABLE _es_tok AS
        SELECT n, hashtextextended(lower(old #>> '{}'), 0) AS tok FROM _es_all WHERE jsonb_typeof(old) = 'string'
        UNION ALL
        SELECT n, hashtextextended(lower(new #>> '{}'), 0) FROM _es_all WHERE jsonb_typeof(new) = 'string'
        UNION ALL
        -- every address in the whole row a line carries (a row deleted, put back, or moved by its key): it frees or
        -- takes them all at once
        SELECT a.n, hashtextextended(lower(a.image ->> e.col), 0)
        FROM _es_all a JOIN unnest(%s::int[], %s::text[]) AS e(tbl, col) ON e.tbl = a.tbl
        WHERE a.image IS NOT NULL AND jsonb_typeof(a.image -> e.col) = 'string'
        UNION ALL
        SELECT a.n, hashtextextended(a.tbl || ':' || a.k, 1) FROM _es_all a JOIN (
            SELECT DISTINCT tbl, k FROM _es_all
            WHERE image IS NOT NULL OR conflict IS NOT NULL OR kind IN ('delete-on-conflict', 'insert-row')
        ) b ON b.tbl = a.tbl AND b.k = a.k
        """,
        (
            [i for i, m in enumerate(metas) for c in m.email_columns if m.columns[c].kind == "text"],
            [c for m in metas for c in m.email_columns if m.columns[c].kind == "text"],
        ),
    )
    # A first round joins every line to the least line sharing one of its tokens: the whole group, for groups whose
    # lines all share one token (most: one address's rows).
    conn.execute(
        "CREATE TEMP TABLE _es_lab AS SELECT t.n, min(m.g) AS g FROM _es_tok t "
        "JOIN (SELECT tok, min(n) AS g FROM _es_tok GROUP BY tok) m ON m.tok = t.tok GROUP BY t.n"
    )
    # Then only the tokens whose lines still disagree (a chain: a -> b, b -> c) are worked on, until none does.
    while True:
        conn.execute(
            "CREATE TEMP TABLE _es_open AS SELECT t.tok, min(l.g) AS g FROM _es_tok t JOIN _es_lab l ON l.n = t.n "
            "GROUP BY t.tok HAVING min(l.g) <> max(l.g)"
        )
        moved = conn.execute(
            "UPDATE _es_lab l SET g = m.g FROM (SELECT t.n, min(o.g) AS g FROM _es_open o JOIN _es_tok t "
            "ON t.tok = o.tok GROUP BY t.n) m WHERE l.n = m.n AND m.g < l.g"
        ).rowcount
        conn.execute("DROP TABLE _es_open")
        if moved == 0:
            break
    # Groups packed in order: a group starts a new batch once the actions before it fill batch_size; a group of
    # batch_size or more is a batch of its own. Lines without a token are groups of one.
    conn.execute(
        """
        CREATE TEMP TABLE _es_batch AS
        WITH lines AS (
            SELECT a.n, COALESCE(l.g, a.n) AS g FROM _es_all a LEFT JOIN _es_lab l ON l.n = a.n
        ), sizes AS (
            SELECT g, count(*) AS r FROM lines GROUP BY g
        ), packed AS (
            SELECT g, div(sum(r) OVER (ORDER BY g) - r, %(size)s) AS slot, CASE WHEN r >= %(size)s THEN g END AS own
            FROM sizes
        ), numbered AS (
            SELECT g, dense_rank() OVER (ORDER BY slot, own NULLS FIRST)::int - 1 AS batch FROM packed
        )
        SELECT lines.n, numbered.batch FROM lines JOIN numbered ON numbered.g = lines.g
        """,
        {"size": batch_size},
    )
    conn.execute("DROP TABLE _es_tok, _es_lab")
    conn.execute("CREATE INDEX ON _es_batch (batch)")
    conn.execute("CREATE UNIQUE INDEX ON _es_all (n)")
    conn.execute("ANALYZE _es_batch")
    sizes = conn.execute("SELECT batch, count(*)::int FROM _es_batch GROUP BY batch ORDER BY batch").fetchall()
    conn.commit()
    return Batches(len(sizes), [r for _, r in sizes])


def _in_batch(where: str) -> str:
    """The lines of the batches `where` chooses (on b.batch), read through _es_batch's index."""
    return f"FROM _es_batch b JOIN _es_all a ON a.n = b.n WHERE {where}"


def digests(conn: psycopg.Connection, batches: list[int]) -> dict[int, str]:
    """What each of these batches holds, as the md5 of its action ids: a resumed apply's batches must be the ones
    the ledger records."""
    rows = conn.execute(
        "SELECT b.batch, md5(string_agg(a.id, E'\\n' ORDER BY a.id COLLATE \"C\")) "  # LiteralString: constants
        + _in_batch("b.batch = ANY(%s)")
        + " GROUP BY b.batch",
        (batches,),
    ).fetchall()
    conn.rollback()
    return dict(rows)


def take(conn: psycopg.Connection, batch: int) -> tuple[int, str]:
    """Open the batch's transaction with its lines in _es_lines, dropped at commit; (lines, digest of its ids)."""
    cols = ", ".join(f"a.{c}" for c in LINE_COLUMNS.split(", "))
    conn.execute(
        f"CREATE TEMP TABLE _es_lines ON COMMIT DROP AS SELECT {cols} "  # LiteralString: constants only
        + _in_batch("b.batch = %s"),
        (batch,),
    )
    row = conn.execute(
        "SELECT count(*)::int, md5(string_agg(id, E'\\n' ORDER BY id COLLATE \"C\")) FROM _es_lines"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


@dataclass(frozen=True)
class Line:
    """Where one action of a batch is, for its outcome when the batch's transaction is gone."""

    id: str
    table: str
    kind: str


class BatchLines:
    """A batch's actions read again from _es_all (it outlives the batch's transaction): what a batch that failed or
    was never run reports, action by action."""

    def __init__(self, conn: psycopg.Connection, batch: int, tables: list[str]) -> None:
        self.conn, self.batch, self.tables = conn, batch, tables

    def __iter__(self) -> Iterator[Line]:
        with self.conn.cursor(name="_es_batch_lines") as cur:
            cur.itersize = 10_000
            cur.execute("SELECT a.id, a.tbl, a.kind " + _in_batch("b.batch = %s"), (self.batch,))
            for aid, tbl, kind in cur:
                yield Line(aid, self.tables[tbl], kind)
