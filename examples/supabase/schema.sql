-- Supabase Auth's tables around addresses, cut down, and two tables of the application's own.
--
-- Source: the migrations of Supabase Auth, github.com/supabase/auth (formerly supabase/gotrue, a fork of
-- netlify/gotrue), folder migrations/, as the migrator leaves the schema after all of them ({{ index .Options
-- "Namespace" }} is `auth`). Files and the commits they were read at:
--   00_init_auth_schema.up.sql                              91a7481601f42574e668fe9ca1d7b3a60c1a4ac1  auth.users
--   20210710035447_alter_users.up.sql                       069e5a92bf54912fd71b5eecdb4692e97e6c622f  phone columns,
--       email_confirmed_at (that commit's copies of the migrations are a variant with organization_id/project_id
--       columns, left out here)
--   20210722035447_adds_confirmed_at.up.sql                 3ea239bcd25263dea4a1d8805b51c17ecf827555  confirmed_at
--   20210730183235_add_email_change_confirmed.up.sql        1fd73fabf68cda1c91ffae08fd5110bcc37bee1b  email_change_*
--   20210909172000_create_identities_table.up.sql           51b0b053b2668c81e2d293ac9fcfd3eb88982802  auth.identities
--   20220114185221_update_user_idx.up.sql                   3ea239bcd25263dea4a1d8805b51c17ecf827555
--   20220603142744_alter_phone_type.up.sql                  df37ff3a2687714703464e29003b807ff0e1675d
--   20220811173540_add_sessions_table.up.sql                6670cc7ca7f9eef8a975867e2358f3f4032ad2f8  auth.sessions
--   20221130112646_add_deleted_at.up.sql                    868316e1ccd87e30b298071685ab8d4ee339a41d  deleted_at
--   20221215195500_modify_users_email_unique_index.up.sql   is_sso_user, users_email_partial_key; the only copy in
--       supabase/auth read (069e5a92) is that variant, indexing (email, organization_id, project_id), so the index
--       is taken from the same file in veldtech/gotrue, a fork, at fef59452f74c93bd35e19811d90aac8034b0d629:
--       `create unique index users_email_partial_key on users (email) where (is_sso_user = false)`
--   20221215195800_add_identities_email_column.up.sql       486760981b2508eaa11f043be0704b289b29bf3e  identities.email
--   20231117164230_add_id_pkey_identities.up.sql            513200996f3312fd5364db96e4e2a89f2670b5c6  id, provider_id
-- Kept: the columns that hold or sit next to an address, the keys, the unique index and the foreign keys into
-- auth.users of the tables kept (phone_change*, reauthentication_*, banned_until, is_anonymous and other columns of
-- auth.users are left out). Types, defaults, CHECKs and index definitions are as the migrations give them.
-- Left out although they hold addresses: audit_log_entries.payload (json: the record of what happened, with the
-- address of the time; not to be rewritten, and emailsync refuses json columns), one_time_tokens.relates_to and
-- saml_relay_states.for_email (tokens and SSO sign-ins in flight, minutes old: let them expire). MFA, flow state and
-- refresh token tables hold none.
--
-- What the database says: users.email is unique only among non-SSO users (users_email_partial_key), so an SSO user may
-- share an address with a password user. identities.email is GENERATED from identity_data->>'email', lower-cased, and
-- indexed but not unique. Deleting a user cascades to identities and sessions (and, below, to public.profiles).
-- What it does not say: Supabase Auth writes the user's address into raw_user_meta_data too (`email`, beside `sub`
-- and, for a provider's sign-in, the provider's data), and rewrites an identity's identity_data from what the
-- provider sends at each sign-in with it.

CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth.users (
    instance_id uuid NULL,
    id uuid NOT NULL UNIQUE,
    aud varchar(255) NULL,
    "role" varchar(255) NULL,
    email varchar(255) NULL,
    encrypted_password varchar(255) NULL,
    email_confirmed_at timestamptz NULL,
    invited_at timestamptz NULL,
    confirmation_token varchar(255) NULL,
    confirmation_sent_at timestamptz NULL,
    recovery_token varchar(255) NULL,
    recovery_sent_at timestamptz NULL,
    email_change_token_new varchar(255) NULL,
    email_change varchar(255) NULL,
    email_change_sent_at timestamptz NULL,
    last_sign_in_at timestamptz NULL,
    raw_app_meta_data jsonb NULL,
    raw_user_meta_data jsonb NULL,
    is_super_admin bool NULL,
    created_at timestamptz NULL,
    updated_at timestamptz NULL,
    phone varchar(255) NULL DEFAULT NULL,
    phone_confirmed_at timestamptz NULL DEFAULT NULL,
    confirmed_at timestamptz GENERATED ALWAYS AS (LEAST(email_confirmed_at, phone_confirmed_at)) STORED,
    email_change_token_current varchar(255) NULL DEFAULT '',
    email_change_confirm_status smallint DEFAULT 0
        CHECK (email_change_confirm_status >= 0 AND email_change_confirm_status <= 2),
    is_sso_user boolean NOT NULL DEFAULT false,
    deleted_at timestamptz NULL,
    CONSTRAINT users_pkey PRIMARY KEY (id),
    CONSTRAINT users_phone_key UNIQUE (phone)
);
COMMENT ON TABLE auth.users IS 'Auth: Stores user login data within a secure schema.';
COMMENT ON COLUMN auth.users.is_sso_user IS
    'Auth: Set this column to true when the account comes from SSO. These accounts can have duplicate emails.';
