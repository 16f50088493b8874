"""plan.md for the reviewer of a pull request (issue 17), and the terminal's text tables, from real plans.

Plans are made by the real CLI against the embedded PostgreSQL and the moto DynamoDB server, and plan.md is read
back. Markdown is checked by parsing it (markdown-it, CommonMark with GFM tables, which rich brings in): what a
reader sees, not only substrings.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from rich.cells import cell_len

from emailsync.config import load_targets
from emailsync.engine.verify import counts, verify_plan
from emailsync.planfile import read_plan
from emailsync.render import report_lines, summary_lines, verify_lines, verify_markdown

# What GitHub would turn into a mailto link (generously: any word@domain.tld).
ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
BOX = set("─━│┃┄┅┆┇┈┉┊┋┌┍┎┏┐┑┒┓└┕┖┗┘┙┚┛├┝┞┟┠┡┢┣┤┥┦┧┨┩┪┫┬┭┮┯┰┱┲┳┴┵┶┷┸┹┺┻┼╋═║╒╓╔╕╖╗╘╙╚╛╜╝╞╟╠╡╢╣╤╥╦╧╨╩╪╫╬╭╮╯╰")

ESTATE = """version: 1
mappings: m.json
postgres:
  - name: core
    dsn: ${CORE_DSN}
    tables:
      - table: people
        columns: [email, manager_email]
        on_conflict: delete
  - name: leave
    dsn: ${LEAVE_DSN}
    tables:
      - table: requests
        columns: [email]
        on_conflict: skip
dynamodb:
  - name: auth
    endpoint_url: ${DYNAMODB_ENDPOINT}
    region: us-east-1
    tables:
      - table: userAuthentication
        live: true
        client_attribute: clientId
        attributes: [email]
      - table: profiles
        attributes: [email]
