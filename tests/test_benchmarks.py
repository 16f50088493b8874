"""Small smoke runs of the benchmark runners (benchmarks/run.py, contenders.py, dynamodb.py): they run end to end,
emailsync and the hand-written baseline end with the same rows or items, and the structural promises hold (speed
itself is measured, not tested)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One of benchmarks/' scripts, run as a user runs it."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_benchmark_runner_smoke(tmp_path):
    out = tmp_path / "result.json"
    r = _bench("run.py", "--employees", "400", "--mappings", "40", "--dynamodb", "--profiles", "120",
               "--latency-ms", "2", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["same_result"] is True  # emailsync's final rows are exactly the baseline's
    assert "ratio (plan+apply)/baseline" in r.stdout and "same final rows: True" in r.stdout
    e = res["emailsync"]
    assert e["postgres_actions"] == res["baseline"]["rows_changed"]  # one action per changed row and column
    assert e["actions_by_kind"]["delete-on-conflict"] >= 1 and e["actions_by_kind"]["merge-and-move"] >= 1
    # Time inside PostgreSQL comes from the server's log: every side's statements are found there, apply's COPY too.
    for side in (e["plan_server"], e["apply_server"], res["baseline"]["server"]):
        assert side["server_s"] > 0 and side["top"]
    assert e["apply_server"]["copy_statements"] >= 1
    assert 0 < e["apply_server"]["copy_s"] <= e["apply_server"]["server_s"]
    assert res["server_floor_ratio"] > 0
    # The floor (a hand-written plan-then-apply) makes exactly the baseline's changes too.
    floor = res["floor"]
    assert floor["same_result"] is True and floor["rows_changed"] == res["baseline"]["rows_changed"]
    assert floor["plan_s"] > 0 and floor["apply_s"] > 0 and "floor (hand-written plan-then-apply" in r.stdout
    d = res["dynamodb"]
    # Exactly one Scan pass per table, whatever the mapping count; writes never exceed the changed items.
    assert sorted(rd["table"] for rd in d["reads"]) == ["hr-leave", "hr-profiles"]
    assert all(rd["method"] == "scan" and rd["items_read"] >= 120 for rd in d["reads"])
    assert 0 < d["write_requests"] <= d["changed_items"]
    # Through a proxy: round trips do not grow with the rows changed.
    remote = res["remote"]
    assert remote["apply_round_trips"] < remote["postgres_actions"] / 2


def test_contenders_runner_smoke(tmp_path):
    """benchmarks/contenders.py: the contenders run interleaved over rounds on fresh copies, every one ends with the
    reference's rows (the runner stops otherwise), and each has its wall time, server time and peak RSS."""
    out = tmp_path / "contenders.json"
    r = _bench("contenders.py", "--employees", "400", "--mappings", "40", "--rounds", "2",
               "--emailsync", f"same={ROOT}", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    names = ["hand-written (join)", "hand-written (&&)", "emailsync", "emailsync same"]
    assert list(res["medians"]) == names and all(len(res["runs"][n]) == 2 for n in names)
    assert res["medians"]["hand-written (join)"]["ratio"] == 1.0
    for name in names:
        m = res["medians"][name]
        assert m["total_s"] > 0 and m["server_s"] > 0 and m["peak_rss_mb"] > 10
    assert res["medians"]["emailsync"]["plan_s"] > 0 and res["medians"]["emailsync"]["apply_s"] > 0
    assert "same rows" in r.stdout


def test_dynamodb_latency_benchmark_smoke(tmp_path):
    """benchmarks/dynamodb.py: the hand-written boto3 client and emailsync run through the latency proxy on fresh
    tables of DynamoDB Local, end with the same items, and every request is counted per operation."""
    from emailsync.sandbox.dynamodb_local import emulator_dir

    if emulator_dir() is None:
        pytest.skip("DynamoDB Local needs Java (and npm once, to fetch it)")
    out = tmp_path / "ddb.json"
    r = _bench(
        "dynamodb.py", "--items", "200", "--delays", "1", "--rounds", "1", "--no-warmup", "--floor", "--out", str(out)
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["engine"] == "DynamoDB Local"
    (case,) = res["cases"]
    assert case["items"] == 200 and case["estate"]["merges"] >= 1
    hand, es = case["medians"]["hand-written"], case["medians"]["emailsync"]
    floor = case["medians"]["floor (two commands)"]
    assert hand["digest"] == es["digest"] == floor["digest"]  # the same final items
    assert floor["plan_s"] > 0 and floor["apply_s"] > 0 and floor["requests_by_op"]["apply"]["BatchGetItem"] > 0
    assert hand["ratio"] == 1.0 and hand["total_s"] > 0 and es["plan_s"] > 0 and es["apply_s"] > 0
    for m in (hand, es):
        ops = m["requests_by_op"]["data"]
        assert m["requests_data"] == sum(ops.values()) > 0
        assert ops["Scan"] >= 3 and ops["DeleteItem"] > 0 and ops["UpdateItem"] > 0
    assert hand["requests_by_op"]["data"]["Scan"] == 48  # 16 segments for each of the three tables
    assert sum(es["requests_by_op"]["ledger"].values()) > 0  # the ledger's requests, counted apart
    assert es["requests_by_op"]["plan"]["Scan"] == 3 and "Scan" not in es["requests_by_op"]["apply"]
    assert "same final items" in r.stdout
