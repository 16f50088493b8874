-- Delete the pending magic links (verification_token rows) of every old address in email_mappings.json.
-- emailsync leaves verification_token alone on purpose (see targets.yaml and ../README.md): run this right after
-- `emailsync apply`, from this folder:  psql "$AUTHJS_DSN" -f delete_pending_tokens.sql
-- The people concerned just ask for a new link, at their new address. Auth.js lowercases the addresses it sends
-- links to, so the comparison ignores case.

\set ON_ERROR_STOP true
\set mappings `cat email_mappings.json`

DELETE FROM verification_token
WHERE lower(identifier) IN (SELECT lower(m ->> 'old_email') FROM jsonb_array_elements(:'mappings'::jsonb) AS m)
RETURNING identifier, expires;
