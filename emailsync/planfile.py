"""Plan files, written and read as streams.

The file (format emailsync.plan/v2) is JSON Lines, gzip'd when its name ends in .gz (plan.jsonl.gz, the default):
- line 1, the header: the Plan model (format, created_at, inputs, targets and where they were reached, counts per
  target/table/column/kind, warnings, the digest and its scheme);
- then the body: one line per action or skipped change, each a JSON object that stands alone, sorted by section
  (target, table, kind), within a section by key, column and action id. A skipped change has kind
  "skipped-conflict".

JSON Lines rather than one JSON document: each line is written as it is produced and read back one at a time, so
neither side holds the plan; `zcat plan.jsonl.gz | jq -c 'select(.kind == "delete-on-conflict")'` and grep work on
it as they are. Digest scheme sha256-jsonl/1: body_sha256 is the sha256 of the body's bytes, uncompressed, each line
with its newline (`zcat plan.jsonl.gz | tail -n +2 | sha256sum`); the digest is the sha256 of the header's canonical
JSON without digest and signature, so it covers the body through body_sha256.

Reading copies the file once, inflated, into an unnamed temporary file (gone with the process, even after kill -9),
hashing the body on the way, then checks every line's schema, order and counts: a large plan in pieces cut at line
ends, each in a process of its own, then that the pieces follow each other in order; everything after (apply,
verify, show, diff, rollback) streams from the checked copy, so the plan cannot change between the check and the
writes, and a target's lines (the body is sorted by target first) are one range of it.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import struct
import tempfile
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from emailsync.errors import UserError
from emailsync.files import reader_at, write_atomic
from emailsync.forking import CAN_FORK, die_with_parent
from emailsync.inputs import NOT_TEXT, first_non_text, may_escape_surrogates, open_limited
from emailsync.plan import (
    DEFLATE_LEVEL,
    PLAN_FORMAT,
    PLAN_FORMAT_MINOR,
    SKIPPED_KIND,
    Action,
    ActionBase,
    PartRows,
    Plan,
    Skipped,
    body_lines,
    chunked,
    dumps,
    header_digest,
    line_of,
    loads,
    parse_action,
    sort_key,
    summary_column,
)

PLAN_NAME = "plan.jsonl.gz"  # in each folder of the plans/ archive
SUFFIXES = (".jsonl.gz", ".jsonl")
MAX_LINE = 64 << 20  # one action: a DynamoDB item is at most 400 KB, a PostgreSQL row rarely near this
_GZIP_MAGIC = b"\x1f\x8b"
_EDITED = "the plan was edited by hand, make a new one with `emailsync plan`"


def beside(plan_path: Path, name: str) -> Path:
    """The file `name` (plan.md, report.json, ...) that belongs to a plan file: next to it, named `name` in an archive
    folder (plan.jsonl.gz), else after the plan's own name (x.jsonl.gz: x.md, x.report.json)."""
    if plan_path.name == PLAN_NAME:
        return plan_path.with_name(name)
    stem = plan_path.name
    for suffix in SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = plan_path.stem
    base, dot, ext = name.rpartition(".")
    return plan_path.with_name(f"{stem}.{ext}" if base == "plan" else f"{stem}.{base}.{ext}")


def check_name(path: Path, option: str = "--out") -> None:
    """A plan file's name says its format: .jsonl.gz (compressed) or .jsonl."""
    if not path.name.endswith(SUFFIXES):
        raise UserError(
            f"{option} {path}: a plan file is named *.jsonl.gz (gzip'd JSON Lines, the default) or *.jsonl "
            f"(uncompressed); for example {path.with_name(PLAN_NAME)}"
        )


