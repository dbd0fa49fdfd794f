-- Identity hardening (twin of ../postgres/0013_identity_binding.sql).

-- The host IDs a token may enroll: a JSON array of exact IDs and glob
-- patterns ("web-*"); NULL means any new host. Only a token that names a host
-- exactly may re-enroll that existing host.
ALTER TABLE enrollment_tokens ADD COLUMN hosts TEXT;

-- Revoked certificates that are not yet expired: what the revocation sweep
-- reads every half second on every replica.
CREATE INDEX agent_certs_revoked ON agent_certs (not_after_ms) WHERE revoked_ms IS NOT NULL;
