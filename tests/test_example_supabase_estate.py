"""The Supabase Auth example (examples/supabase) end to end against real PostgreSQL.

auth.users, auth.identities and auth.sessions as Supabase Auth's migrations create them, with the application's
public.profiles and public.team_invites, seeded with a project before its domain moves, discovered, planned with the
example's own targets.yaml, reviewed in plan.md and applied; then every table is compared whole with the rows it must
hold, jsonb documents included.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from example_estates import changed, load_example, table
from helpers import apply_confirmed, plan_doc, refused

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "supabase"

# auth.users ids of seed.sql (Supabase's ids are random UUIDs), by who they are.
ANN = "23713c2a-74ee-432a-a729-6d050754e5bb"  # password and Google
JO = "a1d3a28d-1075-4c0a-b378-38c67d07821d"  # jo@ -> jo.king@northwind.com: the chain's first hop
JO_KING = "acbf903f-6ef4-4f2b-afb8-68fa11ff74e3"  # jo.king@northwind.com -> jo.king@northwind.io
SAM = "8f7013a2-8e83-4962-b764-db848418980f"  # sam@ -> sam.taylor@northwind.io, first
SAMANTHA = "74e568ad-4d73-4ba5-bfee-00feb141e427"  # samantha@ -> sam.taylor@northwind.io: the merge's loser
CAROL = "52d2c0fa-b810-4150-9672-0ce460c6194f"  # carol@ -> c.jones@northwind.io, already C_JONES's
C_JONES = "7e4cedc1-7a07-4ae5-89d7-76948c329b3a"  # Carol's newer account, not mapped
KIM = "2751fa0b-dc5f-4d40-aa5f-054977826926"  # password account, kim@northwind.com
KIM_SSO = "935bc178-a955-49ee-8024-a6d7f2507409"  # SSO account (Okta SAML), kim@northwind.com too
DANA = "34d3976d-64c2-4678-a8fa-178232c9f9e5"  # password and Azure (which spells her Dana.Scully@Northwind.com)
EVE = "a89faccb-1912-47f4-b73b-29c2c6c96b84"  # eve@example.org, a pending change to eve@northwind.com
LEE = "1094ff04-1b28-4fde-b51f-a2b957a91f5c"  # GitHub, lee@partner.org: not mapped

# auth.identities ids.
I_ANN = "ed8a4974-0a8c-4519-a160-3f8ec942695b"
I_ANN_GOOGLE = "44476ca0-b9c1-454b-bb8e-1b219f9c43a6"
I_JO = "1eeaea0a-a10a-4ee4-9b81-047f1bfe6b88"
I_JO_KING = "b00b08b7-64c0-44f3-b4ec-f2ea7b96649d"
I_SAM = "97d4b143-4fa6-478a-a5fc-eb8e10a34ef4"
I_SAMANTHA = "18bff83d-0f60-4e80-a620-699eb10a0d75"
I_CAROL = "dd35ca7f-0359-4594-8bba-9abcb8699e0f"
I_KIM = "6622947a-9886-4933-8625-365370bf0d45"
I_KIM_SSO = "bf9219ee-58d6-4d7b-b30e-b7bd15f3d5d9"
I_DANA = "d7664dc8-5482-4651-90de-d4e19c3df67d"
I_DANA_AZURE = "6ecf7c14-ef16-4f59-9141-1321a451562b"

GOOGLE_SUB = "108512273365029183211"
AZURE_SUB = "nOZC5CvS0fXrLtU1BqZs8xSd4nKxhJc0Ztm2vM3p5qE"
OKTA = "https://northwind.okta.com/app/exk1fcia6d6EMsf331d8/sso/saml"

TABLES = ("auth.users", "auth.identities", "auth.sessions", "public.profiles", "public.team_invites")

# Only a connection: what a person gives `discover` before any targets.yaml exists.
DISCOVER = """\
version: 1
mappings: email_mappings.json
postgres:
  - name: supabase
    dsn: ${SUPABASE_DB_DSN}
