-- Check results counted per UTC day and per UTC hour, host and status
-- (PostgreSQL twin of ../sqlite/0011_kpi_daily.sql), so that the check-based KPIs
-- (check_pass_ratio, host_availability) of a 30-day window read about a
-- thousand times fewer rows than check_results holds. Numbered 0011: 0010
-- belongs to another branch; the migrator applies every version not yet
-- recorded, in order.
--
-- bucket: floor(observed_ms / 86400000) (days) or floor(observed_ms / 3600000)
-- (hours); n: the number of check_results rows of that host with that status
-- whose observed_ms falls in the bucket. Ingest adds the rows it inserts (not
-- resends) in its own transaction; pruning check_results subtracts the rows it
-- deletes in the same transaction and drops buckets that reach 0. So both
-- tables always equal GROUP BY over check_results (see
-- controlplane/src/store/kpi_counts.rs, which reads whole days, then whole
-- hours, then the edge minutes from check_results itself).
CREATE TABLE kpi_check_days (
    bucket  BIGINT NOT NULL,
    host_id TEXT   NOT NULL,
    status  TEXT   NOT NULL,
    n       BIGINT NOT NULL,
    PRIMARY KEY (bucket, host_id, status)
);
CREATE TABLE kpi_check_hours (
    bucket  BIGINT NOT NULL,
    host_id TEXT   NOT NULL,
    status  TEXT   NOT NULL,
    n       BIGINT NOT NULL,
    PRIMARY KEY (bucket, host_id, status)
);

-- The edges of a window (less than an hour at each end) are counted from
-- check_results through this index.
CREATE INDEX check_results_observed ON check_results (observed_ms);
-- The disk-full forecast reads the disk samples of the last 6 hours only,
-- from this index alone (covering: without it, every sample is a random read
-- of the table, 0.7 s instead of 0.1 s for 37,000 samples when the rows of the
-- last hours are spread over the file). Costs a second copy of the disk
-- checks' values_json.
CREATE INDEX check_results_disk ON check_results (observed_ms) INCLUDE (host_id, values_json) WHERE kind = 'disk';

-- Backfill (floor division, also for negative times; integer division truncates).
INSERT INTO kpi_check_days (bucket, host_id, status, n)
SELECT (observed_ms - ((observed_ms % 86400000) + 86400000) % 86400000) / 86400000 AS b, host_id, status, COUNT(*)
FROM check_results GROUP BY b, host_id, status;
INSERT INTO kpi_check_hours (bucket, host_id, status, n)
SELECT (observed_ms - ((observed_ms % 3600000) + 3600000) % 3600000) / 3600000 AS b, host_id, status, COUNT(*)
FROM check_results GROUP BY b, host_id, status;
