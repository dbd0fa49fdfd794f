//! Warning and critical thresholds, and how a measured value maps to a status.
//!
//! A threshold is *reached* when the value is at or beyond it: for a
//! higher-is-worse metric (disk used %, latency) `value >= limit`; for a
//! lower-is-worse metric (days until a certificate expires) `value <= limit`.
use steward_shared::status::CheckStatus;

/// Which way a metric gets worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Bigger values are worse (used %, load, latency).
    HigherIsWorse,
    /// Smaller values are worse (days left).
    LowerIsWorse,
}

/// The two levels of one metric; either may be absent (not evaluated).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub warning: Option<f64>,
    pub critical: Option<f64>,
    pub direction: Direction,
}

impl Thresholds {
    /// No thresholds: every value is `ok`.
    pub const fn none(direction: Direction) -> Self {
        Self {
            warning: None,
            critical: None,
            direction,
        }
    }

    /// The status of `value`. A non-finite value is `unknown`.
    pub fn status(&self, value: f64) -> CheckStatus {
        if !value.is_finite() {
            return CheckStatus::Unknown;
        }
        let reached = |limit: Option<f64>| match (limit, self.direction) {
            (Some(l), Direction::HigherIsWorse) => value >= l,
            (Some(l), Direction::LowerIsWorse) => value <= l,
            (None, _) => false,
        };
        if reached(self.critical) {
            CheckStatus::Critical
        } else if reached(self.warning) {
            CheckStatus::Warning
        } else {
            CheckStatus::Ok
        }
    }

    /// The threshold that `status` refers to, for messages ("≥ 90").
    pub fn describe(&self, status: CheckStatus) -> Option<String> {
        let limit = match status {
            CheckStatus::Critical => self.critical?,
            CheckStatus::Warning => self.warning?,
            _ => return None,
        };
        let op = match self.direction {
            Direction::HigherIsWorse => ">=",
            Direction::LowerIsWorse => "<=",
        };
        Some(format!("{op} {}", trim_float(limit)))
    }
}

/// `90` rather than `90.0`, `0.5` stays `0.5`, at most two decimals.
pub fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckStatus::*;

    #[test]
    fn higher_is_worse_includes_the_boundary() {
        let t = Thresholds {
            warning: Some(80.0),
            critical: Some(90.0),
            direction: Direction::HigherIsWorse,
        };
        assert_eq!(t.status(0.0), Ok);
        assert_eq!(t.status(79.99), Ok);
        assert_eq!(t.status(80.0), Warning);
        assert_eq!(t.status(89.99), Warning);
        assert_eq!(t.status(90.0), Critical);
        assert_eq!(t.status(100.0), Critical);
        assert_eq!(t.status(f64::NAN), Unknown);
    }

    #[test]
    fn lower_is_worse_includes_the_boundary() {
        let t = Thresholds {
            warning: Some(30.0),
            critical: Some(7.0),
            direction: Direction::LowerIsWorse,
        };
        assert_eq!(t.status(365.0), Ok);
        assert_eq!(t.status(30.01), Ok);
        assert_eq!(t.status(30.0), Warning);
        assert_eq!(t.status(7.01), Warning);
        assert_eq!(t.status(7.0), Critical);
        assert_eq!(t.status(-3.0), Critical, "expired");
        assert_eq!(t.status(f64::INFINITY), Unknown);
    }

    #[test]
    fn missing_levels_are_not_evaluated() {
        let only_critical = Thresholds {
            warning: None,
            critical: Some(500.0),
            direction: Direction::HigherIsWorse,
        };
        assert_eq!(only_critical.status(499.0), Ok);
        assert_eq!(only_critical.status(500.0), Critical);
        assert_eq!(Thresholds::none(Direction::HigherIsWorse).status(1e12), Ok);
        let equal = Thresholds {
            warning: Some(5.0),
            critical: Some(5.0),
            direction: Direction::HigherIsWorse,
        };
        assert_eq!(equal.status(5.0), Critical, "critical wins when both are reached");
    }

    #[test]
    fn describes_the_reached_threshold() {
        let t = Thresholds {
            warning: Some(80.0),
            critical: Some(90.5),
            direction: Direction::HigherIsWorse,
        };
        assert_eq!(t.describe(Warning).as_deref(), Some(">= 80"));
        assert_eq!(t.describe(Critical).as_deref(), Some(">= 90.5"));
        assert_eq!(t.describe(Ok), None);
        assert_eq!(trim_float(0.25), "0.25");
        assert_eq!(trim_float(-0.001), "0");
    }
}
