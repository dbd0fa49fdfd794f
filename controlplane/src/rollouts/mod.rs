//! Fleet-wide rollouts: one action fanned out over a target set in waves (a
//! canary wave, then batches), with an error budget counted across waves,
//! health and SLO gates between waves, deadlines, pause/resume/abort and
//! automatic rollback. This module is the domain (states, the strategy and
//! its validation, the wave plan); [`driver`] moves rollouts forward;
//! storage is [`crate::store::rollouts`].
//!
//! Invariants:
//! - The target set is resolved once, at creation, and never grows.
//! - A host has at most one step job and one rollback job per rollout; the
//!   job IDs are recorded in the same transaction that creates the jobs, so
//!   no restart or second control plane runs a host's step twice.
//! - Every decision is derived from the database (the rollout row, its hosts
//!   and their jobs), never from memory.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steward_shared::units::Duration;

pub mod driver;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    /// Paused by an operator: nothing new is dispatched; running jobs finish.
    Paused,
    /// Budget, deadline, health or an abort: running jobs finish, nothing new starts.
    Stopping,
    /// Changed hosts are being rolled back, newest first.
    RollingBack,
    Succeeded,
    RolledBack,
    Failed,
    Aborted,
}

impl RolloutState {
    pub const ALL: [RolloutState; 8] = [
        Self::Running,
        Self::Paused,
        Self::Stopping,
        Self::RollingBack,
        Self::Succeeded,
        Self::RolledBack,
        Self::Failed,
        Self::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::RollingBack => "rolling_back",
            Self::Succeeded => "succeeded",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::RolledBack | Self::Failed | Self::Aborted)
    }
}

/// Where one host of a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Pending,
    Dispatched,
    Succeeded,
    Failed,
    /// Not run: outside the creator's scope at dispatch, or the host is gone.
    Skipped,
    RollingBack,
    RolledBack,
    RollbackFailed,
}

impl HostState {
    pub const ALL: [HostState; 8] = [
        Self::Pending,
        Self::Dispatched,
        Self::Succeeded,
        Self::Failed,
        Self::Skipped,
        Self::RollingBack,
        Self::RolledBack,
        Self::RollbackFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Dispatched => "dispatched",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
            Self::RollbackFailed => "rollback_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A count of hosts: absolute, or a percentage of the rollout's target set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u64),
    Percent(u8),
}

impl Amount {
    pub fn parse(s: &str) -> Result<Amount, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: u8 = p
                .trim()
                .parse()
                .map_err(|_| format!("expected N or P% (0-100), got {s:?}"))?;
            if p > 100 {
                return Err(format!("a percentage must be 0-100%, got {s:?}"));
            }
            Ok(Amount::Percent(p))
        } else {
            s.parse::<u64>()
                .map(Amount::Count)
                .map_err(|_| format!("expected N or P%, got {s:?}"))
        }
    }

    /// Hosts out of `total`, rounding a percentage down.
    pub fn floor_of(self, total: u64) -> u64 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => total * u64::from(p) / 100,
        }
    }

    /// Hosts out of `total`, rounding a percentage up.
    pub fn ceil_of(self, total: u64) -> u64 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => (total * u64::from(p)).div_ceil(100),
        }
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawAmount::deserialize(d)? {
            RawAmount::N(n) => Ok(Amount::Count(n)),
            RawAmount::S(s) => Amount::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A count as a request may give it: `5`, `"5"` or `"25%"`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RawAmount {
    N(u64),
    S(String),
}

/// What undoes a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackSpec {
    pub action: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// The strategy as a request gives it (`POST /api/v1/rollouts`, `strategy`).
/// Every field is optional; [`StrategySpec::validate`] fills the defaults
/// and names the field at fault.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StrategySpec {
    /// Hosts in the first wave (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u64>,
    /// Hosts per later wave: a number or a percentage of the target set (default `25%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "25%")]
    pub batch: Option<RawAmount>,
    /// The error budget: failed hosts tolerated over the whole rollout (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "1")]
    pub max_failures: Option<RawAmount>,
    /// Wait between waves (default `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
    /// How long a wave's hosts must stay healthy before the next wave (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy: Option<String>,
    /// Longest a wave may take from dispatch to passing its gates (default `15m`); also each step's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_deadline: Option<String>,
    /// Longest without any host finishing a step (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<String>,
    /// Checks that must be ok on a host after its step; empty: no check may be critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Vec<String>>,
    /// SLO names whose fast burn must stay below the page threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Vec<String>>,
    /// The action that undoes a step (e.g. `deploy.rollback` with the app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackSpec>,
    /// Roll back automatically when the rollout fails (default: on when `rollback` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
}

