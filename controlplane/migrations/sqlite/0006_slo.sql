-- SLOs and their one-minute event buckets. Kept equivalent across
-- ../sqlite/0006_slo.sql and ../postgres/0006_slo.sql.
-- (Versions 0004 and 0005 belong to other features; the runner applies
-- whatever is missing, in version order, so the gap is harmless.)

-- One row per SLO: its validated definition as canonical JSON.
CREATE TABLE slos (
    name       TEXT   NOT NULL PRIMARY KEY,
    spec       TEXT   NOT NULL,
    -- identity of what is counted (indicator + grouping); when it changes,
    -- the SLO's buckets are deleted in the same transaction
    sli_key    TEXT   NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

-- Events counted as they are ingested, per SLO, group ('' when ungrouped)
-- and epoch minute. Rows hold absolute counts, so re-reading one is harmless.
CREATE TABLE slo_buckets (
    slo        TEXT   NOT NULL,
    grp        TEXT   NOT NULL,
    minute     BIGINT NOT NULL,
    total      BIGINT NOT NULL,
    good       BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (slo, grp, minute)
);
CREATE INDEX slo_buckets_minute ON slo_buckets (minute);
CREATE INDEX slo_buckets_updated ON slo_buckets (updated_ms);

-- Alerts: one row per firing episode of a fingerprint (source + labels).
CREATE TABLE alerts (
    id          TEXT   NOT NULL PRIMARY KEY,
    fingerprint TEXT   NOT NULL,
    source      TEXT   NOT NULL,
    severity    TEXT   NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    state       TEXT   NOT NULL CHECK (state IN ('firing', 'resolved')),
    summary     TEXT   NOT NULL,
    labels      TEXT   NOT NULL,
    started_ms  BIGINT NOT NULL,
    resolved_ms BIGINT,
    acked_by    TEXT,
    acked_ms    BIGINT,
    silenced    BOOLEAN NOT NULL
);
-- Deduplication: at most one firing alert per fingerprint, across replicas.
CREATE UNIQUE INDEX alerts_firing ON alerts (fingerprint) WHERE state = 'firing';
CREATE INDEX alerts_state ON alerts (state, started_ms);

-- Silences: alerts whose labels match every matcher are not notified until ends_ms.
CREATE TABLE silences (
    id         TEXT   NOT NULL PRIMARY KEY,
    matchers   TEXT   NOT NULL,
    comment    TEXT   NOT NULL,
    created_by TEXT   NOT NULL,
    starts_ms  BIGINT NOT NULL,
    ends_ms    BIGINT NOT NULL
);

-- Notifications to deliver, one per (alert transition, receiver): a receiver
-- that is down keeps its rows (retried with backoff) without holding up others.
CREATE TABLE alert_notifications (
    id              TEXT   NOT NULL PRIMARY KEY,
    alert_id        TEXT   NOT NULL,
    receiver        TEXT   NOT NULL,
    event           TEXT   NOT NULL,
    payload         TEXT   NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    delivered_ms    BIGINT,
    last_error      TEXT   NOT NULL,
    created_ms      BIGINT NOT NULL
);
CREATE INDEX alert_notifications_due ON alert_notifications (delivered_ms, next_attempt_ms);
