//! The tamper-evident audit log: who changed what, who was refused, and a way
//! to prove afterwards that nobody edited, removed, inserted or reordered an
//! entry (property 4 of the design).
//!
//! Layout:
//! - this module: the domain types ([`AuditEntry`] to append, [`StoredEntry`]
//!   and [`StoredCheckpoint`] as stored).
//! - [`chain`]: the canonical encoding of entries and checkpoints, the hash
//!   chain and verification. Pure; runs offline on an export file.
//! - [`signing`]: the Ed25519 key that signs checkpoints, kept in the data
//!   directory, apart from the database.
//! - [`checkpointer`]: the background task that signs a checkpoint every N
//!   entries or M minutes, also when nothing happened.
//! - [`export`]: the export document (`GET /api/v1/audit/export`) and its
//!   verification (`stewardctl audit verify`).
//! - [`denials`]: bounds how many refused requests are recorded one by one.
//! - Storage (append in the same transaction as the change, serialised so the
//!   chain never forks) is [`crate::store::audit`].
//!
//! Invariants:
//! - An entry is appended in the same database transaction as the change it
//!   records; a change whose transaction has no entry is refused at commit.
//! - The bytes hashed are the bytes stored (`entry` column); nothing is
//!   re-serialised to verify. The other columns are checked against them.
//! - Sequence numbers are gapless from 1; time never goes backwards in the log.
use serde::{Deserialize, Serialize};

pub mod chain;
pub mod checkpointer;
pub mod denials;
pub mod export;
pub mod signing;
#[cfg(test)]
mod tests;

/// Longest `actor`, `target` and `request_id` kept (longer input is cut, with `…`).
const MAX_FIELD_CHARS: usize = 512;
/// Largest `details` JSON text kept; larger details are replaced by a note.
const MAX_DETAILS_BYTES: usize = 64 * 1024;

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The change was made.
    Success,
    /// The caller was refused (authentication or authorisation).
    Denied,
    /// The request was allowed but the change could not be made.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        [Outcome::Success, Outcome::Denied, Outcome::Failed]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Actor names: `token:<id>` (an API token), `host:<id>` (an agent),
/// `system` (the control plane itself), `local:uid=<n>` (a command run on the
/// control-plane host with direct access to the database), `anonymous` (a
/// request without a valid token).
pub mod actor {
    pub const SYSTEM: &str = "system";
    pub const ANONYMOUS: &str = "anonymous";

    pub fn token(id: &str) -> String {
        format!("token:{id}")
    }

    pub fn host(id: &str) -> String {
        format!("host:{id}")
    }

    /// The local user running this process (`local:uid=N`).
    pub fn local() -> String {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata("/proc/self") {
            Ok(meta) => format!("local:uid={}", meta.uid()),
            Err(_) => "local".to_string(),
        }
    }
}

/// An entry to append: what the caller knows. The store assigns the sequence
/// number, the time, and the hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub actor: String,
    /// `resource.verb`, lowercase: `tokens.create`, `api.authenticate`.
    pub action: String,
    pub target: Option<String>,
    pub outcome: Outcome,
    pub request_id: Option<String>,
    /// A JSON object as text, serialised once when the entry is made; these
    /// exact bytes are stored and hashed.
    pub details: String,
}

impl AuditEntry {
    /// An entry with empty details (`{}`).
    ///
    /// `action` is chosen by code, not by clients: lowercase ASCII letters,
    /// digits, `.`, `_`, `-` (checked by [`AuditEntry::validate`]).
    pub fn new(actor: impl Into<String>, action: impl Into<String>, outcome: Outcome) -> AuditEntry {
        AuditEntry {
            actor: clean(actor.into()),
            action: action.into(),
            target: None,
            outcome,
            request_id: None,
            details: "{}".to_string(),
        }
    }

    /// What the action was applied to, e.g. `token:abc123`, `host:web-01`.
    pub fn target(mut self, target: impl Into<String>) -> AuditEntry {
        self.target = Some(clean(target.into()));
        self
    }

    /// The request that caused it (`X-Request-Id`).
    pub fn request_id(mut self, request_id: Option<&str>) -> AuditEntry {
        self.request_id = request_id.map(|r| clean(r.to_string()));
        self
    }

    /// Details as a JSON object (anything else is wrapped as `{"value": ...}`).
    pub fn details(mut self, details: serde_json::Value) -> AuditEntry {
        let details = match details {
            serde_json::Value::Object(_) => details,
            other => serde_json::json!({ "value": other }),
        };
        let text = serde_json::to_string(&details).unwrap_or_else(|_| "{}".to_string());
        self.details = if text.len() > MAX_DETAILS_BYTES {
            serde_json::json!({ "truncated": true, "bytes": text.len() }).to_string()
        } else {
            text
        };
        self
    }

    /// Refuses entries the code should never build: an empty actor or a
    /// malformed action name.
    pub fn validate(&self) -> Result<(), InvalidEntry> {
        if self.actor.is_empty() {
            return Err(InvalidEntry("the actor is empty".into()));
        }
        let action_ok = (1..=128).contains(&self.action.len())
            && self
                .action
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
        if !action_ok {
            return Err(InvalidEntry(format!("invalid action name {:?}", self.action)));
        }
        Ok(())
    }
}

/// An [`AuditEntry`] the code should not have built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid audit entry: {0}")]
pub struct InvalidEntry(pub String);

/// Text as stored: NUL (refused by PostgreSQL) becomes U+FFFD, and overlong
/// values are cut.
fn clean(s: String) -> String {
    let s = if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    };
    // No more bytes than the limit: no more characters either.
    if s.len() <= MAX_FIELD_CHARS || s.chars().count() <= MAX_FIELD_CHARS {
        s
    } else {
        s.chars().take(MAX_FIELD_CHARS).chain(std::iter::once('…')).collect()
    }
}

/// One row of `audit_log`, exactly as stored (also when it was tampered
/// with: verification decides whether it is consistent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub seq: u64,
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub request_id: Option<String>,
    pub details: String,
    /// The canonical bytes that were hashed ([`chain::encode_entry`]).
    pub entry: Vec<u8>,
    /// Lowercase hex SHA-256.
    pub prev_hash: String,
    pub hash: String,
}

/// One row of `audit_checkpoints`, exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub cp_seq: u64,
    pub created_ms: i64,
    /// `start`, `scheduled`, `resume` or `stop` ([`chain::CheckpointKind`]).
    pub kind: String,
    pub last_seq: u64,
    pub last_hash: String,
    pub prev_hash: String,
    pub max_interval_ms: i64,
    pub max_entries: u64,
    /// Base64 of the Ed25519 public key that signed it.
    pub public_key: String,
    /// The signed canonical bytes ([`chain::CheckpointBody::encode`]).
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
    pub hash: String,
}

/// Filter of `GET /api/v1/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Only entries at or after this time (epoch ms).
    pub since_ms: Option<i64>,
}

/// Everything in the audit tables, read in one snapshot (for export and verify).
#[derive(Debug, Clone, Default)]
pub struct AuditSnapshot {
    pub entries: Vec<StoredEntry>,
    pub checkpoints: Vec<StoredCheckpoint>,
}
