-- Steward control plane, first schema (PostgreSQL). Kept equivalent to
-- ../sqlite/0001_init.sql: same tables, columns, keys and indexes.
-- Timestamps are epoch milliseconds (BIGINT, no timestamptz); JSON is stored
-- as TEXT. Keys use COLLATE "C" so keyset pagination orders bytewise, exactly
-- as SQLite's BINARY collation does.

-- One row per agent identity (the name in its verified certificate).
CREATE TABLE hosts (
    id                   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    -- self-reported (facts["hostname"]); '' when unknown
    hostname             TEXT    NOT NULL DEFAULT '',
    -- assigned by the control plane: what selectors and RBAC match on
    labels               TEXT    NOT NULL DEFAULT '{}',
    -- self-reported by the agent: informational only
    facts                TEXT    NOT NULL DEFAULT '{}',
    agent_version        TEXT    NOT NULL DEFAULT '',
    first_seen_ms        BIGINT  NOT NULL,
    last_seen_ms         BIGINT  NOT NULL,
    connected            BOOLEAN NOT NULL DEFAULT FALSE,
    last_connected_ms    BIGINT,
    last_disconnected_ms BIGINT,
    -- highest report sequence durably stored (all report kinds share it)
    last_seq             BIGINT  NOT NULL DEFAULT 0,
    spool_dropped_total  BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX hosts_hostname ON hosts (hostname);

-- check_latest and check_results deliberately have no foreign key to hosts:
-- they are the ingest hot path, a per-row RI check costs PostgreSQL more than
-- the insert itself, and ingest upserts the host row first in the same
-- transaction anyway. Whoever deletes a host deletes its rows here too.

-- Latest result per (host, check); only ever replaced by a newer sequence.
CREATE TABLE check_latest (
    host_id     TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    kind        TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    values_json TEXT   NOT NULL,
    message     TEXT   NOT NULL,
    observed_ms BIGINT NOT NULL,
    duration_us BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    PRIMARY KEY (host_id, name)
);
CREATE INDEX check_latest_status ON check_latest (status, host_id, name);

-- Result history. The key (host_id, seq) makes a resent report a no-op.
CREATE TABLE check_results (
    host_id     TEXT COLLATE "C" NOT NULL,
    seq         BIGINT NOT NULL,
    name        TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    values_json TEXT   NOT NULL,
    message     TEXT   NOT NULL,
    observed_ms BIGINT NOT NULL,
    duration_us BIGINT NOT NULL,
    ingested_ms BIGINT NOT NULL,
    PRIMARY KEY (host_id, seq)
);
CREATE INDEX check_results_ingested ON check_results (ingested_ms);

-- REST API bearer tokens (`stw_<id>_<secret>`); only the secret's SHA-256 is kept.
CREATE TABLE api_tokens (
    id           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name         TEXT   NOT NULL,
    role         TEXT   NOT NULL CHECK (role IN ('viewer', 'operator', 'deployer', 'admin')),
    secret_hash  TEXT   NOT NULL,
    created_ms   BIGINT NOT NULL,
    expires_ms   BIGINT,
    revoked_ms   BIGINT,
    last_used_ms BIGINT
);
