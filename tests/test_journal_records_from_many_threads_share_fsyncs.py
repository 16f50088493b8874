"""The apply journal under many writers at once (a DynamoDB target's requests in flight): every record is written
whole, once, and durable before its call returns; records waiting together share one fsync."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from emailsync import archive


def test_records_written_at_once_are_all_kept_whole_and_share_fsyncs(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "apply.jsonl"
    synced: list[int] = []  # lines on disk at each fsync
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(path.read_text().count("\n"))

    monkeypatch.setattr(archive.os, "fsync", counting_fsync)
    write = archive.journal_writer(path)
    returned: list[tuple[int, int]] = []  # (thread, record) at return: was it on disk and synced by then?
    lock = threading.Lock()

    def worker(t: int) -> None:
        for n in range(100):
            write({"event": "write", "thread": t, "n": n})
            with lock:
                # Whole lines only: another commit may be writing the next ones meanwhile.
                whole = path.read_text().split("\n")[:-1]
                on_disk = {(e["thread"], e["n"]) for e in map(json.loads, whole)}
                assert (t, n) in on_disk and synced, "a call returned before its record was written and synced"
                returned.append((t, n))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((e["thread"], e["n"]) for e in lines) == sorted((t, n) for t in range(8) for n in range(100))
    assert all(e["event"] == "write" and "at" in e for e in lines)
    for t in range(8):  # each thread's records in its own order
        assert [e["n"] for e in lines if e["thread"] == t] == list(range(100))
    assert len(returned) == 800
    assert len(synced) < 800, "every record had a fsync of its own"


def test_a_stream_of_records_is_written_between_single_records(tmp_path: Path) -> None:
    path = tmp_path / "apply.jsonl"
    write = archive.journal_writer(path)
    write({"event": "run-start"})
    write({"event": "outcome", "id": str(i)} for i in range(1000))
    write({"event": "run-end"})
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events == ["run-start"] + ["outcome"] * 1000 + ["run-end"]


def test_a_failed_write_fails_every_call_whose_record_it_held(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "apply.jsonl"
    write = archive.journal_writer(path)
    write({"event": "first"})

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archive.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write({"event": "second"})
    monkeypatch.undo()
    write({"event": "third"})  # the journal goes on once the disk does
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events[0] == "first" and events[-1] == "third"  # "second" was not made durable, and its call said so
