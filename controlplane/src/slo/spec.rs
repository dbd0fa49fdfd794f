//! The SLO definition: the JSON body of `PUT /api/v1/slos/{name}` and the
//! `spec` of a `stewardctl slos apply` YAML document (a shape close to
//! OpenSLO v1: `indicator`, `objectives[].target`, `timeWindow[]`,
//! `budgetingMethod`), plus what OpenSLO cannot say: grouping and alert tiers.
//!
//! [`SloSpec::validate`] checks everything serde cannot and names the field
//! (`objectives[0].target`) in its error.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steward_shared::selector::Selector;
use steward_shared::units::Duration;

/// Longest rolling window accepted.
pub const MAX_WINDOW_DAYS: u64 = 90;
/// Names of the four default alert tiers (named after their 30-day windows).
pub const TIER_NAMES: [&str; 4] = ["page-1h", "page-6h", "ticket-1d", "ticket-3d"];

/// One SLO definition. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SloSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What is counted as a good and as a total event.
    pub indicator: Indicator,
    /// Exactly one objective.
    pub objectives: Vec<Objective>,
    /// Exactly one window: rolling of any length, or a calendar month (`1M`, `isRolling: false`).
    pub time_window: Vec<TimeWindow>,
    #[serde(default)]
    pub budgeting_method: BudgetingMethod,
    /// `host` (one SLO per host) or `label:KEY` (one per value of the label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    #[serde(default)]
    pub alerting: Alerting,
}

