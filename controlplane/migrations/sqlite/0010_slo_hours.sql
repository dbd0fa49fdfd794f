-- Hourly sums of slo_buckets, so that a status reads a whole hour as one row.
-- Kept equivalent across ../sqlite/0010_slo_hours.sql and ../postgres/0010_slo_hours.sql.
-- Invariant: every row holds exactly the sums of the slo_buckets rows of its
-- (slo, grp) in minutes hour*60 .. hour*60+59. Ingest and job-outcome counting
-- upsert both tables in one transaction; an SLO reset deletes both; pruning
-- deletes the hours before the cut and sums the hour it cuts again.
CREATE TABLE slo_hours (
    slo   TEXT   NOT NULL,
    grp   TEXT   NOT NULL,
    hour  BIGINT NOT NULL,
    total BIGINT NOT NULL,
    good  BIGINT NOT NULL,
    PRIMARY KEY (slo, grp, hour)
);
CREATE INDEX slo_hours_hour ON slo_hours (hour);

-- Reads and prunes find minutes through the primary key, per (slo, grp)
-- taken from slo_hours; an index on minute alone only misleads PostgreSQL's
-- planner into scanning every SLO's rows of a minute range.
DROP INDEX slo_buckets_minute;

-- Backfill from the minutes already stored (floor division, also below 0).
INSERT INTO slo_hours (slo, grp, hour, total, good)
SELECT slo, grp, (minute - ((minute % 60) + 60) % 60) / 60 AS h, SUM(total), SUM(good)
FROM slo_buckets GROUP BY slo, grp, h;