"""


def edit_targets(ws: Any, old: str, new: str) -> None:
    """Replace the one occurrence of `old` in the workspace's copy of targets.yaml."""
    path = ws.path / "targets.yaml"
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def signup(uid: str, email: str, **more: Any) -> dict[str, Any]:
    """The document Supabase Auth writes for an email signup (identity_data; raw_user_meta_data with `more`)."""
    return {"sub": uid, "email": email, "email_verified": True, "phone_verified": False, **more}


def google(email: str) -> dict[str, Any]:
    """Ann's Google identity_data (and her raw_user_meta_data, where Supabase Auth copied it), whole."""
    return {
        "iss": "https://accounts.google.com",
        "sub": GOOGLE_SUB,
        "name": "Ann Lee",
        "email": email,
        "picture": "https://lh3.googleusercontent.com/a/ACg8ocAnn",
        "full_name": "Ann Lee",
        "avatar_url": "https://lh3.googleusercontent.com/a/ACg8ocAnn",
        "provider_id": GOOGLE_SUB,
        "email_verified": True,
        "phone_verified": False,
    }


def identity(doc: dict[str, Any]) -> dict[str, Any]:
    """The cells of an identity whose document changed: the document, and the generated column computed from it."""
    return {"identity_data": doc, "email": doc["email"].lower()}


def findings(ws: Any) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    """`discover --json` on the connection alone: every column (and jsonb path) considered, with its evidence."""
    r = ws.run("discover", "--targets", "discover.yaml", "--json")
    assert r.code == 0, r.out + r.err
    return {
        (tb["table"], c["name"], c.get("path")): c
        for t in json.loads(r.out)["targets"]
        for tb in t["tables"]
        for c in tb["columns"]
    }


def load(db: Any, ws: Any) -> None:
    load_example(db, ws, EXAMPLE, "SUPABASE_DB_DSN")


def test_discover_proposes_the_address_columns_and_paths(db: Any, ws: Any) -> None:
    load(db, ws)
    (ws.path / "discover.yaml").write_text(DISCOVER)
    found = findings(ws)
    assert {where for where, c in found.items() if c["proposed"]} == {
        ("auth.users", "email", None),
        ("auth.users", "email_change", None),  # 1 of 12 values is an address (Eve's), its name says email
        ("auth.users", "raw_user_meta_data", "email"),
        ("auth.identities", "identity_data", "email"),
        # The one false positive: Dana's IdP sends her old alias as a custom claim; it must stay as the IdP sent it.
        # targets.yaml leaves it out.
        ("auth.identities", "identity_data", "custom_claims.previous_email"),
        ("public.profiles", "email", None),
        ("public.team_invites", "email", None),
    }
    # Considered and rightly not proposed, with the evidence: the SAML NameID (an address) in 1 of 14 identities.
    for where, sampled in (
        (("auth.identities", "provider_id", None), 14),
        (("auth.identities", "identity_data", "sub"), 14),
        (("auth.users", "raw_user_meta_data", "sub"), 12),
    ):
        assert (found[where]["sampled"], found[where]["matched"], found[where]["proposed"]) == (sampled, 1, False)
    for token in ("email_change_token_new", "email_change_token_current"):  # named like an address, hashes inside
        assert (found["auth.users", token, None]["matched"], found["auth.users", token, None]["proposed"]) == (0, False)
    # The generated column is never a candidate: it cannot be written.
    assert ("auth.identities", "email", None) not in found


