-- The audit log's time index as BRIN (PostgreSQL only; ../sqlite/0012_audit_time_brin.sql
-- keeps SQLite's B-tree and only keeps the version numbers aligned).
--
-- time_ms never decreases along seq: the appender, holding the chain lock,
-- stamps each entry max(now, the head's time_ms) (controlplane/src/store/audit.rs,
-- chain_rows). So the heap is in time order and a block-range index finds a
-- time range as well as a B-tree does, at a fraction of the cost of keeping
-- it: a B-tree gains one entry per audited change (two per job: dispatch and
-- end), a BRIN one summary per 128 pages. `GET /api/v1/audit?since=` reads
-- through it.
DROP INDEX audit_log_time;
CREATE INDEX audit_log_time ON audit_log USING brin (time_ms);