"""
MAPPINGS = {
    "ann@oldco.com": "ann@newco.com",
    "bob@oldco.com": "bob@newco.com",
    "cyd@oldco.com": "cyd@newco.com",
    "dot@oldco.com": "dot@newco.com",
}
ADDRESSES = set(MAPPINGS) | set(MAPPINGS.values())


@pytest.fixture
def estate(ws: Any, make_db: Any, ddb: Any) -> dict[str, Any]:
    """Three targets: core (updates, a delete, a row updated in step 1 and deleted in step 2), leave (an update and
    a skipped conflict), auth (two live swaps on the login table and a merge-and-move)."""
    core, leave = make_db(), make_db()
    core.execute("CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE, manager_email text)")
    core.execute(
        "INSERT INTO people VALUES (1, 'ann@oldco.com', 'bob@oldco.com'), (2, 'bob@oldco.com', NULL),"
        " (3, 'cyd@oldco.com', 'ann@oldco.com'), (4, 'cyd@newco.com', NULL)"
    )
    leave.execute("CREATE TABLE requests (id int PRIMARY KEY, email text UNIQUE)")
    leave.execute("INSERT INTO requests VALUES (1, 'ann@oldco.com'), (2, 'dot@oldco.com'), (3, 'dot@newco.com')")
    ddb.create("userAuthentication", "email", "clientId")
    ddb.put(
        "userAuthentication",
        {"email": "ann@oldco.com", "clientId": "1", "pwd": "h1"},
        {"email": "bob@oldco.com", "clientId": "1", "pwd": "h2"},
    )
    ddb.create("profiles", "email")
    ddb.put("profiles", {"email": "cyd@oldco.com", "desk": "42"})
    ws.monkeypatch.setenv("CORE_DSN", core.dsn)
    ws.monkeypatch.setenv("LEAVE_DSN", leave.dsn)
    ws.monkeypatch.delenv("EMAILSYNC_PLAN_KEY", raising=False)
    ws.targets(ESTATE)
    ws.mappings(MAPPINGS, name="m.json")
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    return {"plan": plan, "md": plan.with_name("plan.md").read_text(), "data": ws.plan_json(plan), "core": core}


# --- reading Markdown as a reader sees it --------------------------------------------------------------------------


def _md() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


def _outside_code(md: str) -> list[str]:
    """Every piece of text a reader sees outside code spans and code blocks (where GitHub links addresses)."""
    out: list[str] = []
    for tok in _md().parse(md):
        if tok.type in ("html_block",):
            out.append(tok.content)
        for child in tok.children or []:
            if child.type in ("text", "html_inline"):
                out.append(child.content)
    return out


def _tables(md: str) -> list[list[list[tuple[str, list[str]]]]]:
    """Each table as rows of cells; a cell is (its plain text, the contents of its code spans)."""
    tables: list[list[list[tuple[str, list[str]]]]] = []
    row: list[tuple[str, list[str]]] = []
    inside = False
    for tok in _md().parse(md):
        if tok.type in ("table_open", "table_close"):
            inside = tok.type == "table_open"
            tables += [[]] if inside else []
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "tr_close":
            tables[-1].append(row)
        elif tok.type == "inline" and inside:
            kids = tok.children or []
            row.append(("".join(k.content for k in kids), [k.content for k in kids if k.type == "code_inline"]))
    return tables


def _section(md: str, heading: str) -> str:
    start = md.index(heading)
    end = md.find("\n## ", start + len(heading))
    return md[start : end if end != -1 else len(md)]


# --- 1. the headline -------------------------------------------------------------------------------------------------


def test_headline_is_the_first_line_under_the_title_and_counts_every_kind(estate: dict[str, Any]) -> None:
    md, data = estate["md"], estate["data"]
    kinds = Counter(a["kind"] for a in data["actions"])
    assert kinds == {"update": 5, "delete-on-conflict": 1, "live-swap": 2, "merge-and-move": 1}
    assert len(data["skipped"]) == 1
    lines = md.splitlines()
    assert lines[0] == "# emailsync plan" and lines[1] == ""
    assert lines[2] == "**5 updates, 1 delete, 1 merge, 2 live swaps, 1 skipped across 3 targets**"
    # hashes, inputs and paths come after it
    assert md.index(lines[2]) < md.index(data["digest"]) < md.index("- inputs:") < md.index("## Summary")


def test_headline_pluralises_and_says_when_nothing_changes(ws: Any, db: Any) -> None:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees VALUES (1, 'a@old.com'), (2, 'b@new.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n  on_conflict: skip\n")
    ws.mappings({"a@old.com": "a@new.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    assert plan.with_name("plan.md").read_text().splitlines()[2] == "**1 update in 1 target**"
    ws.mappings({"b@old.com": "b@new.com"})  # nobody holds b@old.com: nothing at all to do
    r, plan = ws.plan()
    lines = plan.with_name("plan.md").read_text().splitlines()
    assert lines[2].startswith("**No changes**") and "## Summary" not in lines
    db.execute("INSERT INTO employees VALUES (3, 'b@old.com')")  # b@new.com is taken: skipped, nothing changes
    r, plan = ws.plan()
    assert plan.with_name("plan.md").read_text().splitlines()[2] == "**No changes, 1 skipped in 1 target**"


# --- 2. the summary by target, risky kinds marked ------------------------------------------------------------------


def test_summary_has_a_table_and_a_total_per_target_with_risky_kinds_marked(estate: dict[str, Any]) -> None:
    md, data = estate["md"], estate["data"]
    summary = _section(md, "## Summary")
    headings = re.findall(r"^### (.+)$", summary, re.M)
    assert headings == ["core: 4 updates, 1 delete", "leave: 1 update, 1 skipped", "auth: 1 merge, 2 live swaps"]
    tables = _tables(summary)
    assert len(tables) == 3
    per_target = Counter(a["target"] for a in data["actions"]) + Counter(s["target"] for s in data["skipped"])
    # in the order of the headings (the plan file's lines are sorted by target name, plan.md keeps targets.yaml's)
    order = [h.split(":")[0] for h in headings]
    assert sorted(order) == sorted(per_target)
    for target, table in zip(order, tables, strict=True):
        n = per_target[target]
        head, *rows, total = [[text for text, _ in row] for row in table]
        assert head == ["table", "column", "kind", "count"]
        assert total == ["total", "", "", str(n)], target
        assert sum(int(r[3]) for r in rows) == n
    kinds = {r[2] for t in tables for r in ([text for text, _ in row] for row in t[1:-1])}
    assert kinds == {"update", "⚠ delete-on-conflict", "skipped-conflict", "⚠ live-swap", "⚠ merge-and-move"}
    # the risky kinds are marked in the details too, and the live section still comes first
    assert "| ⚠ merge-and-move |" in _section(md, "## auth / profiles (DynamoDB)")
    assert md.index("## ⚠ LIVE") < md.index("## Rows to be deleted") < md.index("## core / public.people")


# --- 3. the reason of a delete or a skip, whole ----------------------------------------------------------------------


def test_reason_names_the_row_holding_the_address_in_full(estate: dict[str, Any]) -> None:
    md, data = estate["md"], estate["data"]
    (delete,) = [a for a in data["actions"] if a["kind"] == "delete-on-conflict"]
    (skip,) = data["skipped"]
    assert len(delete["reason"]) > 80 and delete["reason"].endswith('held by the row with key {"id":4}')
    assert skip["reason"].endswith('held by the row with key {"id":3}')
    cells = {code for t in _tables(md) for row in t for _, codes in row for code in codes}
    assert delete["reason"] in cells and skip["reason"] in cells


# --- 4. a row updated, then deleted: once, with both ------------------------------------------------------------------


def test_a_row_updated_then_deleted_is_shown_once_with_both_changes(estate: dict[str, Any]) -> None:
    md, data = estate["md"], estate["data"]
    # the plan file orders lines by kind, not by step: sorted by step here
    row3 = sorted((a["step"], a["kind"], a["column"]) for a in data["actions"] if a["key"] == {"id": 3})
    assert row3 == [(1, "update", "manager_email"), (2, "delete-on-conflict", "email")]
    assert md.count("`id=3`") == 1
    (line,) = [ln for ln in md.splitlines() if "`id=3`" in ln]
    assert md.index(line) > md.index("## Rows to be deleted")
    assert "`cyd@oldco.com` → `cyd@newco.com`" in line  # the delete's own change
    assert "step 1: manager_email `ann@oldco.com` → `ann@newco.com`" in line  # and the update before it
    assert "`id=3`" not in _section(md, "## core / public.people")
    # every other row is where it was; the truncation count still counts every action
    assert "`id=1`" in _section(md, "## core / public.people")


# --- 5. addresses in code spans -------------------------------------------------------------------------------------


def test_no_address_outside_a_code_span(estate: dict[str, Any]) -> None:
    md = estate["md"]
    seen = [m for text in _outside_code(md) for m in ADDRESS.findall(text)]
    assert not seen, seen
    codes = {c for t in _tables(md) for row in t for _, cs in row for c in cs}
    assert {a for c in codes for a in ADDRESS.findall(c)} >= ADDRESSES  # every address is still there, in code


def test_redacted_plan_md_hides_every_address_and_keeps_the_headline(estate: dict[str, Any], ws: Any) -> None:
    r = ws.run("show", str(estate["plan"]), "--redact")
    assert r.code == 0, r.err
    leaked = set(ADDRESS.findall(r.out)) & ADDRESSES  # whole tokens, as GitHub would link them
    assert not leaked, (leaked, r.out)
    lines, plain = r.out.splitlines(), estate["md"].splitlines()
    assert lines[2] == plain[2]  # the same headline, with no address in it
    assert _section(r.out, "## Summary") == _section(estate["md"], "## Summary")
    hashed = [m for text in _outside_code(r.out) for m in ADDRESS.findall(text)]
    assert not hashed, hashed
    assert re.search(r"`h-[0-9a-f]{12}@oldco\.com` → `h-[0-9a-f]{12}@newco\.com`", r.out)


def test_values_with_backticks_pipes_and_newlines_render_as_valid_markdown(ws: Any, db: Any) -> None:
    codes = ["a`b|c``d", "`starts|ends`", "two\nlines", " padded ", "x\\|y"]
    db.execute("CREATE TABLE invites (code text PRIMARY KEY, email text)")
    for i, code in enumerate(codes):
        db.execute("INSERT INTO invites VALUES (%s, %s)", (code, f"u{i}@old.com"))
    ws.postgres_targets({"core": db}, "- table: invites\n  columns: [email]\n")
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(len(codes))})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    md = plan.with_name("plan.md").read_text()
    (table,) = _tables(_section(md, "## core / public.invites"))
    head, *rows = table
    assert len(head) == 5 and all(len(row) == 5 for row in rows)  # no cell split by a pipe or a line break
    shown = {row[1][1][0]: row[4][1] for row in rows}  # the key's code span: the old and new values' code spans
    want = {f"code={c}".replace("\n", "\\n"): [f"u{i}@old.com", f"u{i}@new.com"] for i, c in enumerate(codes)}
    assert shown == want


# --- text tables for the terminal ------------------------------------------------------------------------------------


def _starts(line: str) -> list[int]:
    """The terminal columns (display cells) where each cell of a row starts: cells are 2+ spaces apart."""
    return [cell_len(line[: m.start()]) for m in re.finditer(r"(?:^|(?<=  ))\S", line)]


def _assert_aligned(lines: list[str]) -> None:
    assert lines and not BOX & set("".join(lines)) and not any("\x1b" in ln for ln in lines), lines
    assert all(ln == ln.rstrip() for ln in lines)
    header = _starts(lines[0])
    for ln in lines[1:]:
        assert set(_starts(ln)) <= set(header) and _starts(ln)[0] == 0, (lines[0], ln)


def test_text_tables_are_aligned_columns_without_borders(ws: Any, db: Any) -> None:
    db.execute("CREATE TABLE 社員 (id int PRIMARY KEY, email text)")
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO 社員 VALUES (1, 'a@old.com'), (2, 'b@old.com'), (3, 'c@old.com')")
    db.execute("INSERT INTO employees VALUES (1, 'a@old.com')")
    ws.postgres_targets({"core": db}, "- table: 社員\n  columns: [email]\n- table: employees\n  columns: [email]\n")
    ws.mappings({"a@old.com": "a@new.com", "b@old.com": "b@new.com", "c@old.com": "c@new.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    p = read_plan(plan)
    lines = summary_lines(p)
    assert lines[0].split() == ["target", "table", "column", "kind", "count"] and len(lines) == 3
    _assert_aligned(lines)
    assert r.out.startswith("\n".join(lines) + "\n")  # what `plan` prints

    r = ws.run("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.err
    report = json.loads(plan.with_name("report.json").read_text())
    lines = report_lines(report)
    _assert_aligned(lines)
    assert "\n".join(lines) in r.out

    db.execute("UPDATE 社員 SET email = 'someone@else.com' WHERE id = 2")
    loaded = load_targets(Path("targets.yaml"))
    states = verify_plan(p, loaded)
    lines = verify_lines(p, states, counts(states))
    assert lines[0].endswith("3 after (applied), 0 before (not applied), 1 drifted")
    table = lines[1 : lines.index("\nDrifted (neither as planned nor as applied):")]
    _assert_aligned(table)
    assert [ln.split() for ln in table[1:]] == [
        ["core", 'public."社員"', "after", "2"],
        ["core", 'public."社員"', "drifted", "1"],
        ["core", "public.employees", "after", "1"],
    ]


def test_text_table_cells_are_never_wrapped_cut_or_read_as_markup(ws: Any, db: Any) -> None:
    long_table = "t_" + "x" * 60  # PostgreSQL names stop at 63 bytes; the line is longer than a terminal
    db.execute(f'CREATE TABLE {long_table} (id int PRIMARY KEY, "[bold]mail:smile:" text)')
    db.execute(f"INSERT INTO {long_table} VALUES (1, 'a@old.com')")
    ws.postgres_targets({"core": db}, f'- table: {long_table}\n  columns: ["[bold]mail:smile:"]\n')
    ws.mappings({"a@old.com": "a@new.com"})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    lines = summary_lines(read_plan(plan))
    assert len(lines[1]) > 80 and lines[1].split() == [
        "core",
        f"public.{long_table}",
        "[bold]mail:smile:",
        "update",
        "1",
    ]
    _assert_aligned(lines)


# --- verify --format markdown -----------------------------------------------------------------------------------------


def test_verify_markdown_shows_counts_states_and_drifted_actions(ws: Any, db: Any) -> None:
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE)")
    db.execute("INSERT INTO employees SELECT g, 'u' || g || '@old.com' FROM generate_series(1, 4) g")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({f"u{i}@old.com": f"u{i}@new.com" for i in range(1, 5)})
    r, plan = ws.plan()
    assert r.code == 0 and ws.run("apply", str(plan), "--auto-approve").code == 0
    db.execute("UPDATE employees SET email = 'some|one`else@x.com' WHERE id = 1")
    db.execute("UPDATE employees SET email = 'u2@old.com' WHERE id = 2")  # back to before: would be applied again
    db.execute("UPDATE employees SET email = 'third@x.com' WHERE id = 3")
    p = read_plan(plan)
    states = verify_plan(p, load_targets(Path("targets.yaml")))
    c = counts(states)
    md = verify_markdown(p, states, c)
    lines = md.splitlines()
    assert lines[0] == "# emailsync verify" and lines[1] == ""
    assert lines[2] == "**4 actions: 1 after (applied), 1 before (not applied), 2 drifted**"
    assert f"`{p.digest}`" in md
    state_table, drifted = _tables(md)
    assert [[t for t, _ in row] for row in state_table] == [
        ["target", "table", "state", "count"],
        ["core", "public.employees", "after", "1"],
        ["core", "public.employees", "before", "1"],
        ["core", "public.employees", "⚠ drifted", "2"],
    ]
    assert [row[2][1] for row in drifted[1:]] == [["id=1"], ["id=3"]]  # keys in code spans
    details = {s.key["id"]: s.detail for s in states if s.state == "drifted" and s.key is not None}
    assert len(details) == 2
    assert all(details.values()) and [row[4][1] for row in drifted[1:]] == [[details[1]], [details[3]]]
    assert "some|one`else@x.com" in details[1]  # the detail holds the odd address whole, in a valid cell
    assert not [m for text in _outside_code(md) for m in ADDRESS.findall(text)]
    # what verify_lines says, the same numbers
    assert verify_lines(p, states, c)[0].endswith("1 after (applied), 1 before (not applied), 2 drifted")

    capped = verify_markdown(p, states, c, limit=1)
    assert len(_tables(capped)[1]) == 2  # the header and one drifted action
    assert "1 of 2 drifted actions shown" in capped and "--format json" in capped


def test_verify_format_markdown_on_the_command_line_prints_markdown(ws: Any, db: Any) -> None:
    """`verify --format markdown` was accepted and printed text; it prints the Markdown rendering, exit code kept."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@old.com'), (2, 'b@old.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    ws.mappings({"a@old.com": "a@new.com", "b@old.com": "b@new.com"})
    r, plan = ws.plan()
    assert r.code == 0
    before = ws.run("verify", str(plan), "--format", "markdown")
    assert before.code == 3 and before.out.startswith("# emailsync verify\n\n**2 actions: 0 after (applied), 2 before")
    assert ws.run("apply", str(plan), "--auto-approve").code == 0
    after = ws.run("verify", str(plan), "--format", "markdown")
    p = read_plan(plan)
    assert after.code == 0
    assert (
        after.out
        == verify_markdown(
            p, verify_plan(p, load_targets(Path("targets.yaml"))), {"after": 2, "before": 0, "drifted": 0}
        )
        + "\n"
    )
    assert db.rows("SELECT id, email FROM employees ORDER BY id") == [(1, "a@new.com"), (2, "b@new.com")]