/// The validated strategy, as stored (JSON in `rollouts.strategy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Strategy {
    pub canary: u64,
    #[schema(value_type = String, example = "25%")]
    pub batch: Amount,
    #[schema(value_type = String, example = "1")]
    pub max_failures: Amount,
    pub pause_ms: u64,
    pub min_healthy_ms: u64,
    pub wave_deadline_ms: u64,
    pub progress_deadline_ms: u64,
    pub health: Vec<String>,
    pub slo: Vec<String>,
    pub rollback: Option<RollbackSpec>,
    pub auto_rollback: bool,
}

/// A field of a rollout request that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidRollout {
    pub field: String,
    pub message: String,
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidRollout {
    InvalidRollout {
        field: field.into(),
        message: message.into(),
    }
}

const MAX_NAMES: usize = 64;
const MAX_DURATION_MS: u64 = 7 * 86_400_000;

fn duration(field: &str, raw: &Option<String>, default_ms: u64, min_ms: u64) -> Result<u64, InvalidRollout> {
    let Some(raw) = raw else { return Ok(default_ms) };
    let d: Duration = raw
        .parse()
        .map_err(|e: steward_shared::units::UnitError| invalid(field, e.0))?;
    let ms = u64::try_from(d.as_std().as_millis()).unwrap_or(u64::MAX);
    if ms < min_ms || ms > MAX_DURATION_MS {
        return Err(invalid(
            field,
            format!("must be between {}s and 7d, got {raw:?}", min_ms / 1000),
        ));
    }
    Ok(ms)
}

fn amount(field: &str, raw: &Option<RawAmount>, default: Amount) -> Result<Amount, InvalidRollout> {
    match raw {
        None => Ok(default),
        Some(RawAmount::N(n)) => Ok(Amount::Count(*n)),
        Some(RawAmount::S(s)) => Amount::parse(s).map_err(|m| invalid(field, m)),
    }
}

fn names(field: &str, raw: &Option<Vec<String>>) -> Result<Vec<String>, InvalidRollout> {
    let list = raw.clone().unwrap_or_default();
    if list.len() > MAX_NAMES {
        return Err(invalid(field, format!("at most {MAX_NAMES} names")));
    }
    for (i, n) in list.iter().enumerate() {
        if n.is_empty() || n.len() > 128 || n.chars().any(|c| c.is_control()) {
            return Err(invalid(format!("{field}[{i}]"), "must be 1-128 printable characters"));
        }
    }
    Ok(list)
}

impl StrategySpec {
    /// Defaults filled in; errors name the field (`strategy.batch`, ...).
    pub fn validate(&self) -> Result<Strategy, InvalidRollout> {
        let canary = self.canary.unwrap_or(1);
        let batch = amount("strategy.batch", &self.batch, Amount::Percent(25))?;
        if matches!(batch, Amount::Count(0) | Amount::Percent(0)) {
            return Err(invalid("strategy.batch", "must be at least 1 host or 1%"));
        }
        let max_failures = amount("strategy.max_failures", &self.max_failures, Amount::Count(0))?;
        let rollback = match &self.rollback {
            None => None,
            Some(r) => {
                crate::jobs::validate(&r.action, &r.params).map_err(|e| {
                    let field = if e.field == "action" {
                        "strategy.rollback.action".to_string()
                    } else {
                        format!("strategy.rollback.{}", e.field)
                    };
                    invalid(field, e.message)
                })?;
                Some(r.clone())
            }
        };
        if self.auto_rollback == Some(true) && rollback.is_none() {
            return Err(invalid(
                "strategy.auto_rollback",
                "auto_rollback needs strategy.rollback (the action that undoes a step)",
            ));
        }
        Ok(Strategy {
            canary,
            batch,
            max_failures,
            pause_ms: duration("strategy.pause", &self.pause, 0, 0)?,
            min_healthy_ms: duration("strategy.min_healthy", &self.min_healthy, 10_000, 0)?,
            wave_deadline_ms: duration("strategy.wave_deadline", &self.wave_deadline, 15 * 60_000, 1000)?,
            progress_deadline_ms: duration("strategy.progress_deadline", &self.progress_deadline, 10 * 60_000, 1000)?,
            health: names("strategy.health", &self.health)?,
            slo: names("strategy.slo", &self.slo)?,
            auto_rollback: self.auto_rollback.unwrap_or(rollback.is_some()),
            rollback,
        })
    }
}

impl Strategy {
    /// The wave of each of `total` hosts in dispatch order: the canary wave
    /// (if any), then waves of `batch` hosts.
    pub fn waves_of(&self, total: u64) -> Vec<u32> {
        let batch = self.batch.ceil_of(total).max(1);
        let canary = self.canary.min(total);
        let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        let mut wave = 0u32;
        for i in 0..total {
            if i < canary {
                out.push(0);
                continue;
            }
            let first_batch = u32::from(canary > 0);
            wave = first_batch + u32::try_from((i - canary) / batch).unwrap_or(u32::MAX);
            out.push(wave);
        }
        let _ = wave;
        out
    }

