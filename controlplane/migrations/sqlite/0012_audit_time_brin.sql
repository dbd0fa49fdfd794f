-- Version 0012 of PostgreSQL (../postgres/0012_audit_time_brin.sql) turns the
-- audit log's time index into a BRIN index. SQLite has no block-range index:
-- audit_log_time stays the B-tree of 0002_audit.sql. This version only keeps
-- both histories numbered alike.
SELECT 1;