def test_plan_md_fits_a_comment_however_many_warnings(ws: Any, db: Any) -> None:
    """Every mapping whose old and new address are the same warns; 2,000 of them still give a plan.md that fits a
    pull-request comment, with the rest counted."""
    db.execute("CREATE TABLE employees (id int PRIMARY KEY, email text)")
    db.execute("INSERT INTO employees VALUES (1, 'a@old.com')")
    ws.postgres_targets({"core": db}, "- table: employees\n  columns: [email]\n")
    same = {
        f"person.with.a.rather.long.name.{i}@example.com": f"person.with.a.rather.long.name.{i}@example.com"
        for i in range(2000)
    }
    ws.mappings({"a@old.com": "a@new.com", **same})
    r, plan = ws.plan()
    assert r.code == 0, r.err
    warned = len(read_plan(plan).warnings)
    assert warned >= 2000
    md = (plan.parent / "plan.md").read_text()
    assert len(md) < 60_000
    assert f"and {warned - 50} more" in md
    assert "`a@old.com` → `a@new.com`" in md  # the change itself is still there


def test_plan_md_lists_the_apply_order_stage_by_stage_live_tables_last(ws, db, ddb):
    """The order apply runs in (stages.py) is shown to the reviewer from the same data apply walks: PostgreSQL
    databases, then DynamoDB tables, then the live table last, each with its targets and action counts."""
    from helpers import mixed_estate

    plan = mixed_estate(ws, db, ddb)
    md = plan.with_name("plan.md").read_text()
    order = md.split("## Apply order\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split(":", 1)[0] for line in order] == [
        "1. PostgreSQL databases, one transaction each (several at once with --parallel)",
        "2. DynamoDB tables, conditional writes and transactions, target by target",
        "3. live tables last, after a separate confirmation, each swap verified before the old item goes",
    ]
    assert order[0].endswith("1 action(s) on `core` (1)")
    assert order[1].endswith("1 action(s) on `auth` (1)") and order[2].endswith("1 action(s) on `auth` (1)")


