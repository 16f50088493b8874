"""Reading and validating the mappings file: which old email address becomes which new one.

Three formats are accepted (a JSON object, a JSON list of entries, a CSV with a header). Every entry is
validated and every problem is collected, so one run shows the user everything to fix instead of one
mistake per attempt. A bad mappings file must never reach the planner: a conflict or a cycle would make
the result depend on the order in which rows happen to be updated.

Files can hold 100k+ entries, so the hot loops avoid per-entry helper calls and every check is linear.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from emailsync.errors import UserError
from emailsync.inputs import NOT_TEXT, is_text, may_escape_surrogates, read_limited

Match = Literal["exact", "casefold"]
_MATCHES: tuple[str, ...] = ("exact", "casefold")

# Accepted spellings of each field. JSON keys are matched exactly; CSV headers case-insensitively.
_JSON_FIELDS: dict[str, str] = {
    "old_email": "old",
    "old": "old",
    "oldEmail": "old",
    "new_email": "new",
    "new": "new",
    "newEmail": "new",
    "client_id": "client",
    "clientId": "client",
}
_CSV_FIELDS: dict[str, str] = {name.lower(): field for name, field in _JSON_FIELDS.items()}
_FIELD_NAMES = {"old": "old address", "new": "new address", "client": "client id"}
_EXPECTED = "old_email, new_email and optionally client_id"

# Problems carry their position in the file so the final list reads top to bottom, whichever check
# found them.
_Problems = list[tuple[int, str]]


def match_key(email: str, match: Match) -> str:
    """email itself for exact, email.lower() for casefold (mirrors PostgreSQL lower())."""
    if match == "exact":
        return email
    if match == "casefold":
        return email.lower()
    raise ValueError(f"unknown match mode: {match!r}")


def _keys(emails: Iterable[str], match: Match) -> list[str]:
    """match_key over many emails at once (a comprehension, not 100k function calls)."""
    return [e.lower() for e in emails] if match == "casefold" else list(emails)


@dataclass(frozen=True)
class Mapping:
    old: str
    new: str
    client_id: str | None
    ord: int  # 0-based position among the kept mappings, in file order
    where: str  # human position in the file: 'line 4', '[3]' or 'key "a@x.com"'


@dataclass(frozen=True)
class MappingSet:
    path: Path
    sha256: str  # hex sha256 of the file's bytes
    match: Match
    mappings: tuple[Mapping, ...]
    warnings: tuple[str, ...]

    def unscoped(self, context: str) -> tuple[Mapping, ...]:
        """The mappings as seen by a store that ignores client_id, in ord order.

        Identical (old, new) pairs from several clients collapse into the one with the lowest ord. Pairs that
        only made sense per client (the same old going to different news, or a cycle across clients) are an
        error that names `context`, so the user learns which table forced client_id to be ignored.
        """
        # The answer does not depend on `context` (only the message does) and the planner asks once per
        # table, so it is computed once and kept beside the fields (invisible to eq and repr).
        cached: tuple[tuple[Mapping, ...], list[str]] | None = self.__dict__.get("_unscoped_cache")
        if cached is None:
            cached = self._unscoped()
            object.__setattr__(self, "_unscoped_cache", cached)
        mappings, problems = cached
        if problems:
            raise UserError(
                f"{self.path}: {context}, but the mappings disagree once client_id is ignored: "
                f"{len(problems)} problem(s)",
                problems=problems,
            )
        return mappings

    def _unscoped(self) -> tuple[tuple[Mapping, ...], list[str]]:
        has_clients = any(m.client_id is not None for m in self.mappings)
        if not has_clients and self.match == "exact":
            # One scope, checked when the file was read (load_mappings): each old address once, no cycle.
            return self.mappings, []
        old_keys = _keys((m.old for m in self.mappings), self.match)
        first: dict[str, Mapping] = {}
        kept: list[Mapping] = []
        problems: _Problems = []
        for m, key in zip(self.mappings, old_keys, strict=True):  # ord order: first seen has the lowest ord
            f = first.get(key)
            if f is None:
                first[key] = m
                kept.append(m)
            elif f.new != m.new:
                problems.append((m.ord, _conflict(m, f, has_clients)))
        for cycle in _find_cycles(_edges(kept, self.match)):
            problems.append(_cycle_problem(cycle, None, lambda m: m.ord))
        problems.sort(key=lambda p: p[0])
        result = tuple(m if m.client_id is None else Mapping(m.old, m.new, None, m.ord, m.where) for m in kept)
        return result, [text for _, text in problems]


def load_mappings(path: Path, match: Match = "exact") -> MappingSet:
    """Read, validate and return the mappings file; any user mistake raises one UserError listing them all."""
    path = Path(path)
    if match not in _MATCHES:
        raise UserError(f"unknown match mode {match!r}: use 'exact' or 'casefold'")
    data = _read_bytes(path)
    text = _decode(path, data)
    if not text.strip():
        raise UserError(f"{path}: the mappings file is empty")

    problems: _Problems = []
    warnings: list[str] = []
    parse = _parse_json if _is_json(path, text) else _parse_csv
    raws = parse(path, text, problems)
    if not raws and not problems:
        raise UserError(f"{path}: the mappings file contains no mappings")
    check_text = parse is _parse_json and may_escape_surrogates(text)
    mappings, positions = _validate(path, raws, problems, warnings, check_text)
    _check_conflicts(mappings, positions, match, problems)
    if problems:
        problems.sort(key=lambda p: p[0])  # stable: problems of one entry keep their order
        raise UserError(
            f"{path}: {len(problems)} problem(s) in the mappings file",
            problems=[text for _, text in problems],
        )
    return MappingSet(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        match=match,
        mappings=tuple(mappings),
        warnings=tuple(warnings),
    )


# --- reading ------------------------------------------------------------------------------------------------


class _Raw(NamedTuple):
    """One entry as written in the file, before validation."""

    old: str
    new: str
    client_id: str | None
    where: str
    pos: int  # sort key for problems: line number (CSV) or index (JSON)


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a mappings file")
    try:
        return read_limited(path, "mappings")
    except FileNotFoundError:
        raise UserError(f"{path}: mappings file not found") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied reading the mappings file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the mappings file: {e.strerror or e}") from None
    except ValueError:  # a NUL byte in the path
        raise UserError(f"{path!r}: not a usable file name (it contains a NUL byte); fix `mappings:`") from None


def _decode(path: Path, data: bytes) -> str:
    # Strip the BOM ourselves (what utf-8-sig does) so error offsets count from the same place as `body`.
    body = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body.count(b"\n", 0, e.start) + 1
        byte = e.start + len(data) - len(body)
        raise UserError(f"{path}: not valid UTF-8 (line {line}, byte {byte}); save the file as UTF-8") from None


def _is_json(path: Path, text: str) -> bool:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return True
    if suffix == ".csv":
        return False
    return text.lstrip()[:1] in ("{", "[")


class _JsonObject(dict[str, Any]):
    """A decoded JSON object in which some keys were repeated (json itself silently keeps the last)."""

    duplicates: dict[str, int]


def _object_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):  # the common case stays a plain, cheap dict
        return obj
    counts: dict[str, int] = {}
    for k, _ in pairs:
        counts[k] = counts.get(k, 0) + 1
    marked = _JsonObject(obj)
    marked.duplicates = {k: n for k, n in counts.items() if n > 1}
    return marked


def _parse_json(path: Path, text: str, problems: _Problems) -> list[_Raw]:
    try:
        doc = json.loads(text, object_pairs_hook=_object_hook)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer with more digits than Python will convert
        raise UserError(f"{path}: invalid JSON: {e}") from None
    if isinstance(doc, dict):
        return _json_object(doc, problems)
    if isinstance(doc, list):
        return _json_list(doc, problems)
    raise UserError(
        f'{path}: the JSON must be an object {{"old@a.com": "new@b.com"}} or a list of '
        f'{{"old_email": ..., "new_email": ...}} entries, not {_json_type(doc)}'
    )


def _json_object(doc: dict[str, Any], problems: _Problems) -> list[_Raw]:
    raws: list[_Raw] = []
    duplicates: dict[str, int] = getattr(doc, "duplicates", {})
    for i, (key, value) in enumerate(doc.items()):
        where = _where_key(key)
        if key in duplicates:
            problems.append(
                (
                    i,
                    f"{where}: the key appears {duplicates[key]} times in the JSON object; "
                    "each old address may appear once",
                )
            )
        if not isinstance(value, str):
            problems.append((i, f"{where}: the new address must be a string, got {_json_type(value)}"))
            continue
        raws.append(_Raw(key, value, None, where, i))
    return raws


def _json_list(doc: list[Any], problems: _Problems) -> list[_Raw]:
    raws: list[_Raw] = []
    layouts: dict[tuple[str, ...], tuple[str, str, str | None] | None] = {}
    for i, entry in enumerate(doc):
        where = f"[{i}]"
        if not isinstance(entry, dict):
            problems.append(
                (
                    i,
                    f'{where}: each entry must be an object like {{"old_email": ..., "new_email": ...}}, '
                    f"got {_json_type(entry)}",
                )
            )
            continue
        # Entries nearly always share one key layout, so the layout is checked once and then only the
        # value types are checked per entry; anything unusual goes to the full (slow) diagnosis.
        names = tuple(entry)
        if names in layouts:
            layout = layouts[names]
        else:
            layout = layouts[names] = _json_layout(names)
        if layout is not None and not getattr(entry, "duplicates", None):
            old_key, new_key, client_key = layout
            old, new = entry[old_key], entry[new_key]
            client = entry[client_key] if client_key is not None else None
            if type(old) is str and type(new) is str:
                if client is None or type(client) is str:
                    raws.append(_Raw(old, new, client and client.strip() or None, where, i))
                    continue
                if type(client) is int:
                    raws.append(_Raw(old, new, str(client), where, i))
                    continue
        problems.extend((i, p) for p in _json_entry_problems(entry, where))
    return raws


def _json_layout(names: tuple[str, ...]) -> tuple[str, str, str | None] | None:
    """The keys holding old, new and client_id in an entry with these keys, or None if the keys are wrong."""
    by_field: dict[str, str] = {}
    for name in names:
        field = _JSON_FIELDS.get(name)
        if field is None or field in by_field:
            return None
        by_field[field] = name
    if "old" not in by_field or "new" not in by_field:
        return None
    return by_field["old"], by_field["new"], by_field.get("client")


def _json_entry_problems(entry: dict[str, Any], where: str) -> list[str]:
    problems: list[str] = []
    for key, count in getattr(entry, "duplicates", {}).items():
        problems.append(f'{where}: the key "{key}" appears {count} times in this entry')
    unknown = [k for k in entry if k not in _JSON_FIELDS]
    if unknown:
        listed = ", ".join(json.dumps(k, ensure_ascii=False) for k in unknown)
        problems.append(f"{where}: unknown key(s) {listed}; expected {_EXPECTED}")
    # Which spelling was used for each field; two spellings of one field are ambiguous.
    given: dict[str, list[str]] = {}
    for k in entry:
        if k in _JSON_FIELDS:
            given.setdefault(_JSON_FIELDS[k], []).append(k)
    for field, names in given.items():
        if len(names) > 1:
            quoted = " and ".join(f'"{n}"' for n in names)
            problems.append(f"{where}: {quoted} both give the {_FIELD_NAMES[field]}; use one")
    for field, label in (("old", "old_email"), ("new", "new_email")):
        if field not in given:
            problems.append(f'{where}: missing "{label}"')
        elif not isinstance(value := entry[given[field][0]], str):
            problems.append(f'{where}: "{given[field][0]}" must be a string, got {_json_type(value)}')
    if "client" in given:
        client = entry[given["client"][0]]
        # bool is an int in Python; true/false as a client id is surely a mistake.
        if isinstance(client, bool) or not isinstance(client, int | str | None):
            problems.append(f'{where}: "{given["client"][0]}" must be a string or an integer, got {_json_type(client)}')
    return problems


def _parse_csv(path: Path, text: str, problems: _Problems) -> list[_Raw]:
    # newline="" lets csv see the real line ends, so quoted fields and \r\n count lines correctly.
    reader = csv.reader(io.StringIO(text, newline=""))
    raws: list[_Raw] = []
    append = raws.append
    columns: dict[str, int] | None = None
    width = old_col = new_col = 0
    client_col: int | None = None
    prev_line = 0
    last_line = text.count("\n") + (0 if text.endswith("\n") else 1)
    try:
        for row in reader:
            line = prev_line + 1  # the row's first physical line (a quoted field may span several)
            prev_line = reader.line_num
            if not "".join(row).strip():  # blank line, or a spreadsheet's empty ",,"
                continue
            if reader.line_num >= last_line and any("\n" in f or "\r" in f for f in row):
                # A field that runs on to the end of the file: a quote opened and never closed, which swallowed
                # every line after it. Name where it opened (a closed multi-line field is checked as a value).
                problems.append(
                    (
                        line,
                        f'line {line}: a quote (") opened on this line is not closed (the field runs on to line '
                        f"{reader.line_num}); close the quote or remove it",
                    )
                )
                break
            if columns is None:
                columns = _csv_header(path, row, line)
                width, old_col, new_col = len(row), columns["old"], columns["new"]
                client_col = columns.get("client")
                continue
            if len(row) != width:
                problems.append(
                    (
                        line,
                        f"line {line}: expected {width} field(s) like the header, found {len(row)}"
                        + _delimiter_hint(",".join(row)),
                    )
                )
                continue
            client = (row[client_col].strip() or None) if client_col is not None else None
            append(_Raw(row[old_col], row[new_col], client, f"line {line}", line))
    except csv.Error as e:
        # The csv reader cannot be trusted to resynchronise after an error, so stop reading here.
        start = prev_line + 1  # the row being read when it failed starts here
        hint = '; a quote (") opened on that line may not be closed' if "field larger" in str(e) else ""
        problems.append((start, f"line {start}: cannot read the CSV: {e}{hint}"))
    return raws


def _csv_header(path: Path, row: list[str], line: int) -> dict[str, int]:
    columns: dict[str, int] = {}
    bad: list[str] = []
    for i, cell in enumerate(row):
        field = _CSV_FIELDS.get(cell.strip().lower())
        if field is None or field in columns:
            bad.append(cell.strip())
        else:
            columns[field] = i
    if bad or "old" not in columns or "new" not in columns:
        found = ",".join(row)
        unexpected = f"; unexpected or repeated column(s): {', '.join(map(repr, bad))}" if bad else ""
        raise UserError(
            f"{path}: line {line}: the first row must be a header with the columns {_EXPECTED} "
            f"(comma separated); found '{_show(found)}'" + (_delimiter_hint(found) or unexpected)
        )
    return columns


def _delimiter_hint(text: str) -> str:
    for char, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'")):
        if char in text:
            return f"; it looks separated by {name}, but the delimiter must be a comma"
    return ""


# --- validation ---------------------------------------------------------------------------------------------

# Fast path that only ever accepts: the usual ASCII address with a single '@'. Possessive quantifiers mean
# the regex never backtracks; hyphen rules are plain substring tests. Anything it rejects is decided by
# _is_email_slow, which implements the rules in full.
_ASCII_EMAIL = re.compile(r"[\x21-\x3f\x41-\x7e]{1,64}+@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)++")


def is_email(value: str) -> bool:
    if len(value) > 254:
        return False
    if (
        _ASCII_EMAIL.fullmatch(value) is not None
        and "@-" not in value
        and "-." not in value
        and ".-" not in value
        and value[-1] != "-"
    ):
        return True
    return _is_email_slow(value)


def _is_email_slow(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    if not at or not local or len(local) > 64:
        return False
    if any(_invisible(c) for c in local):
        return False
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    return all(
        label and label[0] != "-" and label[-1] != "-" and all(_label_char(c) for c in label) for label in labels
    )


def _invisible(c: str) -> bool:
    # Whitespace, control and format characters (zero-width space, bidi marks): invisible when pasted.
    return c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zs", "Zl", "Zp")


def _label_char(c: str) -> bool:
    if c.isascii():
        return c.isalnum() or c == "-"
    # Letters of any script for IDN, plus combining marks, which scripts like Devanagari need.
    category = unicodedata.category(c)
    return category[0] in ("L", "M") or category == "Nd"


def _validate(
    path: Path, raws: list[_Raw], problems: _Problems, warnings: list[str], check_text: bool
) -> tuple[list[Mapping], list[int]]:
    """Check each entry alone; returns the kept mappings and each one's position (indexed by ord). `check_text`: the
    file may hold lone surrogates (JSON with \\udXXX escapes; CSV is decoded from UTF-8, which cannot hold one)."""
    has_clients = any(r.client_id is not None for r in raws)
    mappings: list[Mapping] = []
    positions: list[int] = []
    seen: dict[tuple[str, str, str | None], str] = {}
    email_ok, text_ok = is_email, is_text  # local names: looked up once, not per entry
    for raw_old, raw_new, client_id, where, pos in raws:  # unpacking: NamedTuple attributes are slower
        if check_text and not (text_ok(raw_old) and text_ok(raw_new) and (client_id is None or text_ok(client_id))):
            # The database or file such a string reaches would fail on it later.
            problems.append((pos, f"{where}: {NOT_TEXT}"))
            continue
        old, new = raw_old.strip(), raw_new.strip()
        old_ok, new_ok = email_ok(old), email_ok(new)
        if not (old_ok and new_ok):
            if not old_ok:
                problems.append((pos, f"{where}: not an email address: '{_show(old)}' (old address)"))
            if not new_ok:
                problems.append((pos, f"{where}: not an email address: '{_show(new)}' (new address)"))
            continue
        if old == new:
            warnings.append(f"{path}: {where}: old and new are the same ('{_show(old)}'); entry skipped")
            continue
        triple = (old, new, client_id)
        first = seen.get(triple)
        if first is not None:
            warnings.append(
                f"{path}: {where}: duplicate of {first} ('{_show(old)}' → '{_show(new)}'"
                f"{_scope(client_id, has_clients)}); kept once"
            )
            continue
        seen[triple] = where
        mappings.append(Mapping(old, new, client_id, len(positions), where))
        positions.append(pos)
    return mappings, positions


_MAX_RIVALS = 3


def _check_conflicts(mappings: list[Mapping], positions: list[int], match: Match, problems: _Problems) -> None:
    """Report one old address with two different news in one client scope, then cycles per scope.

    A mapping without client_id applies to every client, so it belongs to every scope.
    """
    has_clients = any(m.client_id is not None for m in mappings)
    first_global: dict[str, Mapping] = {}
    first_client: dict[tuple[str, str], Mapping] = {}
    clients_of: dict[str, list[Mapping]] = {}  # per old key: the first mapping of each client, in order
    for m, key in zip(mappings, _keys((m.old for m in mappings), match), strict=True):
        rivals: list[Mapping] = []
        if m.client_id is None:
            g = first_global.get(key)
            if g is None:
                first_global[key] = m
            elif g.new != m.new:
                rivals.append(g)
            if key in clients_of:
                rivals.extend(c for c in clients_of[key] if c.new != m.new)
        else:
            c = first_client.get((key, m.client_id))
            if c is None:
                first_client[(key, m.client_id)] = m
                clients_of.setdefault(key, []).append(m)
            elif c.new != m.new:
                rivals.append(c)
            g = first_global.get(key)
            if g is not None and g.new != m.new:
                rivals.append(g)
        for r in rivals[:_MAX_RIVALS]:
            problems.append((positions[m.ord], _conflict(m, r, has_clients)))
        if len(rivals) > _MAX_RIVALS:
            # A mapping for all clients against many client mappings: name a few and count the rest, or the
            # report would grow as clients x mappings.
            more = len(rivals) - _MAX_RIVALS
            problems.append((positions[m.ord], f"{m.where}: ... and conflicts with {more} more client mapping(s)"))
    _check_cycles(first_global, first_client, positions, match, problems)


def _check_cycles(
    first_global: dict[str, Mapping],
    first_client: dict[tuple[str, str], Mapping],
    positions: list[int],
    match: Match,
    problems: _Problems,
) -> None:
    # With conflicts set aside, each old key has one outgoing edge per scope, so every scope's graph is a
    # function and cycle finding is linear. Doing it naively per client (client edges + all global edges)
    # would cost clients x globals, so global chains are walked once and then jumped over.
    def pos(m: Mapping) -> int:
        return positions[m.ord]

    global_edges = _edges(first_global.values(), match)
    global_cycles = _find_cycles(global_edges)
    problems.extend(_cycle_problem(c, None, pos) for c in global_cycles)

    # A client's own edge only matters on a key without a global mapping (otherwise it is the same edge or a
    # conflict, already reported).
    per_client: dict[str, dict[str, tuple[str, Mapping]]] = {}
    news = _keys((m.new for m in first_client.values()), match)
    for ((key, client), m), nxt in zip(first_client.items(), news, strict=True):
        if nxt != key and key not in first_global:
            if client not in per_client:
                per_client[client] = {}
            per_client[client][key] = (nxt, m)
    if not per_client:
        return

    # end_of[k]: where following global edges from k stops (a key with no global edge), or None when the
    # walk falls into a global cycle (already reported). Filled lazily, each global edge walked once.
    end_of: dict[str, str | None] = {k: None for c in global_cycles for k in _keys((m.old for m in c), match)}

    def end(start: str) -> str | None:
        path: list[str] = []
        node = start
        while node in global_edges and node not in end_of:
            path.append(node)
            node = global_edges[node][0]
        result = end_of.get(node, node)
        for n in path:
            end_of[n] = result
        return result

    for client, edges in per_client.items():
        # Collapse each client edge plus the global chain after it into one hop to the next client edge.
        hops: dict[str, tuple[str, Mapping]] = {}
        for key, (nxt, m) in edges.items():
            stop = end(nxt) if nxt in global_edges else nxt
            if stop is not None and stop in edges:
                hops[key] = (stop, m)
        for cycle in _find_cycles(hops):
            full: list[Mapping] = []
            for m in cycle:  # re-expand the global chains that the hops jumped over
                full.append(m)
                node = match_key(m.new, match)
                while node in global_edges:
                    node, g = global_edges[node]
                    full.append(g)
            problems.append(_cycle_problem(full, client, pos))


def _edges(mappings: Iterable[Mapping], match: Match) -> dict[str, tuple[str, Mapping]]:
    """old key -> (new key, mapping) for mappings whose old keys are distinct.

    Case-only renames are left out: a key mapped onto itself is not a cycle.
    """
    if match == "exact":  # old != new is guaranteed by _validate
        return {m.old: (m.new, m) for m in mappings}
    return {k: (n, m) for m in mappings if (k := m.old.lower()) != (n := m.new.lower())}


def _find_cycles(edges: dict[str, tuple[str, Mapping]]) -> list[list[Mapping]]:
    """Cycles of a graph where each node has at most one outgoing edge; each is found once, in walk order.

    Not graphlib.TopologicalSorter: its CycleError names one cycle where every cycle must be reported, and on
    1M mappings with many chains or cycles it was 2.5-4.5 times slower than this walk (measured for issue 17).
    """
    # Only a node whose target has an edge itself can be on a cycle; usually that is very few of them.
    edges = {k: e for k, e in edges.items() if e[0] in edges}
    state: dict[str, int] = {}  # 1: on the walk in progress, 2: finished
    cycles: list[list[Mapping]] = []
    for start in edges:
        if start in state:
            continue
        path: list[str] = []
        node = start
        while node in edges and node not in state:
            state[node] = 1
            path.append(node)
            node = edges[node][0]
        if state.get(node) == 1:
            cycles.append([edges[n][1] for n in path[path.index(node) :]])
        for n in path:
            state[n] = 2
    return cycles


# --- messages -----------------------------------------------------------------------------------------------


def _cycle_problem(cycle: Sequence[Mapping], client: str | None, pos: Callable[[Mapping], int]) -> tuple[int, str]:
    # Start at the earliest entry so the message does not depend on dict order.
    i = min(range(len(cycle)), key=lambda j: cycle[j].ord)
    ordered = [*cycle[i:], *cycle[:i]]
    chain = " → ".join(_show(m.old) for m in [*ordered, ordered[0]])
    scope = f' for client "{_show(client)}"' if client is not None else ""
    wheres = ", ".join(m.where for m in ordered)
    text = f"{ordered[0].where}: cycle{scope}: {chain} (entries {wheres}); no update order can apply it"
    return pos(ordered[0]), text


def _conflict(m: Mapping, first: Mapping, has_clients: bool) -> str:
    this = f"'{_show(m.old)}' → '{_show(m.new)}'{_scope(m.client_id, has_clients)}"
    other = f"'{_show(first.old)}' → '{_show(first.new)}'{_scope(first.client_id, has_clients)}"
    return (
        f"{m.where}: {this} conflicts with {other} at {first.where}; "
        "one old address cannot become two different new addresses"
    )


def _scope(client_id: str | None, has_clients: bool) -> str:
    if client_id is not None:
        return f' (client "{_show(client_id)}")'
    return " (all clients)" if has_clients else ""


def _where_key(key: str) -> str:
    if '"' in key or "\\" in key or not key.isprintable():
        return f"key {json.dumps(key, ensure_ascii=False)}"  # escaped, as it would be written in JSON
    return f'key "{key}"'


def _show(value: str) -> str:
    """The value as typed, with invisible characters escaped so the user can see what is wrong."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
