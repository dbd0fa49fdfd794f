-- Agent identity lifecycle (PostgreSQL twin of ../sqlite/0003_identity.sql):
-- one-time enrollment tokens, the certificates issued to each host, revocation.

-- Stored hashed (SHA-256 of the secret); the secret is shown once at creation.
CREATE TABLE enrollment_tokens (
    id          TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
    secret_hash TEXT   NOT NULL,
    -- labels given to the hosts that enroll with it (control-plane assigned)
    labels      TEXT   NOT NULL DEFAULT '{}',
    max_uses    BIGINT NOT NULL,
    uses_left   BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    created_ms  BIGINT NOT NULL,
    created_by  TEXT   NOT NULL,
    revoked_ms  BIGINT
);

-- Every agent certificate the control plane signed (enrollment, renewal).
CREATE TABLE agent_certs (
    serial       TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
    host_id      TEXT   NOT NULL,
    not_after_ms BIGINT NOT NULL,
    issued_ms    BIGINT NOT NULL,
    source       TEXT   NOT NULL,
    revoked_ms   BIGINT
);
CREATE INDEX agent_certs_host ON agent_certs (host_id);

-- Set when the host is revoked: every certificate of the host issued before
-- this moment is refused; re-enrollment clears it.
ALTER TABLE hosts ADD COLUMN revoked_ms BIGINT;