def test_plan_review_and_apply_leave_exactly_the_expected_rows(db: Any, ws: Any) -> None:
    load(db, ws)
    before = {t: table(db, t) for t in TABLES}

    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    doc = plan_doc(plan)
    assert Counter((a["table"], a["column"], a["kind"]) for a in doc["actions"]) == {
        # ANN, JO, JO_KING, SAM, KIM and KIM_SSO (the partial index leaves SSO rows out), DANA
        ("auth.users", "email", "update"): 7,
        ("auth.users", "raw_user_meta_data", "update"): 7,
        ("auth.users", "email_change", "update"): 1,  # Eve's pending change
        ("auth.identities", "identity_data", "update"): 11,
        ("public.profiles", "email", "update"): 9,
        ("public.team_invites", "email", "update"): 5,
        ("public.team_invites", "email", "delete-on-conflict"): 2,
    }
    assert sorted((s["table"], s["key"]["id"], s["column"]) for s in doc["skipped"]) == [
        ("auth.users", CAROL, "email"),  # c.jones@northwind.io is her newer account's
        ("auth.users", CAROL, "raw_user_meta_data"),
        ("auth.users", SAMANTHA, "email"),  # Sam's mapping comes first
        ("auth.users", SAMANTHA, "raw_user_meta_data"),
    ]
    deletes = {
        a["key"]["id"]: (a["row"]["team"], a["row"]["email"])
        for a in doc["actions"]
        if a["kind"] == "delete-on-conflict"
    }
    assert deletes == {4: ("ops", "samantha@northwind.com"), 5: ("ops", "carol@northwind.com")}

    # What the reviewer reads: the headline, each value that changes inside a document, the generated column's
    # note, the skipped users and the deleted invitations.
    md = (plan.parent / "plan.md").read_text()
    lines = md.splitlines()
    assert "**40 updates, 2 deletes, 4 skipped in 1 target**" in md
    assert (
        f"| 1 | `id={I_DANA_AZURE}` | identity_data | update | "
        "`identity_data.email`: `Dana.Scully@Northwind.com` → `dana.scully@northwind.io` |"
    ) in lines  # only email: custom_claims.previous_email (dana.s@, mapped too) is not in the line
    assert (
        f"| 1 | `id={I_KIM_SSO}` | identity_data | update | "
        "`identity_data.email`: `kim@northwind.com` → `kim@northwind.io` |"
    ) in lines  # sub, the SAML NameID, stays
    assert (
        f"| 4 | `id={JO}` | raw_user_meta_data | update | "
        "`raw_user_meta_data.email`: `jo@northwind.com` → `jo.king@northwind.com` |"
    ) in lines  # the chain's first hop, after the second
    assert (
        "- supabase / auth.identities: email is generated (GENERATED ALWAYS AS (lower((identity\\_data -\\>\\> "
        "'email'::text)))) from identity\\_data; it is not written, it follows the changes there, and apply checks "
        "that it did"
    ) in lines
    assert (
        f"| supabase / auth.users | `id={CAROL}` | email | `carol@northwind.com` → `c.jones@northwind.io` | "
        '`unique index users_email_partial_key: email="c.jones@northwind.io" is already held by the row with key '
        f'{{"id":"{C_JONES}"}}` |'
    ) in lines
    assert (
        f"| supabase / auth.users | `id={SAMANTHA}` | email | `samantha@northwind.com` → `sam.taylor@northwind.io` | "
        '`unique index users_email_partial_key: email="sam.taylor@northwind.io" is also planned for the row with key '
        f'{{"id":"{SAM}"}}, whose mapping comes first` |'
    ) in lines
    assert any(
        line.startswith(
            "| 2 | supabase / public.team_invites | `id=5` | email | `carol@northwind.com` → `c.jones@northwind.io` | "
            '`unique index team_invites_team_email_key: email="c.jones@northwind.io" is already held by the row with '
            'key {"id":6}` | `{"accepted_at": null, '
        )
        for line in lines
    ), md
    # The warnings that say a skipped user's other rows still move (see test_taking_out_the_skipped_mappings...).
    warnings = md.split("## Warnings", 1)[1].split("\n## ", 1)[0]
    assert "`sam.taylor@northwind.io` would be held by 4 rows of identity columns that now hold different" in warnings
    assert "`c.jones@northwind.io` would be held by 4 rows of identity columns that now hold different" in warnings
    assert "dana.scully" not in warnings  # Dana's two spellings are one person's: one address before, one after

    r = apply_confirmed(ws, plan)
    assert r.code == 0, r.out + r.err

    assert table(db, "auth.users") == changed(
        before["auth.users"],
        {
            ANN: {"email": "ann@northwind.io", "raw_user_meta_data": google("ann@northwind.io")},
            JO: {
                "email": "jo.king@northwind.com",
                "raw_user_meta_data": signup(JO, "jo.king@northwind.com", full_name="Jo Baker"),
            },
            JO_KING: {
                "email": "jo.king@northwind.io",
                "raw_user_meta_data": signup(JO_KING, "jo.king@northwind.io", full_name="Jo King"),
            },
            SAM: {
                "email": "sam.taylor@northwind.io",
                "raw_user_meta_data": signup(SAM, "sam.taylor@northwind.io", full_name="Sam Taylor"),
            },
            # SAMANTHA, CAROL: skipped, every column as seeded
            KIM: {
                "email": "kim@northwind.io",
                "raw_user_meta_data": signup(KIM, "kim@northwind.io", full_name="Kim Lee"),
            },
            KIM_SSO: {
                "email": "kim@northwind.io",
                "raw_user_meta_data": {
                    "iss": OKTA,
                    "sub": "kim@northwind.com",  # the NameID stays
                    "email": "kim@northwind.io",
                    "email_verified": True,
                    "custom_claims": {"groups": ["engineering"]},
                },
            },
            DANA: {
                "email": "dana.scully@northwind.io",
                "raw_user_meta_data": signup(DANA, "dana.scully@northwind.io", full_name="Dana Scully"),
            },
            EVE: {"email_change": "eve@northwind.io"},  # her address (eve@example.org) is not mapped
        },
    )
    assert table(db, "auth.identities") == changed(
        before["auth.identities"],
        {
            I_ANN: identity(signup(ANN, "ann@northwind.io")),
            I_ANN_GOOGLE: identity(google("ann@northwind.io")),
            I_JO: identity(signup(JO, "jo.king@northwind.com")),
            I_JO_KING: identity(signup(JO_KING, "jo.king@northwind.io")),
            I_SAM: identity(signup(SAM, "sam.taylor@northwind.io")),
            # Samantha's and Carol's identities move although their users rows were skipped: on_conflict is decided
            # per table, and identities has no unique index on the address. Two users now hold
            # sam.taylor@northwind.io (and c.jones@northwind.io) in auth.identities: why README.md says to take such
            # mappings out and plan again.
            I_SAMANTHA: identity(signup(SAMANTHA, "sam.taylor@northwind.io")),
            I_CAROL: identity(signup(CAROL, "c.jones@northwind.io")),
            I_KIM: identity(signup(KIM, "kim@northwind.io")),
            I_KIM_SSO: identity(  # provider_id stays kim@northwind.com (not listed), and so does sub
                {
                    "iss": OKTA,
                    "sub": "kim@northwind.com",
                    "email": "kim@northwind.io",
                    "email_verified": True,
                    "custom_claims": {"groups": ["engineering"]},
                }
            ),
            I_DANA: identity(signup(DANA, "dana.scully@northwind.io")),
            I_DANA_AZURE: identity(
                {
                    "iss": "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
                    "sub": AZURE_SUB,
                    "name": "Dana Scully",
                    "email": "dana.scully@northwind.io",  # was Dana.Scully@Northwind.com: casefold found it
                    "full_name": "Dana Scully",
                    "provider_id": AZURE_SUB,
                    "email_verified": True,
                    "phone_verified": False,
                    "custom_claims": {"previous_email": "dana.s@northwind.com"},  # mapped, but not at this path
                }
            ),
        },
    )
    assert [(r["id"], r["provider_id"]) for r in table(db, "auth.identities") if r["id"] == I_KIM_SSO] == [
        (I_KIM_SSO, "kim@northwind.com")
    ]
    assert table(db, "auth.sessions") == before["auth.sessions"]
    assert table(db, "public.profiles") == changed(
        before["public.profiles"],
        {
            ANN: {"email": "ann@northwind.io"},
            JO: {"email": "jo.king@northwind.com"},
            JO_KING: {"email": "jo.king@northwind.io"},
            SAM: {"email": "sam.taylor@northwind.io"},  # he had typed Sam@Northwind.com
            SAMANTHA: {"email": "sam.taylor@northwind.io"},  # moved: no unique index here either (see above)
            CAROL: {"email": "c.jones@northwind.io"},
            KIM: {"email": "kim@northwind.io"},
            KIM_SSO: {"email": "kim@northwind.io"},
            DANA: {"email": "dana.scully@northwind.io"},
        },
    )
    assert table(db, "public.team_invites") == changed(
        before["public.team_invites"],
        {
            1: {"email": "jo.king@northwind.com"},
            2: {"email": "jo.king@northwind.io"},
            3: {"email": "sam.taylor@northwind.io"},
            7: {"email": "dana.scully@northwind.io"},  # her alias dana.s@
            9: {"email": "kim@northwind.io"},  # sent to Kim@Northwind.com
        },
        deleted=(4, 5),  # duplicates of 3 (Sam's merge won) and 6 (Carol's new address was already invited)
    )
    # Every identity's generated column is its expression over the document written (apply checked it too).
    assert db.rows("SELECT id FROM auth.identities WHERE email IS DISTINCT FROM lower(identity_data->>'email')") == []


