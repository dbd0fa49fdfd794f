//! One end-to-end test binary, grouped by topic. Every test starts real
//! processes on 127.0.0.1 with real certificates and a real database
//! (SQLite by default; PostgreSQL with `STEWARD_TEST_BACKEND=postgres`).
mod alerts;
mod backup;
mod gateway_flood;
mod gateway_refusals;
mod identity;
mod jobs;
mod jobs_actions;
mod kpis;
mod logging;
mod metrics;
mod pipeline;
mod quickstart;
mod rbac;
mod revocation;
mod rollouts;
mod service;
mod terraform;
