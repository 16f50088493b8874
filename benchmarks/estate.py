"""The benchmark estate: an HR-like PostgreSQL database and DynamoDB tables, generated at any size, and the
hand-written set-based SQL that makes the same changes emailsync plans (the baseline).

PostgreSQL, for N employees (about 9N rows):
- employees          N   unique email, manager_email (one manager per ten people)
- leave_requests     2N  employee_email, indexed
- audit_log          4N  actor_email, NOT indexed, and a jsonb payload naming the actor
- user_settings      N+  keyed by email; 1% of the renamed people already have a row under the new address
                         (conflicts: the old row is deleted, as on_conflict: delete plans)
- project_members    N   members text[] of three addresses
Mappings rename user<i>@oldco.com to user<i>@newco.com for M people spread evenly over the N.

DynamoDB: hr-profiles keyed by email (moves; 1% of the movers merge into an existing item) with a list and a string
set of addresses, and hr-leave keyed by id with an approver list (updates in place).
"""

from __future__ import annotations

from typing import Any

SCHEMA = [
    "CREATE EXTENSION IF NOT EXISTS citext",
    """CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE NOT NULL, manager_email text,
        full_name text NOT NULL)""",
    "CREATE TABLE leave_requests (id bigint PRIMARY KEY, employee_email text NOT NULL, days int NOT NULL)",
    "CREATE TABLE audit_log (id bigint PRIMARY KEY, actor_email text, payload jsonb NOT NULL)",
    "CREATE TABLE user_settings (email text PRIMARY KEY, theme text NOT NULL)",
    "CREATE TABLE project_members (id int PRIMARY KEY, members text[] NOT NULL)",
]


def fill(n: int, step: int, audit_rows: int | None = None) -> list[str]:
    """INSERTs for n employees; `step` spaces the renamed people (every step-th person is renamed). The audit log
    has 4n rows unless `audit_rows` says otherwise (a very large table to scan, for the memory measurement)."""
    audit = 4 * n if audit_rows is None else audit_rows
    u = "'user' || {} || '@oldco.com'"

    def addr(expr: str) -> str:
        return u.format(f"({expr})")

    return [
        f"INSERT INTO employees SELECT g, {addr('g')}, {addr('g / 10 + 1')}, 'Person ' || g "
        f"FROM generate_series(1, {n}) g",
        f"INSERT INTO leave_requests SELECT g, {addr(f'g % {n} + 1')}, g % 9 FROM generate_series(1, {2 * n}) g",
        f"INSERT INTO audit_log SELECT g, {addr(f'g % {n} + 1')}, "
        f"jsonb_build_object('by', {addr(f'g % {n} + 1')}, 'action', 'login', 'n', g) "
        f"FROM generate_series(1, {audit}) g",
        f"INSERT INTO user_settings SELECT {addr('g')}, 'light' FROM generate_series(1, {n}) g",
        # 1% of the renamed people already have settings under their new address: a conflict each.
        f"INSERT INTO user_settings SELECT 'user' || g || '@newco.com', 'dark' FROM generate_series(1, {n}) g "
        f"WHERE (g - 1) % {step} = 0 AND (g - 1) / {step} % 100 = 0",
        f"INSERT INTO project_members SELECT g, ARRAY[{addr(f'g % {n} + 1')}, {addr(f'(g * 7) % {n} + 1')}, "
        f"{addr(f'(g * 13) % {n} + 1')}] FROM generate_series(1, {n}) g",
        "CREATE INDEX ON leave_requests (employee_email)",
        "VACUUM ANALYZE",
    ]


def row_count(n: int, step: int) -> int:
    return n + 2 * n + 4 * n + n + len(range(1, n + 1, step * 100)) + n


