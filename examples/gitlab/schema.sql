-- GitLab's tables around addresses, cut down.
--
-- Source: GitLab's db/structure.sql, read from its GitHub mirror github.com/gitlabhq/gitlabhq at commit
-- 0016ea0586afbe89b5823f3fc254045ce7115af2 (the same file as gitlab-org/gitlab's db/structure.sql): CREATE TABLE
-- users and CREATE TABLE emails, their indexes, and the foreign key fk_emails_user_id (added by the migration
-- AddEmailsUserIdForeignKey: on_delete: :cascade). Every column of emails is kept; users keeps the columns that hold
-- addresses plus the few a reader needs to tell people apart (most of its ~85 columns are left out), with the types,
-- defaults and CHECK constraints structure.sql gives them. Indexes are copied as they are, the trigram ones included.
--
-- What the database does not say: GitLab also keeps an address unique ACROSS users.email and emails.email (a
-- validation in the User and Email models, not a constraint), and a user's primary address normally has an emails
-- row of its own. emails.detumbled_email is derived by GitLab from emails.email (lower-cased, sub-address removed)
-- for abuse checks.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE users (
    id bigint NOT NULL,
    email character varying DEFAULT ''::character varying NOT NULL,
    encrypted_password character varying DEFAULT ''::character varying NOT NULL,
    created_at timestamp without time zone,
    updated_at timestamp without time zone,
    name character varying,
    admin boolean DEFAULT false NOT NULL,
    projects_limit integer NOT NULL,
    username character varying,
    state character varying,
    confirmation_token character varying,
    confirmed_at timestamp without time zone,
    confirmation_sent_at timestamp without time zone,
    unconfirmed_email character varying,
    notification_email character varying,
    public_email character varying,
    commit_email character varying,
    user_type smallint DEFAULT 0,
    CONSTRAINT check_0dd5948e38 CHECK ((user_type IS NOT NULL))
);

CREATE SEQUENCE users_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE users_id_seq OWNED BY users.id;

CREATE TABLE emails (
    id bigint NOT NULL,
    user_id bigint NOT NULL,
    email character varying NOT NULL,
    created_at timestamp without time zone,
    updated_at timestamp without time zone,
    confirmation_token character varying,
    confirmed_at timestamp without time zone,
    confirmation_sent_at timestamp without time zone,
    detumbled_email text,
    CONSTRAINT check_319f6999dc CHECK ((char_length(detumbled_email) <= 255))
);

CREATE SEQUENCE emails_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE emails_id_seq OWNED BY emails.id;

ALTER TABLE ONLY emails ALTER COLUMN id SET DEFAULT nextval('emails_id_seq'::regclass);

ALTER TABLE ONLY users ALTER COLUMN id SET DEFAULT nextval('users_id_seq'::regclass);

ALTER TABLE ONLY emails
    ADD CONSTRAINT emails_pkey PRIMARY KEY (id);

ALTER TABLE ONLY users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);

CREATE UNIQUE INDEX index_emails_on_confirmation_token ON emails USING btree (confirmation_token);

CREATE INDEX index_emails_on_created_at_where_confirmed_at_is_null ON emails USING btree (created_at) WHERE (confirmed_at IS NULL);

CREATE INDEX index_emails_on_detumbled_email ON emails USING btree (detumbled_email);

CREATE UNIQUE INDEX index_emails_on_email ON emails USING btree (email);

CREATE INDEX index_emails_on_email_trigram ON emails USING gin (email gin_trgm_ops);

CREATE INDEX index_emails_on_user_id ON emails USING btree (user_id);

CREATE UNIQUE INDEX index_users_on_confirmation_token ON users USING btree (confirmation_token);

CREATE UNIQUE INDEX index_users_on_email ON users USING btree (email);

CREATE INDEX index_users_on_email_domain_and_id ON users USING btree (lower(split_part((email)::text, '@'::text, 2)), id);

CREATE INDEX index_users_on_email_trigram ON users USING gin (email gin_trgm_ops);

CREATE INDEX index_users_on_public_email_excluding_null_and_empty ON users USING btree (public_email) WHERE (((public_email)::text <> ''::text) AND (public_email IS NOT NULL));

CREATE INDEX index_users_on_public_email_trigram ON users USING gin (public_email gin_trgm_ops);

CREATE INDEX index_users_on_unconfirmed_email ON users USING btree (unconfirmed_email) WHERE (unconfirmed_email IS NOT NULL);

CREATE INDEX index_users_on_username ON users USING btree (username);

CREATE INDEX index_users_on_username_trigram ON users USING gin (username gin_trgm_ops);

ALTER TABLE ONLY emails
    ADD CONSTRAINT fk_emails_user_id FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE;
