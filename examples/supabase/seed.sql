-- A Supabase project of Northwind before its staff move from northwind.com to northwind.io.
--
-- As Supabase Auth writes them: addresses lower-cased in auth.users; '' (not NULL) in token columns and in
-- email_change when nothing is pending; raw_user_meta_data holds the address too (`email`, with `sub` and
-- `email_verified`), and for a user who signed in with an OAuth provider, that provider's data. A user who signed up
-- with a password has an `email` identity whose provider_id is the user's id; each provider used adds one. The trigger
-- on_auth_user_created (schema.sql) makes each user's public.profiles row, with the address of the time.
--
-- Hard cases (see email_mappings.json):
--   * chain: jo@northwind.com -> jo.king@northwind.com while jo.king@northwind.com -> jo.king@northwind.io (Jo Baker
--     takes Jo King's old address as Jo King moves on); users_email_partial_key holds both at every step;
--   * merge: sam@ and samantha@northwind.com -> sam.taylor@northwind.io (two accounts of one person): Sam's mapping
--     comes first, Samantha's account keeps its address;
--   * taken: carol@northwind.com -> c.jones@northwind.io, which Carol's newer account (signed up after the move)
--     already holds;
--   * SSO: Kim has a password account and, since the company's Okta SAML connection, an SSO account
--     (is_sso_user), both kim@northwind.com: the partial unique index allows it, and both move. The SSO identity's
--     provider_id and identity_data.sub are the SAML NameID, which is the address: it must not change (it is how
--     Supabase Auth finds the identity when Okta sends it);
--   * case: Azure reports Dana's address as Dana.Scully@Northwind.com (identity_data keeps it as sent; the generated
--     identities.email is lower-cased); Sam typed his profile address Sam@Northwind.com; an invitation was sent to
--     Kim@Northwind.com; the mappings file spells Dana's Dana.Scully@Northwind.com;
--   * an address kept on purpose: Dana's Azure identity carries a custom claim previous_email,
--     dana.s@northwind.com, an alias of hers that the mappings also move (it is in a team invitation): only
--     identity_data.email may change in that document;
--   * pending change: Eve (eve@example.org) asked to move to eve@northwind.com and has not confirmed yet
--     (email_change, with the two tokens of a secure email change);
--   * not mapped at all: Lee (lee@partner.org, GitHub), and c.jones@northwind.io.

