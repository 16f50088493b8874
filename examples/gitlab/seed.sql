-- A self-managed GitLab before Initech moves from initech.com to initech.io.
--
-- As GitLab writes them: addresses in lower case; each user's primary address (users.email) also has a confirmed
-- row in emails, and notification_email, public_email and commit_email are one of the user's confirmed addresses
-- (public_email '' when not shown). detumbled_email is the address without its +tag, lower-cased.
--
-- Hard cases (see email_mappings.json):
--   * chain: jo@initech.com -> jo.king@initech.com while jo.king@initech.com -> jo.king@initech.io;
--   * merge within one table: sam@ and samantha@initech.com -> sam.taylor@initech.io (two accounts, one person);
--   * taken by the same person: carol@initech.com -> c.jones@initech.com, which Carol already added as a secondary;
--   * merge ACROSS the two tables: Pat's primary pat@initech.com has no emails row (an account whose primary was
--     never copied into emails), and Patricia's secondary p.ops@initech.com lives only in emails; both map to
--     pat@initech.io, so after the change two users hold one address, which GitLab forbids;
--   * case: the mappings file spells Dana's address Dana.Scully@Initech.com (as HR typed it), GitLab stores it
--     lower-case;
--   * pending change: Eve asked to change her address to eve@initech.com and has not confirmed it yet.

INSERT INTO users (id, email, encrypted_password, created_at, updated_at, name, admin, projects_limit, username, state,
                   confirmation_token, confirmed_at, confirmation_sent_at, unconfirmed_email, notification_email,
                   public_email, commit_email, user_type) VALUES
    (1, 'admin@initech.com', '$2a$10$adm', '2019-01-01 00:00:00', '2025-01-01 00:00:00', 'Administrator', true, 100000,
     'root', 'active', NULL, '2019-01-01 00:00:00', NULL, NULL, 'admin@initech.com', '', NULL, 0),
    (2, 'alice@initech.com', '$2a$10$ali', '2020-02-01 00:00:00', '2025-02-01 00:00:00', 'Alice Wong', false, 100000,
     'alice', 'active', NULL, '2020-02-01 00:00:00', NULL, NULL, 'alice@initech.com', 'alice@initech.com',
     'alice+commits@gmail.com', 0),
    (3, 'jo@initech.com', '$2a$10$jo', '2020-03-01 00:00:00', '2025-03-01 00:00:00', 'Jo Baker', false, 100000,
     'jo', 'active', NULL, '2020-03-01 00:00:00', NULL, NULL, 'jo@initech.com', '', 'jo@initech.com', 0),
    (4, 'jo.king@initech.com', '$2a$10$jok', '2020-03-02 00:00:00', '2025-03-02 00:00:00', 'Jo King', false, 100000,
     'jking', 'active', NULL, '2020-03-02 00:00:00', NULL, NULL, 'jo.king@initech.com', 'jo.king@initech.com',
     NULL, 0),
    (5, 'sam@initech.com', '$2a$10$sam', '2020-04-01 00:00:00', '2025-04-01 00:00:00', 'Sam Taylor', false, 100000,
     'sam', 'active', NULL, '2020-04-01 00:00:00', NULL, NULL, 'sam@initech.com', '', NULL, 0),
    (6, 'samantha@initech.com', '$2a$10$smt', '2021-04-01 00:00:00', '2024-04-01 00:00:00', 'Samantha Taylor', false,
     100000, 'staylor', 'blocked', NULL, '2021-04-01 00:00:00', NULL, NULL, 'samantha@initech.com', '', NULL, 0),
    (7, 'carol@initech.com', '$2a$10$car', '2020-05-01 00:00:00', '2025-05-01 00:00:00', 'Carol Jones', false, 100000,
     'carol', 'active', NULL, '2020-05-01 00:00:00', NULL, NULL, 'c.jones@initech.com', '', 'carol@initech.com', 0),
    (8, 'pat@initech.com', '$2a$10$pat', '2016-06-01 00:00:00', '2025-06-01 00:00:00', 'Pat Ops', false, 100000,
     'pat', 'active', NULL, '2016-06-01 00:00:00', NULL, NULL, 'pat@initech.com', '', NULL, 0),
    (9, 'patricia@initech.com', '$2a$10$ptr', '2021-06-01 00:00:00', '2025-06-02 00:00:00', 'Patricia Ortiz', false,
     100000, 'portiz', 'active', NULL, '2021-06-01 00:00:00', NULL, NULL, 'patricia@initech.com', '', NULL, 0),
    (10, 'dana.scully@initech.com', '$2a$10$dan', '2022-07-01 00:00:00', '2025-07-01 00:00:00', 'Dana Scully', false,
     100000, 'dscully', 'active', NULL, '2022-07-01 00:00:00', NULL, NULL, 'dana.scully@initech.com',
     'dana.scully@initech.com', 'dana.scully@initech.com', 0),
    (11, 'eve@example.org', '$2a$10$eve', '2023-08-01 00:00:00', '2025-08-01 00:00:00', 'Eve Adams', false, 100000,
     'eve', 'active', 'Xy7kq2confirm', '2023-08-01 00:00:00', '2025-08-01 00:00:00', 'eve@initech.com',
     'eve@example.org', '', NULL, 0);

