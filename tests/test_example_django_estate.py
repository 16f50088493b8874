"""The Django + django-allauth example (examples/django) end to end against real PostgreSQL.

The tables as Django's and allauth's migrations create them, seeded with a site before its domain moves, discovered,
planned with the example's own targets.yaml, reviewed in plan.md and applied; then every table is compared whole
with the rows it must hold.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from example_estates import changed, load_example, table
from helpers import apply_confirmed, plan_doc, refused

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "django"

# Only a connection: what a person gives `discover` before any targets.yaml exists.
DISCOVER = """\
version: 1
mappings: email_mappings.json
postgres:
  - name: django
    dsn: ${DJANGO_DSN}
"""


def load(db: Any, ws: Any) -> None:
    load_example(db, ws, EXAMPLE, "DJANGO_DSN")


def test_discover_proposes_the_address_columns(db: Any, ws: Any) -> None:
    load(db, ws)
    (ws.path / "discover.yaml").write_text(DISCOVER)
    r = ws.run("discover", "--targets", "discover.yaml", "--json")
    assert r.code == 0, r.out + r.err
    proposed = {
        (tb["table"], c["name"], c["path"])
        for t in json.loads(r.out)["targets"]
        for tb in t["tables"]
        for c in tb["columns"]
        if c["proposed"]
    }
    assert proposed == {
        ("public.auth_user", "email", None),
        ("public.auth_user", "username", None),  # right: half the accounts signed up with the address as username
        ("public.account_emailaddress", "email", None),
        # The one false positive: the provider's profile (Google, GitHub) as sent at the last login. It does hold
        # an address, but it is the provider's copy, rewritten at the next login; targets.yaml leaves it out.
        ("public.socialaccount_socialaccount", "extra_data", "email"),
    }


def test_plan_review_and_apply_leave_exactly_the_expected_rows(db: Any, ws: Any) -> None:
    load(db, ws)
    before = {t: table(db, t) for t in ("auth_user", "account_emailaddress", "socialaccount_socialaccount")}

    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    doc = plan_doc(plan)
    assert Counter((a["table"], a["column"], a["kind"]) for a in doc["actions"]) == {
        ("public.auth_user", "email", "update"): 8,
        ("public.auth_user", "username", "update"): 4,  # the accounts whose username is their address
        ("public.account_emailaddress", "email", "update"): 7,
    }
    assert sorted((s["table"], s["key"]["id"], s["column"]) for s in doc["skipped"]) == [
        ("public.account_emailaddress", 8, "email"),  # samantha@: sam@'s verified row takes the address first
        ("public.account_emailaddress", 9, "email"),  # carol@: c.jones@ is verified by Carol's other account
        ("public.auth_user", 7, "email"),  # samantha: her username would collide with sam's, so the whole row stays
        ("public.auth_user", 7, "username"),
    ]

    # What the reviewer reads: the headline, no deletes, and each skipped row with the row that holds its address.
    md = (plan.parent / "plan.md").read_text()
    assert "**19 updates, 4 skipped in 1 target**" in md
    assert "delete" not in md
    lines = md.splitlines()
    assert (
        "| django / public.account_emailaddress | `id=9` | email | `carol@northwind.io` → `c.jones@northwind.io` | "
        '`unique index unique_verified_email: email="c.jones@northwind.io" is already held by the row with key '
        '{"id":10}` |'
    ) in lines
    assert (
        "| django / public.auth_user | `id=7` | username | `samantha@northwind.io` → `sam.taylor@northwind.com` | "
        '`unique index auth_user_username_key: username="sam.taylor@northwind.com" is also planned for the row with '
        'key {"id":6}, whose mapping comes first` |'
    ) in lines
    # match: casefold found the account whose address was typed Alice@northwind.io.
    assert "| 1 | `id=3` | email | update | `Alice@northwind.io` → `alice@northwind.com` |" in lines

    r = apply_confirmed(ws, plan)
    assert r.code == 0, r.out + r.err

    assert table(db, "auth_user") == changed(
        before["auth_user"],
        {
            1: {"email": "ops@northwind.com"},
            2: {"email": "alice@northwind.com", "username": "alice@northwind.com"},
            3: {"email": "alice@northwind.com"},  # Alice@northwind.io: the duplicate account moves too
            4: {"email": "jo.king@northwind.io", "username": "jo.king@northwind.io"},  # the chain's first hop...
            5: {"email": "jo.king@northwind.com", "username": "jo.king@northwind.com"},  # ...after its second
            6: {"email": "sam.taylor@northwind.com", "username": "sam.taylor@northwind.com"},
            # 7 (samantha): skipped. 8 (carol): email is not unique in Django, so it moves although the allauth
            # row below is skipped; the two tables now disagree about Carol, as plan.md's skipped list says.
            8: {"email": "c.jones@northwind.io"},
            10: {"email": "dave.lee@northwind.com"},
        },
    )
    assert table(db, "account_emailaddress") == changed(
        before["account_emailaddress"],
        {
            1: {"email": "ops@northwind.com"},
            2: {"email": "alice@northwind.com"},
            3: {"email": "alice@northwind.com"},  # unverified: unique_verified_email does not cover it
            4: {"email": "jo.king@northwind.io"},
            5: {"email": "jo.king@northwind.com"},
            7: {"email": "sam.taylor@northwind.com"},
            11: {"email": "dave.lee@northwind.com"},
            # 8 (samantha@) and 9 (carol@): skipped; 6, 10, 12: not mapped
        },
    )
    assert table(db, "socialaccount_socialaccount") == before["socialaccount_socialaccount"]  # not configured


def test_deleting_users_on_a_conflict_is_refused(db: Any, ws: Any) -> None:
    load(db, ws)
    targets = ws.path / "targets.yaml"
    text = targets.read_text()
    targets.write_text(text.replace("on_conflict: skip", "on_conflict: delete", 1))  # auth_user's, the first
    # Deleting Samantha's account would leave her allauth address pointing at nothing: refused at plan time, nothing
    # written, naming the foreign key, the table and what to do.
    message = refused(ws, [db], ("plan",), "the plan would break foreign keys in target 'django'")
    assert message.splitlines()[1:] == [
        "  - foreign key account_emailaddress_user_id_2c513194_fk_auth_user_id: 1 row(s) of account_emailaddress "
        "reference rows of public.auth_user that on_conflict: delete would remove (keys ['{\"id\": 7}']); "
        "set on_conflict: skip for public.auth_user or reassign those rows first",
    ]


def test_why_addresses_are_skipped_not_deleted(db: Any, ws: Any) -> None:
    # With on_conflict: delete for account_emailaddress, plan.md shows the reviewer what would go: Carol's verified
    # primary address (and Samantha's). That is the row a person needs, so the example uses skip.
    load(db, ws)
    targets = ws.path / "targets.yaml"
    text = targets.read_text()
    at = text.index("table: public.account_emailaddress")
    targets.write_text(text[:at] + text[at:].replace("on_conflict: skip", "on_conflict: delete", 1))
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    md = (plan.parent / "plan.md").read_text()
    assert "**19 updates, 2 deletes, 2 skipped in 1 target**" in md
    assert (
        "| 2 | django / public.account_emailaddress | `id=9` | email | `carol@northwind.io` → `c.jones@northwind.io` | "
        '`unique index unique_verified_email: email="c.jones@northwind.io" is already held by the row with key '
        '{"id":10}` | `{"email": "carol@northwind.io", "id": 9, "primary": true, "user_id": 8, "verified": true}` |'
    ) in md.splitlines()
    deletes = {a["key"]["id"]: a["row"] for a in plan_doc(plan)["actions"] if a["kind"] == "delete-on-conflict"}
    assert deletes == {
        8: {"email": "samantha@northwind.io", "id": 8, "primary": True, "user_id": 7, "verified": True},
        9: {"email": "carol@northwind.io", "id": 9, "primary": True, "user_id": 8, "verified": True},
    }
