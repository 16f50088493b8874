"""The GitLab example (examples/gitlab) end to end against real PostgreSQL.

users and emails as GitLab's db/structure.sql creates them, seeded with an instance before its domain moves,
discovered, planned with the example's own targets.yaml, reviewed in plan.md and applied; then both tables are
compared whole with the rows they must hold.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from example_estates import changed, load_example, table
from helpers import apply_confirmed, plan_doc, refused

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gitlab"

# Only a connection: what a person gives `discover` before any targets.yaml exists.
DISCOVER = """\
version: 1
mappings: email_mappings.json
postgres:
  - name: gitlab
    dsn: ${GITLAB_DSN}
"""


def set_on_conflict(ws: Any, table_name: str, policy: str) -> None:
    """Edit the workspace's copy of targets.yaml: `table_name`'s on_conflict becomes `policy`."""
    path = ws.path / "targets.yaml"
    text = path.read_text()
    at = text.index(f"table: {table_name}\n")
    rest = text[at:]
    start = rest.index("on_conflict: ")
    end = rest.index("\n", start)
    path.write_text(text[:at] + rest[:start] + f"on_conflict: {policy}" + rest[end:])


def load(db: Any, ws: Any) -> None:
    load_example(db, ws, EXAMPLE, "GITLAB_DSN")


def test_discover_proposes_the_address_columns(db: Any, ws: Any) -> None:
    load(db, ws)
    (ws.path / "discover.yaml").write_text(DISCOVER)
    r = ws.run("discover", "--targets", "discover.yaml", "--json")
    assert r.code == 0, r.out + r.err
    proposed = {
        (tb["table"], c["name"])
        for t in json.loads(r.out)["targets"]
        for tb in t["tables"]
        for c in tb["columns"]
        if c["proposed"]
    }
    assert proposed == {
        ("public.users", "email"),
        ("public.users", "notification_email"),
        ("public.users", "public_email"),
        ("public.users", "commit_email"),
        ("public.users", "unconfirmed_email"),
        ("public.emails", "email"),
        # The one false positive: GitLab derives detumbled_email from email (+tag removed) for abuse checks; a
        # mapping must not write it (alice+commits@gmail.com detumbles to alice@gmail.com). targets.yaml leaves it out.
        ("public.emails", "detumbled_email"),
    }


def test_plan_review_and_apply_leave_exactly_the_expected_rows(db: Any, ws: Any) -> None:
    load(db, ws)
    before = {t: table(db, t) for t in ("users", "emails")}

    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    doc = plan_doc(plan)
    assert Counter((a["table"], a["column"], a["kind"]) for a in doc["actions"]) == {
        ("public.users", "email", "update"): 8,
        ("public.users", "notification_email", "update"): 7,
        ("public.users", "public_email", "update"): 3,
        ("public.users", "commit_email", "update"): 3,
        ("public.users", "unconfirmed_email", "update"): 1,
        ("public.emails", "email", "update"): 6,
        ("public.emails", "email", "delete-on-conflict"): 2,
    }
    assert sorted((s["table"], s["key"]["id"], s["column"]) for s in doc["skipped"]) == [
        ("public.emails", 11, "email"),  # Patricia's secondary: Pat's users.email takes pat@initech.io (unique_groups)
        ("public.users", 6, "email"),  # Samantha: Sam's mapping comes first; her whole row stays
        ("public.users", 6, "notification_email"),
    ]
    deletes = {
        a["key"]["id"]: (a["row"]["user_id"], a["row"]["email"])
        for a in doc["actions"]
        if a["kind"] == "delete-on-conflict"
    }
    assert deletes == {
        7: (6, "samantha@initech.com"),  # Samantha's own primary, losing to Sam's row (another user!)
        8: (7, "carol@initech.com"),  # Carol's old address: she already has c.jones@initech.com (her own row 9)
    }

    # What the reviewer reads: the headline, the rows to be deleted with the row holding their address, the skips.
    md = (plan.parent / "plan.md").read_text()
    assert "**28 updates, 2 deletes, 3 skipped in 1 target**" in md
    lines = md.splitlines()
    assert any(
        line.startswith(
            "| 2 | gitlab / public.emails | `id=8` | email | `carol@initech.com` → `c.jones@initech.com` | "
            '`unique index index_emails_on_email: email="c.jones@initech.com" is already held by the row with key '
            '{"id":9}` | `{"confirmation_sent_at": null, '
        )
        for line in lines
    ), md
    assert (
        "| gitlab / public.users | `id=6` | email | `samantha@initech.com` → `sam.taylor@initech.io` | "
        '`unique index index_users_on_email: email="sam.taylor@initech.io" is also planned for the row with key '
        '{"id":5}, whose mapping comes first` |'
    ) in lines
    # match: casefold found Dana, whom the mappings file spells Dana.Scully@Initech.com.
    assert "| 1 | `id=12` | email | update | `dana.scully@initech.com` → `dana.scully@initech.io` |" in lines

    r = apply_confirmed(ws, plan)
    assert r.code == 0, r.out + r.err

    assert table(db, "users") == changed(
        before["users"],
        {
            1: {"email": "admin@initech.io", "notification_email": "admin@initech.io"},
            # commit_email alice+commits@gmail.com is not mapped and stays
            2: {
                "email": "alice@initech.io",
                "notification_email": "alice@initech.io",
                "public_email": "alice@initech.io",
            },
            3: {  # the chain's first hop, ordered after the second
                "email": "jo.king@initech.com",
                "notification_email": "jo.king@initech.com",
                "commit_email": "jo.king@initech.com",
            },
            4: {
                "email": "jo.king@initech.io",
                "notification_email": "jo.king@initech.io",
                "public_email": "jo.king@initech.io",
            },
            5: {"email": "sam.taylor@initech.io", "notification_email": "sam.taylor@initech.io"},
            # 6 (Samantha): skipped
            7: {"email": "c.jones@initech.com", "commit_email": "c.jones@initech.com"},
            8: {"email": "pat@initech.io", "notification_email": "pat@initech.io"},
            # 9 (Patricia): her primary is not mapped; her secondary p.ops@ is, in emails
            10: {
                "email": "dana.scully@initech.io",
                "notification_email": "dana.scully@initech.io",
                "public_email": "dana.scully@initech.io",
                "commit_email": "dana.scully@initech.io",
            },
            11: {"unconfirmed_email": "eve@initech.io"},  # the pending change; her confirmed address is not mapped
        },
    )
    assert table(db, "emails") == changed(
        before["emails"],
        {
            # detumbled_email is not configured: every row keeps the old one
            1: {"email": "admin@initech.io"},
            2: {"email": "alice@initech.io"},
            4: {"email": "jo.king@initech.com"},
            5: {"email": "jo.king@initech.io"},
            6: {"email": "sam.taylor@initech.io"},
            # 11 (Patricia's secondary p.ops@): skipped by the unique group, Pat's users.email takes pat@initech.io
            12: {"email": "dana.scully@initech.io"},
        },
        deleted=(7, 8),
    )

    # What GitLab forbids and the unique group prevents: one address on two users across the two tables. Pat's
    # users.email (users 8) keeps pat@initech.io; Patricia's secondary (emails 11, user 9) was left as it was.
    assert (
        "| gitlab / public.emails | `id=11` | email | `p.ops@initech.com` → `pat@initech.io` | "
        '`unique_groups[0] (gitlab-user-addresses): pat@initech.io is taken by public.users {"id":8}, whose mapping '
        "comes first` |"
    ) in lines
    assert (
        db.rows(
            "SELECT u.id, e.id, e.user_id, e.email FROM users u "
            "JOIN emails e ON e.email = u.email AND e.user_id <> u.id"
        )
        == []
    )


def test_deleting_users_on_a_conflict_is_refused(db: Any, ws: Any) -> None:
    load(db, ws)
    set_on_conflict(ws, "public.users", "delete")
    # Deleting Samantha's users row would cascade into emails (ON DELETE CASCADE): refused at plan time, nothing
    # written, naming the foreign key, the table and what to do.
    message = refused(ws, [db], ("plan",), "the plan would break foreign keys in target 'gitlab'")
    assert message.splitlines()[1:] == [
        "  - foreign key fk_emails_user_id: 1 row(s) of emails reference rows of public.users that on_conflict: "
        "delete would remove (keys ['{\"id\": 6}']); set on_conflict: skip for public.users or reassign those rows "
        "first",
    ]


def test_an_exact_match_misses_an_address_spelled_otherwise(db: Any, ws: Any) -> None:
    # Why targets.yaml says match: casefold: GitLab stores dana.scully@initech.com, the mappings file (written by
    # people) says Dana.Scully@Initech.com, and an exact match plans nothing for Dana, without a word.
    load(db, ws)
    path = ws.path / "targets.yaml"
    path.write_text(path.read_text().replace("match: casefold", "match: exact"))
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    assert [a for a in plan_doc(plan)["actions"] if "dana" in json.dumps(a)] == []


def test_plan_md_shows_whose_address_a_delete_removes(db: Any, ws: Any) -> None:
    load(db, ws)
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    md = (plan.parent / "plan.md").read_text()
    (samantha,) = [line for line in md.splitlines() if line.startswith("| 2 | gitlab / public.emails | `id=7` |")]
    # Row 7 is Samantha's (user 6) primary address, deleted because Sam's row (user 5) takes sam.taylor@initech.io:
    # another person's row. A reviewer can only stop that if the line says whose row it is.
    assert '"user_id": 6' in samantha and '"email": "samantha@initech.com"' in samantha
