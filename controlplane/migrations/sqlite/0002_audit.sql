-- Tamper-evident audit log (SQLite). Kept equivalent to ../postgres/0002_audit.sql.
--
-- `entry` holds the canonical bytes that are hashed (controlplane/src/audit/chain.rs);
-- the other columns repeat its fields for queries, and verification checks
-- that they agree. Hashes are lowercase hex SHA-256. Sequence numbers are
-- gapless and assigned by the writer inside the appending transaction
-- (BEGIN IMMEDIATE serialises writers), so the chain never forks.
CREATE TABLE audit_log (
    seq        INTEGER NOT NULL PRIMARY KEY,
    time_ms    INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    target     TEXT,
    outcome    TEXT    NOT NULL,
    request_id TEXT,
    details    TEXT    NOT NULL,
    entry      BLOB    NOT NULL,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL
);
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_time ON audit_log (time_ms);

-- Signed checkpoints: `body` is the signed canonical encoding; `signature` is
-- Ed25519 by the key in `public_key` (kept out of the database, in the data
-- directory). Each checkpoint chains to the previous one through `prev_hash`.
CREATE TABLE audit_checkpoints (
    cp_seq          INTEGER NOT NULL PRIMARY KEY,
    created_ms      INTEGER NOT NULL,
    kind            TEXT    NOT NULL,
    last_seq        INTEGER NOT NULL,
    last_hash       TEXT    NOT NULL,
    prev_hash       TEXT    NOT NULL,
    max_interval_ms INTEGER NOT NULL,
    max_entries     INTEGER NOT NULL,
    public_key      TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    signature       BLOB    NOT NULL,
    hash            TEXT    NOT NULL
);

-- Append-only. Guardrails, not evidence: whoever can write the file can drop
-- them; the hash chain and the signed checkpoints are what prove.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