def test_taking_out_the_skipped_mappings_leaves_those_users_whole(db: Any, ws: Any) -> None:
    # What README.md asks of a reviewer who sees skipped auth.users rows: take those mappings out and plan again.
    # The new plan has nothing skipped and no action on any row of Samantha's or Carol's, in any table.
    load(db, ws)
    path = ws.path / "email_mappings.json"
    kept = [
        m
        for m in json.loads(path.read_text())
        if m["old_email"] not in ("samantha@northwind.com", "carol@northwind.com")
    ]
    path.write_text(json.dumps(kept))
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    doc = plan_doc(plan)
    assert doc["skipped"] == []
    # Their users, identities and profiles rows (keyed by the user's or the identity's id), and their invitations.
    left_alone = {SAMANTHA, I_SAMANTHA, CAROL, I_CAROL, 4, 5}
    assert [a for a in doc["actions"] if a["key"]["id"] in left_alone] == []
    assert "sam.taylor@northwind.io` would be held" not in (plan.parent / "plan.md").read_text()


def test_listing_the_generated_column_is_refused_naming_identity_data(db: Any, ws: Any) -> None:
    load(db, ws)
    edit_targets(ws, "columns: [{name: identity_data, path: email}]", "columns: [email]")
    message = refused(ws, [db], ("plan",), "the configuration does not match the database")
    assert (
        "  - targets.yaml: postgres[0].tables[1].columns: auth.identities.email is a generated column (GENERATED "
        "ALWAYS AS (lower((identity_data ->> 'email'::text))) STORED) and cannot be written; list 'identity_data'"
    ) in message
    assert "(with a path if the address sits inside a jsonb document)" in message