def _encoded(plan: Plan, compress: bool) -> Iterator[bytes]:
    """The file's bytes: the header line, then the body as it is produced, in chunks of about 1 MiB.

    Compressed, the file is one gzip stream: the header line and each target's lines deflated apart (raw deflate at
    level 6, each ended by a full flush, so the next continues the stream where it stopped), then the last block and
    the trailer. A plan made in parts (plan.Part) comes with its targets already deflated where they were made; any
    other plan is deflated target by target the same way, so the same plan is always the same bytes."""
    header = plan.model_dump(mode="python", exclude={"signature"} if plan.signature is None else set())
    head = dumps(header).encode() + b"\n"
    if not compress:
        yield head
        if isinstance(plan.actions, PartRows):
            for p in plan.actions.parts:
                yield from p.chunks()
        else:
            yield from chunked(body_lines(plan))
        return
    crc, size = zlib.crc32(head), len(head)
    c = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
    yield _GZIP_HEADER + c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    if isinstance(plan.actions, PartRows):
        for p in plan.actions.parts:
            if p.runs:  # a target without lines has no piece, as below
                for chunk in p.chunks():
                    crc, size = zlib.crc32(chunk, crc), size + len(chunk)
                yield from p.chunks(gz=True)
    else:
        lines = body_lines(plan)
        per_target: Counter[str] = Counter()
        for r in plan.summary:
            per_target[r.target] += r.count
        for target in sorted(per_target):  # the body's order: by target first
            c = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
            for chunk in chunked(itertools.islice(lines, per_target[target])):
                crc, size = zlib.crc32(chunk, crc), size + len(chunk)
                yield c.compress(chunk)
            yield c.flush(zlib.Z_FULL_FLUSH)
    yield zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15).flush() + struct.pack("<II", crc, size & 0xFFFFFFFF)


# A gzip member's header as zlib writes it (wbits 31): no name, mtime 0, OS Unix.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"


def write_plan(plan: Plan, path: Path) -> None:
    """Write the plan file atomically (never half a plan under the real name, even after a crash), streaming."""
    check_name(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, _encoded(plan, path.name.endswith(".gz")))


# --- reading ---------------------------------------------------------------------------------------------------


class _Copy:
    """The private, checked copy of a plan file that every later read streams from: its text, inflated, in an unnamed
    temporary file (no name in any folder, removed by the system when the last descriptor closes, even after kill
    -9), read by each pass at its own offset. Inflated once, so no pass inflates it again, and each target's lines
    are one range of bytes (the body is sorted by target first) that a store can send on as they are."""

    def __init__(self, file: IO[bytes], body_start: int) -> None:
        self._file, self.body_start = file, body_start
        self.ranges: dict[str, tuple[int, int]] = {}  # target -> offset and length of its lines, found by the check

    @property
    def size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    def fileno(self) -> int:
        return self._file.fileno()

    def lines(self, start: int | None = None, length: int | None = None) -> Iterator[bytes]:
        """The body's lines (those of `length` bytes from `start`), each with its newline."""
        start = self.body_start if start is None else start
        left = -1 if length is None else length
        with reader_at(self._file.fileno(), 1 << 20, start) as f:
            while left and (line := f.readline(MAX_LINE + 1 if left < 0 else min(left, MAX_LINE + 1))):
                left -= len(line) if left > 0 else 0
                yield line

    def chunks(self, target: str) -> Iterator[bytes]:
        """The target's lines (actions and skipped changes), in pieces of about 1 MiB cut anywhere."""
        start, length = self.ranges.get(target, (0, 0))
        fd, end = self._file.fileno(), start + length
        while start < end:
            piece = os.pread(fd, min(1 << 20, end - start), start)
            if not piece:
                raise OSError(f"the plan's private copy ended at byte {start} of {end}")
            start += len(piece)
            yield piece


def _item(data: dict[str, Any]) -> Action | Skipped:
    if data.get("kind") == SKIPPED_KIND:
        return Skipped.model_validate({k: v for k, v in data.items() if k != "kind"})
    return parse_action(data)


_DECODER = json.JSONDecoder(parse_float=Decimal)


class FileRows:
    """The actions (or the skipped changes) of a read plan: each iteration streams them from the checked copy."""

    def __init__(self, copy: _Copy, skipped: bool, count: int) -> None:
        self._copy, self._skipped, self._count = copy, skipped, count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Any]:
        for raw in self._copy.lines():
            data = _DECODER.decode(raw.decode())
            if (data.get("kind") == SKIPPED_KIND) is self._skipped:
                yield _item(data)

    def of_target(self, target: str) -> Iterator[Any]:
        """The target's items only: lines are told apart by their bytes before any is parsed (a line holding the
        target's name elsewhere, in a value, is parsed and then left out)."""
        needle = f'"target":{dumps(target)}'.encode()
        for raw in self._copy.lines():
            if needle in raw:
                data = _DECODER.decode(raw.decode())
                if data.get("target") == target and (data.get("kind") == SKIPPED_KIND) is self._skipped:
                    yield _item(data)

    def chunks_of_target(self, target: str) -> Iterator[bytes]:
        """The target's lines as the file holds them, unparsed, in pieces of about 1 MiB cut anywhere; its skipped
        changes among them (see TargetRows.chunks)."""
        return self._copy.chunks(target)

    def raw_lines(self) -> Iterator[str]:
        """The whole body as the file holds it, each line without its newline (for writing the plan again)."""
        for raw in self._copy.lines():
            yield raw.decode()[:-1]


