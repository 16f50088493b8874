"""Tests for emailsync.mappings: formats, validation rules, scopes and unscoped()."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from emailsync.errors import UserError
from emailsync.mappings import Mapping, MappingSet, load_mappings, match_key


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def load_error(path: Path, match: str = "exact") -> UserError:
    with pytest.raises(UserError) as info:
        load_mappings(path, match)  # type: ignore[arg-type]
    return info.value


def pairs(ms: MappingSet | tuple[Mapping, ...]) -> list[tuple[str, str, str | None, int, str]]:
    mappings = ms.mappings if isinstance(ms, MappingSet) else ms
    return [(m.old, m.new, m.client_id, m.ord, m.where) for m in mappings]


# --- match_key ----------------------------------------------------------------------------------------------


def test_match_key() -> None:
    assert match_key("A.B@X.com", "exact") == "A.B@X.com"
    assert match_key("A.B@X.com", "casefold") == "a.b@x.com"


# --- formats ------------------------------------------------------------------------------------------------


def test_json_object(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", json.dumps({"a@x.com": "b@y.com", " c@x.com ": "d@y.com"}))
    ms = load_mappings(path)
    assert pairs(ms) == [
        ("a@x.com", "b@y.com", None, 0, 'key "a@x.com"'),
        ("c@x.com", "d@y.com", None, 1, 'key " c@x.com "'),
    ]
    assert ms.match == "exact"
    assert ms.path == path
    assert ms.warnings == ()


def test_json_list_with_aliases_and_client_ids(tmp_path: Path) -> None:
    entries = [
        {"old_email": "a@x.com", "new_email": "b@x.com"},
        {"old": "c@x.com", "new": "d@x.com", "client_id": "acme"},
        {"oldEmail": "e@x.com", "newEmail": "f@x.com", "clientId": 42},
        {"old_email": "g@x.com", "new_email": "h@x.com", "client_id": None},
    ]
    ms = load_mappings(write(tmp_path, "m.json", json.dumps(entries)))
    assert pairs(ms) == [
        ("a@x.com", "b@x.com", None, 0, "[0]"),
        ("c@x.com", "d@x.com", "acme", 1, "[1]"),
        ("e@x.com", "f@x.com", "42", 2, "[2]"),
        ("g@x.com", "h@x.com", None, 3, "[3]"),
    ]


def test_json_list_entry_errors(tmp_path: Path) -> None:
    entries = [
        {"old_email": "a@x.com", "new_email": "b@x.com", "note": "hi", "extra": 1},
        {"old_email": "c@x.com"},
        "d@x.com",
        {"old": "e@x.com", "old_email": "e@x.com", "new": "f@x.com"},
        {"old": "g@x.com", "new": 5},
        {"old": "h@x.com", "new": "i@x.com", "client_id": True},
    ]
    err = load_error(write(tmp_path, "m.json", json.dumps(entries)))
    assert err.problems == [
        '[0]: unknown key(s) "note", "extra"; expected old_email, new_email and optionally client_id',
        '[1]: missing "new_email"',
        '[2]: each entry must be an object like {"old_email": ..., "new_email": ...}, got a string',
        '[3]: "old" and "old_email" both give the old address; use one',
        '[4]: "new" must be a string, got a number',
        '[5]: "client_id" must be a string or an integer, got a boolean',
    ]
    assert str(err).startswith(f"{tmp_path / 'm.json'}: 6 problem(s) in the mappings file\n")


def test_csv_with_bom_aliases_and_blank_lines(tmp_path: Path) -> None:
    content = "\ufeff Old_Email , NEW ,ClientId\r\na@x.com,b@x.com,\r\n\r\n c@x.com , d@x.com ,7\r\n,,\r\n"
    ms = load_mappings(write(tmp_path, "m.csv", content))
    assert pairs(ms) == [
        ("a@x.com", "b@x.com", None, 0, "line 2"),
        ("c@x.com", "d@x.com", "7", 1, "line 4"),
    ]


def test_csv_line_numbers_count_physical_lines(tmp_path: Path) -> None:
    # A quoted field spanning two lines: the next row's line number must still be the physical line.
    content = 'old_email,new_email\n"bad\nvalue",b@x.com\na@x.com,b@x.com\n'
    err = load_error(write(tmp_path, "m.csv", content))
    assert err.problems == ["line 2: not an email address: 'bad\\nvalue' (old address)"]
    ms = load_mappings(write(tmp_path, "ok.csv", "\n\nold_email,new_email\n\na@x.com,b@x.com\n"))
    assert pairs(ms) == [("a@x.com", "b@x.com", None, 0, "line 5")]


def test_csv_semicolon_header_hint(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "m.csv", "old_email;new_email\na@x.com;b@x.com\n"))
    msg = str(err)
    assert msg.startswith(f"{tmp_path / 'm.csv'}: line 1:")
    assert "found 'old_email;new_email'" in msg
    assert "the delimiter must be a comma" in msg


def test_csv_tab_header_hint(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "m.csv", "old_email\tnew_email\n"))
    assert "separated by tabs, but the delimiter must be a comma" in str(err)


def test_csv_header_without_expected_columns(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "m.csv", "a@x.com,b@x.com\n"))
    assert "the first row must be a header with the columns old_email, new_email" in str(err)
    assert "found 'a@x.com,b@x.com'" in str(err)
    assert "delimiter" not in str(err)
    err = load_error(write(tmp_path, "m2.csv", "old_email,new_email,team\n"))
    assert "found 'old_email,new_email,team'" in str(err)


def test_csv_wrong_field_count(tmp_path: Path) -> None:
    content = "old_email,new_email\na@x.com,b@x.com,extra\nc@x.com\nd@x.com,e@x.com\n"
    err = load_error(write(tmp_path, "m.csv", content))
    assert err.problems == [
        "line 2: expected 2 field(s) like the header, found 3",
        "line 3: expected 2 field(s) like the header, found 1",
    ]


def test_sniffing_unknown_suffix(tmp_path: Path) -> None:
    as_json = load_mappings(write(tmp_path, "m.txt", '  \n[{"old": "a@x.com", "new": "b@x.com"}]'))
    assert pairs(as_json) == [("a@x.com", "b@x.com", None, 0, "[0]")]
    as_obj = load_mappings(write(tmp_path, "m", '{"a@x.com": "b@x.com"}'))
    assert pairs(as_obj) == [("a@x.com", "b@x.com", None, 0, 'key "a@x.com"')]
    as_csv = load_mappings(write(tmp_path, "m.data", "old,new\na@x.com,b@x.com\n"))
    assert pairs(as_csv) == [("a@x.com", "b@x.com", None, 0, "line 2")]


def test_suffix_wins_over_content(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "m.json", "old,new\na@x.com,b@x.com\n"))
    assert "invalid JSON at line 1, column 1" in str(err)


# --- file-level errors --------------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    assert str(load_error(missing)) == f"{missing}: mappings file not found"
    assert str(load_error(tmp_path)) == f"{tmp_path}: is a directory, not a mappings file"


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "  \n\n")
    assert str(load_error(path)) == f"{path}: the mappings file is empty"


def test_no_mappings(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "old_email,new_email\n")
    assert str(load_error(path)) == f"{path}: the mappings file contains no mappings"
    path = write(tmp_path, "m.json", "[]")
    assert str(load_error(path)) == f"{path}: the mappings file contains no mappings"


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", b"old_email,new_email\nj\xe9r\xf4me@x.com,b@x.com\n")
    msg = str(load_error(path))
    assert msg.startswith(f"{path}: not valid UTF-8 (line 2, byte 21)")


def test_invalid_json_position(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", '{\n  "a@x.com": "b@x.com",\n  "c@x.com" "d@x.com"\n}\n')
    assert str(load_error(path)) == f"{path}: invalid JSON at line 3, column 13: Expecting ':' delimiter"


def test_json_top_level_must_be_object_or_list(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", '"a@x.com"')
    msg = str(load_error(path))
    assert msg.startswith(f"{path}: the JSON must be an object")
    assert msg.endswith("not a string")


def test_duplicate_json_keys(tmp_path: Path) -> None:
    content = '{"a@x.com": "b@x.com", "c@x.com": "d@x.com", "a@x.com": "e@x.com", "a@x.com": "b@x.com"}'
    err = load_error(write(tmp_path, "m.json", content))
    assert err.problems == [
        'key "a@x.com": the key appears 3 times in the JSON object; each old address may appear once'
    ]


def test_duplicate_keys_inside_list_entry(tmp_path: Path) -> None:
    content = '[{"old": "a@x.com", "new": "b@x.com", "new": "c@x.com"}]'
    err = load_error(write(tmp_path, "m.json", content))
    assert err.problems == ['[0]: the key "new" appears 2 times in this entry']


def test_json_object_values_must_be_strings(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "m.json", '{"a@x.com": null, "b@x.com": ["c@x.com"]}'))
    assert err.problems == [
        'key "a@x.com": the new address must be a string, got null',
        'key "b@x.com": the new address must be a string, got a list',
    ]


# --- email validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "a@x.com",
        "first.last+tag@sub.example.co.uk",
        '"quoted@local"@x.com',  # split on the last @
        "user@bücher.de",
        "пользователь@пример.рф",
        "a@उदाहरण.भारत",  # Devanagari needs combining marks
        "a@x-y.com",
        "a@1.2",
        "x" * 64 + "@x.com",
    ],
)
def test_valid_emails(tmp_path: Path, value: str) -> None:
    ms = load_mappings(write(tmp_path, "m.json", json.dumps({value: "new@x.com"})))
    assert ms.mappings[0].old == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain",
        "@x.com",
        "a@",
        "a@localhost",
        "a@x..com",
        "a@.x.com",
        "a@x.com.",
        "a@-x.com",
        "a@x-.com",
        "a b@x.com",
        "a\tb@x.com",
        "a\u200bb@x.com",
        "a@x_y.com",
        "a@x y.com",
        "x" * 65 + "@x.com",
        "a@" + "x" * 250 + ".com",
    ],
)
def test_invalid_emails(tmp_path: Path, value: str) -> None:
    err = load_error(write(tmp_path, "m.json", json.dumps([{"old": "ok@x.com", "new": value}])))
    shown = value.replace("\t", "\\t").replace("\u200b", "\\u200b")
    assert err.problems == [f"[0]: not an email address: '{shown}' (new address)"]


# --- entry rules --------------------------------------------------------------------------------------------


def test_old_equal_new_is_dropped_with_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "old_email,new_email\na@x.com, a@x.com\nb@x.com,c@x.com\n")
    ms = load_mappings(path)
    assert pairs(ms) == [("b@x.com", "c@x.com", None, 0, "line 3")]
    assert ms.warnings == (f"{path}: line 2: old and new are the same ('a@x.com'); entry skipped",)


def test_case_only_change_is_kept(tmp_path: Path) -> None:
    ms = load_mappings(write(tmp_path, "m.json", '{"A@x.com": "a@x.com"}'), "casefold")
    assert pairs(ms) == [("A@x.com", "a@x.com", None, 0, 'key "A@x.com"')]


def test_exact_duplicate_kept_once_with_warning(tmp_path: Path) -> None:
    content = "old_email,new_email\na@x.com,b@x.com\nc@x.com,d@x.com\na@x.com ,b@x.com\n"
    path = write(tmp_path, "m.csv", content)
    ms = load_mappings(path)
    assert pairs(ms) == [
        ("a@x.com", "b@x.com", None, 0, "line 2"),
        ("c@x.com", "d@x.com", None, 1, "line 3"),
    ]
    assert ms.warnings == (f"{path}: line 4: duplicate of line 2 ('a@x.com' → 'b@x.com'); kept once",)


def test_conflicting_news(tmp_path: Path) -> None:
    content = "old_email,new_email\na@x.com,b@x.com\na@x.com,c@x.com\n"
    err = load_error(write(tmp_path, "m.csv", content))
    assert err.problems == [
        "line 3: 'a@x.com' → 'c@x.com' conflicts with 'a@x.com' → 'b@x.com' at line 2; "
        "one old address cannot become two different new addresses"
    ]


def test_casefold_conflict(tmp_path: Path) -> None:
    content = json.dumps({"A@x.com": "b@x.com", "a@x.com": "c@x.com"})
    path = write(tmp_path, "m.json", content)
    exact = load_mappings(path, "exact")
    assert [m.old for m in exact.mappings] == ["A@x.com", "a@x.com"]
    err = load_error(path, "casefold")
    assert err.problems == [
        "key \"a@x.com\": 'a@x.com' → 'c@x.com' conflicts with 'A@x.com' → 'b@x.com' at key \"A@x.com\"; "
        "one old address cannot become two different new addresses"
    ]


def test_casefold_same_new_is_not_a_conflict(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", json.dumps({"A@x.com": "b@x.com", "a@x.com": "b@x.com"}))
    assert len(load_mappings(path, "casefold").mappings) == 2


def test_cycle_of_two(tmp_path: Path) -> None:
    content = "old_email,new_email\na@x.com,b@x.com\nb@x.com,a@x.com\n"
    err = load_error(write(tmp_path, "m.csv", content))
    assert err.problems == [
        "line 2: cycle: a@x.com → b@x.com → a@x.com (entries line 2, line 3); no update order can apply it"
    ]


def test_cycle_of_three_starts_at_earliest_entry(tmp_path: Path) -> None:
    content = json.dumps([["b@x.com", "c@x.com"], ["c@x.com", "a@x.com"], ["a@x.com", "b@x.com"]])
    entries = [{"old": o, "new": n} for o, n in json.loads(content)]
    err = load_error(write(tmp_path, "m.json", json.dumps(entries)))
    assert err.problems == [
        "[0]: cycle: b@x.com → c@x.com → a@x.com → b@x.com (entries [0], [1], [2]); no update order can apply it"
    ]


def test_casefold_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", json.dumps({"a@x.com": "B@x.com", "b@x.com": "A@x.com"}))
    assert len(load_mappings(path, "exact").mappings) == 2
    err = load_error(path, "casefold")
    assert err.problems[0].startswith('key "a@x.com": cycle: a@x.com → b@x.com → a@x.com')


def test_chain_and_merge_are_accepted(tmp_path: Path) -> None:
    content = "old_email,new_email\na@x.com,b@x.com\nb@x.com,c@x.com\nd@x.com,c@x.com\n"
    ms = load_mappings(write(tmp_path, "m.csv", content))
    assert pairs(ms) == [
        ("a@x.com", "b@x.com", None, 0, "line 2"),
        ("b@x.com", "c@x.com", None, 1, "line 3"),
        ("d@x.com", "c@x.com", None, 2, "line 4"),
    ]


def test_ords_skip_dropped_entries(tmp_path: Path) -> None:
    content = "old,new\na@x.com,a@x.com\nb@x.com,c@x.com\nb@x.com,c@x.com\nd@x.com,e@x.com\n"
    ms = load_mappings(write(tmp_path, "m.csv", content))
    assert [(m.ord, m.where) for m in ms.mappings] == [(0, "line 3"), (1, "line 5")]
    assert len(ms.warnings) == 2


# --- client scopes ------------------------------------------------------------------------------------------


def test_same_old_in_different_clients_is_fine(tmp_path: Path) -> None:
    content = "old_email,new_email,client_id\na@x.com,b@x.com,1\na@x.com,c@x.com,2\n"
    ms = load_mappings(write(tmp_path, "m.csv", content))
    assert pairs(ms) == [
        ("a@x.com", "b@x.com", "1", 0, "line 2"),
        ("a@x.com", "c@x.com", "2", 1, "line 3"),
    ]


def test_same_old_same_client_conflicts(tmp_path: Path) -> None:
    content = "old_email,new_email,client_id\na@x.com,b@x.com,1\na@x.com,c@x.com,1\n"
    err = load_error(write(tmp_path, "m.csv", content))
    assert err.problems == [
        "line 3: 'a@x.com' → 'c@x.com' (client \"1\") conflicts with 'a@x.com' → 'b@x.com' (client \"1\") "
        "at line 2; one old address cannot become two different new addresses"
    ]


def test_global_mapping_conflicts_with_client_mapping(tmp_path: Path) -> None:
    # Either order: the client-less mapping applies to every client.
    content = "old_email,new_email,client_id\na@x.com,b@x.com,\na@x.com,c@x.com,1\nd@x.com,e@x.com,2\n"
    content += "d@x.com,f@x.com,\n"
    err = load_error(write(tmp_path, "m.csv", content))
    assert err.problems == [
        "line 3: 'a@x.com' → 'c@x.com' (client \"1\") conflicts with 'a@x.com' → 'b@x.com' (all clients) "
        "at line 2; one old address cannot become two different new addresses",
        "line 5: 'd@x.com' → 'f@x.com' (all clients) conflicts with 'd@x.com' → 'e@x.com' (client \"2\") "
        "at line 4; one old address cannot become two different new addresses",
    ]


def test_global_and_client_with_same_new_is_fine(tmp_path: Path) -> None:
    content = "old_email,new_email,client_id\na@x.com,b@x.com,\na@x.com,b@x.com,1\n"
    ms = load_mappings(write(tmp_path, "m.csv", content))
    assert [m.client_id for m in ms.mappings] == [None, "1"]
    assert ms.warnings == ()


def test_cycle_across_clients_is_fine_when_scoped(tmp_path: Path) -> None:
    content = "old_email,new_email,client_id\na@x.com,b@x.com,1\nb@x.com,a@x.com,2\n"
    ms = load_mappings(write(tmp_path, "m.csv", content))
    assert len(ms.mappings) == 2


def test_cycle_through_global_mappings_in_one_client(tmp_path: Path) -> None:
    # a→b and b→c apply to everyone; only client 7 closes the loop with c→a.
    content = (
        "old_email,new_email,client_id\na@x.com,b@x.com,\nb@x.com,c@x.com,\nc@x.com,a@x.com,7\nc@x.com,z@x.com,8\n"
    )
    err = load_error(write(tmp_path, "m.csv", content))
    assert err.problems == [
        'line 2: cycle for client "7": a@x.com → b@x.com → c@x.com → a@x.com '
        "(entries line 2, line 3, line 4); no update order can apply it"
    ]


def test_cycle_within_one_client(tmp_path: Path) -> None:
    entries = [
        {"old": "a@x.com", "new": "b@x.com", "client_id": 3},
        {"old": "b@x.com", "new": "a@x.com", "client_id": 3},
    ]
    err = load_error(write(tmp_path, "m.json", json.dumps(entries)))
    assert err.problems == [
        '[0]: cycle for client "3": a@x.com → b@x.com → a@x.com (entries [0], [1]); no update order can apply it'
    ]


# --- unscoped -----------------------------------------------------------------------------------------------

CONTEXT = "table public.employees has no client column, so client_id is ignored there"


def test_unscoped_merges_identical_pairs(tmp_path: Path) -> None:
    content = (
        "old_email,new_email,client_id\na@x.com,b@x.com,1\nc@x.com,d@x.com,1\na@x.com,b@x.com,2\ne@x.com,f@x.com,\n"
    )
    ms = load_mappings(write(tmp_path, "m.csv", content))
    assert pairs(ms.unscoped(CONTEXT)) == [
        ("a@x.com", "b@x.com", None, 0, "line 2"),
        ("c@x.com", "d@x.com", None, 1, "line 3"),
        ("e@x.com", "f@x.com", None, 3, "line 5"),
    ]


def test_unscoped_casefold_merge(tmp_path: Path) -> None:
    entries = [
        {"old": "A@x.com", "new": "b@x.com", "client_id": "1"},
        {"old": "a@x.com", "new": "b@x.com", "client_id": "2"},
    ]
    ms = load_mappings(write(tmp_path, "m.json", json.dumps(entries)), "casefold")
    assert pairs(ms.unscoped(CONTEXT)) == [("A@x.com", "b@x.com", None, 0, "[0]")]


def test_unscoped_conflict(tmp_path: Path) -> None:
    content = "old_email,new_email,client_id\na@x.com,b@x.com,1\na@x.com,c@x.com,2\n"
    path = write(tmp_path, "m.csv", content)
    ms = load_mappings(path)
    with pytest.raises(UserError) as info:
        ms.unscoped(CONTEXT)
    assert str(info.value).startswith(f"{path}: {CONTEXT}, but the mappings disagree")
    assert info.value.problems == [
        "line 3: 'a@x.com' → 'c@x.com' (client \"2\") conflicts with 'a@x.com' → 'b@x.com' (client \"1\") "
        "at line 2; one old address cannot become two different new addresses"
    ]


def test_unscoped_cycle(tmp_path: Path) -> None:
    content = "old_email,new_email,client_id\na@x.com,b@x.com,1\nb@x.com,a@x.com,2\n"
    ms = load_mappings(write(tmp_path, "m.csv", content))
    with pytest.raises(UserError) as info:
        ms.unscoped(CONTEXT)
    assert CONTEXT in str(info.value)
    assert info.value.problems == [
        "line 2: cycle: a@x.com → b@x.com → a@x.com (entries line 2, line 3); no update order can apply it"
    ]


# --- reporting and hashing ----------------------------------------------------------------------------------


def test_many_problems_reported_together(tmp_path: Path) -> None:
    content = (
        "old_email,new_email\n"
        "nope,b@x.com\n"  # 2: bad old
        "a@x.com,b@x.com,z\n"  # 3: field count
        "c@x.com,d@x.com\n"
        "c@x.com,e@x.com\n"  # 5: conflict
        "f@x.com,g@x.com\n"
        "g@x.com,f@x.com\n"  # cycle
        "h@x.com,also bad\n"  # 8: bad new
    )
    path = write(tmp_path, "m.csv", content)
    err = load_error(path)
    assert str(err).splitlines()[0] == f"{path}: 5 problem(s) in the mappings file"
    assert [p.split(":")[0] for p in err.problems] == ["line 2", "line 3", "line 5", "line 6", "line 8"]
    assert "not an email address: 'nope'" in err.problems[0]
    assert "conflicts with 'c@x.com' → 'd@x.com' at line 4" in err.problems[2]
    assert "cycle: f@x.com → g@x.com → f@x.com" in err.problems[3]
    assert "not an email address: 'also bad'" in err.problems[4]
    assert "  - line 2: not an email address: 'nope' (old address)" in str(err)


def test_sha256_of_file_bytes(tmp_path: Path) -> None:
    raw = b"\xef\xbb\xbfold_email,new_email\r\na@x.com,b@x.com\r\n"
    ms = load_mappings(write(tmp_path, "m.csv", raw))
    assert ms.sha256 == hashlib.sha256(raw).hexdigest()


def test_unknown_match_mode(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", '{"a@x.com": "b@x.com"}')
    assert "unknown match mode 'lower'" in str(load_error(path, "lower"))


def test_json_object_where_escapes_odd_keys(tmp_path: Path) -> None:
    ms = load_mappings(write(tmp_path, "m.json", json.dumps({'a"b@x.com': "c@x.com"})))
    assert ms.mappings[0].where == 'key "a\\"b@x.com"'


def test_json_bom_and_uppercase_suffix(tmp_path: Path) -> None:
    ms = load_mappings(write(tmp_path, "m.JSON", b'\xef\xbb\xbf{"a@x.com": "b@x.com"}'))
    assert pairs(ms) == [("a@x.com", "b@x.com", None, 0, 'key "a@x.com"')]


def test_json_blank_client_id_means_all_clients(tmp_path: Path) -> None:
    entries = [{"old": "a@x.com", "new": "b@x.com", "client_id": "  "}, {"old": "c@x.com", "new": "d@x.com"}]
    ms = load_mappings(write(tmp_path, "m.json", json.dumps(entries)))
    assert [m.client_id for m in ms.mappings] == [None, None]


def test_csv_unexpected_column_named(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "m.csv", "old_email,new_email,old\n"))
    assert str(err).endswith("found 'old_email,new_email,old'; unexpected or repeated column(s): 'old'")


def test_csv_pipe_header_hint(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "m.csv", "old_email|new_email\n"))
    assert str(err).endswith("it looks separated by '|', but the delimiter must be a comma")


def test_csv_nul_byte_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "m.csv", "old,new\na@x.com,b\x00@x.com\n"))
    assert len(err.problems) == 1
    assert err.problems[0].startswith("line 2: ")


def test_global_mapping_against_many_clients_is_summarised(tmp_path: Path) -> None:
    entries = [{"old": "a@x.com", "new": f"n{i}@x.com", "client_id": i} for i in range(10)]
    entries.append({"old": "a@x.com", "new": "z@x.com"})
    err = load_error(write(tmp_path, "m.json", json.dumps(entries)))
    assert len(err.problems) == 4
    assert all(p.startswith("[10]: ") for p in err.problems)
    assert err.problems[0].endswith(
        "conflicts with 'a@x.com' → 'n0@x.com' (client \"0\") at [0]; "
        "one old address cannot become two different new addresses"
    )
    assert err.problems[3] == "[10]: ... and conflicts with 7 more client mapping(s)"


def test_unscoped_is_computed_once_but_names_each_context(tmp_path: Path) -> None:
    content = "old_email,new_email,client_id\na@x.com,b@x.com,1\na@x.com,c@x.com,2\n"
    ms = load_mappings(write(tmp_path, "m.csv", content))
    for context in ("table a has no client column", "table b has no client column"):
        with pytest.raises(UserError, match=context):
            ms.unscoped(context)
    ok = load_mappings(write(tmp_path, "ok.csv", "old_email,new_email,client_id\na@x.com,b@x.com,1\n"))
    assert ok.unscoped("x") is ok.unscoped("y")
    assert ok == load_mappings(tmp_path / "ok.csv")  # the cache is not a field


# Large inputs: correctness at size. Speed is measured by benchmarks, not asserted in tests.


def test_large_file_loads(tmp_path: Path) -> None:
    n = 100_000
    lines = ["old_email,new_email,client_id"]
    # Chains through global mappings plus per-client entries exercise the scope walk.
    lines += [f"user{i}@old.example.com,user{i + 1}@old.example.com," for i in range(n // 2)]
    lines += [f"c{i}@x.com,d{i}@x.com,{i % 1000}" for i in range(n // 2)]
    path = write(tmp_path, "m.csv", "\n".join(lines) + "\n")
    ms = load_mappings(path, "casefold")
    assert len(ms.unscoped(CONTEXT)) == n
    assert len(ms.mappings) == n


def test_many_clients_into_long_global_chain_loads(tmp_path: Path) -> None:
    # Every client's edge leads into the same long global chain: walking the chain once per client would be
    # clients x chain length.
    n = 30_000
    entries = [{"old": f"g{i}@x.com", "new": f"g{i + 1}@x.com"} for i in range(n)]
    entries += [{"old": f"c{i}@x.com", "new": "g0@x.com", "client_id": i} for i in range(n)]
    path = write(tmp_path, "m.json", json.dumps(entries))
    ms = load_mappings(path)
    assert len(ms.mappings) == 2 * n


def _brute_force_cycles(entries: list[tuple[str, str, str | None]]) -> set[frozenset[tuple[str, str]]] | None:
    """Cycles per scope the slow, obvious way (None when some old has two news in a scope)."""
    cycles: set[frozenset[tuple[str, str]]] = set()
    for scope in [None, *sorted({c for _, _, c in entries if c is not None})]:
        edges: dict[str, str] = {}
        for old, new, client in entries:
            if (client is None or client == scope) and edges.setdefault(old, new) != new:
                return None
        for start in edges:
            walk: list[str] = []
            node = start
            while node in edges and node not in walk:
                walk.append(node)
                node = edges[node]
            if node in walk:
                cycles.add(frozenset((k, edges[k]) for k in walk[walk.index(node) :]))
    return cycles


def test_scoped_cycles_match_brute_force(tmp_path: Path) -> None:
    # The per-client search jumps over global chains; compare it with the obvious search on random graphs.
    rng = random.Random(7)
    addresses = [f"{c}@x.com" for c in "abcde"]
    path = tmp_path / "m.json"
    for _ in range(1500):
        entries: list[tuple[str, str, str | None]] = []
        for _ in range(rng.randint(1, 7)):
            old, new = rng.sample(addresses, 2)
            entry = (old, new, rng.choice([None, None, "1", "2", "3"]))
            if entry not in entries:
                entries.append(entry)
        path.write_text(json.dumps([{"old": o, "new": n, "client_id": c} for o, n, c in entries]))
        expected = _brute_force_cycles(entries)
        try:
            load_mappings(path)
            problems: list[str] = []
        except UserError as e:
            problems = e.problems
        if expected is None:
            assert any("conflicts with" in p for p in problems), entries
            continue
        found = set()
        for p in problems:
            assert "cycle" in p, (entries, p)
            wheres = p.split("(entries ")[1].split(")")[0].split(", ")
            found.add(frozenset(entries[int(w.strip("[]"))][:2] for w in wheres))
        assert found == expected, entries