def test_the_refusal_does_not_offer_the_generated_column_itself(db: Any, ws: Any) -> None:
    load(db, ws)
    edit_targets(ws, "columns: [{name: identity_data, path: email}]", "columns: [email]")
    message = refused(ws, [db], ("plan",), "generated column")
    assert "list 'identity_data' instead" in message


def test_deleting_users_on_a_conflict_is_refused(db: Any, ws: Any) -> None:
    load(db, ws)
    edit_targets(ws, "on_conflict: skip", "on_conflict: delete")
    # Deleting Samantha's and Carol's users rows would cascade into identities, sessions and profiles: refused at
    # plan time, nothing written, naming each foreign key.
    message = refused(ws, [db], ("plan",), "the plan would break foreign keys in target 'supabase'")
    keys = sorted(line.split(":")[0] for line in message.splitlines()[1:])
    assert keys == [
        "  - foreign key identities_user_id_fkey",
        "  - foreign key profiles_id_fkey",
        "  - foreign key sessions_user_id_fkey",
    ], message
    assert f'keys [\'{{"id": "{CAROL}"}}\', \'{{"id": "{SAMANTHA}"}}\']' in message


def test_identity_data_listed_whole_would_rewrite_the_addresses_kept_on_purpose(db: Any, ws: Any) -> None:
    # Why targets.yaml lists identity_data by path: listed whole, every string equal to an old address changes,
    # the SAML NameID in Kim's SSO identity and the claim Dana's IdP sends included. plan.md shows it.
    load(db, ws)
    edit_targets(ws, "columns: [{name: identity_data, path: email}]", "columns: [identity_data]")
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    lines = (plan.parent / "plan.md").read_text().splitlines()
    assert (
        f"| 1 | `id={I_KIM_SSO}` | identity_data | update | "
        "`identity_data.email`: `kim@northwind.com` → `kim@northwind.io`<br>"
        "`identity_data.sub`: `kim@northwind.com` → `kim@northwind.io` |"
    ) in lines
    assert (
        f"| 1 | `id={I_DANA_AZURE}` | identity_data | update | "
        "`identity_data.custom_claims.previous_email`: `dana.s@northwind.com` → `dana.scully@northwind.io`<br>"
        "`identity_data.email`: `Dana.Scully@Northwind.com` → `dana.scully@northwind.io` |"
    ) in lines


