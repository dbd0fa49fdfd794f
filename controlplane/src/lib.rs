//! `steward-controlplane`: the gRPC gateway agents stream to over mutual TLS,
//! the store (SQLite or PostgreSQL through sqlx), the REST API and the engines.
//!
//! Layout:
//! - [`config`] — `controlplane.toml`.
//! - [`enrollment`] — enrollment token format (`stwe_<id>_<secret>_<ca-fingerprint>`).
//! - [`pki_cli`] — `ca init`, `ca issue-server`, `ca issue-agent`.
//! - [`gateway`] — tonic server behind our own rustls acceptor; identity from the
//!   verified client certificate; batched, idempotent ingest; acks after commit.
//! - [`store`] — one storage interface, two backends, each with its own SQL and migrations.
//! - [`api`] — the warp REST API (`/healthz`, `/readyz`, `/metrics`, `/api/v1/...`).
//! - [`audit`] — the tamper-evident audit log: hash chain, signed checkpoints, export and verify.
//! - [`slo`] — SLO definitions, one-minute event buckets, budgets, burn rates and alert tiers.
//! - [`rollouts`] — fleet-wide rollouts in waves: strategy, gates, the lease-holding driver.
//! - [`metrics`] — Prometheus metrics shared by gateway and API.
//! - [`rest_serve`] — serves the REST filter (HTTP or HTTPS) from our own accept loop.
//! - [`server`] — `serve`: starts everything, shuts it down on signals.
//! - [`quickstart`] — control plane + CA + one local agent in one command.
//! - [`client`] — the REST client behind `stewardctl`.
#![forbid(unsafe_code)]

pub mod alert;
pub mod api;
pub mod audit;
pub mod client;
pub mod config;
pub mod enrollment;
pub mod gateway;
pub mod jobs;
pub mod kpi;
pub mod metrics;
pub mod model;
pub mod pki_cli;
pub mod quickstart;
pub mod rbac;
pub mod rest_serve;
pub mod rollouts;
pub mod secret;
pub mod server;
pub mod slo;
pub mod store;

/// Control-plane version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