INSERT INTO auth.users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at, last_sign_in_at,
                        is_sso_user, email_change, email_change_sent_at, email_change_token_new,
                        email_change_token_current, email_change_confirm_status, confirmation_token, recovery_token,
                        raw_app_meta_data, raw_user_meta_data, created_at, updated_at) VALUES
    -- ANN
    ('00000000-0000-0000-0000-000000000000', '23713c2a-74ee-432a-a729-6d050754e5bb', 'authenticated', 'authenticated',
     'ann@northwind.com', '$2a$10$Ann', '2021-03-02 09:00:00+00', '2025-05-30 08:12:00+00', false,
     '', NULL, '', '', 0, '', '',
     '{"provider": "email", "providers": ["email", "google"]}',
     '{"iss": "https://accounts.google.com", "sub": "108512273365029183211", "name": "Ann Lee",
      "email": "ann@northwind.com", "picture": "https://lh3.googleusercontent.com/a/ACg8ocAnn",
      "full_name": "Ann Lee", "avatar_url": "https://lh3.googleusercontent.com/a/ACg8ocAnn",
      "provider_id": "108512273365029183211", "email_verified": true, "phone_verified": false}',
     '2021-03-02 08:59:00+00', '2025-05-30 08:12:00+00'),
    -- JO
    ('00000000-0000-0000-0000-000000000000', 'a1d3a28d-1075-4c0a-b378-38c67d07821d', 'authenticated', 'authenticated',
     'jo@northwind.com', '$2a$10$Jo', '2021-04-01 10:00:00+00', '2025-05-29 07:40:00+00', false,
     '', NULL, '', '', 0, '', '',
     '{"provider": "email", "providers": ["email"]}',
     '{"sub": "a1d3a28d-1075-4c0a-b378-38c67d07821d", "email": "jo@northwind.com", "email_verified": true,
      "phone_verified": false, "full_name": "Jo Baker"}',
     '2021-04-01 09:58:00+00', '2025-05-29 07:40:00+00'),
    -- JO_KING
    ('00000000-0000-0000-0000-000000000000', 'acbf903f-6ef4-4f2b-afb8-68fa11ff74e3', 'authenticated', 'authenticated',
     'jo.king@northwind.com', '$2a$10$JoK', '2021-04-02 10:00:00+00', '2025-05-28 16:03:00+00', false,
     '', NULL, '', '', 0, '', '',
     '{"provider": "email", "providers": ["email"]}',
     '{"sub": "acbf903f-6ef4-4f2b-afb8-68fa11ff74e3", "email": "jo.king@northwind.com", "email_verified": true,
      "phone_verified": false, "full_name": "Jo King"}',
     '2021-04-02 09:55:00+00', '2025-05-28 16:03:00+00'),
    -- SAM
    ('00000000-0000-0000-0000-000000000000', '8f7013a2-8e83-4962-b764-db848418980f', 'authenticated', 'authenticated',
     'sam@northwind.com', '$2a$10$Sam', '2021-05-01 10:00:00+00', '2025-05-30 09:30:00+00', false,
     '', NULL, '', '', 0, '', '',
     '{"provider": "email", "providers": ["email"]}',
     '{"sub": "8f7013a2-8e83-4962-b764-db848418980f", "email": "sam@northwind.com", "email_verified": true,
      "phone_verified": false, "full_name": "Sam Taylor"}',
     '2021-05-01 09:59:00+00', '2025-05-30 09:30:00+00'),
    -- SAMANTHA
    ('00000000-0000-0000-0000-000000000000', '74e568ad-4d73-4ba5-bfee-00feb141e427', 'authenticated', 'authenticated',
     'samantha@northwind.com', '$2a$10$Smt', '2022-01-10 10:00:00+00', '2023-02-01 12:00:00+00', false,
     '', NULL, '', '', 0, '', '',
     '{"provider": "email", "providers": ["email"]}',
     '{"sub": "74e568ad-4d73-4ba5-bfee-00feb141e427", "email": "samantha@northwind.com", "email_verified": true,
      "phone_verified": false, "full_name": "Samantha Taylor"}',
     '2022-01-10 09:59:00+00', '2023-02-01 12:00:00+00'),
    -- CAROL
    ('00000000-0000-0000-0000-000000000000', '52d2c0fa-b810-4150-9672-0ce460c6194f', 'authenticated', 'authenticated',
     'carol@northwind.com', '$2a$10$Car', '2021-06-01 10:00:00+00', '2024-12-20 17:45:00+00', false,
     '', NULL, '', '', 0, '', '',
     '{"provider": "email", "providers": ["email"]}',
     '{"sub": "52d2c0fa-b810-4150-9672-0ce460c6194f", "email": "carol@northwind.com", "email_verified": true,
      "phone_verified": false, "full_name": "Carol Jones"}',
     '2021-06-01 09:59:00+00', '2024-12-20 17:45:00+00'),
    -- C_JONES
    ('00000000-0000-0000-0000-000000000000', '7e4cedc1-7a07-4ae5-89d7-76948c329b3a', 'authenticated', 'authenticated',
     'c.jones@northwind.io', '$2a$10$CJo', '2025-04-02 10:00:00+00', '2025-05-30 10:01:00+00', false,
     '', NULL, '', '', 0, '', '',
     '{"provider": "email", "providers": ["email"]}',
     '{"sub": "7e4cedc1-7a07-4ae5-89d7-76948c329b3a", "email": "c.jones@northwind.io", "email_verified": true,
      "phone_verified": false, "full_name": "Carol Jones"}',
     '2025-04-02 09:59:00+00', '2025-05-30 10:01:00+00'),
    -- KIM
    ('00000000-0000-0000-0000-000000000000', '2751fa0b-dc5f-4d40-aa5f-054977826926', 'authenticated', 'authenticated',
     'kim@northwind.com', '$2a$10$Kim', '2021-07-01 10:00:00+00', '2024-03-15 08:00:00+00', false,
     '', NULL, '', '', 0, '', '',
     '{"provider": "email", "providers": ["email"]}',
     '{"sub": "2751fa0b-dc5f-4d40-aa5f-054977826926", "email": "kim@northwind.com", "email_verified": true,
      "phone_verified": false, "full_name": "Kim Lee"}',
     '2021-07-01 09:59:00+00', '2024-03-15 08:00:00+00'),
    -- KIM_SSO
    ('00000000-0000-0000-0000-000000000000', '935bc178-a955-49ee-8024-a6d7f2507409', 'authenticated', 'authenticated',
     'kim@northwind.com', '', '2024-03-18 08:30:00+00', '2025-05-30 08:31:00+00', true,
     '', NULL, '', '', 0, '', '',
     '{"provider": "sso:5b718bd1-57d2-4372-b41c-4ace548f81c6",
      "providers": ["sso:5b718bd1-57d2-4372-b41c-4ace548f81c6"]}',
     '{"iss": "https://northwind.okta.com/app/exk1fcia6d6EMsf331d8/sso/saml", "sub": "kim@northwind.com",
      "email": "kim@northwind.com", "email_verified": true, "custom_claims": {"groups": ["engineering"]}}',
     '2024-03-18 08:30:00+00', '2025-05-30 08:31:00+00'),
    -- DANA
    ('00000000-0000-0000-0000-000000000000', '34d3976d-64c2-4678-a8fa-178232c9f9e5', 'authenticated', 'authenticated',
     'dana.scully@northwind.com', '$2a$10$Dan', '2022-02-01 10:00:00+00', '2025-05-27 14:22:00+00', false,
     '', NULL, '', '', 0, '', '',
     '{"provider": "email", "providers": ["email", "azure"]}',
     '{"sub": "34d3976d-64c2-4678-a8fa-178232c9f9e5", "email": "dana.scully@northwind.com", "email_verified": true,
      "phone_verified": false, "full_name": "Dana Scully"}',
     '2022-02-01 09:59:00+00', '2025-05-27 14:22:00+00'),
    -- EVE
    ('00000000-0000-0000-0000-000000000000', 'a89faccb-1912-47f4-b73b-29c2c6c96b84', 'authenticated', 'authenticated',
     'eve@example.org', '$2a$10$Eve', '2023-08-01 10:00:00+00', '2025-05-30 11:00:00+00', false,
     'eve@northwind.com', '2025-05-30 11:02:00+00', '3f1c9b0e5a7d2c4e8b6a1f0d9c7e5b3a2d4f6e8c0b1a3d5f7e9c2b4a',
     '9a7c5e3b1d2f4a6c8e0b3d5f7a9c1e2b4d6f8a0c3e5b7d9f1a2c4e6b', 0, '', '',
     '{"provider": "email", "providers": ["email"]}',
     '{"sub": "a89faccb-1912-47f4-b73b-29c2c6c96b84", "email": "eve@example.org", "email_verified": true,
      "phone_verified": false, "full_name": "Eve Adams"}',
     '2023-08-01 09:59:00+00', '2025-05-30 11:00:00+00'),
    -- LEE
    ('00000000-0000-0000-0000-000000000000', '1094ff04-1b28-4fde-b51f-a2b957a91f5c', 'authenticated', 'authenticated',
     'lee@partner.org', '', '2024-09-09 10:00:00+00', '2025-05-21 10:10:00+00', false,
     '', NULL, '', '', 0, '', '',
     '{"provider": "github", "providers": ["github"]}',
     '{"iss": "https://api.github.com", "sub": "5812347", "name": "Lee Park", "email": "lee@partner.org",
      "user_name": "leepark", "full_name": "Lee Park",
      "avatar_url": "https://avatars.githubusercontent.com/u/5812347?v=4", "provider_id": "5812347",
      "preferred_username": "leepark", "email_verified": true, "phone_verified": false}',
     '2024-09-09 10:00:00+00', '2025-05-21 10:10:00+00');

