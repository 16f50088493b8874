-- A Django site with django-allauth, before Northwind moves from northwind.io to northwind.com.
--
-- As the applications write them: auth_user.email keeps the local part as typed (Django's normalize_email
-- lower-cases only the domain); allauth lower-cases every account_emailaddress.email. Some accounts were created
-- with the address as the username (an older signup form), so username is unique and sometimes an address.
--
-- Hard cases (see email_mappings.json):
--   * chain: jo@northwind.io -> jo.king@northwind.io while jo.king@northwind.io -> jo.king@northwind.com;
--   * merge: sam@ and samantha@northwind.io -> sam.taylor@northwind.com (one person, two accounts, both verified);
--   * taken: carol@northwind.io -> c.jones@northwind.io, which Carol's second account has verified;
--   * case: asmith's auth_user.email is Alice@northwind.io, the mapping says alice@northwind.io;
--   * duplicates: auth_user.email is not unique, so alice@northwind.io has two accounts (the second one unverified).

INSERT INTO auth_user (id, password, last_login, is_superuser, username, first_name, last_name, email, is_staff,
                       is_active, date_joined) VALUES
    (1, 'pbkdf2_sha256$870000$ops$h1', '2025-03-01 09:00:00+00', true, 'admin', '', '', 'ops@northwind.io',
     true, true, '2020-01-01 00:00:00+00'),
    (2, 'pbkdf2_sha256$870000$al$h2', '2025-03-02 09:00:00+00', false, 'alice@northwind.io', 'Alice', 'Smith',
     'alice@northwind.io', false, true, '2021-02-01 00:00:00+00'),
    (3, 'pbkdf2_sha256$870000$as$h3', NULL, false, 'asmith', 'Alice', 'Smith', 'Alice@northwind.io',
     false, true, '2023-06-01 00:00:00+00'),
    (4, 'pbkdf2_sha256$870000$jo$h4', '2025-02-11 08:30:00+00', false, 'jo@northwind.io', 'Jo', 'Baker',
     'jo@northwind.io', false, true, '2021-03-01 00:00:00+00'),
    (5, 'pbkdf2_sha256$870000$jk$h5', '2025-02-12 08:30:00+00', false, 'jo.king@northwind.io', 'Jo', 'King',
     'jo.king@northwind.io', false, true, '2021-03-02 00:00:00+00'),
    (6, 'pbkdf2_sha256$870000$sa$h6', '2025-01-05 10:00:00+00', false, 'sam@northwind.io', 'Sam', 'Taylor',
     'sam@northwind.io', false, true, '2021-04-01 00:00:00+00'),
    (7, 'pbkdf2_sha256$870000$sm$h7', '2024-01-05 10:00:00+00', false, 'samantha@northwind.io', 'Samantha', 'Taylor',
     'samantha@northwind.io', false, false, '2022-04-01 00:00:00+00'),
    (8, 'pbkdf2_sha256$870000$ca$h8', '2025-03-03 11:00:00+00', false, 'carol', 'Carol', 'Jones',
     'carol@northwind.io', false, true, '2021-05-01 00:00:00+00'),
    (9, 'pbkdf2_sha256$870000$cj$h9', '2025-03-04 11:00:00+00', false, 'cjones', 'Carol', 'Jones',
     'c.jones@northwind.io', false, true, '2024-05-01 00:00:00+00'),
    (10, 'pbkdf2_sha256$870000$dl$h10', '2025-03-05 12:00:00+00', false, 'dlee', 'Dave', 'Lee',
     'dave.lee@northwind.io', true, true, '2021-06-01 00:00:00+00');

INSERT INTO account_emailaddress (id, email, verified, "primary", user_id) VALUES
    (1, 'ops@northwind.io', true, true, 1),
    (2, 'alice@northwind.io', true, true, 2),
    (3, 'alice@northwind.io', false, true, 3),   -- the duplicate account never verified: unique_verified_email
    (4, 'jo@northwind.io', true, true, 4),
    (5, 'jo.king@northwind.io', true, true, 5),
    (6, 'jo.king@gmail.com', true, false, 5),
    (7, 'sam@northwind.io', true, true, 6),
    (8, 'samantha@northwind.io', true, true, 7),
    (9, 'carol@northwind.io', true, true, 8),
    (10, 'c.jones@northwind.io', true, true, 9),
    (11, 'dave.lee@northwind.io', true, true, 10),
    (12, 'dave@lee.family', false, false, 10);

INSERT INTO socialaccount_socialaccount (id, provider, uid, last_login, date_joined, extra_data, user_id) VALUES
    (1, 'google', '108234967351209876543', '2025-03-02 09:00:00+00', '2021-02-01 00:00:00+00',
     '{"sub": "108234967351209876543", "email": "alice@northwind.io", "email_verified": true, "name": "Alice Smith", "hd": "northwind.io"}',
     2),
    (2, 'github', '5832311', '2025-02-12 08:30:00+00', '2021-03-02 00:00:00+00',
     '{"id": 5832311, "login": "jo-king", "name": "Jo King", "email": "jo.king@northwind.io"}', 5);

-- Explicit ids above: move the identity sequences past them, as a real database would be.
SELECT setval(pg_get_serial_sequence('auth_user', 'id'), 10);
SELECT setval(pg_get_serial_sequence('account_emailaddress', 'id'), 12);
SELECT setval(pg_get_serial_sequence('socialaccount_socialaccount', 'id'), 2);
