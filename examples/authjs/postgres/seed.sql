-- Seed rows for the Auth.js PostgreSQL example (load schema.sql first). Each person's rows are as the adapter
-- writes them: a users row, an accounts row per OAuth provider linked, a sessions row per signed-in browser, and a
-- verification_token row per magic link sent and not yet used. The hard cases, with email_mappings.json:
--
--   chain         dave@oldco.com -> dave@newco.com while dave@newco.com (another Dave) -> dave.jones@newco.com
--   merge         eve@oldco.com and eve.ellis@gmail.com -> eve@newco.com (one person, two Auth.js users)
--   taken         frank@oldco.com -> frank@newco.com, which user 7 (the same Frank) already signed up with
--   case          Gina.Green@OldCo.com is matched by the mapping of gina.green@oldco.com (match: casefold);
--                 hal@oldco.com and HAL@oldco.com are two users that differ only by case, both -> hal@newco.com
--   pending link  a verification_token for ann@oldco.com (see README.md: why it is left alone)

INSERT INTO users (id, name, email, "emailVerified", image) VALUES
  (1,  'Ann Archer',  'ann@oldco.com',        '2024-03-01 09:00:00+00', 'https://avatars.example/ann.png'),
  (2,  'Dave Dunn',   'dave@oldco.com',       NULL,                     NULL),
  (3,  'Dave Jones',  'dave@newco.com',       '2024-06-10 12:30:00+00', NULL),
  (4,  'Eve Ellis',   'eve@oldco.com',        '2024-02-14 08:15:00+00', NULL),
  (5,  'Eve Ellis',   'eve.ellis@gmail.com',  NULL,                     'https://avatars.example/eve.png'),
  (6,  NULL,          'frank@oldco.com',      '2023-11-20 17:45:00+00', NULL),
  (7,  'Frank Ford',  'frank@newco.com',      NULL,                     'https://avatars.example/frank.png'),
  (8,  'Gina Green',  'Gina.Green@OldCo.com', NULL,                     NULL),
  (9,  NULL,          'hal@oldco.com',        '2024-01-05 10:00:00+00', NULL),
  (10, 'Hal Hill',    'HAL@oldco.com',        NULL,                     NULL),
  (11, 'Ivy Iverson', 'ivy@partner.org',      '2024-04-04 04:04:00+00', NULL);
SELECT setval(pg_get_serial_sequence('users', 'id'), 11);

INSERT INTO accounts
  (id, "userId", type, provider, "providerAccountId", refresh_token, access_token, expires_at, id_token, scope,
   session_state, token_type) VALUES
  (1, 1,  'oidc',   'google', '104729000000000000001', NULL, 'ya29.ann',   1893456000, 'eyJ.ann',  'openid email profile', NULL, 'bearer'),
  (2, 2,  'oauth',  'github', '5100001',               NULL, 'gho_dave',   NULL,       NULL,       'read:user,user:email', NULL, 'bearer'),
  (3, 3,  'oidc',   'google', '104729000000000000003', NULL, 'ya29.davej', 1893456000, 'eyJ.davej', 'openid email profile', NULL, 'bearer'),
  (4, 5,  'oidc',   'google', '104729000000000000005', NULL, 'ya29.eve',   1893456000, 'eyJ.eve',  'openid email profile', NULL, 'bearer'),
  (5, 7,  'oauth',  'github', '5100007',               NULL, 'gho_frank',  NULL,       NULL,       'read:user,user:email', NULL, 'bearer'),
  (6, 8,  'oidc',   'google', '104729000000000000008', NULL, 'ya29.gina',  1893456000, 'eyJ.gina', 'openid email profile', NULL, 'bearer'),
  (7, 10, 'oauth',  'github', '5100010',               NULL, 'gho_hal',    NULL,       NULL,       'read:user,user:email', NULL, 'bearer'),
  (8, 11, 'oidc',   'google', '104729000000000000011', NULL, 'ya29.ivy',   1893456000, 'eyJ.ivy',  'openid email profile', NULL, 'bearer');
SELECT setval(pg_get_serial_sequence('accounts', 'id'), 8);

INSERT INTO sessions (id, "userId", expires, "sessionToken") VALUES
  (1, 1,  '2030-01-01 00:00:00+00', 'sess-ann-1'),
  (2, 3,  '2030-01-01 00:00:00+00', 'sess-davej-1'),
  (3, 4,  '2030-01-01 00:00:00+00', 'sess-eve-work'),
  (4, 5,  '2030-01-01 00:00:00+00', 'sess-eve-personal'),
  (5, 9,  '2030-01-01 00:00:00+00', 'sess-hal-1');
SELECT setval(pg_get_serial_sequence('sessions', 'id'), 5);

-- token is what the adapter stores: a SHA-256 of the link's token and the secret, never the link's token itself.
INSERT INTO verification_token (identifier, expires, token) VALUES
  ('ann@oldco.com',   '2030-01-02 00:00:00+00', '5f1d6c0a3e8b2f9d7c4a1e6b3d8f2a9c5e7b1d4f6a8c3e2b9d7f1a5c4e8b6d2a'),
  ('ivy@partner.org', '2030-01-02 00:00:00+00', '9a7c5e3b1d8f6a4c2e9b7d5f3a1c8e6b4d2f9a7c5e3b1d8f6a4c2e9b7d5f3a1c');