CREATE INDEX users_instance_id_email_idx ON auth.users USING btree (instance_id, lower(email));
CREATE INDEX users_instance_id_idx ON auth.users USING btree (instance_id);
CREATE UNIQUE INDEX users_email_partial_key ON auth.users (email) WHERE (is_sso_user = false);
COMMENT ON INDEX auth.users_email_partial_key IS
    'Auth: A partial unique index that applies only when is_sso_user is false';

-- provider_id: the provider's subject (for provider 'email', the user's id; for SAML SSO, the NameID, which is often
-- the address itself). The primary key is id since 20231117164230; before it, (provider, id).
CREATE TABLE auth.identities (
    provider_id text NOT NULL,
    user_id uuid NOT NULL,
    identity_data jsonb NOT NULL,
    provider text NOT NULL,
    last_sign_in_at timestamptz NULL,
    created_at timestamptz NULL,
    updated_at timestamptz NULL,
    email text GENERATED ALWAYS AS (lower(identity_data->>'email')) STORED,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    CONSTRAINT identities_pkey PRIMARY KEY (id),
    CONSTRAINT identities_provider_id_provider_unique UNIQUE (provider_id, provider),
    CONSTRAINT identities_user_id_fkey FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE CASCADE
);
COMMENT ON TABLE auth.identities IS 'Auth: Stores identities associated to a user.';
COMMENT ON COLUMN auth.identities.email IS
    'Auth: Email is a generated column that references the optional email property in the identity_data';
CREATE INDEX identities_email_idx ON auth.identities (email text_pattern_ops);
CREATE INDEX identities_user_id_idx ON auth.identities USING btree (user_id);

CREATE TABLE auth.sessions (
    id uuid NOT NULL,
    user_id uuid NOT NULL,
    created_at timestamptz NULL,
    updated_at timestamptz NULL,
    CONSTRAINT sessions_pkey PRIMARY KEY (id),
    CONSTRAINT sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE CASCADE
);
COMMENT ON TABLE auth.sessions IS 'Auth: Stores session data associated to a user.';

-- auth.uid(), as 00_init_auth_schema.up.sql defines it: the policies below use it.
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid AS $$
  SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid;
$$ LANGUAGE sql STABLE;

-- The application's own tables (not Supabase's). public.profiles is the profiles table of Supabase's "User
-- Management" quickstart, with the `email` column many applications add, filled by the quickstart's trigger when
-- a user signs up (and never again: a later change of auth.users.email does not reach it).
CREATE TABLE public.profiles (
    id uuid NOT NULL REFERENCES auth.users ON DELETE CASCADE PRIMARY KEY,
    updated_at timestamptz,
    username text UNIQUE,
    full_name text,
    email text,
    avatar_url text,
    CONSTRAINT username_length CHECK (char_length(username) >= 3)
);
ALTER TABLE public.profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Public profiles are viewable by everyone." ON public.profiles FOR SELECT USING (true);
CREATE POLICY "Users can insert their own profile." ON public.profiles FOR INSERT WITH CHECK ((SELECT auth.uid()) = id);
CREATE POLICY "Users can update own profile." ON public.profiles FOR UPDATE USING ((SELECT auth.uid()) = id);

CREATE FUNCTION public.handle_new_user() RETURNS trigger
SET search_path = ''
AS $$
BEGIN
  INSERT INTO public.profiles (id, full_name, email, avatar_url)
  VALUES (new.id, new.raw_user_meta_data->>'full_name', new.email, new.raw_user_meta_data->>'avatar_url');
  RETURN new;
END;
$$ LANGUAGE plpgsql SECURITY DEFINER;
CREATE TRIGGER on_auth_user_created
    AFTER INSERT ON auth.users
    FOR EACH ROW EXECUTE PROCEDURE public.handle_new_user();

-- Invitations to a team, by address, before the person has an account; one invitation per team and address.
CREATE TABLE public.team_invites (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    team text NOT NULL,
    email text NOT NULL,
    invited_by uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    accepted_at timestamptz,
    CONSTRAINT team_invites_team_email_key UNIQUE (team, email)
);