    /// The error budget for `total` hosts.
    pub fn budget(&self, total: u64) -> u64 {
        self.max_failures.floor_of(total)
    }
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub id: String,
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub selector: String,
    pub strategy: Strategy,
    pub state: RolloutState,
    /// When stopping: `failure` or `abort`.
    pub stop_kind: Option<String>,
    pub stop_rollback: bool,
    pub current_wave: u32,
    pub waves: u32,
    pub total_hosts: u64,
    pub wave_started_ms: Option<i64>,
    pub wave_done_ms: Option<i64>,
    pub wave_passed_ms: Option<i64>,
    pub gate: Option<String>,
    pub gate_since_ms: Option<i64>,
    pub last_progress_ms: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_ms: Option<i64>,
    pub actor: String,
    pub scope: String,
    pub reason: Option<String>,
    pub notes: Vec<String>,
    pub version: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: Option<i64>,
}

/// One host of a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutHost {
    pub host_id: String,
    pub position: u64,
    pub wave: u32,
    pub state: HostState,
    pub job_id: Option<String>,
    pub rollback_job_id: Option<String>,
    pub reason: Option<String>,
    pub dispatched_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

/// A new rollout's ID: sortable by creation time.
pub fn new_rollout_id(now_ms: i64) -> String {
    format!("ro-{}", crate::jobs::new_job_id(now_ms))
}

/// The SLO gate: whether the named SLOs' fast burn stays below the page
/// threshold. `serve` uses [`crate::slo::gate::StoreSloGate`]; a gate that
/// answers [`SloVerdict::NotConfigured`] ([`NotConfigured`], in tests) makes
/// the driver record that on the rollout (a visible note, never a silent pass).
pub trait SloGate: Send + Sync + std::fmt::Debug {
    fn evaluate<'a>(
        &'a self,
        slos: &'a [String],
        now_ms: i64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = SloVerdict> + Send + 'a>>;
}

/// The SLO gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SloVerdict {
    /// Every named SLO's fast burn is below its page threshold.
    Holds,
    /// An SLO burns fast: the next wave waits (until the wave deadline).
    Burning { slo: String, detail: String },
    /// No SLO engine in this build: the gate cannot be evaluated.
    NotConfigured,
}

/// The SLO gate of a build without the SLO engine.
#[derive(Debug, Default, Clone, Copy)]
pub struct NotConfigured;

impl SloGate for NotConfigured {
    fn evaluate<'a>(
        &'a self,
        _slos: &'a [String],
        _now_ms: i64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = SloVerdict> + Send + 'a>> {
        Box::pin(async { SloVerdict::NotConfigured })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_defaults_and_field_errors() {
        let s = StrategySpec::default().validate().unwrap();
        assert_eq!(s.canary, 1);
        assert_eq!(s.batch, Amount::Percent(25));
        assert_eq!(s.max_failures, Amount::Count(0));
        assert!(!s.auto_rollback);
        let bad = |spec: StrategySpec| spec.validate().unwrap_err().field;
        assert_eq!(
            bad(StrategySpec {
                batch: Some(RawAmount::S("x%".into())),
                ..Default::default()
            }),
            "strategy.batch"
        );
        assert_eq!(
            bad(StrategySpec {
                batch: Some(RawAmount::N(0)),
                ..Default::default()
            }),
            "strategy.batch"
        );
        assert_eq!(
            bad(StrategySpec {
                max_failures: Some(RawAmount::S("101%".into())),
                ..Default::default()
            }),
            "strategy.max_failures"
        );
        assert_eq!(
            bad(StrategySpec {
                pause: Some("soon".into()),
                ..Default::default()
            }),
            "strategy.pause"
        );
        assert_eq!(
            bad(StrategySpec {
                rollback: Some(RollbackSpec {
                    action: "deploy.rollback".into(),
                    params: BTreeMap::new()
                }),
                ..Default::default()
            }),
            "strategy.rollback.params.app"
        );
        assert_eq!(
            bad(StrategySpec {
                auto_rollback: Some(true),
                ..Default::default()
            }),
            "strategy.auto_rollback"
        );
        let with_rb = StrategySpec {
            rollback: Some(RollbackSpec {
                action: "deploy.rollback".into(),
                params: [("app".to_string(), "web".to_string())].into(),
            }),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert!(with_rb.auto_rollback, "on by default with a rollback");
    }

    #[test]
    fn waves_put_the_canary_first_then_batches() {
        let s = StrategySpec {
            canary: Some(1),
            batch: Some(RawAmount::S("25%".into())),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(
            s.waves_of(20),
            vec![0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4]
        );
        let no_canary = Strategy { canary: 0, ..s.clone() };
        assert_eq!(no_canary.waves_of(3), vec![0, 1, 2]);
        assert_eq!(s.budget(20), 0);
        assert_eq!(Amount::Percent(10).floor_of(25), 2);
    }
}
