-- Fleet KPI samples (PostgreSQL twin of ../sqlite/0008_kpi.sql): the fleet-wide
-- value of each KPI, stored by the sampler for the trend. Numbered 0008:
-- 0006 and 0007 belong to other branches; the migrator applies every
-- version not yet recorded, in order.
-- value_micros: the value times 1,000,000, rounded; NULL when the KPI had no data.
CREATE TABLE kpi_samples (
    name         TEXT    NOT NULL,
    sampled_ms   BIGINT  NOT NULL,
    value_micros BIGINT,
    PRIMARY KEY (name, sampled_ms)
);
CREATE INDEX kpi_samples_time ON kpi_samples (sampled_ms);