@pytest.mark.parametrize("spill", [False, True])
def test_plan_md_made_from_the_sections_it_needs_is_the_one_show_renders_from_the_file(ws, db, ddb, monkeypatch, spill):
    """plan.md is rendered while planning from the deletes', the DynamoDB targets' and the deleted rows' tables'
    sections only (held in memory, or sorted in runs on disk); `show --format markdown` renders it from the file,
    reading every line. Both are the same document."""
    from helpers import mixed_estate

    import emailsync.plan

    if spill:
        monkeypatch.setattr(emailsync.plan, "SPILL_BYTES", 400)
    db.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text UNIQUE, manager text)")
    db.execute("INSERT INTO accounts VALUES (1, 'a@o.com', 'a@o.com'), (2, 'a@n.com', NULL), (3, 'z@o.com', NULL)")
    plan = mixed_estate(ws, db, ddb)  # plans employees only; re-planned below with accounts too
    ws.targets(
        plan.parent.parent.parent.joinpath("targets.yaml")
        .read_text()
        .replace(
            "      - {table: employees, columns: [email]}",
            "      - {table: employees, columns: [email]}\n      - {table: accounts, columns: [email, manager]}",
        )
    )
    r, plan = ws.plan()
    assert r.code == 0, r.err
    md = plan.with_name("plan.md").read_text()
    assert "Rows to be deleted" in md and "LIVE" in md
    shown = ws.run("show", str(plan), "--format", "markdown")
    assert shown.code == 0, shown.err
    # The details (live swaps, deletes with the rows' other changes, every table) are the same text; the header
    # differs only in the order targets are listed in, and show adds the apply history.
    details = md[md.index("## ⚠ LIVE") :].rstrip("\n")
    assert "accounts" in details and details in shown.out
