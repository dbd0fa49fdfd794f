-- The control plane's own /api/v1 requests per minute and replica (PostgreSQL twin
-- of ../sqlite/0009_api_stats.sql), for the api_availability and
-- api_latency_p95 KPIs. Every replica counts its requests in memory and adds
-- them here every few seconds (an upsert that adds), so replicas sharing one
-- database each keep their own row per minute; the KPIs sum over replicas.
-- Rows older than [kpi] keep are deleted by the KPI sampler.
--
-- b0..b16: a fixed latency histogram (counts, not cumulative). Bucket k < 16
-- holds requests that took at most 500 us * 2^k and more than the bound of
-- bucket k - 1 (b0: at most 0.5 ms ... b15: at most 16.384 s); b16 holds
-- slower requests. See controlplane/src/kpi/api_stats.rs.
CREATE TABLE api_stats (
    minute       BIGINT  NOT NULL,
    replica      TEXT    NOT NULL,
    requests     BIGINT  NOT NULL DEFAULT 0,
    -- answered with a 5xx status
    errors       BIGINT  NOT NULL DEFAULT 0,
    b0 BIGINT  NOT NULL DEFAULT 0,
    b1 BIGINT  NOT NULL DEFAULT 0,
    b2 BIGINT  NOT NULL DEFAULT 0,
    b3 BIGINT  NOT NULL DEFAULT 0,
    b4 BIGINT  NOT NULL DEFAULT 0,
    b5 BIGINT  NOT NULL DEFAULT 0,
    b6 BIGINT  NOT NULL DEFAULT 0,
    b7 BIGINT  NOT NULL DEFAULT 0,
    b8 BIGINT  NOT NULL DEFAULT 0,
    b9 BIGINT  NOT NULL DEFAULT 0,
    b10 BIGINT  NOT NULL DEFAULT 0,
    b11 BIGINT  NOT NULL DEFAULT 0,
    b12 BIGINT  NOT NULL DEFAULT 0,
    b13 BIGINT  NOT NULL DEFAULT 0,
    b14 BIGINT  NOT NULL DEFAULT 0,
    b15 BIGINT  NOT NULL DEFAULT 0,
    b16 BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, replica)
);
