-- Tamper-evident audit log (PostgreSQL). Kept equivalent to ../sqlite/0002_audit.sql.
--
-- `entry` holds the canonical bytes that are hashed (controlplane/src/audit/chain.rs);
-- the other columns repeat its fields for queries, and verification checks
-- that they agree. Hashes are lowercase hex SHA-256. Sequence numbers are
-- gapless and assigned inside the appending transaction under
-- pg_advisory_xact_lock (several replicas share one chain and never fork it).
CREATE TABLE audit_log (
    seq        BIGINT NOT NULL PRIMARY KEY,
    time_ms    BIGINT NOT NULL,
    actor      TEXT COLLATE "C" NOT NULL,
    action     TEXT COLLATE "C" NOT NULL,
    target     TEXT,
    outcome    TEXT   NOT NULL,
    request_id TEXT,
    details    TEXT   NOT NULL,
    entry      BYTEA  NOT NULL,
    prev_hash  TEXT   NOT NULL,
    hash       TEXT   NOT NULL
);
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_time ON audit_log (time_ms);

-- Signed checkpoints: `body` is the signed canonical encoding; `signature` is
-- Ed25519 by the key in `public_key` (kept out of the database, in the data
-- directory). Each checkpoint chains to the previous one through `prev_hash`.
CREATE TABLE audit_checkpoints (
    cp_seq          BIGINT NOT NULL PRIMARY KEY,
    created_ms      BIGINT NOT NULL,
    kind            TEXT   NOT NULL,
    last_seq        BIGINT NOT NULL,
    last_hash       TEXT   NOT NULL,
    prev_hash       TEXT   NOT NULL,
    max_interval_ms BIGINT NOT NULL,
    max_entries     BIGINT NOT NULL,
    public_key      TEXT   NOT NULL,
    body            BYTEA  NOT NULL,
    signature       BYTEA  NOT NULL,
    hash            TEXT   NOT NULL
);

-- Append-only. Guardrails, not evidence: a superuser can drop them; the hash
-- chain and the signed checkpoints are what prove.
CREATE FUNCTION steward_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION steward_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION steward_audit_append_only();
CREATE TRIGGER audit_checkpoints_no_update_delete BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION steward_audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION steward_audit_append_only();
