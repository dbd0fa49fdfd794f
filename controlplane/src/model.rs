//! Domain types of the control plane, shared by the store, the gateway and the
//! REST API. Wire types (protobuf) and JSON views are converted at the edges.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use steward_shared::status::CheckResult;

/// What an agent says about itself in `Hello` (self-reported, never used for access).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentHello {
    pub agent_version: String,
    pub facts: BTreeMap<String, String>,
    pub spool_dropped_total: u64,
}

/// One host's reports from one stream batch, for the store's `Store::ingest`.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestBatch {
    pub host_id: String,
    /// (sequence, result) in ascending sequence order.
    pub results: Vec<(u64, CheckResult)>,
    pub spool_dropped_total: u64,
}

/// A host as the control plane knows it. `labels` are assigned by the control
/// plane (and are what selectors and, later, authorisation match on); `facts`
/// are self-reported by the agent and informational only.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// Identity read from the agent's verified certificate.
    pub id: String,
    /// Self-reported hostname (`facts["hostname"]`), empty when unknown.
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub facts: BTreeMap<String, String>,
    pub agent_version: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Whether a stream is open (as last recorded; see `last_seen_ms` for liveness).
    pub connected: bool,
    pub last_connected_ms: Option<i64>,
    pub last_disconnected_ms: Option<i64>,
    /// Highest report sequence durably stored for this host (0 = none).
    pub last_seq: u64,
    /// Reports the agent's spool dropped since it was created, as last reported.
    pub spool_dropped_total: u64,
}

/// The latest result of one check on one host.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestCheck {
    pub host_id: String,
    /// The host's hostname at read time (empty when unknown).
    pub hostname: String,
    /// Sequence number of the report this result came from.
    pub seq: u64,
    pub result: CheckResult,
}

/// Number of a host's checks in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusCounts {
    pub ok: u64,
    pub warning: u64,
    pub critical: u64,
    pub unknown: u64,
}

impl StatusCounts {
    /// Adds `n` checks in `status`.
    pub fn add(&mut self, status: steward_shared::status::CheckStatus, n: u64) {
        use steward_shared::status::CheckStatus as S;
        match status {
            S::Ok => self.ok += n,
            S::Warning => self.warning += n,
            S::Critical => self.critical += n,
            S::Unknown => self.unknown += n,
        }
    }
}

/// One page of a keyset-paginated list: `has_more` is true only when at least
/// one more matching item exists after the last one in `items`.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

/// The built-in roles (their permissions are in [`crate::rbac::BUILTIN_ROLES`]).
/// Tokens carry a role by name, which may also be a custom role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Deployer,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Self::Viewer, Self::Operator, Self::Deployer, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Deployer => "deployer",
            Self::Admin => "admin",
        }
    }
}

impl AsRef<str> for Role {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a role name that is not one of the built-in roles.
#[derive(Debug, thiserror::Error)]
#[error("invalid role {0:?}: expected one of viewer, operator, deployer, admin")]
pub struct InvalidRole(pub String);

impl std::str::FromStr for Role {
    type Err = InvalidRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| InvalidRole(s.to_string()))
    }
}

/// A stored API token. The secret itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Public part of the token (`stw_<id>_<secret>`), the primary key.
    pub id: String,
    pub name: String,
    /// A built-in role's name (see [`Role`]) or a custom role's.
    pub role: String,
    /// Label selector narrowing the token to matching hosts; empty: unscoped.
    pub scope: String,
    /// Lowercase hex SHA-256 of the secret part.
    pub secret_hash: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
    /// The token that created this one (None: created locally).
    pub parent_id: Option<String>,
}

impl ApiToken {
    /// Whether the token may be used at `now_ms` (neither revoked nor expired).
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|e| now_ms < e)
    }
}

/// Fleet-wide figures for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetStats {
    pub hosts: u64,
    /// Hosts seen within the offline threshold.
    pub hosts_online: u64,
    /// Sum of the spool drop counters reported by all agents.
    pub spool_dropped_total: u64,
}