def test_a_unique_group_would_skip_the_sso_account(db: Any, ws: Any) -> None:
    # Why targets.yaml declares no unique group: one over users.email and profiles.email keeps an address on one
    # person everywhere, which Supabase does not: Kim's SSO account shares her address by design
    # (users_email_partial_key leaves SSO rows out), and the group skips it. identity_data cannot be a member.
    load(db, ws)
    targets = ws.path / "targets.yaml"
    group = (
        "unique_groups:\n  - on_conflict: skip\n    members:\n"
        "      - {target: supabase, table: auth.users, column: email, owner: id}\n"
        "      - {target: supabase, table: public.profiles, column: email, owner: id}\n"
    )
    targets.write_text(targets.read_text() + group)
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    skipped = {(s["table"], s["key"]["id"]) for s in plan_doc(plan)["skipped"]}
    assert ("auth.users", KIM_SSO) in skipped and ("public.profiles", KIM_SSO) in skipped

    targets.write_text(
        targets.read_text().replace(
            "table: public.profiles, column: email, owner: id",
            "table: auth.identities, column: identity_data, owner: user_id",
        )
    )
    refused(ws, [db], ("plan",), "auth.identities.identity_data is jsonb; a group's columns must hold one address each")


def test_plan_md_shows_a_skipped_documents_addresses_whole(db: Any, ws: Any) -> None:
    load(db, ws)
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    (line,) = [
        x
        for x in (plan.parent / "plan.md").read_text().splitlines()
        if x.startswith(f"| supabase / auth.users | `id={SAMANTHA}` | raw_user_meta_data |")
    ]
    assert "`raw_user_meta_data.email`: `samantha@northwind.com` → `sam.taylor@northwind.io`" in line


def test_an_exact_match_misses_what_providers_and_people_spell_otherwise(db: Any, ws: Any) -> None:
    # Why targets.yaml says match: casefold. With exact: Dana's rows are found only where they are spelled as the
    # mappings file spells her (Azure's document), Sam's profile and Kim's invitation are missed, without a word.
    load(db, ws)
    edit_targets(ws, "match: casefold", "match: exact")
    r, plan = ws.plan()
    assert r.code == 0, r.out + r.err
    keys = {(a["table"], json.dumps(a["key"])) for a in plan_doc(plan)["actions"]}
    assert ("auth.identities", json.dumps({"id": I_DANA_AZURE})) in keys
    for missed in (("auth.users", {"id": DANA}), ("public.profiles", {"id": SAM}), ("public.team_invites", {"id": 9})):
        assert (missed[0], json.dumps(missed[1])) not in keys