INSERT INTO emails (id, user_id, email, created_at, updated_at, confirmation_token, confirmed_at,
                    confirmation_sent_at, detumbled_email) VALUES
    (1, 1, 'admin@initech.com', '2019-01-01 00:00:00', '2019-01-01 00:00:00', NULL, '2019-01-01 00:00:00', NULL,
     'admin@initech.com'),
    (2, 2, 'alice@initech.com', '2020-02-01 00:00:00', '2020-02-01 00:00:00', NULL, '2020-02-01 00:00:00', NULL,
     'alice@initech.com'),
    (3, 2, 'alice+commits@gmail.com', '2020-02-02 00:00:00', '2020-02-02 00:00:00', NULL, '2020-02-02 00:00:00', NULL,
     'alice@gmail.com'),
    (4, 3, 'jo@initech.com', '2020-03-01 00:00:00', '2020-03-01 00:00:00', NULL, '2020-03-01 00:00:00', NULL,
     'jo@initech.com'),
    (5, 4, 'jo.king@initech.com', '2020-03-02 00:00:00', '2020-03-02 00:00:00', NULL, '2020-03-02 00:00:00', NULL,
     'jo.king@initech.com'),
    (6, 5, 'sam@initech.com', '2020-04-01 00:00:00', '2020-04-01 00:00:00', NULL, '2020-04-01 00:00:00', NULL,
     'sam@initech.com'),
    (7, 6, 'samantha@initech.com', '2021-04-01 00:00:00', '2021-04-01 00:00:00', NULL, '2021-04-01 00:00:00', NULL,
     'samantha@initech.com'),
    (8, 7, 'carol@initech.com', '2020-05-01 00:00:00', '2020-05-01 00:00:00', NULL, '2020-05-01 00:00:00', NULL,
     'carol@initech.com'),
    (9, 7, 'c.jones@initech.com', '2024-05-01 00:00:00', '2024-05-01 00:00:00', NULL, '2024-05-02 00:00:00', NULL,
     'c.jones@initech.com'),
    -- user 8 (Pat) has no row for pat@initech.com
    (10, 9, 'patricia@initech.com', '2021-06-01 00:00:00', '2021-06-01 00:00:00', NULL, '2021-06-01 00:00:00', NULL,
     'patricia@initech.com'),
    (11, 9, 'p.ops@initech.com', '2023-01-01 00:00:00', '2023-01-01 00:00:00', NULL, '2023-01-02 00:00:00', NULL,
     'p.ops@initech.com'),
    (12, 10, 'dana.scully@initech.com', '2022-07-01 00:00:00', '2022-07-01 00:00:00', NULL, '2022-07-01 00:00:00',
     NULL, 'dana.scully@initech.com'),
    (13, 11, 'eve@example.org', '2023-08-01 00:00:00', '2023-08-01 00:00:00', NULL, '2023-08-01 00:00:00', NULL,
     'eve@example.org');

SELECT setval('users_id_seq', 11);
SELECT setval('emails_id_seq', 13);