INSERT INTO auth.identities (id, provider_id, user_id, identity_data, provider, last_sign_in_at, created_at,
                             updated_at) VALUES
    -- ANN, email
    ('ed8a4974-0a8c-4519-a160-3f8ec942695b', '23713c2a-74ee-432a-a729-6d050754e5bb',
     '23713c2a-74ee-432a-a729-6d050754e5bb',
     '{"sub": "23713c2a-74ee-432a-a729-6d050754e5bb", "email": "ann@northwind.com", "email_verified": true,
      "phone_verified": false}',
     'email', '2025-05-30 08:12:00+00', '2021-03-02 08:59:00+00', '2025-05-30 08:12:00+00'),
    -- ANN, google
    ('44476ca0-b9c1-454b-bb8e-1b219f9c43a6', '108512273365029183211', '23713c2a-74ee-432a-a729-6d050754e5bb',
     '{"iss": "https://accounts.google.com", "sub": "108512273365029183211", "name": "Ann Lee",
      "email": "ann@northwind.com", "picture": "https://lh3.googleusercontent.com/a/ACg8ocAnn",
      "full_name": "Ann Lee", "avatar_url": "https://lh3.googleusercontent.com/a/ACg8ocAnn",
      "provider_id": "108512273365029183211", "email_verified": true, "phone_verified": false}',
     'google', '2025-05-30 08:12:00+00', '2021-03-02 08:59:00+00', '2025-05-30 08:12:00+00'),
    -- JO, email
    ('1eeaea0a-a10a-4ee4-9b81-047f1bfe6b88', 'a1d3a28d-1075-4c0a-b378-38c67d07821d',
     'a1d3a28d-1075-4c0a-b378-38c67d07821d',
     '{"sub": "a1d3a28d-1075-4c0a-b378-38c67d07821d", "email": "jo@northwind.com", "email_verified": true,
      "phone_verified": false}',
     'email', '2025-05-29 07:40:00+00', '2021-04-01 09:58:00+00', '2025-05-29 07:40:00+00'),
    -- JO_KING, email
    ('b00b08b7-64c0-44f3-b4ec-f2ea7b96649d', 'acbf903f-6ef4-4f2b-afb8-68fa11ff74e3',
     'acbf903f-6ef4-4f2b-afb8-68fa11ff74e3',
     '{"sub": "acbf903f-6ef4-4f2b-afb8-68fa11ff74e3", "email": "jo.king@northwind.com", "email_verified": true,
      "phone_verified": false}',
     'email', '2025-05-28 16:03:00+00', '2021-04-02 09:55:00+00', '2025-05-28 16:03:00+00'),
    -- SAM, email
    ('97d4b143-4fa6-478a-a5fc-eb8e10a34ef4', '8f7013a2-8e83-4962-b764-db848418980f',
     '8f7013a2-8e83-4962-b764-db848418980f',
     '{"sub": "8f7013a2-8e83-4962-b764-db848418980f", "email": "sam@northwind.com", "email_verified": true,
      "phone_verified": false}',
     'email', '2025-05-30 09:30:00+00', '2021-05-01 09:59:00+00', '2025-05-30 09:30:00+00'),
    -- SAMANTHA, email
    ('18bff83d-0f60-4e80-a620-699eb10a0d75', '74e568ad-4d73-4ba5-bfee-00feb141e427',
     '74e568ad-4d73-4ba5-bfee-00feb141e427',
     '{"sub": "74e568ad-4d73-4ba5-bfee-00feb141e427", "email": "samantha@northwind.com", "email_verified": true,
      "phone_verified": false}',
     'email', '2023-02-01 12:00:00+00', '2022-01-10 09:59:00+00', '2023-02-01 12:00:00+00'),
    -- CAROL, email
    ('dd35ca7f-0359-4594-8bba-9abcb8699e0f', '52d2c0fa-b810-4150-9672-0ce460c6194f',
     '52d2c0fa-b810-4150-9672-0ce460c6194f',
     '{"sub": "52d2c0fa-b810-4150-9672-0ce460c6194f", "email": "carol@northwind.com", "email_verified": true,
      "phone_verified": false}',
     'email', '2024-12-20 17:45:00+00', '2021-06-01 09:59:00+00', '2024-12-20 17:45:00+00'),
    -- C_JONES, email
    ('945f5549-c305-48af-b172-4b4c86ca261e', '7e4cedc1-7a07-4ae5-89d7-76948c329b3a',
     '7e4cedc1-7a07-4ae5-89d7-76948c329b3a',
     '{"sub": "7e4cedc1-7a07-4ae5-89d7-76948c329b3a", "email": "c.jones@northwind.io", "email_verified": true,
      "phone_verified": false}',
     'email', '2025-05-30 10:01:00+00', '2025-04-02 09:59:00+00', '2025-05-30 10:01:00+00'),
    -- KIM, email
    ('6622947a-9886-4933-8625-365370bf0d45', '2751fa0b-dc5f-4d40-aa5f-054977826926',
     '2751fa0b-dc5f-4d40-aa5f-054977826926',
     '{"sub": "2751fa0b-dc5f-4d40-aa5f-054977826926", "email": "kim@northwind.com", "email_verified": true,
      "phone_verified": false}',
     'email', '2024-03-15 08:00:00+00', '2021-07-01 09:59:00+00', '2024-03-15 08:00:00+00'),
    -- KIM_SSO, sso
    ('bf9219ee-58d6-4d7b-b30e-b7bd15f3d5d9', 'kim@northwind.com', '935bc178-a955-49ee-8024-a6d7f2507409',
     '{"iss": "https://northwind.okta.com/app/exk1fcia6d6EMsf331d8/sso/saml", "sub": "kim@northwind.com",
      "email": "kim@northwind.com", "email_verified": true, "custom_claims": {"groups": ["engineering"]}}',
     'sso:5b718bd1-57d2-4372-b41c-4ace548f81c6', '2025-05-30 08:31:00+00', '2024-03-18 08:30:00+00',
     '2025-05-30 08:31:00+00'),
    -- DANA, email
    ('d7664dc8-5482-4651-90de-d4e19c3df67d', '34d3976d-64c2-4678-a8fa-178232c9f9e5',
     '34d3976d-64c2-4678-a8fa-178232c9f9e5',
     '{"sub": "34d3976d-64c2-4678-a8fa-178232c9f9e5", "email": "dana.scully@northwind.com", "email_verified": true,
      "phone_verified": false}',
     'email', '2025-05-27 14:22:00+00', '2022-02-01 09:59:00+00', '2025-05-27 14:22:00+00'),
    -- DANA, azure
    ('6ecf7c14-ef16-4f59-9141-1321a451562b', 'nOZC5CvS0fXrLtU1BqZs8xSd4nKxhJc0Ztm2vM3p5qE',
     '34d3976d-64c2-4678-a8fa-178232c9f9e5',
     '{"iss": "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
      "sub": "nOZC5CvS0fXrLtU1BqZs8xSd4nKxhJc0Ztm2vM3p5qE", "name": "Dana Scully",
      "email": "Dana.Scully@Northwind.com", "full_name": "Dana Scully",
      "provider_id": "nOZC5CvS0fXrLtU1BqZs8xSd4nKxhJc0Ztm2vM3p5qE", "email_verified": true, "phone_verified": false,
      "custom_claims": {"previous_email": "dana.s@northwind.com"}}',
     'azure', '2025-05-27 14:22:00+00', '2022-02-01 09:59:00+00', '2025-05-27 14:22:00+00'),
    -- EVE, email
    ('a000459d-ffbc-48c9-a360-d78397b056ec', 'a89faccb-1912-47f4-b73b-29c2c6c96b84',
     'a89faccb-1912-47f4-b73b-29c2c6c96b84',
     '{"sub": "a89faccb-1912-47f4-b73b-29c2c6c96b84", "email": "eve@example.org", "email_verified": true,
      "phone_verified": false}',
     'email', '2025-05-30 11:00:00+00', '2023-08-01 09:59:00+00', '2025-05-30 11:00:00+00'),
    -- LEE, github
    ('2e73c2ec-83ec-448d-8cfc-830d00790d48', '5812347', '1094ff04-1b28-4fde-b51f-a2b957a91f5c',
     '{"iss": "https://api.github.com", "sub": "5812347", "name": "Lee Park", "email": "lee@partner.org",
      "user_name": "leepark", "full_name": "Lee Park",
      "avatar_url": "https://avatars.githubusercontent.com/u/5812347?v=4", "provider_id": "5812347",
      "preferred_username": "leepark", "email_verified": true, "phone_verified": false}',
     'github', '2025-05-21 10:10:00+00', '2024-09-09 10:00:00+00', '2025-05-21 10:10:00+00');