def renamed(n: int, m: int) -> list[int]:
    step = max(1, n // m)
    return list(range(1, n + 1, step))[:m]


def mappings(n: int, m: int, ghosts: int = 0) -> dict[str, str]:
    """m renames of existing people, and `ghosts` more for addresses no row holds: the mapping grows, the work
    does not (to measure the cost of the mapping's size alone)."""
    out = {f"user{i}@oldco.com": f"user{i}@newco.com" for i in renamed(n, m)}
    out |= {f"ghost{i}@oldco.com": f"ghost{i}@newco.com" for i in range(ghosts)}
    return out


TARGETS = """\
version: 1
mappings: email_mappings.json
postgres:
  - name: hr
    dsn: ${BENCH_DSN}
    lock_timeout: 30s
    tables:
      - {table: employees, columns: [email, manager_email]}
      - {table: leave_requests, columns: [employee_email]}
      - {table: audit_log, columns: [actor_email, payload]}
      - {table: user_settings, columns: [email], on_conflict: delete}
      - {table: project_members, columns: [members]}
"""

DYNAMO_TARGETS = """\
dynamodb:
  - name: hr-dynamo
    endpoint_url: ${BENCH_DYNAMODB}
    region: us-east-1
    tables:
      - {table: hr-profiles, attributes: [email, watchers, delegates], segments: 4}
      - {table: hr-leave, attributes: [approverEmails]}
"""

# One transaction, the way a careful engineer writes it by hand: the mapping COPYed into a temporary table, one
# set-based statement per column, conflicts resolved the way emailsync's plan resolves them.
BASELINE = [
    "CREATE TEMP TABLE m (old text PRIMARY KEY, new text NOT NULL)",
    "__COPY__",
    "ANALYZE m",
    "DELETE FROM user_settings s USING m WHERE s.email = m.old "
    "AND EXISTS (SELECT 1 FROM user_settings x WHERE x.email = m.new)",
    "UPDATE user_settings s SET email = m.new FROM m WHERE s.email = m.old",
    "UPDATE employees e SET email = m.new FROM m WHERE e.email = m.old",
    "UPDATE employees e SET manager_email = m.new FROM m WHERE e.manager_email = m.old",
    "UPDATE leave_requests l SET employee_email = m.new FROM m WHERE l.employee_email = m.old",
    "UPDATE audit_log a SET actor_email = m.new FROM m WHERE a.actor_email = m.old",
    "UPDATE audit_log a SET payload = jsonb_set(a.payload, '{by}', to_jsonb(m.new)) FROM m "
    "WHERE a.payload ->> 'by' = m.old",
    # Rows to touch found by one join of every element against the mapping (`members && array_agg(old)` would
    # compare each row with the whole mapping: quadratic, 10 s at 100k rows and 2,000 mappings).
    "UPDATE project_members p SET members = ARRAY(SELECT coalesce(m.new, e) FROM unnest(p.members) "
    "WITH ORDINALITY u(e, i) LEFT JOIN m ON m.old = e ORDER BY i) "
    "FROM (SELECT DISTINCT x.id FROM project_members x CROSS JOIN LATERAL unnest(x.members) e "
    "JOIN m ON m.old = e) hit WHERE p.id = hit.id",
]

# The same transaction with the array rows found as benchmarks/ first wrote it: every row's array compared with an
# array of the whole mapping (`&&`), so rows x mappings comparisons. Kept as a second row of the comparison.
BASELINE_OVERLAP = [
    *BASELINE[:-1],
    "UPDATE project_members p SET members = ARRAY(SELECT coalesce(m.new, e) FROM unnest(p.members) "
    "WITH ORDINALITY u(e, i) LEFT JOIN m ON m.old = e ORDER BY i) "
    "WHERE p.members && (SELECT array_agg(old) FROM m)",
]

# The floor: the least any plan-then-apply tool must ask of the database for these changes, written by hand for
# this schema. Plan: one read-only pass per column, every changed row's key, old and new value brought to the client
# (documents searched for addresses anywhere, as a tool that does not know their layout must). Apply: the changes
# COPYed back, each written only where the row still holds the planned old value, then read back once. No conflict
# analysis beyond the settings' unique key, no ledger, journal or report: a lower bound, not a competitor.
FLOOR_READS = {
    "employees.email": "SELECT t.id, t.email, m.new FROM employees t JOIN m ON m.old = t.email",
    "employees.manager_email": "SELECT t.id, t.manager_email, m.new FROM employees t JOIN m ON m.old = t.manager_email",
    "leave_requests.employee_email": "SELECT t.id, t.employee_email, m.new FROM leave_requests t "
    "JOIN m ON m.old = t.employee_email",
    "audit_log.actor_email": "SELECT t.id, t.actor_email, m.new FROM audit_log t JOIN m ON m.old = t.actor_email",
    # Found by row position, the strings produced behind an OFFSET 0 fence (the shape emailsync's scan has: the
    # mapping hashed once; a semi-join on the key took 36 s instead of 16 on 10M documents).
    "audit_log.payload": "SELECT t.id, t.payload FROM (SELECT s.tid FROM (SELECT a.ctid AS tid, x #>> '{}' AS v "
    "FROM audit_log a CROSS JOIN LATERAL jsonb_path_query(a.payload, 'strict $.**') x "
    "WHERE jsonb_typeof(x) = 'string' OFFSET 0) s JOIN m ON m.old = s.v GROUP BY s.tid) h "
    "JOIN audit_log t ON t.ctid = h.tid",
    "user_settings.email": "SELECT t.email, t.email, m.new, "
    "EXISTS (SELECT 1 FROM user_settings x WHERE x.email = m.new) FROM user_settings t JOIN m ON m.old = t.email",
    "project_members.members": "SELECT t.id, t.members FROM (SELECT e.tid FROM (SELECT x.ctid AS tid, e.v FROM "
    "project_members x CROSS JOIN LATERAL unnest(x.members) e(v) OFFSET 0) e JOIN m ON m.old = e.v GROUP BY e.tid) h "
    "JOIN project_members t ON t.ctid = h.tid",
}
# The same documents found by the one path the hand-written baseline knows holds the address.
FLOOR_PAYLOAD_BY_PATH = "SELECT t.id, t.payload FROM audit_log t JOIN m ON m.old = t.payload ->> 'by'"
# (table, key column, key type, column, column type) per read above, for the apply side.
FLOOR_WRITES = {
    "employees.email": ("employees", "id", "int", "email", "text"),
    "employees.manager_email": ("employees", "id", "int", "manager_email", "text"),
    "leave_requests.employee_email": ("leave_requests", "id", "bigint", "employee_email", "text"),
    "audit_log.actor_email": ("audit_log", "id", "bigint", "actor_email", "text"),
    "audit_log.payload": ("audit_log", "id", "bigint", "payload", "jsonb"),
    "user_settings.email": ("user_settings", "email", "text", "email", "text"),
    "project_members.members": ("project_members", "id", "int", "members", "text[]"),
}

# What the two databases must agree on afterwards, table by table (md5 of every row in key order).
CHECKSUMS = {
    t: f"SELECT count(*), md5(string_agg(x::text, ',' ORDER BY x::text)) FROM {t} x"
    for t in ("employees", "leave_requests", "audit_log", "user_settings", "project_members")
}


def dynamo_items(profiles: int, movers: list[int]) -> dict[str, list[dict[str, Any]]]:
    """hr-profiles: `profiles` people; 1% of the movers already have an item under the new address (a merge).
    hr-leave: one request per profile, approved by two people."""
    mover_set = set(movers)
    merge = set(movers[::100])
    items: dict[str, list[dict[str, Any]]] = {"hr-profiles": [], "hr-leave": []}
    for i in range(1, profiles + 1):
        items["hr-profiles"].append(
            {
                "email": {"S": f"user{i}@oldco.com"},
                "name": {"S": f"Person {i}"},
                "watchers": {"L": [{"S": f"user{i % profiles + 1}@oldco.com"}, {"S": "hr@oldco.com"}]},
                "delegates": {"SS": [f"user{(i * 7) % profiles + 1}@oldco.com", "it@oldco.com"]},
            }
        )
        if i in merge and i in mover_set:
            items["hr-profiles"].append({"email": {"S": f"user{i}@newco.com"}, "desk": {"N": str(i)}})
        items["hr-leave"].append(
            {
                "id": {"S": f"leave-{i}"},
                "approverEmails": {"L": [{"S": f"user{(i * 3) % profiles + 1}@oldco.com"}]},
                "days": {"N": str(i % 9)},
            }
        )
    return items


def seed_dynamodb(client: Any, profiles: int, movers: list[int]) -> int:
    client.create_table(
        TableName="hr-profiles",
        KeySchema=[{"AttributeName": "email", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "email", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.create_table(
        TableName="hr-leave",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    total = 0
    for table, items in dynamo_items(profiles, movers).items():
        for i in range(0, len(items), 25):
            chunk = items[i : i + 25]
            client.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": it}} for it in chunk]})
            total += len(chunk)
    return total
