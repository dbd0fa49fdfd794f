-- The job queue (PostgreSQL twin of ../sqlite/0005_jobs.sql). Numbered 0005:
-- 0004 belongs to another branch; the migrator applies missing versions in
-- order and tolerates the gap (sqlx applies every version not yet recorded).

-- One row per job (one target host). `attempt_id` is the lease token the
-- agent journals: an attempt ID runs at most once on the agent.
CREATE TABLE jobs (
    id               TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    action           TEXT    NOT NULL,
    params           TEXT    NOT NULL DEFAULT '{}',
    host_id          TEXT    NOT NULL,
    -- queued | dispatched | running | succeeded | failed | timed_out | cancelled | discarded
    state            TEXT    NOT NULL,
    attempt          BIGINT  NOT NULL DEFAULT 0,
    max_attempts     BIGINT  NOT NULL DEFAULT 1,
    attempt_id       TEXT,
    lease_owner      TEXT,
    lease_expires_ms BIGINT ,
    timeout_secs     BIGINT  NOT NULL,
    next_run_ms      BIGINT  NOT NULL,
    created_ms       BIGINT  NOT NULL,
    updated_ms       BIGINT  NOT NULL,
    dispatched_ms    BIGINT ,
    started_ms       BIGINT ,
    finished_ms      BIGINT ,
    -- the agent's outcome word (succeeded, failed, rolled_back, timed_out, cancelled)
    outcome          TEXT,
    reason           TEXT,
    result           TEXT,
    progress         TEXT,
    output_bytes     BIGINT  NOT NULL DEFAULT 0,
    output_truncated BIGINT  NOT NULL DEFAULT 0,
    cancel_requested BIGINT  NOT NULL DEFAULT 0,
    idempotency_key  TEXT,
    rollout_id       TEXT,
    -- api (created through the REST API) | local (run by the agent on its own schedule)
    source           TEXT    NOT NULL DEFAULT 'api',
    created_by       TEXT    NOT NULL
);
CREATE INDEX jobs_claim ON jobs (state, next_run_ms) WHERE state IN ('queued', 'dispatched', 'running');
CREATE INDEX jobs_host ON jobs (host_id, id);
CREATE INDEX jobs_state ON jobs (state, id);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (idempotency_key, host_id) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_rollout ON jobs (rollout_id) WHERE rollout_id IS NOT NULL;

-- Output chunks of a job's current attempt, at their byte offset.
CREATE TABLE job_output (
    job_id  TEXT    NOT NULL REFERENCES jobs (id),
    attempt BIGINT  NOT NULL,
    pos     BIGINT  NOT NULL,
    data    BYTEA   NOT NULL,
    PRIMARY KEY (job_id, attempt, pos)
);

-- Per host and configured backup: the last good snapshot and the last verification.
CREATE TABLE backup_status (
    host_id            TEXT    NOT NULL,
    name               TEXT    NOT NULL,
    last_snapshot      TEXT,
    last_snapshot_ms   BIGINT ,
    last_snapshot_job  TEXT,
    last_files         BIGINT ,
    last_bytes         BIGINT ,
    last_run_ms        BIGINT ,
    last_run_outcome   TEXT,
    last_run_reason    TEXT,
    rpo_secs           BIGINT ,
    last_verify_ms     BIGINT ,
    last_verify_ok     BIGINT ,
    last_verify_snapshot TEXT,
    last_verify_reason TEXT,
    PRIMARY KEY (host_id, name)
);