-- Sessions (no address; here for what deleting a user would take with it).
INSERT INTO auth.sessions (id, user_id, created_at, updated_at) VALUES
    ('c5aca12f-6af2-4e36-87fe-f1458ccdac34', '23713c2a-74ee-432a-a729-6d050754e5bb', '2025-05-30 08:12:00+00',
     '2025-05-30 08:12:00+00'),
    ('bc8ec11f-b52b-4db3-a6f3-142720575d9a', '935bc178-a955-49ee-8024-a6d7f2507409', '2025-05-30 08:31:00+00',
     '2025-05-30 08:31:00+00'),
    ('68c93199-15b8-4808-9f0e-c5238723b627', '74e568ad-4d73-4ba5-bfee-00feb141e427', '2023-02-01 12:00:00+00',
     '2023-02-01 12:00:00+00');

-- public.profiles rows were made by on_auth_user_created with the address of the time; people then chose a
-- username, and Sam typed his contact address in his own spelling.
UPDATE public.profiles p
SET username = v.username, updated_at = v.updated_at::timestamptz, email = coalesce(v.email, p.email)
FROM (VALUES
    ('23713c2a-74ee-432a-a729-6d050754e5bb'::uuid, 'annlee', '2021-03-03 10:00:00+00', NULL),
    ('a1d3a28d-1075-4c0a-b378-38c67d07821d', 'jobaker', '2021-04-02 10:00:00+00', NULL),
    ('acbf903f-6ef4-4f2b-afb8-68fa11ff74e3', 'joking', '2021-04-03 10:00:00+00', NULL),
    ('8f7013a2-8e83-4962-b764-db848418980f', 'samt', '2024-11-05 10:00:00+00', 'Sam@Northwind.com'),
    ('74e568ad-4d73-4ba5-bfee-00feb141e427', 'samantha_t', '2022-01-11 10:00:00+00', NULL),
    ('52d2c0fa-b810-4150-9672-0ce460c6194f', 'carolj', '2021-06-02 10:00:00+00', NULL),
    ('7e4cedc1-7a07-4ae5-89d7-76948c329b3a', 'cjones', '2025-04-03 10:00:00+00', NULL),
    ('2751fa0b-dc5f-4d40-aa5f-054977826926', 'kimlee', '2021-07-02 10:00:00+00', NULL),
    ('935bc178-a955-49ee-8024-a6d7f2507409', 'kim_okta', '2024-03-18 08:40:00+00', NULL),
    ('34d3976d-64c2-4678-a8fa-178232c9f9e5', 'dscully', '2022-02-02 10:00:00+00', NULL),
    ('a89faccb-1912-47f4-b73b-29c2c6c96b84', 'eve', '2023-08-02 10:00:00+00', NULL),
    ('1094ff04-1b28-4fde-b51f-a2b957a91f5c', 'leepark', '2024-09-10 10:00:00+00', NULL)
) AS v (id, username, updated_at, email)
WHERE p.id = v.id;

