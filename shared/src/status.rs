//! Check status and check result: the domain types both daemons use, and their
//! conversion to and from the wire types in [`crate::proto`].
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::proto;

/// Outcome of one check run. Ordered by severity: `Ok < Warning < Unknown < Critical`
/// is NOT used; severity ordering is given by [`CheckStatus::severity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl CheckStatus {
    pub const ALL: [CheckStatus; 4] = [Self::Ok, Self::Warning, Self::Critical, Self::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Unknown => "unknown",
        }
    }

    /// Severity rank used to pick the worst of several statuses:
    /// ok (0) < unknown (1) < warning (2) < critical (3).
    pub fn severity(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Unknown => 1,
            Self::Warning => 2,
            Self::Critical => 3,
        }
    }

    /// The worse of two statuses.
    pub fn worst(self, other: Self) -> Self {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a status string that is none of `ok`, `warning`, `critical`, `unknown`.
#[derive(Debug, thiserror::Error)]
#[error("invalid status {0:?}: expected one of ok, warning, critical, unknown")]
pub struct InvalidStatus(pub String);

impl FromStr for CheckStatus {
    type Err = InvalidStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ok" => Ok(Self::Ok),
            "warning" => Ok(Self::Warning),
            "critical" => Ok(Self::Critical),
            "unknown" => Ok(Self::Unknown),
            other => Err(InvalidStatus(other.to_string())),
        }
    }
}

impl From<CheckStatus> for proto::CheckStatus {
    fn from(s: CheckStatus) -> Self {
        match s {
            CheckStatus::Ok => proto::CheckStatus::Ok,
            CheckStatus::Warning => proto::CheckStatus::Warning,
            CheckStatus::Critical => proto::CheckStatus::Critical,
            CheckStatus::Unknown => proto::CheckStatus::Unknown,
        }
    }
}

impl From<proto::CheckStatus> for CheckStatus {
    fn from(s: proto::CheckStatus) -> Self {
        match s {
            proto::CheckStatus::Ok => CheckStatus::Ok,
            proto::CheckStatus::Warning => CheckStatus::Warning,
            proto::CheckStatus::Critical => CheckStatus::Critical,
            proto::CheckStatus::Unknown | proto::CheckStatus::Unspecified => CheckStatus::Unknown,
        }
    }
}

/// One measured value of a check, with its unit (`percent`, `bytes`, `ms`, `days`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Value {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

impl Value {
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
        }
    }
}

/// The result of one run of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's configured name (unique per agent).
    pub name: String,
    /// The check kind (`disk`, `memory`, `http`, ...).
    pub kind: String,
    pub status: CheckStatus,
    pub values: Vec<Value>,
    pub message: String,
    /// When the check ran, milliseconds since the Unix epoch.
    pub observed_at_ms: i64,
    /// How long the check took, microseconds.
    pub duration_us: u64,
}

impl From<CheckResult> for proto::CheckResult {
    fn from(r: CheckResult) -> Self {
        proto::CheckResult {
            name: r.name,
            kind: r.kind,
            status: proto::CheckStatus::from(r.status) as i32,
            values: r
                .values
                .into_iter()
                .map(|v| proto::Value {
                    name: v.name,
                    value: v.value,
                    unit: v.unit,
                })
                .collect(),
            message: r.message,
            observed_at_ms: r.observed_at_ms,
            duration_us: r.duration_us,
        }
    }
}

impl From<proto::CheckResult> for CheckResult {
    fn from(r: proto::CheckResult) -> Self {
        let status = proto::CheckStatus::try_from(r.status).unwrap_or(proto::CheckStatus::Unknown);
        CheckResult {
            name: r.name,
            kind: r.kind,
            status: status.into(),
            values: r
                .values
                .into_iter()
                .map(|v| Value {
                    name: v.name,
                    value: v.value,
                    unit: v.unit,
                })
                .collect(),
            message: r.message,
            observed_at_ms: r.observed_at_ms,
            duration_us: r.duration_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_prefers_critical_then_warning_then_unknown() {
        assert_eq!(CheckStatus::Ok.worst(CheckStatus::Unknown), CheckStatus::Unknown);
        assert_eq!(CheckStatus::Unknown.worst(CheckStatus::Warning), CheckStatus::Warning);
        assert_eq!(CheckStatus::Critical.worst(CheckStatus::Warning), CheckStatus::Critical);
        assert_eq!(CheckStatus::Ok.worst(CheckStatus::Ok), CheckStatus::Ok);
    }

    #[test]
    fn status_round_trips_through_strings_and_wire() {
        for s in CheckStatus::ALL {
            assert_eq!(s.as_str().parse::<CheckStatus>().unwrap(), s);
            assert_eq!(CheckStatus::from(proto::CheckStatus::from(s)), s);
        }
        assert!("bad".parse::<CheckStatus>().is_err());
        assert_eq!(CheckStatus::from(proto::CheckStatus::Unspecified), CheckStatus::Unknown);
    }

    #[test]
    fn result_round_trips_through_wire() {
        let r = CheckResult {
            name: "root".into(),
            kind: "disk".into(),
            status: CheckStatus::Warning,
            values: vec![Value::new("used", 81.5, "percent")],
            message: "81.5% used".into(),
            observed_at_ms: 1_700_000_000_000,
            duration_us: 42,
        };
        let wire: proto::CheckResult = r.clone().into();
        assert_eq!(CheckResult::from(wire), r);
    }
}