# An emailsync plan inflates about 10-15 times (each line has its own ids and addresses); far more is not a plan, and
# must not fill the disk on its way to being refused.
_MAX_INFLATION = 100


def _private_copy(path: Path) -> tuple[_Copy, Plan, str]:
    """Copy the plan file (a regular file within its limit), inflated, to an unnamed temporary file only this process
    reads: its header, checked before the body is read, and the sha256 of its body, hashed on the way."""
    out = tempfile.TemporaryFile()  # noqa: SIM115  # kept open by the copy: it is the copy
    try:
        with open_limited(path, "plan") as src:
            gz = src.peek(2)[:2] == _GZIP_MAGIC
            stream: IO[bytes] = gzip.GzipFile(fileobj=src) if gz else src  # type: ignore[assignment]
            cap = _MAX_INFLATION * os.fstat(src.fileno()).st_size + MAX_LINE
            first = stream.readline(MAX_LINE + 1)
            plan = _header(path, first.rstrip(b"\n"))
            out.write(first)
            h, size = hashlib.sha256(), len(first)
            while chunk := stream.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
                if size > cap:
                    raise UserError(
                        f"{path}: inflates to more than {_MAX_INFLATION} times its size, which no plan emailsync "
                        f"writes does; {_EDITED}"
                    )
        out.flush()
        return _Copy(out, len(first)), plan, h.hexdigest()
    except BaseException:
        out.close()
        raise


def _open_errors(path: Path) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            raise UserError(f"{path}: plan file not found; pass the {PLAN_NAME} written by `emailsync plan`") from None
        except IsADirectoryError:
            raise UserError(f"{path}: is a folder; pass the {PLAN_NAME} inside it") from None
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path}: cannot read the plan file ({e})") from None
        except ValueError:  # a NUL byte in the path
            raise UserError(f"{path!r}: not a usable file name (it contains a NUL byte)") from None

    return guard()


def _header(path: Path, first: bytes) -> Plan:
    """The header line, checked: format, minor, schema, digest (which covers body_sha256)."""
    text = _text(path, 1, first)
    if not text.strip():
        raise UserError(f"{path}: the plan file is empty (or its first line is); make a new one with `emailsync plan`")
    if text.strip() == "{":  # v1 files were one indented JSON document
        raise UserError(
            f"{path}: not a plan of format {PLAN_FORMAT} (a plan.json of format emailsync.plan/v1, made by an "
            "emailsync before 0.2, is one JSON document; this emailsync reads the JSON Lines format). Make the plan "
            "again with this version, or apply it with the emailsync that made it"
        )
    data = _parse(path, 1, text, strict=True)
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a plan (line 1, the header, must be an object)")
    if "format" not in data:
        raise UserError(f'{path}: not an emailsync plan (its first line has no "format"); pass a plan.jsonl.gz')
    fmt = data.get("format")
    if fmt != PLAN_FORMAT:
        raise UserError(
            f"{path}: unknown plan format {str(fmt)[:60]!r}; this emailsync reads {PLAN_FORMAT!r}. "
            "Make the plan with this version, or upgrade emailsync to the one that made it."
        )
    minor = data.get("format_minor", 0)
    if not isinstance(minor, int) or isinstance(minor, bool):
        raise UserError(f"{path}: format_minor must be a whole number, not {str(minor)[:40]!r}; {_EDITED}")
    if minor > PLAN_FORMAT_MINOR:
        raise UserError(
            f"{path}: plan format {PLAN_FORMAT} minor {minor!r} is newer than this emailsync understands "
            f"(minor {PLAN_FORMAT_MINOR}); upgrade emailsync before applying it."
        )
    try:
        plan = Plan.model_validate(data)
    except ValidationError as e:
        first_error = e.errors()[0]
        loc = ".".join(str(p) for p in first_error["loc"])
        raise UserError(f"{path}: not a valid plan header at {loc}: {first_error['msg']}") from None
    expected = header_digest(plan.model_dump(mode="python"))
    if plan.digest != expected:
        raise UserError(
            f"{path}: digest mismatch: the file says {plan.digest[:80]!r} but its header hashes to {expected!r}. "
            "The plan was changed after it was made; re-run `emailsync plan` and have it reviewed again."
        )
    return plan


