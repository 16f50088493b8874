"""Print the Markdown tables of benchmarks/README.md from benchmarks/results/*.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _floor(r: dict, field: str) -> str:
    return str(r["floor"][field]) if "floor" in r else "–"


def main() -> None:
    # run.py's results (pg-*.json); contenders, batched, memory and DynamoDB results have tables of their own
    runs = {p.stem: r for p in sorted(RESULTS.glob("*.json")) if "emailsync" in (r := json.loads(p.read_text()))}
    if not runs:
        sys.exit(f"no results in {RESULTS}; run benchmarks/suite.sh first")
    m = next(iter(runs.values()))["machine"]
    print(f"Machine: {m['cpus']} CPUs, {m['memory_mb']:,} MB RAM, {m['platform']}, Python {m['python']}.\n")
    print(
        "| run | employees | rows | mappings | actions | plan s | apply s | baseline s | ratio | floor s | floor ratio "
        "| plan RSS MB | apply RSS MB | plan.json MB | same rows |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, r in runs.items():
        e = r["emailsync"]
        maps = f"{r['mappings']:,}" + (f" + {r['ghost_mappings']:,} unmatched" if r.get("ghost_mappings") else "")
        print(
            f"| {name} | {r['employees']:,} | {r['rows']:,} | {maps} | {e['actions']:,} | {e['plan_s']} | "
            f"{e['apply_s']} | {r['baseline']['seconds']} | {r['ratio']} | {_floor(r, 'seconds')} | "
            f"{_floor(r, 'ratio')} | {e['plan_peak_rss_mb']} | "
            f"{e['apply_peak_rss_mb']} | {e['plan_json_mb']} | {r['same_result']} |"
        )
    timed = {n: r for n, r in runs.items() if "plan_server" in r["emailsync"]}
    if timed:
        print(
            "\nTime inside PostgreSQL statements, from the server's own log (log_min_duration_statement = 0): what "
            "emailsync asks of the database, whatever the client does.\n"
        )
        print("| run | plan: server s | apply: server s | of which COPY s | baseline: server s | server / baseline |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, r in timed.items():
            e = r["emailsync"]
            print(
                f"| {name} | {e['plan_server']['server_s']:.2f} | {e['apply_server']['server_s']:.2f} | "
                f"{e['apply_server']['copy_s']:.2f} | {r['baseline']['server']['server_s']:.2f} | "
                f"{r['server_floor_ratio']} |"
            )
    for name, r in runs.items():
        if "remote" in r:
            x = r["remote"]
            print(
                f"\n{name}, through a {x['round_trip_ms']} ms round trip (proxy): plan {x['plan_s']} s with "
                f"{x['plan_round_trips']} round trips, apply {x['apply_s']} s with {x['apply_round_trips']} round "
                f"trips, for {x['postgres_actions']:,} PostgreSQL actions (local: plan {r['emailsync']['plan_s']} s, "
                f"apply {r['emailsync']['apply_s']} s)."
            )
        if "dynamodb" in r:
            d = r["dynamodb"]
            reads = "; ".join(
                f"{rd['table']}: one {rd['method']}, {rd['segments']} segment(s), {rd['requests']} request(s), "
                f"{rd['items_read']:,} items"
                for rd in d["reads"]
            )
            print(
                f"\n{name} (DynamoDB, {r.get('dynamodb_items', 0):,} items): {reads}. Writes: {d['write_requests']} "
                f"request(s) for {d['changed_items']} changed item(s); {d['transactions']} transaction(s), up to "
                f"{d['moves_per_transaction_max']} moves each."
            )


if __name__ == "__main__":
    main()
