"""Replacing a file atomically: readers see the old content or the whole new content, never a part of it."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def write_atomic(
    path: Path | str,
    data: str | bytes | Iterable[str] | Iterable[bytes],
    *,
    encoding: str = "utf-8",
    mode: int = 0o666,
    keep_mode: bool = False,
    follow_symlinks: bool = False,
    before_replace: Callable[[Path], None] | None = None,
) -> Path:
    """Write `data` (text, bytes, or an iterable of either, written one after the other) to `path`: into a new
    file beside it, fsync'd, then renamed over `path` (os.replace), then the folder fsync'd so that the rename
    survives a crash. On any failure, `path` is untouched and the temporary file is removed. Returns the file
    written (the link's target when following a symlink).

    mode: a new file's permissions, narrowed by the umask like open(). keep_mode: when `path` exists, the new
    file gets its permissions exactly (a private file stays private). follow_symlinks: when `path` is a symlink,
    replace the file it points to and keep the link; otherwise the link itself is replaced. before_replace: called
    with the temporary file, complete and fsync'd, just before the rename; whatever it raises cancels the write.
    """
    target = Path(os.path.realpath(path)) if follow_symlinks else Path(path)
    folder = target.parent
    chunks = iter((data,) if isinstance(data, str | bytes) else data)
    first = next(chunks, "")
    fd, tmp = _create_beside(target, mode)
    try:
        with os.fdopen(fd, "w", encoding=encoding) if isinstance(first, str) else os.fdopen(fd, "wb") as f:
            for chunk in itertools.chain((first,), chunks):
                f.write(chunk)  # type: ignore[arg-type]  # all str or all bytes: a mix raises TypeError
            f.flush()
            os.fsync(f.fileno())
        if keep_mode:
            with contextlib.suppress(FileNotFoundError):  # a new file: `mode`
                os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)
    return target


def _create_beside(target: Path, mode: int) -> tuple[int, Path]:
    """A new, empty, uniquely named hidden file in `target`'s folder (the same file system, so the rename is
    atomic), opened for writing. Exclusive creation: never an existing file or a planted symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        # A short prefix of the name: the temporary name must stay within the file system's name limit.
        tmp = target.with_name(f".{target.name[:32]}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{target.parent}: no free temporary file name")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable. Best effort: the file is already in place, and some platforms (Windows)
    and file systems cannot open or fsync a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _At(io.RawIOBase):
    """A file descriptor read from an offset with pread, so several readers share it without sharing an offset."""

    def __init__(self, fd: int, start: int) -> None:
        self._fd, self._pos = fd, start

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = os.pread(self._fd, len(buf), self._pos)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:  # the descriptor belongs to whoever opened it, not to this reader
        super().close()


def reader_at(fd: int, buffer_size: int = 1 << 16, start: int = 0) -> io.BufferedReader:
    """A buffered reader of the open file `fd` from byte `start`, with its own position: temporary files (a plan's
    checked copy, sorted runs, spilled outcomes) are read by several readers at once, each from where it needs."""
    return io.BufferedReader(_At(fd, start), buffer_size)
