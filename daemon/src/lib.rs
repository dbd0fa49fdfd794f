//! What both daemons (`steward-agent`, `steward-controlplane`) share and
//! nothing else: signal handling, systemd notifications, log output and
//! the redaction of secrets in what they print.
//!
//! Invariant: this crate knows neither daemon; it depends on no Steward crate.
pub mod logging;
pub mod notify;
pub mod redact;
pub mod report;
pub mod signals;
