//! The Steward protocol crate, shared by `steward-agent` and `steward-controlplane`.
//!
//! Layout:
//! - [`proto`] — the generated gRPC protocol (one bidirectional stream per agent).
//! - [`status`] — check status and check result domain types (distinct from wire types).
//! - [`selector`] — Kubernetes-style label selectors with a position-reporting parser.
//! - [`units`] — human durations (`30s`, `5m`) and sizes (`64MiB`).
//! - [`config`] — TOML config loading whose errors name file, line and key.
//! - [`hostpattern`] — exact host IDs and `*` globs over them.
//! - [`pki`] — CA creation, certificate issuance and identity extraction.
#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
pub mod hostpattern;
pub mod pki;
pub mod selector;
pub mod status;
pub mod timestamp;
pub mod units;

/// Generated protobuf and tonic code for `steward.v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("steward.v1");
}

/// The git commit this build comes from (`git rev-parse --short HEAD` at build
/// time), or "unknown" when built outside a git checkout.
pub const GIT_COMMIT: &str = env!("STEWARD_GIT_COMMIT");

/// Protocol revision spoken by this build (sent in `Hello.protocol`).
pub const PROTOCOL_REVISION: u32 = 1;

/// Milliseconds since the Unix epoch, the one timestamp representation used on
/// the wire and in storage.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
