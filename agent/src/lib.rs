//! `steward-agent`: runs health checks on a VM, writes every result to an
//! on-disk spool before sending it, and streams the spool to the control plane
//! over one mutual-TLS gRPC stream.
//!
//! Layout:
//! - [`config`] — `agent.toml` (unknown keys refused; errors name file, line and key).
//! - [`enroll`] — enrollment with a one-time token and a pinned CA; renewal over the stream.
//! - [`checks`] — the check kinds and their thresholds; [`scheduler`] runs them on
//!   intervals (tokio time) or cron schedules (tokio-cron-scheduler).
//! - [`spool`] — the redb-backed spool: sequence numbers, bound, drop counting.
//! - [`stream`] — the gRPC stream client: hello, batches, acks, heartbeats, reconnects.
//! - [`jobs`] — the job executor: local action policy, attempt journal, backups, deploys.
//! - [`backoff`] — capped exponential backoff with full jitter.
//! - [`runtime`] — wires the parts together; SIGTERM drains, SIGHUP reloads.
//! - [`signals`] — the one signal module (used by both daemons).
//! - [`notify`] — systemd notifications and watchdog pings (used by both daemons).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod checks;
pub mod config;
pub mod enroll;
pub mod jobs;
pub mod runtime;
pub mod scheduler;
pub mod spool;
pub mod stream;

/// Agent version, reported in `Hello`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