/// The service level indicator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Indicator {
    /// Share of `ok` results of the check named `check` on hosts matching `selector`.
    #[serde(rename_all = "camelCase")]
    CheckAvailability {
        check: String,
        #[serde(default)]
        selector: String,
    },
    /// Share of results of `check` that are `ok` and took at most `threshold`.
    #[serde(rename_all = "camelCase")]
    CheckLatency {
        check: String,
        #[schema(value_type = String, example = "250ms")]
        threshold: Duration,
        #[serde(default)]
        selector: String,
    },
    /// Success ratio of a job action (e.g. `deploy.apply`), fed by job outcomes.
    #[serde(rename_all = "camelCase")]
    JobSuccess {
        action: String,
        #[serde(default)]
        selector: String,
    },
    /// Share of `/api/v1` requests of this control plane answered without a 5xx.
    ApiAvailability {},
    /// Share of `/api/v1` requests answered without a 5xx within `threshold`.
    #[serde(rename_all = "camelCase")]
    ApiLatency {
        #[schema(value_type = String, example = "300ms")]
        threshold: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Objective {
    /// Share of good events (or good timeslices), e.g. `0.999`.
    pub target: f64,
    /// Timeslices: the good-event share that makes a slice good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_slice_target: Option<f64>,
    /// Timeslices: the slice length, whole minutes (default `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "1m")]
    pub time_slice_window: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeWindow {
    /// `30d`, `7d`, `12h`, ... (rolling) or `1M` (calendar month, UTC).
    pub duration: String,
    #[serde(default = "yes")]
    pub is_rolling: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum BudgetingMethod {
    /// Budget in events: bad events may be (1 − target) of all events.
    #[default]
    Occurrences,
    /// Budget in time: bad slices may be (1 − target) of the window's slices.
    Timeslices,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Alerting {
    /// Below this many events (timeslices with data) in a tier's long window, the tier stays quiet.
    #[serde(default = "default_min_events")]
    pub min_events: u64,
    /// Per-tier settings by name (`page-1h`, `page-6h`, `ticket-1d`, `ticket-3d`).
    #[serde(default)]
    pub tiers: BTreeMap<String, TierSetting>,
}

impl Default for Alerting {
    fn default() -> Self {
        Alerting {
            min_events: default_min_events(),
            tiers: BTreeMap::new(),
        }
    }
}

fn default_min_events() -> u64 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TierSetting {
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// The window of an SLO, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last N minutes.
    Rolling { minutes: i64 },
    /// The current UTC calendar month.
    CalendarMonth,
}

/// How results are grouped into separate budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    None,
    Host,
    Label(String),
}

/// A validation error naming its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Checks an SLO name (path segment, YAML `metadata.name`).
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(err(
            "name",
            "must be 1-63 characters of a-z, 0-9, '-', '_', '.', starting with a letter or digit",
        ))
    }
}

impl SloSpec {
    /// Checks what serde cannot; the error names the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.description.len() > 1024 {
            return Err(err("description", "at most 1024 bytes"));
        }
        match &self.indicator {
            Indicator::CheckAvailability { check, selector } | Indicator::CheckLatency { check, selector, .. } => {
                if check.is_empty() || check.len() > 256 {
                    return Err(err("indicator.check", "must name a check (1-256 bytes)"));
                }
                Selector::parse(selector).map_err(|e| err("indicator.selector", e.to_string()))?;
            }
            Indicator::JobSuccess { action, selector } => {
                if action.is_empty() || action.len() > 128 {
                    return Err(err("indicator.action", "must name a job action (1-128 bytes)"));
                }
                Selector::parse(selector).map_err(|e| err("indicator.selector", e.to_string()))?;
            }
            Indicator::ApiAvailability {} | Indicator::ApiLatency { .. } => {}
        }
        if let Indicator::CheckLatency { threshold, .. } | Indicator::ApiLatency { threshold } = &self.indicator
            && threshold.as_std().is_zero()
        {
            return Err(err("indicator.threshold", "must be more than 0"));
        }
        let [objective] = self.objectives.as_slice() else {
            return Err(err("objectives", "exactly one objective is supported"));
        };
        if !(objective.target > 0.0 && objective.target < 1.0) {
            return Err(err("objectives[0].target", "must be between 0 and 1, both excluded"));
        }
        match self.budgeting_method {
            BudgetingMethod::Occurrences => {
                if objective.time_slice_target.is_some() {
                    return Err(err(
                        "objectives[0].timeSliceTarget",
                        "only allowed with budgetingMethod: Timeslices",
                    ));
                }
                if objective.time_slice_window.is_some() {
                    return Err(err(
                        "objectives[0].timeSliceWindow",
                        "only allowed with budgetingMethod: Timeslices",
                    ));
                }
            }
            BudgetingMethod::Timeslices => {
                let Some(t) = objective.time_slice_target else {
                    return Err(err(
                        "objectives[0].timeSliceTarget",
                        "required with budgetingMethod: Timeslices",
                    ));
                };
                if !(t > 0.0 && t <= 1.0) {
                    return Err(err("objectives[0].timeSliceTarget", "must be in (0, 1]"));
                }
                if let Some(w) = objective.time_slice_window {
                    let secs = w.as_std().as_secs();
                    if secs == 0 || !secs.is_multiple_of(60) || w.as_std().subsec_nanos() != 0 || secs > 3600 {
                        return Err(err(
                            "objectives[0].timeSliceWindow",
                            "must be whole minutes, from 1m to 1h",
                        ));
                    }
                }
            }
        }
        self.window()?;
        self.group_by()?;
        if matches!(
            self.indicator,
            Indicator::ApiAvailability {} | Indicator::ApiLatency { .. }
        ) && self.group_by()? != GroupBy::None
        {
            return Err(err("groupBy", "the control plane's API indicators cannot be grouped"));
        }
        if self.alerting.min_events == 0 {
            return Err(err("alerting.minEvents", "must be at least 1"));
        }
        for name in self.alerting.tiers.keys() {
            if !TIER_NAMES.contains(&name.as_str()) {
                return Err(err(
                    &format!("alerting.tiers.{name}"),
                    format!("unknown tier; the tiers are {}", TIER_NAMES.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// The validated window.
    pub fn window(&self) -> Result<Window, SpecError> {
        let [w] = self.time_window.as_slice() else {
            return Err(err("timeWindow", "exactly one time window is supported"));
        };
        if w.duration == "1M" {
            if w.is_rolling {
                return Err(err(
                    "timeWindow[0].isRolling",
                    "a month (1M) is a calendar window: set isRolling: false",
                ));
            }
            return Ok(Window::CalendarMonth);
        }
        let d: Duration = w
            .duration
            .parse()
            .map_err(|e| err("timeWindow[0].duration", format!("{e} (or 1M for a calendar month)")))?;
        if !w.is_rolling {
            return Err(err(
                "timeWindow[0].isRolling",
                "the only calendar window is a month (duration: 1M)",
            ));
        }
        let secs = d.as_std().as_secs();
        if secs < 3600 || !secs.is_multiple_of(60) || d.as_std().subsec_nanos() != 0 || secs > MAX_WINDOW_DAYS * 86_400
        {
            return Err(err(
                "timeWindow[0].duration",
                format!("must be whole minutes, from 1h to {MAX_WINDOW_DAYS}d"),
            ));
        }
        Ok(Window::Rolling {
            minutes: (secs / 60) as i64,
        })
    }

    /// The validated grouping.
    pub fn group_by(&self) -> Result<GroupBy, SpecError> {
        match self.group_by.as_deref() {
            None | Some("") => Ok(GroupBy::None),
            Some("host") => Ok(GroupBy::Host),
            Some(other) => match other.strip_prefix("label:") {
                Some(key) => {
                    steward_shared::selector::validate_label(key, "key").map_err(|e| err("groupBy", e))?;
                    Ok(GroupBy::Label(key.to_string()))
                }
                None => Err(err("groupBy", "must be `host` or `label:KEY`")),
            },
        }
    }

    pub fn target(&self) -> f64 {
        self.objectives.first().map(|o| o.target).unwrap_or(0.99)
    }

    /// Timeslices: (slice minutes, slice target).
    pub fn timeslice(&self) -> Option<(i64, f64)> {
        if self.budgeting_method != BudgetingMethod::Timeslices {
            return None;
        }
        let o = self.objectives.first()?;
        let minutes = o
            .time_slice_window
            .map(|w| (w.as_std().as_secs() / 60) as i64)
            .unwrap_or(1)
            .max(1);
        Some((minutes, o.time_slice_target.unwrap_or(1.0)))
    }

    /// Whether the tier named `name` is enabled (all are by default).
    pub fn tier_enabled(&self, name: &str) -> bool {
        self.alerting.tiers.get(name).is_none_or(|t| t.enabled)
    }

    /// Identity of what is counted: a change of it resets the SLO's buckets.
    pub fn sli_key(&self) -> String {
        let indicator = serde_json::to_string(&self.indicator).unwrap_or_default();
        format!("{indicator}|{}", self.group_by.as_deref().unwrap_or(""))
    }
}

/// A `stewardctl slos apply` YAML document (OpenSLO-like envelope).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SloDocument {
    /// `steward/v1` or `openslo/v1`.
    pub api_version: String,
    /// `SLO`.
    pub kind: String,
    pub metadata: Metadata,
    pub spec: SloSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

impl SloDocument {
    pub fn validate(&self) -> Result<(), SpecError> {
        if !matches!(self.api_version.as_str(), "steward/v1" | "openslo/v1") {
            return Err(err("apiVersion", "must be steward/v1 or openslo/v1"));
        }
        if self.kind != "SLO" {
            return Err(err("kind", "must be SLO"));
        }
        validate_name(&self.metadata.name).map_err(|e| err("metadata.name", e.message))?;
        self.spec
            .validate()
            .map_err(|e| err(&format!("spec.{}", e.field), e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> SloSpec {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#"{"indicator": {"type": "checkAvailability", "check": "http"},
        "objectives": [{"target": 0.99}], "timeWindow": [{"duration": "30d"}]}"#;

    #[test]
    fn a_minimal_spec_is_valid_with_defaults() {
        let s = spec(BASE);
        s.validate().unwrap();
        assert_eq!(s.window().unwrap(), Window::Rolling { minutes: 43_200 });
        assert_eq!(s.budgeting_method, BudgetingMethod::Occurrences);
        assert_eq!(s.alerting.min_events, 10);
        assert!(TIER_NAMES.iter().all(|t| s.tier_enabled(t)));
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = spec(BASE);
        s.objectives[0].target = 1.0;
        assert_eq!(s.validate().unwrap_err().field, "objectives[0].target");
        let mut s = spec(BASE);
        s.time_window[0].duration = "10m".into();
        assert_eq!(s.validate().unwrap_err().field, "timeWindow[0].duration");
        let mut s = spec(BASE);
        s.time_window[0].duration = "1M".into();
        assert_eq!(s.validate().unwrap_err().field, "timeWindow[0].isRolling");
        s.time_window[0].is_rolling = false;
        assert_eq!(s.window().unwrap(), Window::CalendarMonth);
        let mut s = spec(BASE);
        s.group_by = Some("rack".into());
        assert_eq!(s.validate().unwrap_err().field, "groupBy");
        let mut s = spec(BASE);
        s.alerting
            .tiers
            .insert("page-2h".into(), TierSetting { enabled: false });
        assert_eq!(s.validate().unwrap_err().field, "alerting.tiers.page-2h");
        let mut s = spec(BASE);
        s.budgeting_method = BudgetingMethod::Timeslices;
        assert_eq!(s.validate().unwrap_err().field, "objectives[0].timeSliceTarget");
        let mut s = spec(BASE);
        s.indicator = Indicator::CheckAvailability {
            check: "http".into(),
            selector: "env in (".into(),
        };
        assert_eq!(s.validate().unwrap_err().field, "indicator.selector");
        let e = serde_json::from_str::<SloSpec>(
            r#"{"indicator": {"type": "checkAvailability", "check": "x", "colour": 1},
                "objectives": [{"target": 0.9}], "timeWindow": [{"duration": "7d"}]}"#,
        );
        assert!(e.is_err());
    }

    #[test]
    fn yaml_documents_parse_and_validate() {
        let doc: SloDocument = serde_yaml_ng::from_str(
            "apiVersion: openslo/v1\nkind: SLO\nmetadata:\n  name: web\nspec:\n  indicator:\n    type: checkLatency\n    check: http\n    threshold: 250ms\n    selector: env=prod\n  objectives:\n    - target: 0.995\n  timeWindow:\n    - duration: 28d\n  groupBy: host\n  alerting:\n    tiers:\n      ticket-3d: {enabled: false}\n",
        )
        .unwrap();
        doc.validate().unwrap();
        assert!(!doc.spec.tier_enabled("ticket-3d"));
        assert_eq!(doc.spec.group_by().unwrap(), GroupBy::Host);
    }
}
