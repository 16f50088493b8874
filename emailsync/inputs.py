"""The files a user hands emailsync (targets, mappings, plans): each is a regular file within a size limit, and its
text is valid UTF-8 all the way down.

A size limit, because each is read whole: a path pointing at a 3 GiB file or at /dev/zero would otherwise take the
machine's memory before any message could be printed. Regular files only, because a FIFO or a device never ends
(and a FIFO would hang the open itself). Valid text, because a JSON or YAML escape such as \\ud800 decodes to a lone
UTF-16 surrogate: Python keeps it in a str, and it fails only later, when a database or a file needs UTF-8.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emailsync.errors import UserError

MIB = 1024 * 1024

# kind -> (what it is called in messages, default limit in MiB, the variable that raises it)
LIMITS = {
    "targets": ("targets file", 16, "EMAILSYNC_MAX_TARGETS_MB"),
    "mappings": ("mappings file", 256, "EMAILSYNC_MAX_MAPPINGS_MB"),
    "plan": ("plan file", 1024, "EMAILSYNC_MAX_PLAN_MB"),
}


def max_bytes(kind: str) -> int:
    _, default, var = LIMITS[kind]
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return default * MIB
    try:
        mib = int(raw.strip())
    except ValueError:
        mib = 0
    if mib <= 0:
        raise UserError(
            f"{var}={raw[:40]!r}: give the limit as a whole number of MiB greater than 0 (default {default})"
        )
    return mib * MIB


def read_limited(path: Path, kind: str) -> bytes:
    """The file's bytes, refused with one UserError unless it is a regular file within its kind's limit.

    FileNotFoundError, IsADirectoryError, PermissionError and other OSErrors are raised as they are, for the
    caller's own message about that kind of file."""
    chunks = []
    with open_limited(path, kind) as f:
        while chunk := f.read(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


class _Limited(io.RawIOBase):
    """A regular file read through a size limit: reading past it is a UserError (the file grew while read)."""

    def __init__(self, f: io.FileIO, limit: int, too_big: str) -> None:
        self._f, self._left, self._too_big = f, limit, too_big

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._f.fileno()

    def readinto(self, buf: Any) -> int:
        n: int = self._f.readinto(buf)
        self._left -= n
        if self._left < 0:
            raise UserError(f"{self._too_big} (it grew past it while being read)")
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def open_limited(path: Path, kind: str) -> io.BufferedReader:
    """The file opened for reading, refused with one UserError unless it is a regular file within its kind's limit;
    reading it past the limit (a file that grows) raises one too. OSErrors are raised as they are."""
    label, _, var = LIMITS[kind]
    limit = max_bytes(kind)
    # O_NONBLOCK: opening a FIFO must not wait for a writer (POSIX only; elsewhere there are no FIFOs to fear).
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(st.st_mode):
            raise UserError(
                f"{path}: not a regular file but {_file_type(st.st_mode)}; emailsync reads the {label} from a "
                "file on disk: save it to a file and pass that path"
            )
        too_big = (
            f"{path}: the {label} is larger than its limit of {limit // MIB:,} MiB; if it really is one, raise the "
            f"limit with {var}=<MiB>"
        )
        if st.st_size > limit:
            raise UserError(f"{too_big} (it has {st.st_size:,} bytes)")
        raw = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    return io.BufferedReader(_Limited(raw, limit, too_big), 1 << 16)


def _file_type(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


NOT_TEXT = (
    "holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is not text; fix the escape or write "
    "the character itself"
)


def may_escape_surrogates(text: str) -> bool:
    """Whether JSON or YAML text holds a \\udXXX escape, the only way to write a lone surrogate in a file that is
    valid UTF-8: a cheap search, so only such files have every string checked."""
    return "\\ud" in text or "\\uD" in text


def is_text(value: str) -> bool:
    """Whether the string is text that UTF-8 can carry (no lone surrogate)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(value: str) -> str:
    """The string with anything UTF-8 cannot carry written as a \\udXXX escape, for a message."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def first_non_text(value: Any, path: str = "") -> str | None:
    """The place (a.b[2].c) of the first string or key in a parsed JSON or YAML document that is not text, or
    None when all of it is."""
    for where, s in _strings(value, path):
        if not is_text(s):
            return where or "(the top level)"
    return None


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    stack: list[tuple[Any, str]] = [(value, path)]
    seen: set[int] = set()  # YAML aliases share objects: each is walked once
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            yield where, v
        elif isinstance(v, dict):
            if id(v) in seen:
                continue
            seen.add(id(v))
            for k, item in reversed(list(v.items())):
                if isinstance(k, str) and is_text(k):
                    name = f"{where}.{k}" if where else k
                else:
                    name = f"{where}[{shown(str(k))!r}]"
                stack.append((item, name))
                if isinstance(k, str):  # pushed last: a key is looked at before its value
                    stack.append((k, f"{where} key {shown(k)!r}" if where else f"key {shown(k)!r}"))
        elif isinstance(v, list):
            if id(v) in seen:
                continue
            seen.add(id(v))
            stack.extend((item, f"{where}[{i}]") for i, item in reversed(list(enumerate(v))))