-- Invitations by address (unique per team): the chain, the merge and the taken address meet here too, and
-- ops already re-invited Carol at her new address.
INSERT INTO public.team_invites (id, team, email, invited_by, created_at, accepted_at) VALUES
    (1, 'design', 'jo@northwind.com', '23713c2a-74ee-432a-a729-6d050754e5bb', '2025-01-10 09:00:00+00', NULL),
    (2, 'design', 'jo.king@northwind.com', '23713c2a-74ee-432a-a729-6d050754e5bb', '2025-01-10 09:01:00+00',
     '2025-01-11 08:00:00+00'),
    (3, 'ops', 'sam@northwind.com', '2751fa0b-dc5f-4d40-aa5f-054977826926', '2025-02-01 09:00:00+00', NULL),
    (4, 'ops', 'samantha@northwind.com', '2751fa0b-dc5f-4d40-aa5f-054977826926', '2025-02-01 09:02:00+00', NULL),
    (5, 'ops', 'carol@northwind.com', '2751fa0b-dc5f-4d40-aa5f-054977826926', '2025-02-01 09:03:00+00', NULL),
    (6, 'ops', 'c.jones@northwind.io', '2751fa0b-dc5f-4d40-aa5f-054977826926', '2025-04-03 09:00:00+00', NULL),
    (7, 'research', 'dana.s@northwind.com', '7e4cedc1-7a07-4ae5-89d7-76948c329b3a', '2025-04-20 09:00:00+00', NULL),
    (8, 'research', 'lee@partner.org', '7e4cedc1-7a07-4ae5-89d7-76948c329b3a', '2025-04-20 09:01:00+00', NULL),
    (9, 'research', 'Kim@Northwind.com', '7e4cedc1-7a07-4ae5-89d7-76948c329b3a', '2025-04-20 09:02:00+00', NULL);
ALTER TABLE public.team_invites ALTER COLUMN id RESTART WITH 10;
