-- Two realms of one Keycloak, before Acme's rebrand from acme.com to acme-group.com.
--
-- Keycloak writes USER_ENTITY.EMAIL and USERNAME in lower case; EMAIL_CONSTRAINT is the address itself, or a random
-- id when the address is NULL or the realm allows duplicate addresses. Attribute values keep the case they were
-- typed in.
--
-- Hard cases (see email_mappings.json):
--   * chain: jo@acme.com -> jo.king@acme.com while jo.king@acme.com -> jo.king@acme-group.com (two people);
--   * merge: sam@acme.com and samantha@acme.com -> sam.taylor@acme-group.com (one person, two accounts);
--   * taken: carol@acme.com -> c.jones@acme.com, which Carol's newer account already holds;
--   * case: Bob's secondaryEmail attribute was typed as Bob@Acme.com, the LDAP manager attribute as ALICE@acme.com;
--   * two realms: alice@acme.com is a user of realm acme and, separately, of realm partners;
--   * duplicates allowed: realm partners has two accounts with dave@partner.org, both move.

INSERT INTO realm (id, name, login_with_email_allowed, duplicate_emails_allowed, registration_email_as_username) VALUES
    ('acme', 'acme', true, false, true),          -- staff: people log in with their address, one account per address
    ('partners', 'partners', true, true, false);  -- partner portal: own usernames, addresses may repeat

INSERT INTO user_entity (id, email, email_constraint, email_verified, enabled, federation_link, first_name, last_name,
                         realm_id, username, created_timestamp, service_account_client_link, not_before) VALUES
    -- realm acme: username = email = email_constraint
    ('775d096d-0f0f-45fa-8ee1-4c1fd194910b', 'alice@acme.com', 'alice@acme.com', true, true, NULL,
     'Alice', 'Wong', 'acme', 'alice@acme.com', 1700000000001, NULL, 0),
    ('b63aad80-4b5e-414b-9a35-1b62324c9000', 'bob@acme.com', 'bob@acme.com', true, true, NULL,
     'Bob', 'Marsh', 'acme', 'bob@acme.com', 1700000000002, NULL, 0),
    ('862e31d0-a517-438d-bc7d-ac26bcacafd3', 'carol@acme.com', 'carol@acme.com', true, true, NULL,
     'Carol', 'Jones', 'acme', 'carol@acme.com', 1700000000003, NULL, 0),
    ('32462f6f-1291-4962-b31c-958faa854bea', 'c.jones@acme.com', 'c.jones@acme.com', false, true, NULL,
     'Carol', 'Jones', 'acme', 'c.jones@acme.com', 1700000000004, NULL, 0),
    ('fe4f5263-11d5-4724-95ba-a978983b6369', 'jo@acme.com', 'jo@acme.com', true, true, NULL,
     'Jo', 'Baker', 'acme', 'jo@acme.com', 1700000000005, NULL, 0),
    ('ddc012f8-a786-4584-856d-044bc1f49414', 'jo.king@acme.com', 'jo.king@acme.com', true, true, NULL,
     'Jo', 'King', 'acme', 'jo.king@acme.com', 1700000000006, NULL, 0),
    ('de2ba9c8-cf2e-41df-8b64-441c516b64ae', 'sam@acme.com', 'sam@acme.com', true, true, NULL,
     'Sam', 'Taylor', 'acme', 'sam@acme.com', 1700000000007, NULL, 0),
    ('bc322bd5-6359-47d4-9926-363fe6a11024', 'samantha@acme.com', 'samantha@acme.com', true, false, NULL,
     'Samantha', 'Taylor', 'acme', 'samantha@acme.com', 1700000000008, NULL, 0),
    -- a client's service account: no address, so a random email_constraint
    ('a222643e-744a-46f8-85fe-02883ec5c2e3', NULL, '9d1c2b7e-51a4-4c3e-a0f7-7a33d3c0e111', false, true, NULL,
     NULL, NULL, 'acme', 'service-account-billing', 1700000000009, 'billing-client-id', 0),
    -- realm partners: duplicates allowed, so email_constraint is a random id; usernames are chosen by people
    ('dbfd22d6-5229-407d-a407-e15d7ff35253', 'alice@acme.com', '2f6d8a90-3b1e-4f52-9c7d-0e4a6b8c1d21', true, true, NULL,
     'Alice', 'Wong', 'partners', 'alice.w', 1700000000010, NULL, 0),
    ('d25be255-8c23-4338-917b-45de7a0da46d', 'dave@partner.org', '7b2e4c61-8d3a-4e9f-b1c5-2a7d9e0f3b42', true, true, NULL,
     'Dave', 'Okafor', 'partners', 'dave', 1700000000011, NULL, 0),
    ('be91003e-e6ee-41bc-9718-01c4c64e2c90', 'dave@partner.org', 'c4a1e8d2-6f3b-4a7c-9e2d-5b8f1a0c6e73', false, true, NULL,
     'Dave', 'Okafor', 'partners', 'dave.okafor', 1700000000012, NULL, 0),
    ('6df9f3b1-1e3e-468e-a7ae-7205b0f20d66', 'frank@partner.org', 'e1b7c3a9-2d4f-4b8e-a6c0-9f3d7e2b5a84', true, true, NULL,
     'Frank', 'Meyer', 'partners', 'frank@partner.org', 1700000000013, NULL, 0);

