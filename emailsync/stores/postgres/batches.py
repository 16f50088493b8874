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

# _es_lines' columns, as load_lines makes them: a batch's table has the same, so the applier reads it unchanged.
LINE_COLUMNS = "tbl, step, id, kind, col, key, old, new, image, conflict, ins, k"


@dataclass(frozen=True)
class Batches:
    count: int
    rows: list[int]  # rows (distinct table and key) per batch, in order
    lines: list[int]  # actions per batch


def split(conn: psycopg.Connection, batch_size: int) -> Batches:
    """Number the lines in _es_lines (session-long) by batch into _es_all, which outlives each batch's transaction.
    Groups are ordered by their first line in (table, key, id) order, so a batch covers neighbouring keys, and the
    same plan and size always give the same batches (a resumed apply checks that they did)."""
    conn.execute(
        "CREATE TEMP TABLE _es_all AS SELECT row_number() OVER (ORDER BY tbl, k, id)::int AS n, "
        f"{LINE_COLUMNS}, bool_or(image IS NOT NULL OR conflict IS NOT NULL OR kind IN "  # LiteralString: constants
        "('delete-on-conflict', 'insert-row')) OVER (PARTITION BY tbl, k) AS bound, "
        "row_number() OVER (PARTITION BY tbl, k ORDER BY id) = 1 AS first_of_row, NULL::int AS batch FROM _es_lines"
    )
    # Tokens: what relates lines (see the module's docstring), as numbers.
    conn.execute(
        """
        CREATE TEMP TABLE _es_tok AS
        SELECT n, dense_rank() OVER (ORDER BY t)::int AS tok FROM (
            SELECT n, 'a' || lower(old #>> '{}') AS t FROM _es_all WHERE jsonb_typeof(old) = 'string'
            UNION SELECT n, 'a' || lower(new #>> '{}') FROM _es_all WHERE jsonb_typeof(new) = 'string'
            UNION SELECT n, 'r' || tbl || ':' || k FROM _es_all WHERE bound
        ) s
        """
    )
    conn.execute("CREATE INDEX ON _es_tok (tok)")
    conn.execute("CREATE INDEX ON _es_tok (n)")
    conn.execute("CREATE TEMP TABLE _es_grp AS SELECT n, n AS g FROM _es_all")
    conn.execute("ALTER TABLE _es_grp ADD PRIMARY KEY (n)")
    conn.execute("ANALYZE _es_tok")
    conn.execute("ANALYZE _es_grp")
    # Connected components by label propagation: each line takes the least label among the lines it shares a token
    # with, until none changes. Rounds: the longest path between two related lines (a chain's length), a few.
    while (
        conn.execute(
            """
            UPDATE _es_grp x SET g = m.g FROM (
                SELECT t.n, min(l.g) AS g FROM _es_tok t JOIN (
                    SELECT t2.tok, min(gr.g) AS g FROM _es_tok t2 JOIN _es_grp gr ON gr.n = t2.n GROUP BY t2.tok
                ) l ON l.tok = t.tok GROUP BY t.n
            ) m WHERE x.n = m.n AND m.g < x.g
            """
        ).rowcount
        > 0
    ):
        pass
    # Groups packed in order: a group starts a new batch once the rows before it fill batch_size. A group larger
    # than batch_size is a batch of its own.
    conn.execute(
        """
        WITH sizes AS (
            SELECT g.g, sum(a.first_of_row::int) AS r FROM _es_all a JOIN _es_grp g ON g.n = a.n GROUP BY g.g
        ), packed AS (
            SELECT g, div(sum(r) OVER (ORDER BY g) - r, %s) AS slot FROM sizes
        ), numbered AS (
            SELECT g, dense_rank() OVER (ORDER BY slot)::int - 1 AS batch FROM packed
        )
        UPDATE _es_all a SET batch = nb.batch FROM _es_grp g JOIN numbered nb ON nb.g = g.g WHERE a.n = g.n
        """,
        (batch_size,),
    )
    conn.execute("DROP TABLE _es_tok, _es_grp")
    conn.execute("CREATE INDEX ON _es_all (batch)")
    sizes = conn.execute(
        "SELECT batch, sum(first_of_row::int)::int, count(*)::int FROM _es_all GROUP BY batch ORDER BY batch"
    ).fetchall()
    conn.commit()
    return Batches(len(sizes), [r for _, r, _ in sizes], [n for _, _, n in sizes])


def digests(conn: psycopg.Connection, batches: list[int]) -> dict[int, str]:
    """What each of these batches holds, as the md5 of its action ids: a resumed apply's batches must be the ones
    the ledger records."""
    rows = conn.execute(
        "SELECT batch, md5(string_agg(id, E'\\n' ORDER BY id COLLATE \"C\")) FROM _es_all WHERE batch = ANY(%s) "
        "GROUP BY batch",
        (batches,),
    ).fetchall()
    conn.rollback()
    return dict(rows)


def take(conn: psycopg.Connection, batch: int) -> tuple[int, str]:
    """Open the batch's transaction with its lines in _es_lines, dropped at commit; (lines, digest of its ids)."""
    conn.execute(
        f"CREATE TEMP TABLE _es_lines ON COMMIT DROP AS SELECT {LINE_COLUMNS} FROM _es_all "  # LiteralString
        "WHERE batch = %s",
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
            cur.execute("SELECT id, tbl, kind FROM _es_all WHERE batch = %s", (self.batch,))
            for aid, tbl, kind in cur:
                yield Line(aid, self.tables[tbl], kind)
