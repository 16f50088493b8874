-- Keycloak's tables around addresses, cut down, as PostgreSQL DDL.
--
-- Source: github.com/keycloak/keycloak, the Liquibase changelogs in model/jpa/src/main/resources/META-INF/:
--   jpa-changelog-1.0.0.Final.xml (commit 12d2accf88ac7de18abc9ddf6f5d97a301f7f1f8): USER_ENTITY, USER_ATTRIBUTE,
--     USER_ROLE_MAPPING, primary keys CONSTRAINT_FB / CONSTRAINT_C, the unique constraints
--     UK_DYKN684SL8UP1CRFEI6ECKHD7 (REALM_ID, EMAIL_CONSTRAINT) and UK_RU8TT6T700S9V50BU18WS5HA6 (REALM_ID, USERNAME),
--     the foreign keys FK_5HRM2VLF9QL5FU043KQEPOVBR and FK_C4FQV34P1MBYLLOXANG7B1Q3L;
--   jpa-changelog-2.1.0.xml (commit 091ec956bb27ecbf692f0bbe4a14d570d6f44b3c): FED_USER_ATTRIBUTE and its primary
--     key CONSTR_FED_USER_ATTR_PK;
--   jpa-changelog-2.5.0.xml (commit 064f72b0265e8aa5141ded28c32515cb50fc05fc): REALM.DUPLICATE_EMAILS_ALLOWED and
--     LOGIN_WITH_EMAIL_ALLOWED ("2.5.0-duplicate-email-support");
--   jpa-changelog-24.0.0.xml (commit 091ec956bb27ecbf692f0bbe4a14d570d6f44b3c): LONG_VALUE, LONG_VALUE_HASH,
--     LONG_VALUE_HASH_LOWER_CASE on both attribute tables and their indexes.
-- Columns and indexes added by the changelogs in between are written as a Keycloak 26 database has them:
-- USER_ATTRIBUTE.ID and its primary key CONSTRAINT_USER_ATTRIBUTE_PK, USER_ENTITY.CREATED_TIMESTAMP,
-- SERVICE_ACCOUNT_CLIENT_LINK and NOT_BEFORE, REALM.REGISTRATION_EMAIL_AS_USERNAME, and the indexes IDX_USER_EMAIL,
-- IDX_USER_SERVICE_ACCOUNT, IDX_USER_ATTRIBUTE, IDX_USER_ATTRIBUTE_NAME, IDX_FU_ATTRIBUTE and IDX_USER_ROLE_MAPPING.
-- Liquibase's BINARY(64) and NCLOB are bytea and text on PostgreSQL, VARCHAR(n) and NVARCHAR(n) are varchar(n).
-- Left out: every other table (credential, consents, groups, clients, ...); REALM keeps only the columns that
-- decide how addresses behave.

CREATE TABLE realm (
    id character varying(36) NOT NULL,
    name character varying(255),
    -- 2.5.0-duplicate-email-support: with DUPLICATE_EMAILS_ALLOWED, USER_ENTITY.EMAIL_CONSTRAINT holds a random id
    -- instead of the address, so the unique constraint over it no longer binds addresses.
    login_with_email_allowed boolean DEFAULT true NOT NULL,
    duplicate_emails_allowed boolean DEFAULT false NOT NULL,
    registration_email_as_username boolean DEFAULT false NOT NULL,
    CONSTRAINT constraint_4a PRIMARY KEY (id),
    CONSTRAINT uk_orvsdmla56612eaefiq6wl5oi UNIQUE (name)
);

CREATE TABLE user_entity (
    id character varying(36) NOT NULL,
    email character varying(255),
    email_constraint character varying(255),
    email_verified boolean DEFAULT false NOT NULL,
    enabled boolean DEFAULT false NOT NULL,
    federation_link character varying(255),
    first_name character varying(255),
    last_name character varying(255),
    realm_id character varying(255),
    username character varying(255),
    created_timestamp bigint,
    service_account_client_link character varying(255),
    not_before integer DEFAULT 0 NOT NULL,
    CONSTRAINT constraint_fb PRIMARY KEY (id),
    CONSTRAINT uk_dykn684sl8up1crfei6eckhd7 UNIQUE (realm_id, email_constraint),
    CONSTRAINT uk_ru8tt6t700s9v50bu18ws5ha6 UNIQUE (realm_id, username)
);

CREATE INDEX idx_user_email ON user_entity USING btree (email);
CREATE INDEX idx_user_service_account ON user_entity USING btree (realm_id, service_account_client_link);

CREATE TABLE user_attribute (
    name character varying(255) NOT NULL,
    value character varying(255),
    user_id character varying(36) NOT NULL,
    id character varying(36) DEFAULT 'sybase-needs-something-here'::character varying NOT NULL,
    long_value_hash bytea,
    long_value_hash_lower_case bytea,
    long_value text,
    CONSTRAINT constraint_user_attribute_pk PRIMARY KEY (id),
    CONSTRAINT fk_5hrm2vlf9ql5fu043kqepovbr FOREIGN KEY (user_id) REFERENCES user_entity(id)
);

CREATE INDEX idx_user_attribute ON user_attribute USING btree (user_id);
CREATE INDEX idx_user_attribute_name ON user_attribute USING btree (name, value);
CREATE INDEX user_attr_long_values ON user_attribute USING btree (long_value_hash, name);
CREATE INDEX user_attr_long_values_lower_case ON user_attribute USING btree (long_value_hash_lower_case, name);

-- Attributes of users kept by a user storage provider (LDAP, a custom SPI): USER_ID is the federated id
-- ("f:<component id>:<external id>"), with no foreign key.
CREATE TABLE fed_user_attribute (
    id character varying(36) NOT NULL,
    name character varying(255) NOT NULL,
    user_id character varying(255) NOT NULL,
    realm_id character varying(36) NOT NULL,
    storage_provider_id character varying(36),
    value character varying(2024),
    long_value_hash bytea,
    long_value_hash_lower_case bytea,
    long_value text,
    CONSTRAINT constr_fed_user_attr_pk PRIMARY KEY (id)
);

CREATE INDEX idx_fu_attribute ON fed_user_attribute USING btree (user_id, realm_id, name);
CREATE INDEX fed_user_attr_long_values ON fed_user_attribute USING btree (long_value_hash, name);
CREATE INDEX fed_user_attr_long_values_lower_case ON fed_user_attribute USING btree (long_value_hash_lower_case, name);

-- Every Keycloak user has rows here (at least the realm's default roles): a user can never be deleted by a bare
-- DELETE, which is why deleting a user_entity row on a conflict is refused.
CREATE TABLE user_role_mapping (
    role_id character varying(255) NOT NULL,
    user_id character varying(36) NOT NULL,
    CONSTRAINT constraint_c PRIMARY KEY (role_id, user_id),
    CONSTRAINT fk_c4fqv34p1mbylloxang7b1q3l FOREIGN KEY (user_id) REFERENCES user_entity(id)
);

CREATE INDEX idx_user_role_mapping ON user_role_mapping USING btree (user_id);