INSERT INTO user_attribute (name, value, user_id, id) VALUES
    ('locale', 'en', '775d096d-0f0f-45fa-8ee1-4c1fd194910b', 'ba04a117-26c3-4c87-a3ba-f3d7a1d8c4fe'),
    ('recoveryEmail', 'alice.wong@gmail.com', '775d096d-0f0f-45fa-8ee1-4c1fd194910b', 'f78a830f-e6d0-4f70-bc4d-b29b6713961f'),
    ('department', 'Finance', '775d096d-0f0f-45fa-8ee1-4c1fd194910b', 'c97816b5-b7b9-415a-ac71-7a40fbd66481'),
    ('secondaryEmail', 'Bob@Acme.com', 'b63aad80-4b5e-414b-9a35-1b62324c9000', 'afce6dfe-b614-4ea5-95e0-957e81f276f3'),
    ('phoneNumber', '+1 555 0100', 'b63aad80-4b5e-414b-9a35-1b62324c9000', '3406b7ae-3459-46e5-a5eb-2fc44f6e57a5'),
    ('manager', 'alice@acme.com', 'b63aad80-4b5e-414b-9a35-1b62324c9000', '1374d0da-2a4b-4b2d-98be-0863fa625685'),
    ('locale', 'de', '862e31d0-a517-438d-bc7d-ac26bcacafd3', '637be33b-22b9-40d0-8491-3985b14e93e7'),
    ('department', 'Sales', '32462f6f-1291-4962-b31c-958faa854bea', '8686ca22-5a76-41b1-a743-2d65ac9bfd2b'),
    ('manager', 'jo.king@acme.com', 'fe4f5263-11d5-4724-95ba-a978983b6369', '05ec9f85-fcc0-4749-bb13-17a0006a6bd3'),
    ('department', 'Legal', 'ddc012f8-a786-4584-856d-044bc1f49414', 'f8052fe1-3ad4-4072-a3fb-d5efbb5e0e52'),
    ('locale', 'en', 'de2ba9c8-cf2e-41df-8b64-441c516b64ae', '96d46a1c-faa6-45b3-bea4-e7d52f751aff'),
    ('phoneNumber', '+44 20 7946 0958', 'd25be255-8c23-4338-917b-45de7a0da46d', '838cce57-83f5-4c1d-acb1-cf774477fb74'),
    ('company', 'Partner Org', '6df9f3b1-1e3e-468e-a7ae-7205b0f20d66', '8b3237b9-c071-457d-8366-df32e30b4ea9');

-- Erin lives in the company LDAP directory (no import): Keycloak keeps only some of her attributes itself.
INSERT INTO fed_user_attribute (id, name, user_id, realm_id, storage_provider_id, value) VALUES
    ('66a1c76b-78cf-413a-8c4b-a42a1aa7b7c6', 'secondaryEmail', 'f:6e4b1d52-ldap:erin', 'acme', '6e4b1d52-ldap',
     'erin@acme.com'),
    ('2c7990c7-bbfa-4fa3-a122-1b8e710450aa', 'manager', 'f:6e4b1d52-ldap:erin', 'acme', '6e4b1d52-ldap',
     'ALICE@acme.com'),
    ('26c6110d-07c5-4d6f-960b-6b4004fa4daf', 'locale', 'f:6e4b1d52-ldap:erin', 'acme', '6e4b1d52-ldap', 'fr'),
    ('c01f23db-0dc1-46bc-86a9-f32891d11b82', 'terms_and_conditions', 'f:6e4b1d52-ldap:erin', 'acme', '6e4b1d52-ldap',
     '1700000000');

INSERT INTO user_role_mapping (role_id, user_id)
SELECT 'default-roles-' || realm_id, id FROM user_entity;
