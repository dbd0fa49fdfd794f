-- Fleet-wide rollouts (PostgreSQL twin of ../sqlite/0007_rollouts.sql). Numbered
-- 0007: 0006 belongs to another branch; the migrator applies every version not
-- yet recorded, in order. `jobs.rollout_id` exists since 0005_jobs.

-- One row per rollout. The strategy is stored as JSON (validated by
-- rollouts::Strategy); everything the driver decides is derived from this
-- row and the rollout's hosts, so a restarted control plane carries on.
CREATE TABLE rollouts (
    id               TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    action           TEXT    NOT NULL,
    params           TEXT    NOT NULL DEFAULT '{}',
    selector         TEXT    NOT NULL,
    strategy         TEXT    NOT NULL,
    -- running | paused | stopping | rolling_back | succeeded | rolled_back | failed | aborted
    state            TEXT    NOT NULL,
    -- when stopping: failure | abort; and whether changed hosts are rolled back
    stop_kind        TEXT,
    stop_rollback    BIGINT  NOT NULL DEFAULT 0,
    current_wave     BIGINT  NOT NULL DEFAULT 0,
    waves            BIGINT  NOT NULL,
    total_hosts      BIGINT  NOT NULL,
    -- when the current wave started dispatching / passed its job gate / passed every gate
    wave_started_ms  BIGINT ,
    wave_done_ms     BIGINT ,
    wave_passed_ms   BIGINT ,
    -- what the driver is waiting on (jobs | health | slo | pause | ...) and since when
    gate             TEXT,
    gate_since_ms    BIGINT ,
    last_progress_ms BIGINT  NOT NULL,
    lease_owner      TEXT,
    lease_expires_ms BIGINT ,
    -- the creating token and its scope (re-checked per host at dispatch)
    actor            TEXT    NOT NULL,
    scope            TEXT    NOT NULL DEFAULT '',
    reason           TEXT,
    notes            TEXT    NOT NULL DEFAULT '[]',
    version          BIGINT  NOT NULL DEFAULT 0,
    created_ms       BIGINT  NOT NULL,
    updated_ms       BIGINT  NOT NULL,
    finished_ms      BIGINT 
);
CREATE INDEX rollouts_active ON rollouts (state) WHERE state IN ('running', 'paused', 'stopping', 'rolling_back');

-- The target set, resolved once at start, in dispatch order.
CREATE TABLE rollout_hosts (
    rollout_id       TEXT    NOT NULL REFERENCES rollouts (id),
    host_id          TEXT    NOT NULL,
    position         BIGINT  NOT NULL,
    wave             BIGINT  NOT NULL,
    -- pending | dispatched | succeeded | failed | skipped | rolling_back | rolled_back | rollback_failed
    state            TEXT    NOT NULL,
    job_id           TEXT,
    rollback_job_id  TEXT,
    reason           TEXT,
    dispatched_ms    BIGINT ,
    finished_ms      BIGINT ,
    PRIMARY KEY (rollout_id, host_id)
);
CREATE UNIQUE INDEX rollout_hosts_position ON rollout_hosts (rollout_id, position);
