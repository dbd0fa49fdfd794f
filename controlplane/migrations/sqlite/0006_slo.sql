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
