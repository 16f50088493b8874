"""Replacing a file atomically (emailsync/files.py write_atomic), as report.json, rollbacks.json, the plan diffs and
discover --write use it: the old file or the whole new one, never a part, and never a temporary file left behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import emailsync.files
from emailsync.files import write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[int]:
    """A known umask for the test (0o022), restored after."""
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


def test_replaces_the_content_and_leaves_nothing_else(tmp_path: Path):
    path = tmp_path / "report.json"
    path.write_text("old\n")
    assert write_atomic(path, "new é\n") == path
    assert path.read_bytes() == "new é\n".encode()
    assert os.listdir(tmp_path) == ["report.json"]


def test_creates_a_missing_file(tmp_path: Path):
    write_atomic(tmp_path / "diff.md", b"\x00bytes")
    assert (tmp_path / "diff.md").read_bytes() == b"\x00bytes"
    assert os.listdir(tmp_path) == ["diff.md"]


def test_writes_chunks_in_order_text_or_bytes(tmp_path: Path):
    write_atomic(tmp_path / "a", (f"{i}\n" for i in range(1000)))
    assert (tmp_path / "a").read_text() == "".join(f"{i}\n" for i in range(1000))
    write_atomic(tmp_path / "b", [b"x", b"", b"yz"])
    assert (tmp_path / "b").read_bytes() == b"xyz"
    write_atomic(tmp_path / "c", iter(()))
    assert (tmp_path / "c").read_bytes() == b""
    write_atomic(tmp_path / "d", "ü", encoding="latin-1")
    assert (tmp_path / "d").read_bytes() == b"\xfc"


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path):
    path = tmp_path / "report.json"
    path.write_text("the old report\n")

    def chunks() -> Iterator[str]:
        yield "half of the new"
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        write_atomic(path, chunks())
    assert path.read_text() == "the old report\n"
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_mix_of_text_and_bytes_fails_without_touching_the_file(tmp_path: Path):
    path = tmp_path / "f"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(path, ["text", b"bytes"])  # type: ignore[arg-type]
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f"]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "rollbacks.json"
    path.write_text("[]\n")

    def no_space(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(emailsync.files.os, "replace", no_space)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "[1]\n")
    monkeypatch.undo()
    assert path.read_text() == "[]\n"
    assert os.listdir(tmp_path) == ["rollbacks.json"]


def test_before_replace_sees_the_complete_new_file_and_can_cancel_the_write(tmp_path: Path):
    path = tmp_path / "targets.yaml"
    path.write_text("version: 1\n")
    seen: list[tuple[Path, str, str]] = []

    def check(tmp: Path) -> None:
        seen.append((tmp, tmp.read_text(), path.read_text()))
        raise ValueError("would not load")

    with pytest.raises(ValueError, match="would not load"):
        write_atomic(path, "version: 2\n", before_replace=check)
    ((tmp, new, old),) = seen
    assert (new, old) == ("version: 2\n", "version: 1\n")  # complete, and not yet in place
    assert tmp.parent == tmp_path and tmp.name.startswith(".")  # beside it (same file system), hidden
    assert path.read_text() == "version: 1\n" and os.listdir(tmp_path) == ["targets.yaml"]


def test_the_file_and_then_its_folder_are_fsynced_around_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The content reaches the disk before the rename (a crash can not leave an empty file under the real name), and
    the folder after it (a crash can not bring the old file back)."""
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    def record_replace(src: object, dst: object) -> None:
        events.append("replace")
        replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(emailsync.files.os, "fsync", record_fsync)
    monkeypatch.setattr(emailsync.files.os, "replace", record_replace)
    write_atomic(tmp_path / "report.json", "{}")
    assert events == ["fsync file", "replace", "fsync folder"]


# --- permissions ----------------------------------------------------------------------------------------------------


def test_a_new_file_gets_the_mode_narrowed_by_the_umask(tmp_path: Path, umask: int):
    write_atomic(tmp_path / "report.json", "{}")
    assert _mode(tmp_path / "report.json") == 0o644  # like open(): 0o666 & ~umask
    write_atomic(tmp_path / "targets.yaml", "version: 1\n", mode=0o600, keep_mode=True)
    assert _mode(tmp_path / "targets.yaml") == 0o600  # discover: a new targets file is private


def test_keep_mode_keeps_the_replaced_files_mode_exactly(tmp_path: Path, umask: int):
    path = tmp_path / "targets.yaml"
    for mode in (0o600, 0o640, 0o444, 0o755):
        path.write_text("old")
        path.chmod(mode)
        write_atomic(path, "new", mode=0o600, keep_mode=True)
        assert path.read_text() == "new"
        assert _mode(path) == mode  # not narrowed by the umask, not reset to `mode`


def test_without_keep_mode_a_replaced_file_gets_the_default_mode(tmp_path: Path, umask: int):
    """What report.json, rollbacks.json and the diffs always did (a new file renamed over the old one)."""
    path = tmp_path / "report.json"
    path.write_text("old")
    path.chmod(0o600)
    write_atomic(path, "new")
    assert _mode(path) == 0o644


# --- symlinks -------------------------------------------------------------------------------------------------------


def test_follow_symlinks_writes_the_linked_file_and_keeps_the_link(tmp_path: Path, umask: int):
    real = tmp_path / "config" / "real.yaml"
    real.parent.mkdir()
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "targets.yaml"
    link.symlink_to(real)
    assert write_atomic(link, "new", keep_mode=True, follow_symlinks=True) == real
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new" and _mode(real) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["config", "targets.yaml"]
    assert os.listdir(real.parent) == ["real.yaml"]  # the temporary file was beside the real file, and is gone


def test_follow_symlinks_through_a_relative_link_and_a_chain_of_links(tmp_path: Path):
    (tmp_path / "real").write_text("old")
    (tmp_path / "one").symlink_to("real")
    (tmp_path / "two").symlink_to("one")
    write_atomic(tmp_path / "two", "new", follow_symlinks=True)
    assert (tmp_path / "real").read_text() == "new"
    assert (tmp_path / "one").is_symlink() and (tmp_path / "two").is_symlink()


def test_without_follow_symlinks_the_link_itself_is_replaced(tmp_path: Path):
    real = tmp_path / "elsewhere.json"
    real.write_text("untouched")
    link = tmp_path / "report.json"
    link.symlink_to(real)
    write_atomic(link, "new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert real.read_text() == "untouched"


# --- the callers ----------------------------------------------------------------------------------------------------


def test_report_and_rollback_records_are_written_whole_with_nothing_left_beside_them(tmp_path: Path, umask: int):
    from types import SimpleNamespace

    from emailsync.archive import record_rollback, rollbacks, write_report

    plan_path = tmp_path / "plan.jsonl.gz"
    out = write_report(plan_path, {"actions": [{"id": "a1", "status": "applied"}]})
    assert out == tmp_path / "report.json" and '"a1"' in out.read_text()
    for n in range(2):
        rollback = SimpleNamespace(digest=f"d{n}", created_at=f"t{n}")
        record_rollback(plan_path, rollback, tmp_path / f"rollback-{n}.json")  # type: ignore[arg-type]
    assert [r.digest for r in rollbacks(plan_path)] == ["d0", "d1"]
    assert sorted(os.listdir(tmp_path)) == ["report.json", "rollbacks.json"]
    assert _mode(tmp_path / "report.json") == _mode(tmp_path / "rollbacks.json") == 0o644