def _text(path: Path, n: int, raw: bytes) -> str:
    if len(raw) > MAX_LINE:
        raise UserError(f"{path}: line {n} is longer than {MAX_LINE >> 20} MiB; {_EDITED}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: line {n} is not UTF-8 text; {_EDITED}") from None


def _parse(path: Path, n: int, text: str, *, strict: bool = False) -> Any:
    """One line's JSON. strict (the header): a key given twice is refused by name, since json keeps the last one and
    other tools may show the first (body lines are compared with their canonical form instead, which is faster)."""
    try:
        data = loads(text) if strict else _DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: line {n} is not valid JSON (column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise UserError(f"{path}: line {n} is nested too deeply to be part of a plan; {_EDITED}") from None
    except ValueError as e:  # a key given twice (strict), or an integer too long to convert
        raise UserError(f"{path}: line {n}: {e}; {_EDITED}") from None
    if may_escape_surrogates(text):  # emailsync writes characters as they are, never as \udXXX escapes
        bad = first_non_text(data)
        if bad is not None:
            raise UserError(f"{path}: line {n}: {bad}: {NOT_TEXT}; {_EDITED}")
    return data


def read_header(path: Path) -> Plan | None:
    """A plan file's header alone, checked (format, schema, header digest), or None when it is not a readable plan:
    for choosing among the archive's plans without reading their bodies."""
    try:
        with open_limited(path, "plan") as f:
            gz = f.peek(2)[:2] == _GZIP_MAGIC
            stream: IO[bytes] = gzip.GzipFile(fileobj=f) if gz else f  # type: ignore[assignment]
            first = stream.readline(MAX_LINE + 1)
        return _header(path, first.rstrip(b"\n"))
    except (UserError, OSError, EOFError, ValueError, zlib.error):
        return None


def read_plan(path: Path, parallel: int | None = None, *, early: bool = False) -> Plan:
    """Read and check a plan file: format, digest, then every line's schema and order and the header's counts.
    Every problem is a UserError, raised before anything uses the plan. The plan returned streams its actions.

    `parallel`: into how many pieces a large plan's lines are cut, each checked in a process of its own (the check is
    Python work on every line); None: one per core, up to 4. A small plan is checked in this process.

    `early`: the lines' check is started, not waited for: apply passes the lines' bytes to a database meanwhile.
    Reading `plan.actions` or calling `plan.checked()` waits for it (and raises what it found); only
    `plan.unchecked_actions` does not, for a store that sends the bytes on and writes nothing before checked()."""
    with _open_errors(path):
        copy, plan, body_sha256 = _private_copy(path)
    if body_sha256 != plan.body_sha256:
        raise UserError(
            f"{path}: digest mismatch: the body hashes to sha256 {body_sha256} but the header records "
            f"{plan.body_sha256[:80]!r}. The plan was changed after it was made; re-run `emailsync plan` and have it "
            "reviewed again."
        )
    with _open_errors(path):
        width = _CHECK_WIDTH if parallel is None else parallel
        large = width > 1 and CAN_FORK and copy.size - copy.body_start >= PARALLEL_CHECK_BYTES
        # Forked here, in the calling thread, before apply opens a connection or starts a thread.
        collect = _start_forked_check(path, plan, copy, width) if large else None

    def check() -> dict[str, tuple[int, int]]:
        with _open_errors(path):
            ranges = collect() if collect is not None else None
            return ranges if ranges is not None else _check_body(path, plan, copy)

    plan._actions = FileRows(copy, False, plan.action_count)
    plan._skipped = FileRows(copy, True, plan.skipped_count)
    if not early:
        copy.ranges = check()
        return plan
    with _open_errors(path):
        copy.ranges = _target_ranges(path, plan, copy)
    found = copy.ranges
    # A small plan is checked by a thread of this process: it runs while apply waits on the database.
    thread = _Checking(check) if collect is None else None

    def check_found() -> None:
        if (thread.result() if thread is not None else check()) != found:
            # The lines are in order (checked), so they cannot be elsewhere; said if they ever are.
            raise UserError(f"{path}: the targets' lines are not where their order puts them; {_EDITED}")

    plan.check_later(check_found)
    return plan


class _Checking(threading.Thread):
    """A check running in a thread; result() waits for it and returns its value or raises what it raised."""

    def __init__(self, check: Callable[[], dict[str, tuple[int, int]]]) -> None:
        super().__init__(name="emailsync-plan-check", daemon=True)
        self._check = check
        self._value: dict[str, tuple[int, int]] | None = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._value = self._check()
        except BaseException as e:  # handed to the waiting thread
            self._error = e

    def result(self) -> dict[str, tuple[int, int]]:
        self.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


_SCAN_BYTES = 1 << 20  # _target_ranges reads the lines of a range this small rather than bisecting it further


def _target_ranges(path: Path, plan: Plan, copy: _Copy) -> dict[str, tuple[int, int]]:
    """Where each target's lines are, found without reading them all: the body is sorted by target first, so each
    boundary is found by bisecting byte offsets down to a MiB, then reading lines. A line that is not what a plan
    holds only makes these ranges wrong here; the check names it, and finds the ranges differ."""
    end, fd = copy.size, copy.fileno()

    def target_of(raw: bytes) -> str:
        try:
            t = _DECODER.decode(raw.decode())["target"]
        except (ValueError, KeyError, TypeError, RecursionError):  # not a plan's line: the check names it
            return ""
        return t if isinstance(t, str) else ""

    def line_at(pos: int) -> tuple[int, str]:
        """The first line starting after byte `pos - 1`: where it starts, and its target."""
        with reader_at(fd, 1 << 16, pos - 1) as f:
            skipped = len(f.readline(MAX_LINE + 1))  # the rest of the line holding byte pos - 1
            raw = f.readline(MAX_LINE + 1)
        return pos - 1 + skipped, target_of(raw)

    def boundary(lo: int, name: str) -> int:
        """The start of the first line after `lo` (a line's start) whose target sorts after `name`, or the end."""
        hi = end
        while hi - lo > _SCAN_BYTES:
            pos, t = line_at((lo + hi) // 2)
            if pos >= hi:
                break
            if t > name:
                hi = pos
            else:
                lo = pos
        with reader_at(fd, 1 << 20, lo) as f:
            while lo < end and (raw := f.readline(MAX_LINE + 1)):
                if target_of(raw) > name:
                    return lo
                lo += len(raw)
        return end

    ranges: dict[str, tuple[int, int]] = {}
    at = copy.body_start
    for name in sorted(plan.targets):
        stop = boundary(at, name)
        if stop > at:
            ranges[name] = (at, stop - at)
        at = stop
    return ranges


_CHECK_WIDTH = min(4, os.cpu_count() or 1)  # processes checking a large plan by default
PARALLEL_CHECK_BYTES = 16 << 20  # below this, forking costs more than checking takes
Counts = Counter[tuple[str, str, str, str]]
_Piece = tuple[int, int]  # byte offset and length of some whole lines of the body
_Checked = tuple[
    list[tuple[tuple[str, str, str, str], int]], dict[str, tuple[int, int]], tuple[str, ...], tuple[str, ...]
]


def _pieces(copy: _Copy, n: int) -> list[_Piece]:
    """The body cut into n pieces of about equal size, each cut after a newline (nothing is parsed)."""
    fd, start, end = copy.fileno(), copy.body_start, copy.size
    cuts = [start]
    for k in range(1, n):
        at = max(start + (end - start) * k // n, cuts[-1])
        while at < end:  # the end of the line the cut falls in
            window = os.pread(fd, 1 << 20, at)
            i = window.find(b"\n")
            if i >= 0:
                at += i + 1
                break
            at += len(window) or end
        cuts.append(min(at, end))
    cuts.append(end)
    return [(a, b - a) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def _start_forked_check(
    path: Path, plan: Plan, copy: _Copy, width: int
) -> Callable[[], dict[str, tuple[int, int]] | None] | None:
    """Start checking the body in `width` pieces, each in a process of its own; returns what collects the result:
    that the pieces follow each other in order, the counts, and where each target's lines are. The result is None
    (check again in this process, which names the first problem in the file's order exactly) when a piece has a
    problem, or a process did not answer. None instead of a collector: too few lines to cut."""
    pieces = _pieces(copy, width)
    if len(pieces) < 2:
        return None
    ctx = multiprocessing.get_context("fork")
    # Forked, so the processes share the copy's descriptor and the header as they are (nothing is pickled but the
    # pieces and what each found). All are forked by the first submit, in this thread.
    pool = ProcessPoolExecutor(len(pieces), ctx, _checking, ((path, plan, copy),))
    try:
        futures = [pool.submit(_check_piece, p) for p in pieces]
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise

    def collect() -> dict[str, tuple[int, int]] | None:
        try:
            found = [f.result() for f in futures]
        except BrokenProcessPool:  # a process was killed (out of memory): the check in this process decides
            return None
        finally:
            pool.shutdown(cancel_futures=True)
        counts: Counts = Counter()
        ranges: dict[str, tuple[int, int]] = {}
        last_key: tuple[str, ...] | None = None
        for f in found:
            if f is None or (last_key is not None and f[2] <= last_key):
                return None
            counts.update(dict(f[0]))
            for target, (start, length) in f[1].items():  # a target's lines may run on from the piece before
                if target in ranges:
                    before, size = ranges[target]
                    if before + size != start:
                        return None
                    start, length = before, size + length
                ranges[target] = (start, length)
            last_key = f[3]
        _check_counts(path, plan, counts)
        return ranges

    return collect


_CHECKING: tuple[Path, Plan, _Copy] | None = None  # in a checking process: what it checks


def _checking(context: tuple[Path, Plan, _Copy]) -> None:
    global _CHECKING
    _CHECKING = context
    die_with_parent()


def _check_piece(piece: _Piece) -> _Checked | None:
    """Some lines checked (in a process of the pool): their counts, where each target's lines are, and the first
    and last line's sort keys; None when one has any problem (its line number is not known here)."""
    assert _CHECKING is not None
    path, plan, copy = _CHECKING
    start, length = piece
    keys: list[tuple[str, ...]] = []
    try:
        counts, ranges = _check_lines(path, plan, copy.lines(start, length), 0, start, keys)
    except Exception:  # a UserError, or anything else: the check in the parent process names it
        return None
    return (list(counts.items()), ranges, keys[0], keys[-1]) if keys else None


def _check_body(path: Path, plan: Plan, copy: _Copy) -> dict[str, tuple[int, int]]:
    """Every body line: canonical JSON of a valid action or skipped change, in order, of a target the header names;
    then the counts against the header's. Returns where each target's lines are."""
    counts, ranges = _check_lines(path, plan, copy.lines(), 1, copy.body_start)
    _check_counts(path, plan, counts)
    return ranges


def _check_lines(
    path: Path, plan: Plan, lines: Iterable[bytes], n: int, pos: int, keys: list[tuple[str, ...]] | None = None
) -> tuple[Counts, dict[str, tuple[int, int]]]:
    """Lines from line n + 1 at byte `pos` of the copy, checked: their counts, and where each target's lines are.
    `keys` is given the first line's sort key and the last's."""
    counts: Counts = Counter()
    ranges: dict[str, tuple[int, int]] = {}
    last: tuple[str, ...] | None = None
    target, first = None, 0
    for raw in lines:
        n += 1
        at, pos = pos, pos + len(raw)
        text = _text(path, n, raw)[:-1] if raw.endswith(b"\n") else _text(path, n, raw)
        plain = _PLAIN_PG_LINE.fullmatch(text)
        if plain is not None:
            column, aid, keytext, kind, new, old, table, item_target = plain.groups()
            if (new[0] == "{" and not _sorted_members(new)) or (old[0] == "{" and not _sorted_members(old)):
                plain = None
        store: str | None
        key: tuple[str, ...]
        if plain is not None:  # the same checks as below, for the commonest line, at a fraction of the cost
            store = "postgres"
            key = (item_target, table, kind, keytext, column, aid)
            counted = (item_target, table, column or "(row)", kind)
        else:
            item = _checked_item(path, n, text)
            key = sort_key(item, text)
            item_target, store = item.target, (item.store if isinstance(item, ActionBase) else None)
            column = item.column if isinstance(item, Skipped) else summary_column(item)
            counted = (item.target, item.table, column, key[2])
        if last is not None and key <= last:
            raise UserError(
                f"{path}: line {n} is out of order or repeated (the body is sorted by target, table, kind, key, column "
                f"and id); {_EDITED}"
            )
        if keys is not None and last is None:
            keys.append(key)
        last = key
        fp = plan.targets.get(item_target)
        if fp is None or (store is not None and store != fp.store):
            raise UserError(f"{path}: line {n} names target {item_target!r}, which the header does not list; {_EDITED}")
        if item_target != target:  # in order, so each target's lines are one range
            if target is not None:
                ranges[target] = (first, at - first)
            target, first = item_target, at
        counts[counted] += 1
    if target is not None:
        ranges[target] = (first, pos - first)
    if keys is not None and last is not None:
        keys.append(last)
    return counts, ranges


def _checked_item(path: Path, n: int, text: str) -> Action | Skipped:
    """Line n as an action or skipped change: valid JSON, valid against the models, and written canonically."""
    data = _parse(path, n, text)
    if not isinstance(data, dict):
        raise UserError(f"{path}: line {n} is not an object; {_EDITED}")
    try:
        item = _item(data)
    except ValidationError as e:
        err = e.errors()[0]
        # An action's location starts with its store (the union's tag): the field is what a person looks for.
        where = err["loc"][1:] if err["loc"] and err["loc"][0] in ("postgres", "dynamodb") else err["loc"]
        loc = ".".join(str(p) for p in where) or "store"
        raise UserError(f"{path}: line {n}: not a valid plan line at {loc}: {err['msg']}; {_EDITED}") from None
    if line_of(item) != text:
        _parse(path, n, text, strict=True)  # names a key given twice, the likeliest reason
        raise UserError(f"{path}: line {n} is not written the way emailsync writes plans; {_EDITED}")
    return item


# The commonest line, a PostgreSQL update or array-replace keyed by one column, recognised as a whole: a line this
# matches is exactly what line_of writes for the action it holds (the fields in sorted order, none at its default,
# strings without any escape, integers as Python writes them), so parsing it and validating the model would only
# confirm it. Its values are strings, arrays of strings, or flat documents, whose members must then be in sorted
# order (_sorted_members). Anything else (escapes, nested documents, decimals, composite keys, whole rows) takes
# _checked_item.
_S = r'"[^"\\\x00-\x1f]*"'
_INT = r"(?:0|-?[1-9][0-9]{0,17})"
_SCALAR = rf"(?:{_S}|{_INT}|true|false|null)"
_VALUE = rf"(?:{_S}|\[(?:(?:{_S}|null)(?:,(?:{_S}|null))*)?\]|\{{(?:{_S}:{_SCALAR}(?:,{_S}:{_SCALAR})*)?\}})"
_IN_S = r'[^"\\\x00-\x1f]*'  # a string's characters, when it has no escape
_PLAIN_PG_LINE = re.compile(
    rf'\{{"column":"({_IN_S})","id":"({_IN_S})","key":(\{{{_S}:(?:{_S}|{_INT})\}}),"kind":"(update|array-replace)",'
    rf'"mappings":\[(?:{_INT}(?:,{_INT})*)?\],"new":({_VALUE}),"old":({_VALUE}),"step":{_INT},"store":"postgres",'
    rf'"table":"({_IN_S})","target":"({_IN_S})"\}}'
)
# A flat document's member names, unquoted: a string right after its opening brace or a comma, and before a colon
# (strings hold no quote here, so nothing else reads this way). Compared unquoted: '"a"' > '"a!"' but "a" < "a!".
_MEMBER = re.compile(r'[{,]"([^"\\\x00-\x1f]*)":')


def _sorted_members(value: str) -> bool:
    """A document the pattern took: its members in the order (and as unique as) json's sort_keys."""
    return _in_order(tuple(_MEMBER.findall(value)))


@functools.lru_cache(maxsize=4096)  # the documents of a column mostly share a few layouts
def _in_order(names: tuple[str, ...]) -> bool:
    return all(a < b for a, b in zip(names, names[1:], strict=False))


def _check_counts(path: Path, plan: Plan, counts: Counts) -> None:
    # Per column too: apply checks each column against targets.yaml through the summary.
    want = Counter({(r.target, r.table, r.column, r.kind): r.count for r in plan.summary})
    n_skipped = sum(c for k, c in counts.items() if k[3] == SKIPPED_KIND)
    if counts != want or n_skipped != plan.skipped_count or counts.total() - n_skipped != plan.action_count:
        raise UserError(f"{path}: the header's counts do not match the plan's lines; {_EDITED}")
