-- The Auth.js PostgreSQL adapter's tables (@auth/pg-adapter), copied unchanged below this header.
-- Source: https://github.com/nextauthjs/next-auth, file packages/adapter-pg/schema.sql at commit
-- c270dffac7ed80b3680334411ed8b4fc3212bbaf. Version: @auth/pg-adapter 1.x (the package.json of
-- packages/adapter-pg at commit d038c491201f11e8d1e51d2f4b84e93e6ac72973 says 1.9.0; the schema file carries no
-- version of its own). An older revision of the file (commit 0dfa804d888df88f87880bdb4d670e7d3c2b9262) declares
-- `email VARCHAR(255) UNIQUE` without NOT NULL; nothing in this example depends on that difference.
--
-- Run with psql (`\set` is a psql command): psql "$AUTHJS_DSN" -f schema.sql -f seed.sql

\set ON_ERROR_STOP true

CREATE TABLE users
(
  id SERIAL,
  name VARCHAR(255),
  email VARCHAR(255) UNIQUE NOT NULL,
  "emailVerified" TIMESTAMPTZ,
  image TEXT,
 
  PRIMARY KEY (id)
);

CREATE TABLE accounts
(
  id SERIAL,
  "userId" INTEGER NOT NULL REFERENCES users ON DELETE CASCADE,
  type VARCHAR(255) NOT NULL,
  provider VARCHAR(255) NOT NULL,
  "providerAccountId" VARCHAR(255) NOT NULL,
  refresh_token TEXT,
  access_token TEXT,
  expires_at BIGINT,
  id_token TEXT,
  scope TEXT,
  session_state TEXT,
  token_type TEXT,
 
  PRIMARY KEY (id),
  UNIQUE (provider, "providerAccountId")
);
 
CREATE TABLE sessions
(
  id SERIAL,
  "userId" INTEGER NOT NULL REFERENCES users ON DELETE CASCADE,
  expires TIMESTAMPTZ NOT NULL,
  "sessionToken" VARCHAR(255) UNIQUE NOT NULL,
 
  PRIMARY KEY (id)
);

CREATE TABLE verification_token
(
  identifier TEXT NOT NULL,
  expires TIMESTAMPTZ NOT NULL,
  token TEXT NOT NULL,
 
  PRIMARY KEY (identifier, token)
);
